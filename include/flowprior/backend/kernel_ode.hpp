/// @file
/// KernelBackend's ODE primitives: the stages, the error norms and the state checks of the solvers
/// (ode/integrate.hpp) and the per-sample reductions of the likelihood (ode/flow_ode.hpp),
/// docs/math/ode.md. The semantics of each primitive are those of the CpuBackend primitive of the
/// same name (docs/backends.md "ODE primitives"): coefficients in double, every element evaluated
/// in double and rounded to S once; views may have ld > rows.
///
/// Element-wise work runs one body per element (i fastest); the per-sample reductions one body
/// per column, looping over it in order; the sums to a host scalar one body per 1024-element chunk
/// of the column-major order, the partials added in chunk order (Core::reduce_chunks). The
/// StageTerms of a combination (up to 7 views and coefficients) are captured by value.
/// No Eigen, no CUDA header.
#pragma once

#include <cmath>
#include <flowprior/backend/kernel_common.hpp>
#include <flowprior/backend/ode_args.hpp>
#include <flowprior/backend/views.hpp>
#include <flowprior/core/types.hpp>
#include <limits>

namespace flowprior {
namespace kernel {

template <class Exec>
struct OdeOps {
  using Context = typename Exec::Context;
  using K = Core<Exec>;

  /// out = z + h sum_k c_k k_k over the terms (ode.md (1)-(4)): per element, acc = 0 plus each
  /// c_k double(k_k) in the order of the terms, out = S(double(z) + h acc). out may alias z or a
  /// stage (each body reads its element before writing it). One body per element of out; z and
  /// the stages have its shape.
  template <class S>
  static void lincomb(Context& ctx, CView<S> z, double h, const StageTerms<S>& terms,
                      MatrixView<S> out) {
    const StageTerms<S> tt = terms;
    K::for_each_element(
        ctx, out.rows, out.cols, FLOWPRIOR_LAMBDA(Index i, Index j) {
          double acc = 0;
          for (int t = 0; t < tt.count; ++t)
            acc += tt.coef[t] * static_cast<double>(tt.stage[t](i, j));
          out(i, j) = static_cast<S>(static_cast<double>(z(i, j)) + h * acc);
        });
  }

  /// The embedded error of an adaptive step as a sum of squares (ode.md (5)): over every element,
  /// (double(e) / (atol + rtol max(|y0|, |y1|)))^2 with e = S(h acc) and acc the terms' sum as in
  /// lincomb. y0, y1 and the stages have one shape. One body per 1024-element chunk of the
  /// column-major order, the partials added in chunk order (the CPU adds serially: the last bits
  /// may differ). NaN or Inf when an element is not finite; 0 when empty.
  template <class S>
  static double error_sq_sum(Context& ctx, CView<S> y0, CView<S> y1, double h,
                             const StageTerms<S>& terms, double atol, double rtol) {
    const StageTerms<S> tt = terms;
    const Index rows = y0.rows, n = y0.rows * y0.cols;
    return K::reduce_chunks(
        ctx, div_up(n, kChunk), FLOWPRIOR_LAMBDA(Index c)->double {
          const Index e1 = (c + 1) * kChunk < n ? (c + 1) * kChunk : n;
          double s = 0;
          for (Index e = c * kChunk; e < e1; ++e) {
            const Index i = e % rows, j = e / rows;
            double acc = 0;
            for (int t = 0; t < tt.count; ++t)
              acc += tt.coef[t] * static_cast<double>(tt.stage[t](i, j));
            const double err = static_cast<double>(static_cast<S>(h * acc));
            const double a = static_cast<double>(y0(i, j)), b = static_cast<double>(y1(i, j));
            const double aa = a < 0 ? -a : a, ab = b < 0 ? -b : b;
            const double sc = atol + rtol * (aa < ab ? ab : aa);
            const double r = err / sc;
            s += r * r;
          }
          return s;
        });
  }

