// The ODE primitives of CpuBackend (docs/backends.md "ODE primitives"): lincomb, error_sq_sum,
// scaled_sq_sum, find_nonfinite, probe_dots and normal_logpdf against plain loops in double
// written from docs/math/ode.md, on views whose leading dimension exceeds their rows, empty
// operands and NaN/Inf; and the solvers and the likelihood on them giving the same bits as the
// host loops they replaced (values recorded from that code, for both scalar types).
#include <flowprior/flowprior.hpp>
#include <flowprior/ode/flow_ode.hpp>
#include <limits>
#include <string>
#include <vector>

#include "catch.hpp"
#include "fixtures.hpp"

using flowprior::ConstMatrixView;
using flowprior::CpuBackend;
using flowprior::Index;
using flowprior::MatrixView;
using flowprior::NonFinite;
using flowprior::Rng;
using flowprior::StageTerms;
using flowprior::VectorView;
namespace ode = flowprior::ode;
using B = CpuBackend;

namespace {

// A (rows, cols) view with leading dimension rows + pad into `store`, filled with values in
// [-2, 2]; the padding holds NaN, which no primitive may read.
template <class S>
MatrixView<S> padded(std::vector<S>& store, Index rows, Index cols, Index pad, Rng& rng) {
  const Index ld = rows + pad;
  store.assign(static_cast<std::size_t>(ld * cols), std::numeric_limits<S>::quiet_NaN());
  for (Index j = 0; j < cols; ++j)
    for (Index i = 0; i < rows; ++i)
      store[static_cast<std::size_t>(i + j * ld)] =
          static_cast<S>(flowprior::uniform(rng, -2.0, 2.0));
  return {store.data(), rows, cols, ld};
}

}  // namespace

TEMPLATE_TEST_CASE("ode primitives: lincomb equals the loop of ode.md (1)-(4)", "[op][ode]", float,
                   double) {
  using S = TestType;
  B::Context ctx;
  Rng rng(61);
  const Index n = 5, cols = 4;
  std::vector<S> zs, os;
  std::vector<std::vector<S>> ks(8);
  const MatrixView<S> z = padded(zs, n, cols, 3, rng);
  const MatrixView<S> out = padded(os, n, cols, 2, rng);
  std::vector<MatrixView<S>> k;
  for (int t = 0; t < 8; ++t) k.push_back(padded(ks[t], n, cols, t % 3, rng));
  const double h = -0.37;
  for (int nt = 0; nt <= StageTerms<S>::kMax; ++nt) {
    CAPTURE(nt);
    StageTerms<S> terms;
    std::vector<double> c;
    for (int t = 0; t < nt; ++t) {
      c.push_back(0.3 * t - 0.71);
      terms.add(c.back(), k[t]);
    }
    B::lincomb(ctx, z, h, terms, out);
    for (Index j = 0; j < cols; ++j)
      for (Index i = 0; i < n; ++i) {
        double acc = 0;
        for (int t = 0; t < nt; ++t) acc += c[t] * double(k[t](i, j));
        REQUIRE(out(i, j) == static_cast<S>(double(z(i, j)) + h * acc));
      }
  }
  // In place (Euler: z <- z + h k1), and the padding untouched.
  const std::vector<S> before(zs);
  B::lincomb(ctx, z, h, StageTerms<S>{{1.0, k[0]}, {0.5, k[1]}}, z);
  for (Index j = 0; j < cols; ++j) {
    for (Index i = 0; i < n; ++i) {
      const double zb = double(before[static_cast<std::size_t>(i + j * z.ld)]);
      double acc = 0;
      acc += 1.0 * double(k[0](i, j));
      acc += 0.5 * double(k[1](i, j));
      REQUIRE(z(i, j) == static_cast<S>(zb + h * acc));
    }
    for (Index i = n; i < z.ld; ++i) REQUIRE(std::isnan(z.data[i + j * z.ld]));
  }
  // Empty operands: nothing to do; more than kMax terms is a programming error.
  B::lincomb(ctx, MatrixView<S>(nullptr, 0, 3), h, StageTerms<S>{}, MatrixView<S>(nullptr, 0, 3));
  B::lincomb(ctx, MatrixView<S>(nullptr, 4, 0), h, StageTerms<S>{{1.0, {}}},
             MatrixView<S>(nullptr, 4, 0));
  StageTerms<S> full;
  for (int t = 0; t < StageTerms<S>::kMax; ++t) full.add(1.0, k[t]);
  REQUIRE_THROWS_AS(full.add(1.0, k[7]), flowprior::assert_error);
}

TEMPLATE_TEST_CASE(
    "ode primitives: the error and starting-step norms equal the loops of ode.md "
    "(5)-(6)",
    "[op][ode]", float, double) {
  using S = TestType;
  B::Context ctx;
  Rng rng(62);
  const Index n = 4, cols = 6;
  std::vector<S> s0, s1, sa, sb, sk[3];
  const MatrixView<S> y0 = padded(s0, n, cols, 1, rng), y1 = padded(s1, n, cols, 0, rng);
  const MatrixView<S> a = padded(sa, n, cols, 2, rng), b = padded(sb, n, cols, 3, rng);
  MatrixView<S> k[3];
  for (int t = 0; t < 3; ++t) k[t] = padded(sk[t], n, cols, t, rng);
  const double atol = 1e-3, rtol = 2e-2, h = 0.19;
  const double c[3] = {71.0 / 57600, -71.0 / 16695, -1.0 / 40};
  const StageTerms<S> terms{{c[0], k[0]}, {c[1], k[1]}, {c[2], k[2]}};
  double want = 0, want_a = 0, want_ab = 0;
  for (Index j = 0; j < cols; ++j)
    for (Index i = 0; i < n; ++i) {
      double acc = 0;
      for (int t = 0; t < 3; ++t) acc += c[t] * double(k[t](i, j));
      const double e = double(static_cast<S>(h * acc));
      const double sc =
          atol + rtol * std::max(std::abs(double(y0(i, j))), std::abs(double(y1(i, j))));
      want += (e / sc) * (e / sc);
      const double sy = atol + rtol * std::abs(double(y0(i, j)));
      want_a += std::pow(double(a(i, j)) / sy, 2);
      want_ab += std::pow((double(a(i, j)) - double(b(i, j))) / sy, 2);
    }
  REQUIRE(want > 0);
  REQUIRE(B::error_sq_sum(ctx, y0, y1, h, terms, atol, rtol) == want);
  REQUIRE(B::scaled_sq_sum<S>(ctx, y0, a, {}, atol, rtol) == want_a);
  REQUIRE(B::scaled_sq_sum<S>(ctx, y0, a, b, atol, rtol) == want_ab);
  // Empty: 0. A non-finite stage or state: a non-finite sum.
  const MatrixView<S> empty(nullptr, n, 0);
  REQUIRE(B::error_sq_sum(ctx, empty, empty, h, StageTerms<S>{{1.0, empty}}, atol, rtol) == 0);
  REQUIRE(B::scaled_sq_sum<S>(ctx, empty, empty, {}, atol, rtol) == 0);
  k[1](2, 3) = std::numeric_limits<S>::infinity();
  REQUIRE(!std::isfinite(B::error_sq_sum(ctx, y0, y1, h, terms, atol, rtol)));
  a(0, 5) = std::numeric_limits<S>::quiet_NaN();
  REQUIRE(std::isnan(B::scaled_sq_sum<S>(ctx, y0, a, {}, atol, rtol)));
}

