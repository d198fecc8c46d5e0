// Every primitive of the CUDA backend against the same kernel bodies run on the host
// (HostKernelBackend), on copies of the same random operands: the list of
// tests/support/guarded_backend.hpp (FPT_GUARDED: every primitive the stack calls), the products
// in each float GemmPrecision, and the memory functions. Float and double.
//
// Operands are Twins: a host matrix (the HostKernelBackend operand) and its device copy (the
// CudaBackend operand), with a leading dimension above the rows whose padding holds NaN (a
// sentinel for integers): a primitive that reads it poisons its result, one that writes it fails
// the comparison (padding must come back unchanged). After the primitive ran on both sides the
// device result is downloaded and compared element by element with
//     |host - device| <= tol (|host| + |device| + 1)
// (the +1: operands are O(1), so elements that cancel are held to the operands' scale):
// - double 1e-12: the same formulas in the same order; the device contracts a * b + c into FMAs
//   and its libm (exp, log, sin, cos) differs from the host's by an ulp or two;
// - float 1e-5: the same, in float (a few ulp, and a double rounded to float may round the
//   other way);
// - products, double and FP32: tol k (the k terms of an element are summed in a different order
//   and blocking by cuBLAS: the rounding error grows with k);
// - TF32 and BF16 products, against the host FP32 product, relative to the element's scale
//   sum_p |alpha a_ip b_pj| + |beta c_ij| (the error bound of rounded inputs): TF32 2.5e-3 (inputs
//   rounded to 10 mantissa bits: 2^-10 each, truncation allowed, twice per term), BF16 1e-2
//   (7 mantissa bits rounded to nearest: 2^-8 each, twice per term, plus FP32 accumulation).
// Integer results (indices, counts, positions) must be equal.
#include <cmath>
#include <cstdint>
#include <flowprior/backend/batch_args.hpp>
#include <flowprior/backend/cuda.cuh>
#include <flowprior/backend/kernel_backend.hpp>
#include <flowprior/backend/ode_args.hpp>
#include <flowprior/backend/optim_args.hpp>
#include <flowprior/backend/xent_args.hpp>
#include <flowprior/core/activation.hpp>
#include <flowprior/core/convention.hpp>
#include <flowprior/core/random.hpp>
#include <limits>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "catch.hpp"

using flowprior::Activation;
using flowprior::ConstMatrixView;
using flowprior::ConstVectorView;
using flowprior::Convention;
using flowprior::GemmPrecision;
using flowprior::Index;
using flowprior::MatrixView;
using flowprior::VectorView;
using Gpu = flowprior::CudaBackend;
using Host = flowprior::HostKernelBackend;

namespace {

enum class Side { host, device };

template <class S>
constexpr double tol() {
  return std::is_same<S, double>::value ? 1e-12 : 1e-5;
}

template <class T>
T pad_value() {
  if constexpr (std::is_floating_point<T>::value)
    return std::numeric_limits<T>::quiet_NaN();
  else
    return T(-7);
}

/// A rows x cols matrix (leading dimension rows + pad) on the host and its copy on the device.
template <class T>
struct Twin {
  Index rows = 0, cols = 0, ld = 0;
  std::vector<T> h;              // HostKernelBackend's operand
  flowprior::DeviceBuffer<T> d;  // CudaBackend's operand

