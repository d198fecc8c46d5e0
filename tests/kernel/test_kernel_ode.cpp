// The ODE primitives of KernelBackend (backend/kernel_ode.hpp) on the host executor against
// CpuBackend: the stage combinations (aliased in place, seven terms, none), the error norm and
// the starting-step norms over more than one 1024-element chunk, the non-finite scan (the NaN
// padding of the operands must never be reported), Hutchinson's dot products and the normal
// log-density into rows of matrices. Then the whole ODE path, ode::sample and
// ode::log_likelihood, on a field whose backend is HostKernelBackend against the same field on
// CpuBackend.
#include <cmath>
#include <flowprior/core/random.hpp>
#include <flowprior/ode/flow_ode.hpp>
#include <limits>
#include <vector>

#include "catch.hpp"
#include "kernel_parity.hpp"

using flowprior::ConstMatrixView;
using flowprior::ConstVectorView;
using flowprior::Convention;
using flowprior::Index;
using flowprior::MatrixView;
using flowprior::NonFinite;
using flowprior::StageTerms;
using flowprior::VectorView;
using fpt::kp::Contexts;
using fpt::kp::Cpu;
using fpt::kp::Ker;
using fpt::kp::Mat;
using fpt::kp::require_close;
namespace ode = flowprior::ode;

namespace {

// Seven random stages of one shape, each with its own padding.
template <class S>
struct Stages {
  std::vector<Mat<S>> k;
  Stages(Index rows, Index cols, flowprior::Rng& rng) {
    for (Index t = 0; t < StageTerms<S>::kMax; ++t) {
      k.emplace_back(rows, cols, 1 + t % 3);
      k.back().random(rng);
    }
  }
  StageTerms<S> terms(int count) const {
    const double coef[] = {0.35, -1.2, 0.8, 2.5, -0.05, 0.6, -0.9};
    StageTerms<S> t;
    for (int i = 0; i < count; ++i) t.add(coef[i], k[std::size_t(i)].cview());
    return t;
  }
};

}  // namespace

TEMPLATE_TEST_CASE("kernel backend: stage combinations and error norms match the CPU",
                   "[kernel][ode]", float, double) {
  using S = TestType;
  flowprior::Rng rng(31);
  Contexts c;
  const Index rows = 5, cols = 7;
  Stages<S> st(rows, cols, rng);
  Mat<S> z(rows, cols, 2);
  z.random(rng);
  const double h = 0.125;

  for (const int count : {0, 1, 3, 7}) {
    CAPTURE(count);
    const StageTerms<S> terms = st.terms(count);
    Mat<S> oc(rows, cols, 3), ok(rows, cols, 1);
    Cpu::lincomb(c.cpu, z.cview(), h, terms, oc.view());
    Ker::lincomb(c.ker, z.cview(), h, terms, ok.view());
    require_close(oc, ok, "lincomb");
    if (count == 0) require_close(z, ok, "lincomb without terms copies z", 0.0, 0.0);
  }
  // In place: out aliases z, then out aliases the first stage.
  {
    const StageTerms<S> terms = st.terms(4);
    Mat<S> zc = z, zk = z;
    Cpu::lincomb(c.cpu, zc.cview(), h, terms, zc.view());
    Ker::lincomb(c.ker, zk.cview(), h, terms, zk.view());
    require_close(zc, zk, "lincomb out = z");
    Stages<S> sc = st, sk = st;
    Cpu::lincomb(c.cpu, z.cview(), -h, sc.terms(4), sc.k[0].view());
    Ker::lincomb(c.ker, z.cview(), -h, sk.terms(4), sk.k[0].view());
    require_close(sc.k[0], sk.k[0], "lincomb out = k_1");
  }
  // Empty: nothing written.
  Ker::lincomb(c.ker, ConstMatrixView<S>(nullptr, rows, 0), h, StageTerms<S>(),
               MatrixView<S>(nullptr, rows, 0));

  // The error norm and the starting-step norms over three chunks (37 x 60 = 2220 elements).
  const Index R = 37, C = 60;
  Stages<S> big(R, C, rng);
  Mat<S> y0(R, C, 1), y1(R, C, 2), a(R, C, 3), b(R, C, 1);
  y0.random(rng);
  y1.random(rng);
  a.random(rng);
  b.random(rng);
  for (const int count : {1, 6}) {
    const StageTerms<S> terms = big.terms(count);
    const double ec = Cpu::error_sq_sum(c.cpu, y0.cview(), y1.cview(), 0.3, terms, 1e-3, 1e-2);
    const double ek = Ker::error_sq_sum(c.ker, y0.cview(), y1.cview(), 0.3, terms, 1e-3, 1e-2);
    REQUIRE(ek > 0);
    require_close(ec, ek, "error_sq_sum", 1e-13);  // in double: only the grouping differs
  }
  {
    const double nc =
        Cpu::template scaled_sq_sum<S>(c.cpu, y0.cview(), a.cview(), b.cview(), 1e-3, 1e-2);
    const double nk =
        Ker::template scaled_sq_sum<S>(c.ker, y0.cview(), a.cview(), b.cview(), 1e-3, 1e-2);
    REQUIRE(nk > 0);
    require_close(nc, nk, "scaled_sq_sum (a - b)", 1e-13);
    const ConstMatrixView<S> none;
    const double mc =
        Cpu::template scaled_sq_sum<S>(c.cpu, y0.cview(), a.cview(), none, 1e-3, 1e-2);
    const double mk =
        Ker::template scaled_sq_sum<S>(c.ker, y0.cview(), a.cview(), none, 1e-3, 1e-2);
    require_close(mc, mk, "scaled_sq_sum (a)", 1e-13);
    REQUIRE(mk != nk);
  }
  // A small state (one chunk) is summed in the CPU's order: the same bits.
  {
    const StageTerms<S> terms = st.terms(6);
    REQUIRE(Ker::error_sq_sum(c.ker, z.cview(), z.cview(), h, terms, 1e-4, 1e-3) ==
            Cpu::error_sq_sum(c.cpu, z.cview(), z.cview(), h, terms, 1e-4, 1e-3));
  }
  // A NaN stage element makes the norm NaN; an empty state sums to 0.
  {
    Stages<S> bad = big;
    bad.k[1].at(20, 50) = std::numeric_limits<S>::quiet_NaN();
    REQUIRE(std::isnan(
        Ker::error_sq_sum(c.ker, y0.cview(), y1.cview(), 0.3, bad.terms(3), 1e-3, 1e-2)));
    const ConstMatrixView<S> e(nullptr, 3, 0);
    REQUIRE(Ker::error_sq_sum(c.ker, e, e, 0.3, StageTerms<S>{{1.0, e}}, 1e-3, 1e-2) == 0.0);
    REQUIRE(Ker::template scaled_sq_sum<S>(c.ker, e, e, e, 1e-3, 1e-2) == 0.0);
  }
}