TEMPLATE_TEST_CASE("ode primitives: find_nonfinite reports the first NaN or Inf of a view",
                   "[op][ode]", float, double) {
  using S = TestType;
  B::Context ctx;
  Rng rng(63);
  std::vector<S> store;
  const MatrixView<S> m = padded(store, 3, 5, 2, rng);  // the padding holds NaN
  NonFinite r = B::find_nonfinite(ctx, ConstMatrixView<S>(m));
  REQUIRE(!r.found());
  REQUIRE(r.i == -1);
  REQUIRE(r.j == -1);
  m(1, 3) = -std::numeric_limits<S>::infinity();
  r = B::find_nonfinite(ctx, ConstMatrixView<S>(m));
  REQUIRE(r.found());
  REQUIRE(r.i == 1);
  REQUIRE(r.j == 3);
  REQUIRE(r.value == -std::numeric_limits<double>::infinity());
  m(2, 3) = std::numeric_limits<S>::quiet_NaN();  // later in column-major order
  m(0, 4) = std::numeric_limits<S>::quiet_NaN();
  r = B::find_nonfinite(ctx, ConstMatrixView<S>(m));
  REQUIRE(r.i == 1);
  REQUIRE(r.j == 3);
  m(2, 1) = std::numeric_limits<S>::quiet_NaN();  // earlier
  r = B::find_nonfinite(ctx, ConstMatrixView<S>(m));
  REQUIRE(r.i == 2);
  REQUIRE(r.j == 1);
  REQUIRE(std::isnan(r.value));
  // The largest finite values are finite; a row block sees only its rows; empty views.
  std::vector<S> big(6, std::numeric_limits<S>::max());
  big[4] = -std::numeric_limits<S>::max();
  REQUIRE(!B::find_nonfinite(ctx, ConstMatrixView<S>(big.data(), 2, 3)).found());
  r = B::find_nonfinite(ctx, ConstMatrixView<S>(m).row_block(0, 1));
  REQUIRE(r.i == 0);
  REQUIRE(r.j == 4);
  r = B::find_nonfinite(ctx, ConstMatrixView<S>(m).row_block(1, 2));
  REQUIRE(r.i == 1);
  REQUIRE(r.j == 1);
  REQUIRE(!B::find_nonfinite(ctx, ConstMatrixView<S>(nullptr, 0, 4)).found());
  REQUIRE(!B::find_nonfinite(ctx, ConstMatrixView<S>(nullptr, 3, 0)).found());
}

TEMPLATE_TEST_CASE(
    "ode primitives: probe_dots and normal_logpdf equal the loops of ode.md (7), "
    "(9)",
    "[op][ode]", float, double) {
  using S = TestType;
  B::Context ctx;
  Rng rng(64);
  const Index d = 3, N = 4;
  for (Index K : {1, 3}) {
    CAPTURE(K);
    std::vector<S> se, sj, so;
    const MatrixView<S> eps = padded(se, d, N * K, 1, rng), jv = padded(sj, d, N * K, 2, rng);
    // The output is the last row of a (d + 1, N) matrix, as in the likelihood's state.
    const MatrixView<S> state = padded(so, d + 1, N, 0, rng);
    B::probe_dots(ctx, eps, jv, K, state.row_block(d, 1));
    for (Index b = 0; b < N; ++b) {
      double acc = 0;
      for (Index k = 0; k < K; ++k)
        for (Index i = 0; i < d; ++i) acc += double(eps(i, b * K + k)) * double(jv(i, b * K + k));
      REQUIRE(state(d, b) == static_cast<S>(acc / double(K)));
    }
    // log N(z; 0, I) + l, z the first d rows and l the last row of the state.
    std::vector<S> lp(N + 1, S(7)), lp0(N);
    B::normal_logpdf(ctx, state.row_block(0, d), state.row_block(d, 1),
                     VectorView<S>(lp.data(), N));
    B::normal_logpdf(ctx, state.row_block(0, d), ConstMatrixView<S>(),
                     VectorView<S>(lp0.data(), N));
    const double log2pi = std::log(2.0 * 3.14159265358979323846);
    for (Index b = 0; b < N; ++b) {
      double r2 = 0;
      for (Index i = 0; i < d; ++i) r2 += double(state(i, b)) * double(state(i, b));
      const double base = -0.5 * r2 - 0.5 * double(d) * log2pi;
      REQUIRE(lp[b] == static_cast<S>(base + double(state(d, b))));
      REQUIRE(lp0[b] == static_cast<S>(base));
    }
    REQUIRE(lp[N] == S(7));  // nothing written past the end
  }
  // Empty batches write nothing.
  B::probe_dots(ctx, ConstMatrixView<S>(nullptr, 3, 0), ConstMatrixView<S>(nullptr, 3, 0), 2,
                MatrixView<S>(nullptr, 1, 0, 4));
  B::normal_logpdf(ctx, ConstMatrixView<S>(nullptr, 3, 0), ConstMatrixView<S>(),
                   VectorView<S>(nullptr, 0));
}