  Twin(Index r, Index c, Index pad = 2) : rows(r), cols(c), ld(r + pad) {
    h.assign(static_cast<std::size_t>(ld * (c > 0 ? c : 1)), pad_value<T>());
    for (Index j = 0; j < cols; ++j)
      for (Index i = 0; i < rows; ++i) at(i, j) = T(0);
    upload();
  }
  /// Uniform values in [lo, hi] (integers: rounded down), the same on both sides.
  Twin& random(flowprior::Rng& rng, double lo = -2.0, double hi = 2.0) {
    for (Index j = 0; j < cols; ++j)
      for (Index i = 0; i < rows; ++i) at(i, j) = static_cast<T>(flowprior::uniform(rng, lo, hi));
    upload();
    return *this;
  }
  T& at(Index i, Index j) { return h[static_cast<std::size_t>(i + j * ld)]; }
  /// Copies the host side to the device (after editing the host side with at()).
  void upload() { Gpu::copy_from_host(h.data(), Index(h.size()), d); }
  std::vector<T> download() const {
    std::vector<T> out(h.size());
    Gpu::copy_to_host(d, out.data());
    return out;
  }
  T* p(Side s) { return s == Side::host ? h.data() : d.data(); }
  const T* p(Side s) const { return s == Side::host ? h.data() : d.data(); }
  MatrixView<T> m(Side s) { return {p(s), rows, cols, ld}; }
  ConstMatrixView<T> c(Side s) const { return {p(s), rows, cols, ld}; }
  /// The first rows * cols elements as a vector (a one-column twin: its rows).
  VectorView<T> v(Side s) { return {p(s), rows * cols}; }
  ConstVectorView<T> cv(Side s) const { return {p(s), rows * cols}; }
};

/// Every element (padding included: unchanged) of the device side against the host side.
template <class T>
void require_close(const Twin<T>& t, const std::string& what, double rtol) {
  const std::vector<T> dev = t.download();
  for (Index j = 0; j < (t.cols > 0 ? t.cols : 1); ++j)
    for (Index i = 0; i < t.ld; ++i) {
      const std::size_t e = static_cast<std::size_t>(i + j * t.ld);
      const double x = static_cast<double>(t.h[e]), y = static_cast<double>(dev[e]);
      if (x == y || (std::isnan(x) && std::isnan(y))) continue;
      const bool inside = i < t.rows && j < t.cols;
      const double err = std::abs(x - y), bound = rtol * (std::abs(x) + std::abs(y) + 1.0);
      if (!inside || !(err <= bound) || std::is_integral<T>::value) {
        INFO(what << "(" << i << ", " << j << ")" << (inside ? "" : " [padding]") << ": host " << x
                  << ", device " << y << ", error " << err << " > " << bound);
        REQUIRE(false);
      }
    }
}

/// The same for two scalars returned by a reduction.
inline void require_close(double x, double y, const std::string& what, double rtol) {
  if (x == y || (std::isnan(x) && std::isnan(y))) return;
  INFO(what << ": host " << x << ", device " << y);
  REQUIRE(std::abs(x - y) <= rtol * (std::abs(x) + std::abs(y) + 1.0));
}

/// The contexts of one comparison; both(f) runs f(Backend{}, context, side) on each side.
struct Sides {
  Host::Context hc;
  Gpu::Context gc;
  Sides() = default;
  explicit Sides(GemmPrecision p) : gc(p) {}
  template <class F>
  void both(F f) {
    f(Host{}, hc, Side::host);
    f(Gpu{}, gc, Side::device);
  }
  template <class F>
  auto values(F f) {
    auto a = f(Host{}, hc, Side::host);
    auto b = f(Gpu{}, gc, Side::device);
    return std::make_pair(a, b);
  }
};

}  // namespace

// Runs the statements on both sides with B the backend, ctx its context and s the side.
#define BOTH(...)                           \
  sd.both([&](auto be, auto& ctx, Side s) { \
    using B = decltype(be);                 \
    (void)be;                               \
    __VA_ARGS__;                            \
  })
// The value of the expression on both sides (a std::pair: host, device).
#define VALUES(...)                           \
  sd.values([&](auto be, auto& ctx, Side s) { \
    using B = decltype(be);                   \
    (void)be;                                 \
    return __VA_ARGS__;                       \
  })

TEMPLATE_TEST_CASE("cuda primitives: memory functions", "[cuda][primitives]", float, double) {
  using S = TestType;
  flowprior::Rng rng(1);
  Twin<S> a(7, 5, 3);
  a.random(rng);
  REQUIRE(a.download().size() == a.h.size());
  require_close(a, "round trip", 0.0);
  // resize grows only, keeping the content.
  std::vector<S> src(10);
  for (std::size_t i = 0; i < src.size(); ++i) src[i] = S(0.5) * S(i) - S(2);
  typename Gpu::template Buffer<S> b;
  Gpu::copy_from_host(src.data(), 10, b);
  Gpu::resize(b, 4);
  REQUIRE(b.size() == 10);
  Gpu::resize(b, 40);
  REQUIRE(b.size() == 40);
  std::vector<S> back(10);
  Gpu::copy_to_host(b.data(), 10, back.data());
  REQUIRE(back == src);
  // Pointer copies into the middle of a buffer.
  const std::vector<S> three = {S(1), S(2), S(3)};
  Gpu::copy_from_host(three.data(), 3, b.data() + 5);
  std::vector<S> all(b.size());
  Gpu::copy_to_host(b, all.data());
  REQUIRE(all[5] == S(1));
  REQUIRE(all[7] == S(3));
  REQUIRE(std::string(Gpu::name()) == "cuda");
  REQUIRE(std::string(Host::name()) == "host-kernels");
}