TEMPLATE_TEST_CASE("kernel backend: the non-finite scan, probe dots and log-densities",
                   "[kernel][ode]", float, double) {
  using S = TestType;
  flowprior::Rng rng(32);
  Contexts c;
  const S nan = std::numeric_limits<S>::quiet_NaN(), inf = std::numeric_limits<S>::infinity();

  // The scan: the padding holds NaN and must not count; positions in column-major order.
  Mat<S> A(37, 60, 3);
  A.random(rng);
  auto same = [&](const char* what) {
    const NonFinite rc = Cpu::find_nonfinite(c.cpu, A.cview());
    const NonFinite rk = Ker::find_nonfinite(c.ker, A.cview());
    INFO(what);
    REQUIRE(rk.i == rc.i);
    REQUIRE(rk.j == rc.j);
    REQUIRE(rk.found() == rc.found());
    if (rc.found() && std::isnan(rc.value))
      REQUIRE(std::isnan(rk.value));
    else
      REQUIRE(rk.value == rc.value);
    return rk;
  };
  REQUIRE(!same("all finite").found());
  A.at(36, 0) = std::numeric_limits<S>::max();  // finite
  REQUIRE(!same("max is finite").found());
  A.at(4, 50) = nan;  // element 1854: the second chunk
  NonFinite r = same("one NaN");
  REQUIRE((r.i == 4 && r.j == 50 && std::isnan(r.value)));
  A.at(30, 50) = -inf;  // later in the same column: the NaN stays first
  REQUIRE(same("NaN then -Inf").i == 4);
  A.at(36, 27) = -inf;  // the last row of an earlier column: element 1035
  r = same("-Inf first");
  REQUIRE((r.i == 36 && r.j == 27 && r.value == -double(std::numeric_limits<S>::infinity())));
  A.at(0, 2) = inf;
  r = same("+Inf in the first chunk");
  REQUIRE((r.i == 0 && r.j == 2 && r.value == double(inf)));
  REQUIRE(!Ker::find_nonfinite(c.ker, ConstMatrixView<S>(nullptr, 0, 4)).found());
  REQUIRE(!Ker::find_nonfinite(c.ker, ConstMatrixView<S>(nullptr, 4, 0)).found());
  // A row block of the augmented state (ld > rows): the row below it is not scanned.
  Mat<S> st(4, 6, 1);
  st.random(rng);
  st.at(3, 2) = inf;
  REQUIRE(!Ker::find_nonfinite(c.ker, st.cview().row_block(0, 3)).found());
  r = Ker::find_nonfinite(c.ker, st.cview().row_block(1, 3));
  REQUIRE((r.i == 2 && r.j == 2));

  // Hutchinson's dots into the last row of a (d + 1) x B state, K = 1 and 3.
  const Index d = 4, B = 5;
  for (const Index K : {Index(1), Index(3)}) {
    CAPTURE(K);
    Mat<S> eps(d, B * K, 1), jv(d, B * K, 2);
    eps.random(rng);
    jv.random(rng);
    Mat<S> sc(d + 1, B, 2);
    sc.random(rng);
    Mat<S> sk = sc;
    Cpu::probe_dots(c.cpu, eps.cview(), jv.cview(), K, sc.view().row_block(d, 1));
    Ker::probe_dots(c.ker, eps.cview(), jv.cview(), K, sk.view().row_block(d, 1));
    require_close(sc, sk, "probe_dots", 0.0, 0.0);  // one order, in double: the same bits
  }

  // The log-density, with the accumulated row l and without it.
  Mat<S> s(d + 1, B, 3);
  s.random(rng);
  for (const bool with_l : {true, false}) {
    CAPTURE(with_l);
    const ConstMatrixView<S> l = with_l ? s.cview().row_block(d, 1) : ConstMatrixView<S>();
    Mat<S> lc(B, 1, 1), lk(B, 1, 1);
    Cpu::normal_logpdf(c.cpu, s.cview().row_block(0, d), l, lc.vec());
    Ker::normal_logpdf(c.ker, s.cview().row_block(0, d), l, lk.vec());
    require_close(lc, lk, "normal_logpdf", 0.0, 0.0);  // std::log once on the host: same bits
  }
}