  /// sum over every element of ((a - b) / (atol + rtol |y|))^2, the difference taken in double (an
  /// empty b: a alone), ode.md (6). y, a (and b) have one shape. Chunks as error_sq_sum (the CPU
  /// adds serially and squares with std::pow(v, 2), which is v v: the last bits may differ only by
  /// the grouping).
  template <class S>
  static double scaled_sq_sum(Context& ctx, CView<S> y, CView<S> a, CView<S> b, double atol,
                              double rtol) {
    const bool diff = !b.empty();
    const Index rows = y.rows, n = y.rows * y.cols;
    return K::reduce_chunks(
        ctx, div_up(n, kChunk), FLOWPRIOR_LAMBDA(Index c)->double {
          const Index e1 = (c + 1) * kChunk < n ? (c + 1) * kChunk : n;
          double s = 0;
          for (Index e = c * kChunk; e < e1; ++e) {
            const Index i = e % rows, j = e / rows;
            const double yv = static_cast<double>(y(i, j));
            const double sc = atol + rtol * (yv < 0 ? -yv : yv);
            const double v = diff ? static_cast<double>(a(i, j)) - static_cast<double>(b(i, j))
                                  : static_cast<double>(a(i, j));
            const double r = v / sc;
            s += r * r;
          }
          return s;
        });
  }

  /// The first NaN or Inf of A in column-major order, with its position and value (NonFinite,
  /// backend/ode_args.hpp; not found: i = j = -1). Core::first_index over the column-major
  /// positions; the value is copied to the host only when one is found.
  template <class S>
  static NonFinite find_nonfinite(Context& ctx, ConstMatrixView<S> A) {
    const S big = std::numeric_limits<S>::max();
    const Index rows = A.rows;
    const Index e = K::first_index(
        ctx, A.rows * A.cols, FLOWPRIOR_LAMBDA(Index k) {
          const S v = A(k % rows, k / rows);
          return !(v <= big && v >= -big);
        });
    NonFinite r;
    if (e < 0) return r;
    r.i = e % rows;
    r.j = e / rows;
    S v = 0;
    Exec::copy_to_host(A.data + r.i + r.j * A.ld, 1, &v);
    r.value = static_cast<double>(v);
    return r;
  }

  /// Hutchinson's divergence estimate from K probes a sample (ode.md (9)): div_out(0, b) =
  /// S(acc / K), acc = sum over k, then i, of double(eps(i, c)) double(jv(i, c)), c = b K + k, in
  /// that order. div_out is a 1 x B view (a row of a matrix: any ld); eps and jv are (d, B K).
  /// One body per sample b.
  template <class S>
  static void probe_dots(Context& ctx, CView<S> eps, CView<S> jv, Index K, MatrixView<S> div_out) {
    const Index d = eps.rows;
    const double kd = static_cast<double>(K);
    Exec::launch(
        ctx, div_out.cols, FLOWPRIOR_LAMBDA(Index b) {
          double acc = 0;
          for (Index k = 0; k < K; ++k) {
            const S* e = eps.col(b * K + k);
            const S* p = jv.col(b * K + k);
            for (Index i = 0; i < d; ++i)
              acc += static_cast<double>(e[i]) * static_cast<double>(p[i]);
          }
          div_out(0, b) = static_cast<S>(acc / kd);
        });
  }

  /// The log-density of a standard normal plus an accumulated term, per column (ode.md (7)):
  /// logp_out[b] = S(-r2 / 2 - (d / 2) log(2 pi) + double(l(0, b))), r2 = sum_i double(z(i, b))^2
  /// in order, d = z.rows. l is a 1 x B view (a row of a matrix: any ld); empty adds nothing.
  /// One body per column; log(2 pi) is evaluated once on the host, as on the CPU.
  template <class S>
  static void normal_logpdf(Context& ctx, CView<S> z, CView<S> l, VectorView<S> logp_out) {
    const double log2pi = std::log(2.0 * 3.14159265358979323846);
    const Index d = z.rows;
    const bool with_l = !l.empty();
    Exec::launch(
        ctx, logp_out.size, FLOWPRIOR_LAMBDA(Index b) {
          const S* zc = z.col(b);
          double r2 = 0;
          for (Index i = 0; i < d; ++i)
            r2 += static_cast<double>(zc[i]) * static_cast<double>(zc[i]);
          const double base = -0.5 * r2 - 0.5 * static_cast<double>(d) * log2pi;
          logp_out[b] = static_cast<S>(with_l ? base + static_cast<double>(l(0, b)) : base);
        });
  }
};

}  // namespace kernel
}  // namespace flowprior