TEMPLATE_TEST_CASE("cuda primitives: gemm with every transpose and beta", "[cuda][primitives]",
                   float, double) {
  using S = TestType;
  flowprior::Rng rng(2);
  const Index m = 9, n = 7, k = 13;
  for (const bool ta : {false, true})
    for (const bool tb : {false, true})
      for (const double beta : {0.0, 1.0, 0.5}) {
        CAPTURE(ta, tb, beta);
        Sides sd;
        Twin<S> A(ta ? k : m, ta ? m : k, 3), Bm(tb ? n : k, tb ? k : n, 2), C(m, n, 4);
        A.random(rng);
        Bm.random(rng);
        C.random(rng);
        if (beta == 0.0) {  // beta 0 ignores C, NaN included
          for (Index j = 0; j < n; ++j)
            for (Index i = 0; i < m; ++i) C.at(i, j) = std::numeric_limits<S>::quiet_NaN();
          C.upload();
        }
        BOTH(B::template gemm<S>(ctx, ta, tb, S(0.75), A.c(s), Bm.c(s), S(beta), C.m(s)));
        require_close(C, "gemm", tol<S>() * double(k));
      }
}

TEST_CASE("cuda primitives: float gemm in TF32 and BF16 within their bounds",
          "[cuda][primitives]") {
  flowprior::Rng rng(3);
  const Index m = 33, n = 17, k = 64;
  for (const auto prec : {GemmPrecision::fp32, GemmPrecision::tf32, GemmPrecision::bf16})
    for (const bool ta : {false, true})
      for (const bool tb : {false, true}) {
        CAPTURE(int(prec), ta, tb);
        Sides sd(prec);
        REQUIRE(sd.gc.gemm_precision() == prec);
        Twin<float> A(ta ? k : m, ta ? m : k, 3), Bm(tb ? n : k, tb ? k : n, 1), C(m, n, 2);
        A.random(rng, -1, 1);
        Bm.random(rng, -1, 1);
        C.random(rng, -1, 1);
        const Twin<float> C0 = C;
        const float alpha = 1.25f, beta = 0.5f;
        BOTH(B::template gemm<float>(ctx, ta, tb, alpha, A.c(s), Bm.c(s), beta, C.m(s)));
        const std::vector<float> dev = C.download();
        const double bound = prec == GemmPrecision::fp32   ? tol<float>() * double(k)
                             : prec == GemmPrecision::tf32 ? 2.5e-3
                                                           : 1e-2;
        for (Index j = 0; j < n; ++j)
          for (Index i = 0; i < m; ++i) {
            double scale = std::abs(double(beta) * double(C0.h[std::size_t(i + j * C0.ld)]));
            for (Index p = 0; p < k; ++p) {
              const double a = ta ? A.at(p, i) : A.at(i, p), b = tb ? Bm.at(j, p) : Bm.at(p, j);
              scale += std::abs(double(alpha) * a * b);
            }
            const double x = C.h[std::size_t(i + j * C.ld)], y = dev[std::size_t(i + j * C.ld)];
            const double allowed = prec == GemmPrecision::fp32
                                       ? bound * (std::abs(x) + std::abs(y) + 1.0)
                                       : bound * scale;
            INFO("(" << i << ", " << j << "): host " << x << ", device " << y);
            REQUIRE(std::abs(x - y) <= allowed);
          }
        // The padding is untouched.
        for (Index j = 0; j < n; ++j) REQUIRE(std::isnan(dev[std::size_t(m + j * C.ld)]));
      }
}

TEMPLATE_TEST_CASE("cuda primitives: batched gemm, one stride and two levels", "[cuda][primitives]",
                   float, double) {
  using S = TestType;
  flowprior::Rng rng(4);
  const Index m = 5, n = 4, k = 6, outer = 2, inner = 3, count = outer * inner;
  for (const bool interleaved : {false, true})
    for (const bool ta : {false, true}) {
      CAPTURE(interleaved, ta);
      Sides sd;
      const Index ar = ta ? k : m, ac = ta ? m : k;
      Twin<S> A(ar, ac * count, 1), Bm(k, n * count, 2), C(m, n * count, 3);
      A.random(rng);
      Bm.random(rng);
      C.random(rng);
      flowprior::GemmBatch g;
      g.outer = outer;
      g.inner = inner;
      // Problem (o, i) at block o * inner + i (one stride), or i * outer + o (two levels).
      const Index bo = interleaved ? 1 : inner, bi = interleaved ? outer : 1;
      g.a_outer = bo * ac * A.ld;
      g.a_inner = bi * ac * A.ld;
      g.b_outer = bo * n * Bm.ld;
      g.b_inner = bi * n * Bm.ld;
      g.c_outer = bo * n * C.ld;
      g.c_inner = bi * n * C.ld;
      BOTH(B::template gemm_batched<S>(
          ctx, ta, false, S(0.5), ConstMatrixView<S>(A.p(s), ar, ac, A.ld),
          ConstMatrixView<S>(Bm.p(s), k, n, Bm.ld), S(0.25), MatrixView<S>(C.p(s), m, n, C.ld), g));
      require_close(C, "gemm_batched", tol<S>() * double(k));
    }
}