namespace {

// A small nonlinear field for the ODE path on either backend: v(x, t) = W2 tanh(W1 x + w t + b1)
// + b2 (d = 2, hidden 6), with its JVP and exact divergence. Its own passes are host loops over
// the views (both backends here keep host memory), so the two runs below differ only in the
// backend primitives of the solvers and the likelihood. The ODE routines call no VJP; vjp_x and
// backward exist for the field traits only and say so.
template <class S, class Backend>
class TanhField {
 public:
  using Scalar = S;
  using BackendType = Backend;
  struct Workspace {
    std::vector<S> h;  // tanh activations of the last forward, (H, B)
    Index batch = 0;
  };
  static constexpr Index d = 2, H = 6;

  explicit TanhField(std::uint64_t seed) : p_(std::size_t(H * d + 2 * H + d * H + d)) {
    flowprior::Rng rng(seed);
    for (auto& x : p_) x = static_cast<S>(flowprior::uniform(rng, -1.0, 1.0));
  }
  Index dim() const { return d; }
  Index num_params() const { return Index(p_.size()); }

  void forward(ConstMatrixView<S> x, ConstVectorView<S> t, MatrixView<S> v_out,
               Workspace& ws) const {
    ws.batch = x.cols;
    ws.h.assign(std::size_t(H * x.cols), S(0));
    for (Index b = 0; b < x.cols; ++b) {
      for (Index k = 0; k < H; ++k) {
        S a = w(k) * t[b] + b1(k);
        for (Index i = 0; i < d; ++i) a += W1(k, i) * x(i, b);
        ws.h[std::size_t(k + b * H)] = std::tanh(a);
      }
      for (Index i = 0; i < d; ++i) {
        S v = b2(i);
        for (Index k = 0; k < H; ++k) v += W2(i, k) * ws.h[std::size_t(k + b * H)];
        v_out(i, b) = v;
      }
    }
  }
  void vjp_x(Workspace&, ConstMatrixView<S>, MatrixView<S>) const {
    flowprior::raise_config("TanhField::vjp_x", "not used by the ODE routines");
  }
  void backward(Workspace&, ConstMatrixView<S>, MatrixView<S>, VectorView<S>) const {
    flowprior::raise_config("TanhField::backward", "not used by the ODE routines");
  }
  // dv(:, j) = W2 ((1 - h_b^2) * (W1 dx(:, j))), b = j / K.
  void jvp_x(Workspace& ws, ConstMatrixView<S> dx, MatrixView<S> dv_out, Index K) const {
    for (Index j = 0; j < dx.cols; ++j) {
      S g[H];
      for (Index k = 0; k < H; ++k) {
        S a = 0;
        for (Index i = 0; i < d; ++i) a += W1(k, i) * dx(i, j);
        const S hk = ws.h[std::size_t(k + (j / K) * H)];
        g[k] = (S(1) - hk * hk) * a;
      }
      for (Index i = 0; i < d; ++i) {
        S v = 0;
        for (Index k = 0; k < H; ++k) v += W2(i, k) * g[k];
        dv_out(i, j) = v;
      }
    }
  }
  // tr(W2 diag(1 - h^2) W1) per sample.
  void divergence(ConstMatrixView<S> x, ConstVectorView<S> t, MatrixView<S> v_out,
                  VectorView<S> div_out, Workspace& ws) const {
    forward(x, t, v_out, ws);
    for (Index b = 0; b < x.cols; ++b) {
      S acc = 0;
      for (Index k = 0; k < H; ++k) {
        const S hk = ws.h[std::size_t(k + b * H)];
        S wk = 0;
        for (Index i = 0; i < d; ++i) wk += W2(i, k) * W1(k, i);
        acc += (S(1) - hk * hk) * wk;
      }
      div_out[b] = acc;
    }
  }

