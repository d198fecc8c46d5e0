/// @file
/// KernelBackend's flat-vector primitives of the optimizer, the moving average of the weights and
/// gradient clipping (docs/math/optim.md). The semantics of each primitive are those of the
/// CpuBackend primitive of the same name (docs/backends.md): coefficients in double, every element
/// evaluated in double and rounded to S once.
///
/// The element-wise updates run one body per element. The reductions to a host scalar run one
/// body per 1024-element chunk (kernel::kChunk, the blocks of the CPU's for_range), each looping
/// over its chunk in order, and the partials are combined in chunk order by one body
/// (Core::reduce_chunks, Core::max_chunks, Core::first_index): the same bits on every run.
/// No Eigen, no CUDA header.
#pragma once

#include <cmath>
#include <flowprior/backend/kernel_common.hpp>
#include <flowprior/backend/optim_args.hpp>
#include <flowprior/backend/views.hpp>
#include <flowprior/core/types.hpp>
#include <limits>

namespace flowprior {
namespace kernel {

template <class Exec>
struct OptimOps {
  using Context = typename Exec::Context;
  using K = Core<Exec>;

  /// One Adam / AdamW update of every element with the coefficients of a (optim_args.hpp),
  /// optim.md (1)-(4): per element, in double, g' = g + l2 p; m and v are updated and stored in
  /// S; p <- p shrink - step_size m / (sqrt(v) / bc2_sqrt + eps) with m and v as stored.
  /// params, m and v have the size of grads (contiguous vectors); grads is not modified.
  /// One body per element.
  template <class S>
  static void adam_update(Context& ctx, VectorView<S> params, CVec<S> grads, VectorView<S> m,
                          VectorView<S> v, const AdamStep& a) {
    const double b1 = a.beta1, b2 = a.beta2, l2 = a.l2, shrink = a.shrink;
    const double step = a.step_size, bc2 = a.bc2_sqrt, eps = a.eps;
    Exec::launch(
        ctx, params.size, FLOWPRIOR_LAMBDA(Index i) {
          using std::sqrt;
          const double p = static_cast<double>(params[i]);
          const double g = static_cast<double>(grads[i]) + l2 * p;  // (4)
          const double mi = b1 * static_cast<double>(m[i]) + (1.0 - b1) * g;
          const double vi = b2 * static_cast<double>(v[i]) + ((1.0 - b2) * g) * g;  // (1)
          m[i] = static_cast<S>(mi);
          v[i] = static_cast<S>(vi);
          const double ms = static_cast<double>(m[i]), vs = static_cast<double>(v[i]);
          params[i] = static_cast<S>(p * shrink - step * ms / (sqrt(vs) / bc2 + eps));  // (2)-(3)
        });
  }

  /// sum_i (x_i / divisor)^2 in double (divisor 1: sum_i x_i^2, no division), optim.md (5).
  /// One body per 1024-element chunk sums its elements in order; the chunks' partials are added
  /// in chunk order (the CPU adds one partial per thread: the last bits may differ). NaN or Inf
  /// if x holds one or the squares overflow; 0 for an empty x.
  template <class S>
  static double sum_squares(Context& ctx, ConstVectorView<S> x, double divisor = 1.0) {
    const Index n = x.size;
    const bool divide = divisor != 1.0;
    return K::reduce_chunks(
        ctx, div_up(n, kChunk), FLOWPRIOR_LAMBDA(Index c)->double {
          const Index i1 = (c + 1) * kChunk < n ? (c + 1) * kChunk : n;
          double acc = 0;
          for (Index i = c * kChunk; i < i1; ++i) {
            const double xi =
                divide ? static_cast<double>(x[i]) / divisor : static_cast<double>(x[i]);
            acc += xi * xi;
          }
          return acc;
        });
  }

  /// max_i |x_i| in double (0 if x is empty). NaN entries are skipped; +Inf is returned if there
  /// is an infinite entry. One body per chunk, then the largest of the chunks' maxima (the same
  /// value as the CPU's serial scan: a maximum does not depend on the order).
  template <class S>
  static double max_abs(Context& ctx, ConstVectorView<S> x) {
    const Index n = x.size;
    return K::max_chunks(
        ctx, div_up(n, kChunk), FLOWPRIOR_LAMBDA(Index c)->double {
          const Index i1 = (c + 1) * kChunk < n ? (c + 1) * kChunk : n;
          double amax = 0;
          for (Index i = c * kChunk; i < i1; ++i) {
            const double xi = static_cast<double>(x[i]);
            const double ai = xi < 0 ? -xi : xi;
            if (ai > amax) amax = ai;  // false for NaN: skipped
          }
          return amax;
        });
  }

  /// Index of the first NaN or Inf of x, or -1 (Core::first_index: each chunk finds its first,
  /// then the first chunk that has one wins).
  template <class S>
  static Index first_nonfinite(Context& ctx, ConstVectorView<S> x) {
    const S big = std::numeric_limits<S>::max();
    return K::first_index(
        ctx, x.size, FLOWPRIOR_LAMBDA(Index i) { return !(x[i] <= big && x[i] >= -big); });
  }

  /// x_i <- a x_i, evaluated in double (gradient clipping, optim.md (5)). One body per element.
  template <class S>
  static void scale_vec(Context& ctx, VectorView<S> x, double a) {
    Exec::launch(
        ctx, x.size,
        FLOWPRIOR_LAMBDA(Index i) { x[i] = static_cast<S>(static_cast<double>(x[i]) * a); });
  }

  /// w_i <- decay w_i + (1 - decay) p_i, evaluated in double (the moving average of the weights,
  /// optim.md (8)). p has the size of w. One body per element.
  template <class S>
  static void ema_update(Context& ctx, VectorView<S> w, CVec<S> p, double decay) {
    const double a = decay, b = 1.0 - decay;
    Exec::launch(
        ctx, w.size, FLOWPRIOR_LAMBDA(Index i) {
          w[i] = static_cast<S>(a * static_cast<double>(w[i]) + b * static_cast<double>(p[i]));
        });
  }
};

}  // namespace kernel
}  // namespace flowprior