TEMPLATE_TEST_CASE("cuda primitives: element-wise and column primitives", "[cuda][primitives]",
                   float, double) {
  using S = TestType;
  flowprior::Rng rng(5);
  const Index rows = 7, cols = 13, d = 3, Bn = 4;
  const double t = tol<S>();
  Sides sd;
  Twin<S> A(rows, cols, 3), C(rows, cols, 2), b(rows, 1, 1);
  A.random(rng);
  b.random(rng);
  auto fresh = [&] {
    C.random(rng);
    return &C;
  };
  fresh();
  BOTH(B::template broadcast_cols<S>(ctx, b.p(s), C.m(s)));
  require_close(C, "broadcast_cols", t);
  fresh();
  BOTH(B::template add_cols<S>(ctx, b.p(s), C.m(s)));
  require_close(C, "add_cols", t);
  BOTH(B::template sum_cols<S>(ctx, A.c(s), b.p(s)));
  require_close(b, "sum_cols", t);
  BOTH(B::template fill<S>(ctx, C.m(s), S(0.5)));
  require_close(C, "fill", 0.0);
  fresh();
  BOTH(B::template scale<S>(ctx, C.m(s), S(-1.5)));
  require_close(C, "scale", t);
  fresh();
  BOTH(B::template copy<S>(ctx, A.c(s), C.m(s)));
  require_close(C, "copy", 0.0);
  fresh();
  BOTH(B::template axpy<S>(ctx, S(0.3), A.c(s), C.m(s)));
  require_close(C, "axpy", t);
  fresh();
  BOTH(B::template scaled_copy<S>(ctx, S(-0.7), A.c(s), C.m(s)));
  require_close(C, "scaled_copy", t);
  Twin<S> I(d, Bn * d, 1), J(d, Bn * d, 2), div(Bn, 1, 1);
  I.random(rng);
  J.random(rng);
  BOTH(B::template identity_tiles<S>(ctx, I.m(s)));
  require_close(I, "identity_tiles", 0.0);
  BOTH(B::template block_traces<S>(ctx, J.c(s), div.p(s)));
  require_close(div, "block_traces", t);
  // gather (indices in backend memory, repeats allowed)
  Twin<Index> idx(5, 1, 0);
  for (Index j = 0; j < 5; ++j) idx.at(j, 0) = (j * 7 + 3) % cols;
  idx.at(4, 0) = idx.at(1, 0);
  idx.upload();
  Twin<S> G(rows, 5, 2);
  BOTH(B::template gather_cols<S>(ctx, A.c(s), idx.p(s), G.m(s)));
  require_close(G, "gather_cols", 0.0);
}

TEMPLATE_TEST_CASE("cuda primitives: noise, time scans and time features", "[cuda][primitives]",
                   float, double) {
  using S = TestType;
  flowprior::Rng rng(6);
  Sides sd;
  for (const Index anti : {Index(0), Index(2)}) {
    Twin<S> z(5, 8, 3);
    BOTH(B::template gaussian_noise<S>(ctx, 0x1234abcdULL, 7, z.m(s), anti));
    require_close(z, "gaussian_noise", tol<S>());
  }
  const Index n = 9;
  Twin<S> t(n, 1, 1), r(n, 1, 1);
  t.random(rng, 0, 1);
  BOTH(B::template reverse_times<S>(ctx, t.cv(s), r.v(s)));
  require_close(r, "reverse_times", tol<S>());
  auto first = VALUES(B::template first_outside_unit<S>(ctx, t.cv(s)));
  REQUIRE(first.first == -1);
  REQUIRE(first.second == -1);
  t.at(6, 0) = S(1.5);
  t.at(7, 0) = std::numeric_limits<S>::quiet_NaN();
  t.upload();
  first = VALUES(B::template first_outside_unit<S>(ctx, t.cv(s)));
  REQUIRE(first.first == 6);
  REQUIRE(first.second == 6);
  // Runs of equal times.
  const std::vector<double> runs = {0.1, 0.1, 0.4, 0.4, 0.4, 0.2, 0.9, 0.9, 0.1};
  for (Index i = 0; i < n; ++i) t.at(i, 0) = S(runs[std::size_t(i)]);
  t.upload();
  Twin<S> times(n, 1, 0);
  Twin<Index> map(n, 1, 0);
  const auto R = VALUES(B::template time_runs<S>(ctx, t.cv(s), times.p(s), map.p(s)));
  REQUIRE(R.first == 5);
  REQUIRE(R.second == 5);
  require_close(times, "time_runs times", 0.0);
  require_close(map, "time_runs map", 0.0);
  // Sinusoidal features (evaluated in double on both sides).
  Twin<S> tf(n, 1, 0), e(12, n, 2);
  tf.random(rng, 0, 1);
  BOTH(B::template time_features<S>(ctx, tf.cv(s), S(10000), e.m(s)));
  require_close(e, "time_features", tol<S>());
}