namespace {

// The fixed problems of the bit-equality tests below. Their outputs (widened to double) were
// recorded with %a from the host-loop solvers and likelihood before they moved onto the backend
// primitives.
template <class S>
void rhs(double t, ConstMatrixView<S> z, MatrixView<S> dz) {
  for (Index j = 0; j < z.cols; ++j)
    for (Index i = 0; i < z.rows; ++i)
      dz(i, j) = static_cast<S>(std::cos(t) * double(z(i, j)) +
                                0.1 * double(z(i, j)) * double(z(i, j)) - 0.05 * double(i + j));
}

template <class S>
std::vector<S> start_state() {
  std::vector<S> z(12);
  for (int k = 0; k < 12; ++k)
    z[k] = static_cast<S>(0.37 * std::sin(1.3 * k + 0.2) - 0.11 * k / 12.0);
  return z;
}

template <class S>
void append(std::vector<double>& out, const std::vector<S>& v) {
  for (S x : v) out.push_back(double(x));
}

// Every solver on rhs, state (3, 4), forwards and backwards, then observed at given times; the
// stage memory `work` is a host std::vector or an ode::Work.
template <class S, class W>
std::vector<double> solvers(W& work) {
  std::vector<double> out;
  for (int m = 0; m < 6; ++m) {
    std::vector<S> z = start_state<S>();
    ode::SolverOptions o;
    o.steps = 7;
    if (m == 0) o.method = ode::Method::Euler;
    if (m == 1) o.method = ode::Method::Heun;
    if (m == 2) o.method = ode::Method::RK4;
    if (m == 3) o.atol = o.rtol = 1e-6;
    if (m == 4) o.first_step = 0.1;
    if (m == 5) o.atol = o.rtol = 1e-3;
    const auto st = ode::integrate<S>(rhs<S>, 0.0, 1.5, MatrixView<S>(z.data(), 3, 4), o, work);
    append(out, z);
    out.push_back(double(st.nfe));
    out.push_back(double(st.rejected));
    const auto st2 = ode::integrate<S>(rhs<S>, 1.5, 0.25, MatrixView<S>(z.data(), 3, 4), o, work);
    append(out, z);
    out.push_back(double(st2.nfe));
  }
  for (int m = 0; m < 2; ++m) {
    std::vector<S> z = start_state<S>();
    ode::SolverOptions o;
    o.steps = 9;
    o.method = m == 0 ? ode::Method::Dopri5 : ode::Method::RK4;
    ode::integrate_observed<S>(rhs<S>, 0.0, {0.3, 0.3, 1.1, 2.0}, MatrixView<S>(z.data(), 3, 4), o,
                               work, [&](std::size_t, double, ConstMatrixView<S> s) {
                                 for (Index j = 0; j < s.cols; ++j)
                                   for (Index i = 0; i < s.rows; ++i)
                                     out.push_back(double(s(i, j)));
                               });
  }
  return out;
}

// Likelihoods (exact, both Hutchinson probes, Dopri5 and RK4) and samples of the mixture field,
// in both conventions.
template <class S>
std::vector<double> flows() {
  using Field = flowprior::analytic::GaussianMixtureField<S>;
  Field field(fpt::three_modes());
  std::vector<double> out;
  for (auto conv : {flowprior::Convention::Paper, flowprior::Convention::Code}) {
    const auto prior = flowprior::Prior<Field>(field, flowprior::Convention::Paper).as(conv);
    ode::OdeWorkspace<Field> ws;
    std::vector<S> x = {-1.0, 0.5, 1.5, -0.25, 1.0, 0.3, 4.0, -3.0, 0.2, 0.1};
    const ConstMatrixView<S> xv(x.data(), 2, 5);
    for (int c = 0; c < 4; ++c) {
      ode::LikelihoodOptions opt;
      opt.solver.atol = opt.solver.rtol = 1e-6;
      if (c >= 1) {
        opt.divergence = ode::Divergence::Hutchinson;
        opt.probes = c;
        opt.probe = c == 2 ? ode::Probe::Gaussian : ode::Probe::Rademacher;
      }
      if (c == 3) {
        opt.solver.method = ode::Method::RK4;
        opt.solver.steps = 11;
      }
      Rng rng(100 + c);
      std::vector<S> lp(5), zn(10);
      const auto st = ode::log_likelihood(prior, conv, xv, VectorView<S>(lp.data(), 5), opt, ws,
                                          &rng, MatrixView<S>(zn.data(), 2, 5));
      append(out, lp);
      append(out, zn);
      out.push_back(double(st.nfe));
    }
    for (int m = 0; m < 2; ++m) {
      std::vector<S> z(8);
      Rng rng(7);
      ode::draw_noise<S>(MatrixView<S>(z.data(), 2, 4), rng);
      ode::SolverOptions o;
      o.atol = o.rtol = 1e-6;
      if (m == 1) {
        o.method = ode::Method::Heun;
        o.steps = 13;
      }
      ode::sample(prior, conv, MatrixView<S>(z.data(), 2, 4), o, ws);
      append(out, z);
    }
  }
  return out;
}

// The recorded bits assume that the compiler does not fuse a multiply and an add (x86-64 without
// -mfma, as the test builds are); where it may (__FP_FAST_FMA: aarch64, -march=native), the
// solvers are only compared with themselves.
#if defined(__FP_FAST_FMA) || defined(__FP_FAST_FMAF)
constexpr bool kRecordedBitsApply = false;
#else
constexpr bool kRecordedBitsApply = true;
#endif

template <std::size_t N>
void require_bits(const std::vector<double>& got, const double (&want)[N]) {
  REQUIRE(got.size() == N);
  for (std::size_t i = 0; i < N; ++i) {
    CAPTURE(i, got[i], want[i]);
    REQUIRE(got[i] == want[i]);
  }
}

const double kSolversD[] = {0x1.a3bfa8f660acbp-3,
                            0x1.e86763c1ab37cp-1,
                            0x1.27e102cb62007p-4,
                            -0x1.e0e18e52cef4bp-1,
                            -0x1.05431dc690fabp+0,
                            -0x1.61b9cb092a188p-5,
                            0x1.5c0a69464cc81p-1,
                            -0x1.7dfaed5c1e2ap-2,
                            -0x1.6badfa8e3e83ap+0,
                            -0x1.17ca54474e6c4p+0,
                            -0x1.696dc8740fe7ap-4,
                            0x1.139ea7b229fdcp-3,
                            0x1.cp+2,
                            0x0p+0,
                            0x1.92088500b455cp-4,
                            0x1.d77934ac8afbp-2,
                            0x1.e882a42708f68p-4,
                            -0x1.e0acd8e648ca4p-2,
                            -0x1.e4d8a263f7a44p-2,
                            0x1.b1769dd0a9fc8p-4,
                            0x1.8eccb61ac4839p-2,
                            -0x1.f07c50024be38p-5,
                            -0x1.46b4497e2ed9bp-1,
                            -0x1.e3cdf810c2e8p-2,
                            0x1.022ab68ed6622p-3,
                            0x1.17e170075bb83p-2,
                            0x1.cp+2,
                            0x1.9d4a9fd2372d7p-3,
                            0x1.e558c240d3b78p-1,
                            0x1.e486cd9a5e2dcp-5,
                            -0x1.d235ddf9b6c48p-1,
                            -0x1.fc6239472aacep-1,
                            -0x1.ead988681a856p-5,
                            0x1.53cf306da1234p-1,
                            -0x1.857f381d584d5p-2,
                            -0x1.6105181f053bdp+0,
                            -0x1.110e7d58cab42p+0,
                            -0x1.c20cdfda3487dp-4,
                            0x1.a36cd00ef1228p-4,
                            0x1.cp+3,
                            0x0p+0,
                            0x1.8076c39e9c1fp-4,
                            0x1.cc093f95b37ffp-2,
                            0x1.b68effce08a86p-4,
                            -0x1.b8fb93f2219e4p-2,
                            -0x1.bd37b9e95ad4cp-2,
                            0x1.74ca032eb8bfep-4,
                            0x1.7cb47387add7dp-2,
                            -0x1.092c221111a82p-4,
                            -0x1.2770a6069d2fap-1,
                            -0x1.bcb3b6ed2fc9ep-2,
                            0x1.b6aabdf02a61fp-4,
                            0x1.f48b8c657b2adp-3,
                            0x1.cp+3,
                            0x1.a11f11723773p-3,
                            0x1.ea396ac1e0885p-1,
                            0x1.e374536a72882p-5,
                            -0x1.d61f0684f0de7p-1,
                            -0x1.00636ea41f034p+0,
                            -0x1.f7a012ea64a8ep-5,
                            0x1.56dcf6153b624p-1,
                            -0x1.89e72de0ffcap-2,
                            -0x1.6412be7bd79eep+0,
                            -0x1.137a7e675c725p+0,
                            -0x1.cbb8a42d53a7ap-4,
                            0x1.a0391c1b931dep-4,
                            0x1.cp+4,
                            0x0p+0,
                            0x1.82679d1c35808p-4,
                            0x1.ce2fc8512d3bdp-2,
                            0x1.b73938df054f1p-4,
                            -0x1.bb75381a73dd7p-2,
                            -0x1.bff2b47d7f0dbp-2,
                            0x1.74506dbb6098fp-4,
                            0x1.7e44d6e8f0748p-2,
                            -0x1.0cfd15eb067f8p-4,
                            -0x1.29726ea6e9996p-1,
                            -0x1.bfaadf9ebc368p-2,
                            0x1.b5b97d7ca5c4ep-4,
                            0x1.f5295e421180cp-3,
                            0x1.cp+4,
                            0x1.a1202cce70747p-3,
                            0x1.ea3b01948126fp-1,
                            0x1.e3731d2600165p-5,
                            -0x1.d62010ff1b115p-1,
                            -0x1.006408c9c340ep+0,
                            -0x1.f7a53fa7eda62p-5,
                            0x1.56dde3d4f4b8ap-1,
                            -0x1.89e8988e13cf1p-2,
                            -0x1.64139c0201ec3p+0,
                            -0x1.137b2d1e3efap+0,
                            -0x1.cbbc82ec5b674p-4,
                            0x1.a036cb43ecf22p-4,
                            0x1.6p+5,
                            0x1p+0,
                            0x1.8268674be4f44p-4,
                            0x1.ce30c97ca6a59p-2,
                            0x1.b73938b27b13p-4,
                            -0x1.bb76183722d1cp-2,
                            -0x1.bff3b5729c426p-2,
                            0x1.744fce7811cc4p-4,
                            0x1.7e457f65b2801p-2,
                            -0x1.0cfefd0eac23ep-4,
                            -0x1.29732e7a93a9p-1,
                            -0x1.bfac00ed67092p-2,
                            0x1.b5b88266d383cp-4,
                            0x1.f529422d10b64p-3,
                            0x1.9p+5,
                            0x1.a120cb354e652p-3,
                            0x1.ea3bba4150a09p-1,
                            0x1.e3736409e7b7ep-5,
                            -0x1.d620b939a8b95p-1,
                            -0x1.006467e5cadf7p+0,
                            -0x1.f7a708fca596bp-5,
                            0x1.56de6ce4f2694p-1,
                            -0x1.89e957986c2p-2,
                            -0x1.6414221e559c5p+0,
                            -0x1.137b9745bf501p+0,
                            -0x1.cbbe0f0b45eb3p-4,
                            0x1.a0367c36cd42p-4,
                            0x1.9p+4,
                            0x0p+0,
                            0x1.8268a8f5f543ap-4,
                            0x1.ce30f3fe53dfcp-2,
                            0x1.b7391eab47d1bp-4,
                            -0x1.bb769413564e2p-2,
                            -0x1.bff446c53846bp-2,
                            0x1.744f5fe632626p-4,
                            0x1.7e45a2f7796bdp-2,
                            -0x1.0d0007b15c142p-4,
                            -0x1.2973a00eb6ad4p-1,
                            -0x1.bfaca815a1e08p-2,
                            0x1.b5b7d09ab7001p-4,
                            0x1.f529026aa9611p-3,
                            0x1.fp+4,
                            0x1.a122560d76df9p-3,
                            0x1.ea3cc921de7e4p-1,
                            0x1.e375407524c11p-5,
                            -0x1.d62395781e679p-1,
                            -0x1.006608909f1fcp+0,
                            -0x1.f7a9c3b83a24cp-5,
                            0x1.56df61f3b03fap-1,
                            -0x1.89eb6bc6444dep-2,
                            -0x1.6416ba8b20eb5p+0,
                            -0x1.137d69d5038d2p+0,
                            -0x1.cbc0b667feee9p-4,
                            0x1.a0373307c4d38p-4,
                            0x1.4p+4,
                            0x0p+0,
                            0x1.82699f78fa433p-4,
                            0x1.ce312ea387996p-2,
                            0x1.b7397ae240f99p-4,
                            -0x1.bb79b27e53fa7p-2,
                            -0x1.bff7e152aca1dp-2,
                            0x1.744ef86709b6p-4,
                            0x1.7e45f9992d75bp-2,
                            -0x1.0d037cc40ed92p-4,
                            -0x1.2976c27d8f7bap-1,
                            -0x1.bfb0bde8bb696p-2,
                            0x1.b5b6f5f0598dap-4,
                            0x1.f52920c5dc147p-3,
                            0x1.4p+4,
                            0x1.95a6970973a1fp-4,
                            0x1.e377e20aa8a44p-2,
                            0x1.b822ed650a3a4p-4,
                            -0x1.d2e82e114e9acp-2,
                            -0x1.da36e2090f3c6p-2,
                            0x1.675cd48d3e19p-4,
                            0x1.8ca0c70b150a9p-2,
                            -0x1.399e371b5551ap-4,
                            -0x1.3c6a27bdeb221p-1,
                            -0x1.dc89c628f559ap-2,
                            0x1.a19152edc775ep-4,
                            0x1.f4448ac6cb462p-3,
                            0x1.95a6970973a1fp-4,
                            0x1.e377e20aa8a44p-2,
                            0x1.b822ed650a3a4p-4,
                            -0x1.d2e82e114e9acp-2,
                            -0x1.da36e2090f3c6p-2,
                            0x1.675cd48d3e19p-4,
                            0x1.8ca0c70b150a9p-2,
                            -0x1.399e371b5551ap-4,
                            -0x1.3c6a27bdeb221p-1,
                            -0x1.dc89c628f559ap-2,
                            0x1.a19152edc775ep-4,
                            0x1.f4448ac6cb462p-3,
                            0x1.7426e714946aep-3,
                            0x1.b26aa766e555ep-1,
                            0x1.71e84f643da2bp-4,
                            -0x1.ac412e23c268p-1,
                            -0x1.cb9cff706c79p-1,
                            0x1.c997f52b0dep-11,
                            0x1.3f455afe3903cp-1,
                            -0x1.2d2a3c9b7a9d3p-2,
                            -0x1.3e07e2b7e37cap+0,
                            -0x1.e6d136d39815bp-1,
                            -0x1.ad1c48fa3d618p-6,
                            0x1.7942f03c0e34ep-3,
                            0x1.81c0337c5ff2bp-3,
                            0x1.ca495de759865p-1,
                            0x1.d7cc0db5cb9eep-8,
                            -0x1.a77822518b3a3p-1,
                            -0x1.d685242acb66dp-1,
                            -0x1.0269af1c999b4p-3,
                            0x1.2bc04e4b3766ep-1,
                            -0x1.a8ac20370deaap-2,
                            -0x1.47cd559632732p+0,
                            -0x1.00c297587d9bp+0,
                            -0x1.9015f1eddc3c7p-3,
                            -0x1.8a694e40417cp-6,
                            0x1.95a4ce5046107p-4,
                            0x1.e375854b6d1c8p-2,
                            0x1.b822567a7b675p-4,
                            -0x1.d2e66c3d11256p-2,
                            -0x1.da34eda2f72e2p-2,
                            0x1.675d56fc1c4dcp-4,
                            0x1.8c9f1dad252bcp-2,
                            -0x1.399ad65aee7eap-4,
                            -0x1.3c68cb8761dfp-1,
                            -0x1.dc87a0b3209f7p-2,
                            0x1.a192525b10071p-4,
                            0x1.f443fb898e9f8p-3,
                            0x1.95a4ce5046107p-4,
                            0x1.e375854b6d1c8p-2,
                            0x1.b822567a7b675p-4,
                            -0x1.d2e66c3d11256p-2,
                            -0x1.da34eda2f72e2p-2,
                            0x1.675d56fc1c4dcp-4,
                            0x1.8c9f1dad252bcp-2,
                            -0x1.399ad65aee7eap-4,
                            -0x1.3c68cb8761dfp-1,
                            -0x1.dc87a0b3209f7p-2,
                            0x1.a192525b10071p-4,
                            0x1.f443fb898e9f8p-3,
                            0x1.7424c761bc938p-3,
                            0x1.b2679c9cb399bp-1,
                            0x1.71e7a46c56944p-4,
                            -0x1.ac3f51dbc81bep-1,
                            -0x1.cb9aea208869fp-1,
                            0x1.cabcaecababap-11,
                            0x1.3f4358666cdb8p-1,
                            -0x1.2d281928130adp-2,
                            -0x1.3e067982dbb63p+0,
                            -0x1.e6cee9d7e54bfp-1,
                            -0x1.ad0cf2f296af4p-6,
                            0x1.7942a35384a96p-3,
                            0x1.81bdba399e69fp-3,
                            0x1.ca4600c7f3055p-1,
                            0x1.d7ce0789d881cp-8,
                            -0x1.a775f5ea9d1eap-1,
                            -0x1.d682ad68ee5adp-1,
                            -0x1.0267ac98302fep-3,
                            0x1.2bbe22179bc28p-1,
                            -0x1.a8a951c400a5ep-2,
                            -0x1.47cbaac301217p+0,
                            -0x1.00c137b53794dp+0,
                            -0x1.9012cc9f0761fp-3,
                            -0x1.8a626fc2f4be2p-6};
const double kSolversF[] = {
    0x1.a3bfa8p-3,  0x1.e8676p-1,   0x1.27e106p-4,  -0x1.e0e192p-1, -0x1.05431cp+0, -0x1.61b9cap-5,
    0x1.5c0a6ap-1,  -0x1.7dfaeep-2, -0x1.6badf8p+0, -0x1.17ca54p+0, -0x1.696dc8p-4, 0x1.139ea6p-3,
    0x1.cp+2,       0x0p+0,         0x1.920886p-4,  0x1.d7793p-2,   0x1.e882a6p-4,  -0x1.e0acdep-2,
    -0x1.e4d8a2p-2, 0x1.b1769ep-4,  0x1.8eccb4p-2,  -0x1.f07c5p-5,  -0x1.46b446p-1, -0x1.e3cdf4p-2,
    0x1.022ab6p-3,  0x1.17e17p-2,   0x1.cp+2,       0x1.9d4aap-3,   0x1.e558cp-1,   0x1.e486d6p-5,
    -0x1.d235e2p-1, -0x1.fc623ap-1, -0x1.ead98ep-5, 0x1.53cf3p-1,   -0x1.857f38p-2, -0x1.610518p+0,
    -0x1.110e7cp+0, -0x1.c20cep-4,  0x1.a36cc8p-4,  0x1.cp+3,       0x0p+0,         0x1.8076c4p-4,
    0x1.cc093cp-2,  0x1.b68f02p-4,  -0x1.b8fb96p-2, -0x1.bd37bcp-2, 0x1.74ca04p-4,  0x1.7cb474p-2,
    -0x1.092c2p-4,  -0x1.2770a6p-1, -0x1.bcb3b2p-2, 0x1.b6aabep-4,  0x1.f48b8cp-3,  0x1.cp+3,
    0x1.a11f14p-3,  0x1.ea396ep-1,  0x1.e37452p-5,  -0x1.d61f08p-1, -0x1.00637p+0,  -0x1.f7a012p-5,
    0x1.56dcf8p-1,  -0x1.89e72ep-2, -0x1.6412bep+0, -0x1.137a8p+0,  -0x1.cbb8a6p-4, 0x1.a03918p-4,
    0x1.cp+4,       0x0p+0,         0x1.8267ap-4,   0x1.ce2fcap-2,  0x1.b73938p-4,  -0x1.bb7538p-2,
    -0x1.bff2bap-2, 0x1.74507p-4,   0x1.7e44d6p-2,  -0x1.0cfd12p-4, -0x1.29726ep-1, -0x1.bfaae4p-2,
    0x1.b5b97ep-4,  0x1.f5295cp-3,  0x1.cp+4,       0x1.a1202ep-3,  0x1.ea3afep-1,  0x1.e3732ap-5,
    -0x1.d62012p-1, -0x1.006408p+0, -0x1.f7a53cp-5, 0x1.56dde6p-1,  -0x1.89e896p-2, -0x1.64139cp+0,
    -0x1.137b2ep+0, -0x1.cbbc82p-4, 0x1.a036c4p-4,  0x1.6p+5,       0x1p+0,         0x1.82686ap-4,
    0x1.ce30c6p-2,  0x1.b7393cp-4,  -0x1.bb761cp-2, -0x1.bff3b6p-2, 0x1.744fdp-4,   0x1.7e4582p-2,
    -0x1.0cfefcp-4, -0x1.29733p-1,  -0x1.bfac06p-2, 0x1.b5b884p-4,  0x1.f5294p-3,   0x1.9p+5,
    0x1.a120ccp-3,  0x1.ea3bbap-1,  0x1.e3736ap-5,  -0x1.d620bap-1, -0x1.006466p+0, -0x1.f7a702p-5,
    0x1.56de6cp-1,  -0x1.89e95ap-2, -0x1.641422p+0, -0x1.137b96p+0, -0x1.cbbe0ep-4, 0x1.a0367cp-4,
    0x1.9p+4,       0x0p+0,         0x1.8268aap-4,  0x1.ce30fp-2,   0x1.b73922p-4,  -0x1.bb7694p-2,
    -0x1.bff442p-2, 0x1.744f6p-4,   0x1.7e45a2p-2,  -0x1.0d000ep-4, -0x1.29739ep-1, -0x1.bfaca6p-2,
    0x1.b5b7dp-4,   0x1.f52902p-3,  0x1.fp+4,       0x1.a12258p-3,  0x1.ea3cc8p-1,  0x1.e37544p-5,
    -0x1.d62398p-1, -0x1.006608p+0, -0x1.f7a9c2p-5, 0x1.56df6p-1,   -0x1.89eb6cp-2, -0x1.6416bap+0,
    -0x1.137d6ap+0, -0x1.cbc0bap-4, 0x1.a03732p-4,  0x1.4p+4,       0x0p+0,         0x1.8269a2p-4,
    0x1.ce312ep-2,  0x1.b7397cp-4,  -0x1.bb79b6p-2, -0x1.bff7ep-2,  0x1.744efap-4,  0x1.7e45f8p-2,
    -0x1.0d037ep-4, -0x1.2976cp-1,  -0x1.bfb0bep-2, 0x1.b5b6f4p-4,  0x1.f5292p-3,   0x1.4p+4,
    0x1.95a698p-4,  0x1.e377ep-2,   0x1.b822fp-4,   -0x1.d2e82ep-2, -0x1.da36e2p-2, 0x1.675cd6p-4,
    0x1.8ca0c6p-2,  -0x1.399e38p-4, -0x1.3c6a28p-1, -0x1.dc89c6p-2, 0x1.a19152p-4,  0x1.f44488p-3,
    0x1.95a698p-4,  0x1.e377ep-2,   0x1.b822fp-4,   -0x1.d2e82ep-2, -0x1.da36e2p-2, 0x1.675cd6p-4,
    0x1.8ca0c6p-2,  -0x1.399e38p-4, -0x1.3c6a28p-1, -0x1.dc89c6p-2, 0x1.a19152p-4,  0x1.f44488p-3,
    0x1.7426e8p-3,  0x1.b26aa4p-1,  0x1.71e852p-4,  -0x1.ac412cp-1, -0x1.cb9cfep-1, 0x1.c999a6p-11,
    0x1.3f455ap-1,  -0x1.2d2a3ep-2, -0x1.3e07e2p+0, -0x1.e6d138p-1, -0x1.ad1c52p-6, 0x1.7942eep-3,
    0x1.81c034p-3,  0x1.ca495ap-1,  0x1.d7cc2ep-8,  -0x1.a7782p-1,  -0x1.d68524p-1, -0x1.0269aep-3,
    0x1.2bc04ep-1,  -0x1.a8ac2p-2,  -0x1.47cd54p+0, -0x1.00c298p+0, -0x1.9015f2p-3, -0x1.8a695ep-6,
    0x1.95a4cep-4,  0x1.e37584p-2,  0x1.b82258p-4,  -0x1.d2e66ep-2, -0x1.da34ecp-2, 0x1.675d58p-4,
    0x1.8c9f1cp-2,  -0x1.399ad6p-4, -0x1.3c68ccp-1, -0x1.dc87ap-2,  0x1.a19252p-4,  0x1.f443fap-3,
    0x1.95a4cep-4,  0x1.e37584p-2,  0x1.b82258p-4,  -0x1.d2e66ep-2, -0x1.da34ecp-2, 0x1.675d58p-4,
    0x1.8c9f1cp-2,  -0x1.399ad6p-4, -0x1.3c68ccp-1, -0x1.dc87ap-2,  0x1.a19252p-4,  0x1.f443fap-3,
    0x1.7424c8p-3,  0x1.b2679cp-1,  0x1.71e7a6p-4,  -0x1.ac3f54p-1, -0x1.cb9aeap-1, 0x1.cabce2p-11,
    0x1.3f4358p-1,  -0x1.2d281ap-2, -0x1.3e067cp+0, -0x1.e6ceecp-1, -0x1.ad0cfep-6, 0x1.7942ap-3,
    0x1.81bdbap-3,  0x1.ca46p-1,    0x1.d7ce2p-8,   -0x1.a775f6p-1, -0x1.d682acp-1, -0x1.0267acp-3,
    0x1.2bbe24p-1,  -0x1.a8a952p-2, -0x1.47cbacp+0, -0x1.00c13ap+0, -0x1.9012cep-3, -0x1.8a628cp-6};
const double kFlowsD[] = {
    -0x1.f804c1f0cb84p-4,  -0x1.31f4bad8eddb3p+2, -0x1.610c007fb7293p+2, -0x1.113ee79075a87p+5,
    -0x1.0fced05b16b48p+2, -0x1.1d81bed4d06c5p-1, 0x1.ef72fc30b1561p-3,  0x1.b5350b93b94c9p+0,
    -0x1.eea31322a4dd8p-2, 0x1.485a7545dfe56p-1,  0x1.10180bafb122ap-4,  0x1.bfc308e8d3d55p+2,
    -0x1.119e5dc4780c6p+2, 0x1.b0633af05fc59p-2,  0x1.984eda3665d9cp-3,  0x1p+7,
    0x1.d60ece27ead4p-5,   -0x1.8d234c75849e6p+2, -0x1.28df2cbf9e233p+3, -0x1.10ff179724739p+5,
    -0x1.95d66674de114p+1, -0x1.1d81c4846884p-1,  0x1.ef7301b903c5p-3,   0x1.b5350984a03acp+0,
    -0x1.eea30e9db70bep-2, 0x1.485a74b94fb16p-1,  0x1.10180c51a0f27p-4,  0x1.bfc2c4ccfee1dp+2,
    -0x1.119e44878d57dp+2, 0x1.b0633a8f0a2fap-2,  0x1.984eda7f233d3p-3,  0x1.0cp+7,
    0x1.58d6fc8f2cc7p-1,   -0x1.9f6b863cdcd98p-1, -0x1.77eb357924f27p+2, -0x1.10aeaefeacad8p+5,
    -0x1.2398d25ad5f64p+1, -0x1.1d81b9679746ap-1, 0x1.ef72fbde6ed6fp-3,  0x1.b5350a400fc26p+0,
    -0x1.eea30e5f8ca2ap-2, 0x1.485a750e14159p-1,  0x1.1017fefc5fc3cp-4,  0x1.bfc2f5bcb0ddp+2,
    -0x1.119e62c102becp+2, 0x1.b0633cc72acbfp-2,  0x1.984eda1292bcap-3,  0x1p+7,
    -0x1.77312831946fp-3,  -0x1.8d0c10ca1ae1cp+2, -0x1.ae9cddd45977p+2,  -0x1.117d76e4f495bp+5,
    -0x1.f194e5bd67494p+1, -0x1.1d830b3a58ec2p-1, 0x1.ef749eb632a29p-3,  0x1.b52fd0e9b2ad5p+0,
    -0x1.eee03f5c7b81cp-2, 0x1.485de32c3f1ddp-1,  0x1.0e8cca154ed8bp-4,  0x1.bfc2036983304p+2,
    -0x1.119e2000467bfp+2, 0x1.b077765f77752p-2,  0x1.97a4f9667307ap-3,  0x1.6p+5,
    0x1.6eb6452776df7p+0,  0x1.3c988c6c1da04p+0,  0x1.bf2a44530a7f6p+0,  0x1.fc613bac76612p-1,
    -0x1.88545071bbf88p-1, 0x1.c1b3f5208550fp-5,  -0x1.e3f7eed8daaa9p-1, 0x1.4c34dd5d54087p-2,
    0x1.6e7a3172ab658p+0,  0x1.3d881a90329c9p+0,  0x1.c03194ac44a34p+0,  0x1.fc8f1593e483ep-1,
    -0x1.86d2729149078p-1, 0x1.98b8cb7f2ae88p-5,  -0x1.e41622129a9ddp-1, 0x1.4b4225b8481d6p-2,
    -0x1.f804c1f0cb82p-4,  -0x1.31f4bad8eddb4p+2, -0x1.610c007fb7293p+2, -0x1.113ee79075a85p+5,
    -0x1.0fced05b16b47p+2, -0x1.1d81bed4d06c1p-1, 0x1.ef72fc30b156p-3,   0x1.b5350b93b94cbp+0,
    -0x1.eea31322a4dd5p-2, 0x1.485a7545dfe59p-1,  0x1.10180bafb1222p-4,  0x1.bfc308e8d3d52p+2,
    -0x1.119e5dc4780c6p+2, 0x1.b0633af05fc5cp-2,  0x1.984eda3665d9bp-3,  0x1p+7,
    0x1.d60ece27eadcp-5,   -0x1.8d234c75849e8p+2, -0x1.28df2cbf9e234p+3, -0x1.10ff17972473ep+5,
    -0x1.95d66674de115p+1, -0x1.1d81c4846883dp-1, 0x1.ef7301b903c47p-3,  0x1.b5350984a03adp+0,
    -0x1.eea30e9db70cp-2,  0x1.485a74b94fb13p-1,  0x1.10180c51a0f34p-4,  0x1.bfc2c4ccfee21p+2,
    -0x1.119e44878d581p+2, 0x1.b0633a8f0a2fap-2,  0x1.984eda7f233d1p-3,  0x1.0cp+7,
    0x1.58d6fc8f2cc74p-1,  -0x1.9f6b863cdcd9p-1,  -0x1.77eb357924f28p+2, -0x1.10aeaefeacadbp+5,
    -0x1.2398d25ad5f65p+1, -0x1.1d81b9679746dp-1, 0x1.ef72fbde6ed65p-3,  0x1.b5350a400fc22p+0,
    -0x1.eea30e5f8ca24p-2, 0x1.485a750e1415ap-1,  0x1.1017fefc5fc34p-4,  0x1.bfc2f5bcb0dd3p+2,
    -0x1.119e62c102becp+2, 0x1.b0633cc72accp-2,   0x1.984eda1292bcbp-3,  0x1p+7,
    -0x1.77312831947p-3,   -0x1.8d0c10ca1ae1bp+2, -0x1.ae9cddd45976ep+2, -0x1.117d76e4f495cp+5,
    -0x1.f194e5bd67493p+1, -0x1.1d830b3a58ec6p-1, 0x1.ef749eb632a29p-3,  0x1.b52fd0e9b2ad5p+0,
    -0x1.eee03f5c7b81ep-2, 0x1.485de32c3f1ep-1,   0x1.0e8cca154ed84p-4,  0x1.bfc2036983305p+2,
    -0x1.119e2000467bfp+2, 0x1.b077765f77752p-2,  0x1.97a4f96673074p-3,  0x1.6p+5,
    0x1.6eb6452776df6p+0,  0x1.3c988c6c1da03p+0,  0x1.bf2a44530a7f6p+0,  0x1.fc613bac76612p-1,
    -0x1.88545071bbf89p-1, 0x1.c1b3f52085514p-5,  -0x1.e3f7eed8daaa9p-1, 0x1.4c34dd5d54089p-2,
    0x1.6e7a3172ab65ap+0,  0x1.3d881a90329c9p+0,  0x1.c03194ac44a35p+0,  0x1.fc8f1593e484p-1,
    -0x1.86d272914907cp-1, 0x1.98b8cb7f2ae93p-5,  -0x1.e41622129a9dep-1, 0x1.4b4225b8481d7p-2};
const double kFlowsF[] = {
    -0x1.f804b6p-4, -0x1.31f4bcp+2, -0x1.610cp+2,   -0x1.113ee6p+5, -0x1.0fcecep+2, -0x1.1d81bap-1,
    0x1.ef72fap-3,  0x1.b5350cp+0,  -0x1.eea314p-2, 0x1.485a76p-1,  0x1.101808p-4,  0x1.bfc308p+2,
    -0x1.119e5ep+2, 0x1.b0633ap-2,  0x1.984edap-3,  0x1p+7,         0x1.d60ec2p-5,  -0x1.8d234ap+2,
    -0x1.28df2cp+3, -0x1.10ff18p+5, -0x1.95d664p+1, -0x1.1d81c2p-1, 0x1.ef7302p-3,  0x1.b53506p+0,
    -0x1.eea31p-2,  0x1.485a72p-1,  0x1.10181ap-4,  0x1.bfc2c4p+2,  -0x1.119e46p+2, 0x1.b0633cp-2,
    0x1.984ed6p-3,  0x1.0cp+7,      0x1.58d70ap-1,  -0x1.9f6b76p-1, -0x1.77eb34p+2, -0x1.10aeaep+5,
    -0x1.2398d2p+1, -0x1.1d81b8p-1, 0x1.ef72fep-3,  0x1.b53502p+0,  -0x1.eea306p-2, 0x1.485a76p-1,
    0x1.1018p-4,    0x1.bfc2f6p+2,  -0x1.119e6p+2,  0x1.b0633ap-2,  0x1.984edcp-3,  0x1p+7,
    -0x1.77312p-3,  -0x1.8d0c14p+2, -0x1.ae9cep+2,  -0x1.117d76p+5, -0x1.f194e4p+1, -0x1.1d830ap-1,
    0x1.ef74a4p-3,  0x1.b52fd4p+0,  -0x1.eee042p-2, 0x1.485de4p-1,  0x1.0e8ccp-4,   0x1.bfc202p+2,
    -0x1.119e22p+2, 0x1.b07776p-2,  0x1.97a4f8p-3,  0x1.6p+5,       0x1.6eb646p+0,  0x1.3c988cp+0,
    0x1.bf2a44p+0,  0x1.fc613cp-1,  -0x1.88545p-1,  0x1.c1b3e8p-5,  -0x1.e3f7ecp-1, 0x1.4c34dep-2,
    0x1.6e7a3p+0,   0x1.3d881cp+0,  0x1.c03194p+0,  0x1.fc8f16p-1,  -0x1.86d274p-1, 0x1.98b8dap-5,
    -0x1.e41622p-1, 0x1.4b4226p-2,  -0x1.f80496p-4, -0x1.31f4bcp+2, -0x1.610c02p+2, -0x1.113ee6p+5,
    -0x1.0fcedp+2,  -0x1.1d81cp-1,  0x1.ef7304p-3,  0x1.b5350cp+0,  -0x1.eea314p-2, 0x1.485a74p-1,
    0x1.10181p-4,   0x1.bfc306p+2,  -0x1.119e5ep+2, 0x1.b0633ep-2,  0x1.984edap-3,  0x1p+7,
    0x1.d60e24p-5,  -0x1.8d234ep+2, -0x1.28df2ep+3, -0x1.10ff1cp+5, -0x1.95d666p+1, -0x1.1d81c4p-1,
    0x1.ef731p-3,   0x1.b53508p+0,  -0x1.eea31p-2,  0x1.485a72p-1,  0x1.10181ep-4,  0x1.bfc2c8p+2,
    -0x1.119e46p+2, 0x1.b0633cp-2,  0x1.984edap-3,  0x1.0cp+7,      0x1.58d6fcp-1,  -0x1.9f6b7ep-1,
    -0x1.77eb36p+2, -0x1.10aebp+5,  -0x1.2398dp+1,  -0x1.1d81b6p-1, 0x1.ef72eep-3,  0x1.b53504p+0,
    -0x1.eea308p-2, 0x1.485a74p-1,  0x1.10180ap-4,  0x1.bfc2f8p+2,  -0x1.119e62p+2, 0x1.b0633ap-2,
    0x1.984ed6p-3,  0x1p+7,         -0x1.77311p-3,  -0x1.8d0c12p+2, -0x1.ae9cep+2,  -0x1.117d74p+5,
    -0x1.f194e4p+1, -0x1.1d830ap-1, 0x1.ef74a4p-3,  0x1.b52fd2p+0,  -0x1.eee042p-2, 0x1.485de4p-1,
    0x1.0e8ccp-4,   0x1.bfc2p+2,    -0x1.119e2p+2,  0x1.b07778p-2,  0x1.97a4fap-3,  0x1.6p+5,
    0x1.6eb646p+0,  0x1.3c988cp+0,  0x1.bf2a46p+0,  0x1.fc613cp-1,  -0x1.88545p-1,  0x1.c1b3fp-5,
    -0x1.e3f7fp-1,  0x1.4c34dep-2,  0x1.6e7a3p+0,   0x1.3d881cp+0,  0x1.c03194p+0,  0x1.fc8f16p-1,
    -0x1.86d272p-1, 0x1.98b8cap-5,  -0x1.e41622p-1, 0x1.4b4226p-2};
}  // namespace