 private:
  S W1(Index k, Index i) const { return p_[std::size_t(k + i * H)]; }
  S w(Index k) const { return p_[std::size_t(H * d + k)]; }
  S b1(Index k) const { return p_[std::size_t(H * d + H + k)]; }
  S W2(Index i, Index k) const { return p_[std::size_t(H * d + 2 * H + i + k * d)]; }
  S b2(Index i) const { return p_[std::size_t(H * d + 2 * H + d * H + i)]; }
  std::vector<S> p_;
};

}  // namespace

TEMPLATE_TEST_CASE("kernel backend: ode::sample and ode::log_likelihood match the CPU",
                   "[kernel][ode]", float, double) {
  using S = TestType;
  using CpuField = TanhField<S, Cpu>;
  using KerField = TanhField<S, Ker>;
  const CpuField fc(41);
  const KerField fk(41);
  const Index d = CpuField::d, B = 8;
  flowprior::Rng rng(42);
  Mat<S> x(d, B, 1);
  x.random(rng, -1.5, 1.5);

  for (const Convention conv : {Convention::Code, Convention::Paper}) {  // Paper: reversed
    CAPTURE(int(conv));
    const flowprior::Prior<CpuField> pc = flowprior::Prior<CpuField>(fc, Convention::Code).as(conv);
    const flowprior::Prior<KerField> pk = flowprior::Prior<KerField>(fk, Convention::Code).as(conv);
    ode::OdeWorkspace<CpuField> wc;
    ode::OdeWorkspace<KerField> wk;

    // Sampling: adaptive and fixed-step.
    for (const ode::Method m : {ode::Method::Dopri5, ode::Method::RK4, ode::Method::Heun}) {
      CAPTURE(ode::to_string(m));
      ode::SolverOptions so;
      so.method = m;
      so.steps = 12;
      so.atol = so.rtol = 1e-6;
      Mat<S> zc = x, zk = x;
      const ode::SolveStats sc = ode::sample(pc, conv, zc.view(), so, wc);
      const ode::SolveStats sk = ode::sample(pk, conv, zk.view(), so, wk);
      REQUIRE(sk.nfe == sc.nfe);
      REQUIRE(sk.rejected == sc.rejected);
      REQUIRE(sc.nfe > 6);
      require_close(zc, zk, "sample");
    }

    // Log-likelihood: exact divergence and Hutchinson (the same probes from the same seed).
    for (const bool hutch : {false, true}) {
      CAPTURE(hutch);
      ode::LikelihoodOptions lo;
      lo.solver.atol = lo.solver.rtol = 1e-6;
      if (hutch) {
        lo.divergence = ode::Divergence::Hutchinson;
        lo.probes = 3;
        lo.probe = ode::Probe::Gaussian;
      }
      flowprior::Rng rc(7), rk(7);
      Mat<S> lc(B, 1, 1), lk(B, 1, 1), nc(d, B, 2), nk(d, B, 1);
      const ode::SolveStats sc =
          ode::log_likelihood(pc, conv, x.cview(), lc.vec(), lo, wc, &rc, nc.view());
      const ode::SolveStats sk =
          ode::log_likelihood(pk, conv, x.cview(), lk.vec(), lo, wk, &rk, nk.view());
      REQUIRE(sk.nfe == sc.nfe);
      require_close(lc, lk, "log_likelihood");
      require_close(nc, nk, "z_noise");
      for (Index b = 0; b < B; ++b) REQUIRE(std::isfinite(lk.at(b, 0)));
    }

    // A non-finite input is reported with its position and value by both.
    Mat<S> xb = x;
    xb.at(1, 5) = std::numeric_limits<S>::infinity();
    Mat<S> l(B, 1);
    REQUIRE_THROWS_AS(ode::log_likelihood(pk, conv, xb.cview(), l.vec(), {}, wk),
                      flowprior::numeric_error);
    std::string mc, mk;
    try {
      ode::log_likelihood(pc, conv, xb.cview(), l.vec(), {}, wc);
    } catch (const flowprior::numeric_error& e) {
      mc = e.what();
    }
    try {
      ode::log_likelihood(pk, conv, xb.cview(), l.vec(), {}, wk);
    } catch (const flowprior::numeric_error& e) {
      mk = e.what();
    }
    REQUIRE(!mk.empty());
    REQUIRE(mk == mc);
  }
}