TEMPLATE_TEST_CASE("cuda primitives: path mix, residuals and gradient", "[cuda][primitives]", float,
                   double) {
  using S = TestType;
  flowprior::Rng rng(7);
  const Index d = 3, N = 5, K = 2, M = N * K;
  const double t = tol<S>();
  for (const Convention conv : {Convention::Code, Convention::Paper})
    for (const S sign : {S(1), S(-1)}) {
      CAPTURE(int(conv), double(sign));
      Sides sd;
      Twin<S> tm(M, 1, 1), x(d, N, 2), eps(d, M, 1), xt(d, M, 2);
      tm.random(rng, 0, 1);
      x.random(rng);
      eps.random(rng);
      tm.at(3, 0) = S(1.25);  // counted, mixed by the formula all the same
      tm.upload();
      const auto bad =
          VALUES(B::template path_mix<S>(ctx, conv, tm.cv(s), x.c(s), eps.c(s), xt.m(s), K));
      REQUIRE(bad.first == 1);
      REQUIRE(bad.second == 1);
      require_close(xt, "path_mix", t);
      tm.at(3, 0) = S(0.25);
      tm.upload();
      for (const bool per_row : {false, true}) {
        Twin<S> v(d, M, 2), rows_loss(N, 1, 1);
        Twin<double> row(N, 1, 0);
        v.random(rng);
        const auto total = VALUES(B::template path_residuals<S>(
            ctx, conv, sign, tm.cv(s), x.c(s), eps.c(s), v.m(s), K, 0.3, row.p(s),
            per_row ? rows_loss.v(s) : VectorView<S>()));
        require_close(total.first, total.second, "path_residuals total", t);
        require_close(v, "path_residuals r", t);
        require_close(row, "path_residuals rows", t);
        require_close(rows_loss, "path_residuals loss_per_row", t);
      }
      for (const bool through_v : {false, true}) {
        Twin<S> dv(d, M, 1), dxt(d, M, 3), dx(d, N, 2);
        dv.random(rng);
        dxt.random(rng);
        dx.random(rng);
        BOTH(B::template path_grad<S>(ctx, conv, sign, tm.cv(s), dv.c(s),
                                      through_v ? dxt.c(s) : ConstMatrixView<S>(), dx.m(s), K));
        require_close(dx, "path_grad", t);
      }
    }
}

TEMPLATE_TEST_CASE("cuda primitives: softmax, cross-entropy and the token primitives",
                   "[cuda][primitives]", float, double) {
  using S = TestType;
  flowprior::Rng rng(8);
  const double t = tol<S>();
  Sides sd;
  Twin<S> A(6, 5, 2), P(6, 5, 1), D(6, 5, 3);
  A.random(rng, -4, 4);
  BOTH(B::template softmax_cols<S>(ctx, A.m(s)));
  require_close(A, "softmax_cols", t);
  P.random(rng, 0, 1);
  D.random(rng);
  BOTH(B::template softmax_backward_cols<S>(ctx, P.c(s), D.m(s)));
  require_close(D, "softmax_backward_cols", t);
  Twin<std::int32_t> labels(5, 1, 0);
  for (Index b = 0; b < 5; ++b) labels.at(b, 0) = std::int32_t((b * 5 + 1) % 6);
  labels.upload();
  for (const bool grad : {false, true}) {
    Twin<S> z(6, 5, 2), dz(6, 5, 1);
    z.random(rng, -3, 3);
    const auto sums = VALUES(B::template softmax_xent_cols<S>(ctx, z.c(s), labels.p(s), 0.2,
                                                              grad ? dz.m(s) : MatrixView<S>()));
    require_close(sums.first.loss, sums.second.loss, "softmax_xent_cols loss", t);
    REQUIRE(sums.first.correct == sums.second.correct);
    require_close(dz, "softmax_xent_cols d_logits", t);
  }
  // Patches: 2 channels of 4 x 6 images, 2 x 2 patches, 3 images.
  const Index Cc = 2, Hh = 4, Ww = 6, p = 2, Bn = 3, T = (Hh / p) * (Ww / p);
  Twin<S> img(Cc * Hh * Ww, Bn, 2), tok(Cc * p * p, Bn * T, 1), back(Cc * Hh * Ww, Bn, 3);
  img.random(rng);
  BOTH(B::template patchify<S>(ctx, img.c(s), Cc, Hh, Ww, p, tok.m(s)));
  require_close(tok, "patchify", 0.0);
  BOTH(B::template unpatchify<S>(ctx, tok.c(s), Cc, Hh, Ww, p, back.m(s)));
  require_close(back, "unpatchify", 0.0);
  Twin<S> table(5, T, 2), tokens(5, Bn * T, 1), d_table(5, T, 3);
  table.random(rng);
  tokens.random(rng);
  d_table.random(rng);
  BOTH(B::template add_per_token<S>(ctx, table.c(s), tokens.m(s)));
  require_close(tokens, "add_per_token", t);
  BOTH(B::template sum_per_token<S>(ctx, tokens.c(s), d_table.m(s)));
  require_close(d_table, "sum_per_token", t);
  Twin<Index> map(Bn * T, 1, 0);
  Twin<std::int32_t> map32(Bn * T, 1, 0);
  BOTH(B::template sequence_map<Index>(ctx, T, map.v(s)));
  BOTH(B::template sequence_map<std::int32_t>(ctx, T, map32.v(s)));
  require_close(map, "sequence_map", 0.0);
  require_close(map32, "sequence_map (int32)", 0.0);
}

