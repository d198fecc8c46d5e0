/// @file
/// KernelBackend's loss primitives: the path mix, the residuals with their per-row sums, the
/// scaled copy and the path gradient (docs/math/flow_matching.md (4)-(6), alignment.md (1)). The
/// semantics of each primitive are those of the CpuBackend primitive of the same name
/// (docs/backends.md). Operands of N*K columns hold K draws per row of x: column col = b*K + k
/// belongs to row b; each column's coefficients are path_coefficients(conv, t[col]) (core/
/// convention.hpp), evaluated in double and rounded to S, as on the CPU.
///
/// Work split: element-wise work one body per element (i fastest); a row's sum over its K
/// columns one body per row, in the CPU's order; a sum returned on the host one body, in the
/// CPU's order, or K::reduce_chunks where the CPU's order does not matter (a count). No Eigen, no
/// CUDA header.
#pragma once

#include <flowprior/backend/kernel_common.hpp>
#include <flowprior/core/convention.hpp>
#include <flowprior/core/types.hpp>

namespace flowprior {
namespace kernel {

template <class Exec>
struct LossOps {
  using Context = typename Exec::Context;
  using K = Core<Exec>;

  /// xt_out(:, col) = a x(:, col / K) + b eps(:, col) for the N*K columns of eps, with (a, b) of
  /// convention conv at t[col] (flow_matching.md (4)): one body per element. Returns the number
  /// of columns whose t is not in [0, 1] (NaN included), counted by K::reduce_chunks over chunks
  /// of kChunk columns (an integer count: exact in any order); those columns hold whatever the
  /// formula gives.
  template <class S>
  static Index path_mix(Context& ctx, Convention conv, CVec<S> t, CView<S> x, CView<S> eps,
                        MatrixView<S> xt_out, Index K_) {
    K::for_each_element(
        ctx, eps.rows, eps.cols, FLOWPRIOR_LAMBDA(Index i, Index col) {
          const PathCoefficients pc = path_coefficients(conv, double(t[col]));
          xt_out(i, col) = S(pc.a) * x(i, col / K_) + S(pc.b) * eps(i, col);
        });
    const Index cols = eps.cols;
    const double bad = K::reduce_chunks(
        ctx, div_up(cols, kChunk), FLOWPRIOR_LAMBDA(Index c) {
          const Index j1 = (c + 1) * kChunk < cols ? (c + 1) * kChunk : cols;
          double n = 0;
          for (Index j = c * kChunk; j < j1; ++j)
            if (!(t[j] >= S(0) && t[j] <= S(1))) n += 1;
          return n;
        });
    return static_cast<Index>(bad);
  }

  /// The residuals and their per-row sums (flow_matching.md (4)-(5)). In place over the N*K
  /// columns of v, which holds the field's output: r = sign v - (c x(:, col / K) + e eps(:, col)),
  /// with (c, e) of convention conv at t[col]: one body per element. Then one body per row b:
  /// the sum of r^2 over its K columns (in column order, each column in element order, in
  /// double), times row_scale, to row_out[b] (backend memory) and, if loss_per_row_out is not
  /// empty, rounded to S into loss_per_row_out[b]. Returns sum_b row_out[b], added in row order
  /// by one body (the CPU's bits).
  template <class S>
  static double path_residuals(Context& ctx, Convention conv, S sign, CVec<S> t, CView<S> x,
                               CView<S> eps, MatrixView<S> v, Index K_, double row_scale,
                               double* row_out, VectorView<S> loss_per_row_out) {
    const Index d = v.rows, N = x.cols;
    K::for_each_element(
        ctx, d, v.cols, FLOWPRIOR_LAMBDA(Index i, Index col) {
          const PathCoefficients pc = path_coefficients(conv, double(t[col]));
          v(i, col) = sign * v(i, col) - (S(pc.c) * x(i, col / K_) + S(pc.e) * eps(i, col));
        });
    if (N <= 0) return 0.0;
    const bool per_row = loss_per_row_out.size != 0;
    Exec::launch(
        ctx, N, FLOWPRIOR_LAMBDA(Index b) {
          double row = 0;
          for (Index k = 0; k < K_; ++k)
            for (Index i = 0; i < d; ++i) {
              const double r = v(i, b * K_ + k);
              row += r * r;
            }
          row *= row_scale;
          row_out[b] = row;
          if (per_row) loss_per_row_out[b] = static_cast<S>(row);
        });
    return sum_in_order(ctx, row_out, N);
  }

  /// The sum of x[0], ..., x[n - 1] (backend memory) added in order by one body, returned on
  /// the host (public: it defines a kernel body). Uses scratch slot 2.
  static double sum_in_order(Context& ctx, const double* x, Index n) {
    double* total = K::template scratch<double>(ctx, 2, 1);
    Exec::launch(
        ctx, 1, FLOWPRIOR_LAMBDA(Index) {
          double s = 0;
          for (Index b = 0; b < n; ++b) s += x[b];
          total[0] = s;
        });
    double out = 0;
    Exec::copy_to_host(total, 1, &out);
    return out;
  }

  /// B_out = alpha A, one body per element (the scaled residuals d_v of the losses).
  template <class S>
  static void scaled_copy(Context& ctx, S alpha, CView<S> A, MatrixView<S> B_out) {
    K::for_each_element(
        ctx, A.rows, A.cols, FLOWPRIOR_LAMBDA(Index i, Index j) { B_out(i, j) = alpha * A(i, j); });
  }

  /// The gradient of the path mix and of the target velocity with respect to the rows
  /// (alignment.md (1)): d_x(:, b) += sum_k [a dxt(:, col) - sign c dv(:, col)], col = b*K + k,
  /// with (a, c) of convention conv at t[col]. One body per element of d_x, adding its K terms
  /// in order (the CPU's bits). An empty dxt drops the a term (the prediction detached).
  template <class S>
  static void path_grad(Context& ctx, Convention conv, S sign, CVec<S> t, CView<S> dv, CView<S> dxt,
                        MatrixView<S> d_x, Index K_) {
    const bool through_v = !dxt.empty();
    K::for_each_element(
        ctx, d_x.rows, d_x.cols, FLOWPRIOR_LAMBDA(Index i, Index b) {
          S acc = d_x(i, b);
          for (Index k = 0; k < K_; ++k) {
            const Index col = b * K_ + k;
            const PathCoefficients pc = path_coefficients(conv, double(t[col]));
            const S a = S(pc.a), c_f = sign * S(pc.c);
            S g = -c_f * dv(i, col);
            if (through_v) g += a * dxt(i, col);
            acc += g;
          }
          d_x(i, b) = acc;
        });
  }
};

}  // namespace kernel
}  // namespace flowprior