TEST_CASE("ode: the solvers on backend primitives give the bits of the host loops", "[ode]") {
  std::vector<double> host_d;
  std::vector<float> host_f;
  ode::Work<double> work_d;
  ode::Work<float> work_f;
  const std::vector<double> d = solvers<double>(host_d), f = solvers<float>(host_f);
  REQUIRE(solvers<double>(work_d) == d);  // host vector or backend buffer: one computation
  REQUIRE(solvers<float>(work_f) == f);
  if (kRecordedBitsApply) {
    require_bits(d, kSolversD);
    require_bits(f, kSolversF);
  }
  // The stages live in the work's backend buffer: 9 n B values after a Dopri5 solve.
  REQUIRE(work_d.stages.size() == 9 * 12);
}

TEST_CASE("ode: likelihoods and samples on backend primitives give the bits of the host loops",
          "[ode]") {
  const std::vector<double> d = flows<double>(), f = flows<float>();
  REQUIRE(flows<double>() == d);  // a second run with fresh workspaces: the same bits
  REQUIRE(flows<float>() == f);
  if (kRecordedBitsApply) {
    require_bits(d, kFlowsD);
    require_bits(f, kFlowsF);
  }
}

TEST_CASE("ode: one context runs a solve; a non-finite state names the time and the element",
          "[ode][error]") {
  // The mixture field's workspace has no context: the ODE workspace holds one, and lends.
  using Gmm = flowprior::analytic::GaussianMixtureField<double>;
  ode::OdeWorkspace<Gmm> gws;
  B::Context mine;
  REQUIRE(&gws.context() != &mine);
  gws.set_context(&mine);
  REQUIRE(&gws.context() == &mine);
  gws.set_context(nullptr);
  REQUIRE(&gws.context() != &mine);
  // A network's workspace has one: the ODE workspace uses it, and lends to it.
  using Net = flowprior::nn::MlpField<double>;
  ode::OdeWorkspace<Net> nws;
  REQUIRE(&nws.context() == &nws.prior.field.context());
  nws.set_context(&mine);
  REQUIRE(&nws.prior.field.context() == &mine);
  nws.set_context(nullptr);
  REQUIRE(&nws.prior.field.context() != &mine);
  // Work: its own context, or a lent one.
  ode::Work<double> work;
  REQUIRE(&work.context() != &mine);
  work.set_context(&mine);
  REQUIRE(&work.context() == &mine);
  // Column 2 of the state overflows in row 1 at the second of four Euler steps over [0, 1].
  std::vector<double> z = {0.1, 0.2, 0.3, 0.4, 0.5, 1.0};
  auto blowup = [](double, ConstMatrixView<double> s, MatrixView<double> ds) {
    for (Index j = 0; j < s.cols; ++j)
      for (Index i = 0; i < s.rows; ++i) ds(i, j) = (i == 1 && j == 2) ? s(i, j) * 1e200 : 0.0;
  };
  ode::SolverOptions euler;
  euler.method = ode::Method::Euler;
  euler.steps = 4;
  REQUIRE_THROWS_WITH(
      ode::integrate<double>(blowup, 0.0, 1.0, MatrixView<double>(z.data(), 2, 3), euler, work),
      Catch::Contains("t = 0.5") && Catch::Contains("element (1, 2)"));
  // A non-finite input of the likelihood: the argument, the position and the value.
  Gmm field(fpt::three_modes());
  const flowprior::Prior<Gmm> prior(field, flowprior::Convention::Paper);
  std::vector<double> x(6, 0.0), lp(3);
  x[5] = -std::numeric_limits<double>::infinity();
  REQUIRE_THROWS_WITH(
      ode::log_likelihood(prior, flowprior::Convention::Paper,
                          ConstMatrixView<double>(x.data(), 2, 3), VectorView<double>(lp.data(), 3),
                          ode::LikelihoodOptions{}, gws),
      Catch::Contains("'x'") && Catch::Contains("-inf") && Catch::Contains("(1, 2)"));
}