TEMPLATE_TEST_CASE("cuda primitives: the Gaussian posterior", "[cuda][primitives]", float, double) {
  using S = TestType;
  flowprior::Rng rng(9);
  const double t = tol<S>();
  const Index d = 4, N = 6;
  Sides sd;
  Twin<S> mom(2 * d, N, 2), eps(d, N, 1);
  mom.random(rng);
  mom.at(d + 1, 2) = S(-35);  // clamped log-variances: no gradient there
  mom.at(d + 2, 4) = S(25);
  mom.upload();
  eps.random(rng);
  for (const bool noise : {false, true}) {
    CAPTURE(noise);
    Twin<S> lv(d, N, 3), z(d, N, 2), dz(d, N, 1), dm(2 * d, N, 2);
    dz.random(rng);
    const ConstMatrixView<S> no;
    BOTH(B::template gaussian_posterior_forward<S>(ctx, mom.c(s), noise ? eps.c(s) : no, lv.m(s),
                                                   z.m(s)));
    require_close(lv, "gaussian_posterior_forward logvar", t);
    require_close(z, "gaussian_posterior_forward z", t);
    const auto kl = VALUES(B::template gaussian_kl<S>(ctx, mom.c(s), lv.c(s)));
    require_close(kl.first, kl.second, "gaussian_kl", t);
    BOTH(B::template gaussian_posterior_backward<S>(ctx, mom.c(s), lv.c(s), noise ? eps.c(s) : no,
                                                    dz.c(s), S(0.3), dm.m(s)));
    require_close(dm, "gaussian_posterior_backward", t);
  }
}

TEMPLATE_TEST_CASE("cuda primitives: activations and the adaLN layer primitives",
                   "[cuda][primitives]", float, double) {
  using S = TestType;
  flowprior::Rng rng(10);
  const double t = tol<S>();
  const Index C = 6, Bn = 5, K = 2, R = 2;
  Sides sd;
  for (const Activation act : {Activation::SiLU, Activation::GELU}) {
    CAPTURE(int(act));
    Twin<S> z(C, Bn, 2), a(C, Bn, 1), da(C, Bn, 3), dz(C, Bn * K, 1), out(C, Bn * K, 2);
    z.random(rng, -4, 4);
    da.random(rng);
    dz.random(rng);
    BOTH(B::template activation_forward<S>(ctx, act, z.c(s), a.m(s)));
    require_close(a, "activation_forward", t);
    Twin<S> g(C, Bn, 2);
    BOTH(B::template activation_backward<S>(ctx, act, z.c(s), da.c(s), g.m(s)));
    require_close(g, "activation_backward", t);
    BOTH(B::template activation_jvp<S>(ctx, act, z.c(s), dz.c(s), out.m(s), K));
    require_close(out, "activation_jvp", t);
  }
  // norm_modulate and gated_residual: affine or not, modulated or not, per sample or grouped.
  Twin<Index> group(Bn, 1, 0);
  for (Index b = 0; b < Bn; ++b) group.at(b, 0) = b < 3 ? 0 : 1;
  group.upload();
  for (const bool affine : {false, true})
    for (const int mode : {0, 1, 2}) {  // 0: no modulation, 1: per sample, 2: grouped
      CAPTURE(affine, mode);
      const bool grouped = mode == 2;
      const Index mc = grouped ? R : Bn;
      Twin<S> h(C, Bn, 2), gamma(C, 1, 1), beta(C, 1, 1), shift(C, mc, 1), scale(C, mc, 3);
      h.random(rng, -3, 3);
      gamma.random(rng, 0.6, 1.4);
      beta.random(rng, -0.3, 0.3);
      shift.random(rng, -0.5, 0.5);
      scale.random(rng, -0.5, 0.5);
      const ConstMatrixView<S> none;
      auto G = [&](Side s) { return affine ? gamma.p(s) : nullptr; };
      auto Be = [&](Side s) { return affine ? beta.p(s) : nullptr; };
      auto Sh = [&](Side s) { return mode == 0 ? none : shift.c(s); };
      auto Sc = [&](Side s) { return mode == 0 ? none : scale.c(s); };
      auto Gr = [&](Side s) { return grouped ? group.p(s) : nullptr; };
      Twin<S> nhat(C, Bn, 1), rstd(Bn, 1, 1), mo(C, Bn, 2);
      BOTH(B::template norm_modulate_forward<S>(ctx, h.c(s), G(s), Be(s), S(1e-6), Sh(s), Sc(s),
                                                nhat.m(s), rstd.p(s), mo.m(s), Gr(s)));
      require_close(nhat, "norm_modulate_forward nhat", t);
      require_close(rstd, "norm_modulate_forward rstd", t);
      require_close(mo, "norm_modulate_forward m", t);
      Twin<S> dm(C, Bn, 1), dh(C, Bn, 2), dshift(C, mc, 1), dscale(C, mc, 2), dgamma(C, 1, 1),
          dbeta(C, 1, 1);
      dm.random(rng);
      dh.random(rng);
      dgamma.random(rng);
      dbeta.random(rng);
      auto DSh = [&](Side s) { return mode == 0 ? MatrixView<S>() : dshift.m(s); };
      auto DSc = [&](Side s) { return mode == 0 ? MatrixView<S>() : dscale.m(s); };
      BOTH(B::template norm_modulate_backward<S>(
          ctx, nhat.c(s), rstd.p(s), G(s), Be(s), Sc(s), dm.c(s), dh.m(s), DSh(s), DSc(s),
          affine ? dgamma.p(s) : nullptr, affine ? dbeta.p(s) : nullptr, Gr(s)));
      require_close(dh, "norm_modulate_backward d_h", t);
      require_close(dshift, "norm_modulate_backward d_shift", t);
      require_close(dscale, "norm_modulate_backward d_scale", t);
      require_close(dgamma, "norm_modulate_backward d_gamma", t);
      require_close(dbeta, "norm_modulate_backward d_beta", t);
      Twin<S> tan(C, Bn * K, 2), jo(C, Bn * K, 1);
      tan.random(rng);
      BOTH(B::template norm_modulate_jvp<S>(ctx, nhat.c(s), rstd.p(s), G(s), Sc(s), tan.c(s),
                                            jo.m(s), K, Gr(s)));
      require_close(jo, "norm_modulate_jvp", t);
      if (mode == 0) continue;
      // The gated residual takes the modulation's shape: per sample or per group.
      Twin<S> gate(C, mc, 2), zz(C, Bn, 1), hh(C, Bn, 3), dhh(C, Bn, 1), dzz(C, Bn, 2),
          dgate(C, mc, 1), dzt(C, Bn * K, 1), dht(C, Bn * K, 2);
      gate.random(rng);
      zz.random(rng);
      hh.random(rng);
      dhh.random(rng);
      dzt.random(rng);
      dht.random(rng);
      BOTH(B::template gated_residual_forward<S>(ctx, gate.c(s), zz.c(s), hh.m(s), Gr(s)));
      require_close(hh, "gated_residual_forward", t);
      BOTH(B::template gated_residual_backward<S>(ctx, gate.c(s), zz.c(s), dhh.c(s), dzz.m(s),
                                                  dgate.m(s), Gr(s)));
      require_close(dzz, "gated_residual_backward d_z", t);
      require_close(dgate, "gated_residual_backward d_gate", t);
      BOTH(B::template gated_residual_jvp<S>(ctx, gate.c(s), dzt.c(s), dht.m(s), K, Gr(s)));
      require_close(dht, "gated_residual_jvp", t);
    }
}

TEMPLATE_TEST_CASE("cuda primitives: ODE stages, norms, scans and likelihood terms",
                   "[cuda][primitives]", float, double) {
  using S = TestType;
  flowprior::Rng rng(11);
  const double t = tol<S>();
  const Index d = 4, Bn = 5, K = 3;
  Sides sd;
  Twin<S> z(d, Bn, 2), k1(d, Bn, 1), k2(d, Bn, 3), k3(d, Bn, 2), out(d, Bn, 1);
  z.random(rng);
  k1.random(rng);
  k2.random(rng);
  k3.random(rng);
  auto terms = [&](Side s) {
    flowprior::StageTerms<S> st;
    st.add(0.2, k1.c(s));
    st.add(-0.7, k2.c(s));
    st.add(1.3, k3.c(s));
    return st;
  };
  BOTH(B::template lincomb<S>(ctx, z.c(s), 0.1, terms(s), out.m(s)));
  require_close(out, "lincomb", t);
  const auto err =
      VALUES(B::template error_sq_sum<S>(ctx, z.c(s), out.c(s), 0.1, terms(s), 1e-4, 1e-3));
  require_close(err.first, err.second, "error_sq_sum", t);
  for (const bool with_b : {false, true}) {
    const auto sq = VALUES(B::template scaled_sq_sum<S>(
        ctx, z.c(s), k1.c(s), with_b ? k2.c(s) : ConstMatrixView<S>(), 1e-3, 1e-2));
    require_close(sq.first, sq.second, "scaled_sq_sum", t);
  }
  // First non-finite element: none, then one.
  auto nf = VALUES(B::template find_nonfinite<S>(ctx, z.c(s)));
  REQUIRE(!nf.first.found());
  REQUIRE(!nf.second.found());
  z.at(2, 3) = std::numeric_limits<S>::infinity();
  z.at(1, 4) = std::numeric_limits<S>::quiet_NaN();
  z.upload();
  nf = VALUES(B::template find_nonfinite<S>(ctx, z.c(s)));
  REQUIRE(nf.first.i == 2);
  REQUIRE(nf.first.j == 3);
  REQUIRE(nf.second.i == 2);
  REQUIRE(nf.second.j == 3);
  REQUIRE(nf.second.value == nf.first.value);
  // Hutchinson dots into a row of a matrix, the normal log-density plus that row.
  Twin<S> eps(d, Bn * K, 1), jv(d, Bn * K, 2), st(d + 1, Bn, 2), logp(Bn, 1, 1);
  eps.random(rng);
  jv.random(rng);
  st.random(rng);
  BOTH(B::template probe_dots<S>(ctx, eps.c(s), jv.c(s), K,
                                 MatrixView<S>(st.p(s) + d, 1, Bn, st.ld)));
  require_close(st, "probe_dots", t);
  for (const bool with_l : {false, true}) {
    BOTH(B::template normal_logpdf<S>(
        ctx, ConstMatrixView<S>(st.p(s), d, Bn, st.ld),
        with_l ? ConstMatrixView<S>(st.p(s) + d, 1, Bn, st.ld) : ConstMatrixView<S>(), logp.v(s)));
    require_close(logp, "normal_logpdf", t);
  }
}

TEMPLATE_TEST_CASE("cuda primitives: optimizer primitives over several chunks",
                   "[cuda][primitives]", float, double) {
  using S = TestType;
  flowprior::Rng rng(12);
  const double t = tol<S>();
  const Index n = 2 * flowprior::kernel::kChunk + 37;  // three chunks, the last one short
  Sides sd;
  Twin<S> p(n, 1, 1), g(n, 1, 1), m(n, 1, 1), v(n, 1, 1), w(n, 1, 1);
  p.random(rng);
  g.random(rng);
  m.random(rng, -0.1, 0.1);
  v.random(rng, 0, 0.1);
  w.random(rng);
  flowprior::AdamStep a;
  a.beta1 = 0.9;
  a.beta2 = 0.999;
  a.l2 = 0.01;
  a.shrink = 0.999;
  a.step_size = 1e-2 / (1 - 0.9 * 0.9);
  a.bc2_sqrt = std::sqrt(1 - 0.999 * 0.999);
  a.eps = 1e-8;
  BOTH(B::template adam_update<S>(ctx, p.v(s), g.cv(s), m.v(s), v.v(s), a));
  require_close(p, "adam_update params", t);
  require_close(m, "adam_update m", t);
  require_close(v, "adam_update v", t);
  require_close(g, "adam_update grads (unchanged)", 0.0);
  for (const double divisor : {1.0, 3.0}) {
    const auto ss = VALUES(B::template sum_squares<S>(ctx, g.cv(s), divisor));
    require_close(ss.first, ss.second, "sum_squares", t);
  }
  const auto mx = VALUES(B::template max_abs<S>(ctx, g.cv(s)));
  require_close(mx.first, mx.second, "max_abs", 0.0);
  BOTH(B::template scale_vec<S>(ctx, g.v(s), 0.37));
  require_close(g, "scale_vec", t);
  BOTH(B::template ema_update<S>(ctx, w.v(s), p.cv(s), 0.95));
  require_close(w, "ema_update", t);
  auto fn = VALUES(B::template first_nonfinite<S>(ctx, g.cv(s)));
  REQUIRE(fn.first == -1);
  REQUIRE(fn.second == -1);
  g.at(n - 5, 0) = std::numeric_limits<S>::quiet_NaN();
  g.at(n - 2, 0) = std::numeric_limits<S>::infinity();
  g.upload();
  fn = VALUES(B::template first_nonfinite<S>(ctx, g.cv(s)));
  REQUIRE(fn.first == n - 5);
  REQUIRE(fn.second == n - 5);
  const auto mx2 = VALUES(B::template max_abs<S>(ctx, g.cv(s)));  // NaN skipped, inf returned
  REQUIRE(std::isinf(mx2.first));
  REQUIRE(std::isinf(mx2.second));
}
