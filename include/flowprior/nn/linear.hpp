/// @file
/// Linear layer y = W x + b with the PyTorch weight layout: W is (out, in) row-major, which is
/// the column-major matrix W^T of shape (in, out). Equations: docs/math/linear.md.
#pragma once

#include <cmath>
#include <flowprior/core/random.hpp>
#include <flowprior/core/types.hpp>
#include <flowprior/nn/params.hpp>
#include <string>

namespace flowprior {
namespace nn {

/// A Linear layer: offsets of its weight and bias inside a flat parameter vector.
template <class S, class Backend>
struct Linear {
  /// The backend context every method that runs primitives takes first.
  using Context = typename Backend::Context;

  Index in = 0;
  Index out = 0;
  Index w = -1;  ///< offset of the weight (out, in)
  Index b = -1;  ///< offset of the bias (out); -1 without bias

  /// Registers `prefix.weight` (out, in) and `prefix.bias` (out) in the layout.
  static Linear make(ParamLayout& layout, const std::string& prefix, Index in_features,
                     Index out_features, bool bias = true) {
    Linear l;
    l.in = in_features;
    l.out = out_features;
    l.w = layout.add(prefix + ".weight", {out_features, in_features});
    if (bias) l.b = layout.add(prefix + ".bias", {out_features});
    return l;
  }

  /// W^T as a column-major (in, out) view.
  ConstMatrixView<S> wt(const S* p) const { return {p + w, in, out, in}; }

  /// y_out = W x + b.  x (in, B), y_out (out, B).                           linear.md (1)
  void forward(Context& ctx, const S* p, ConstMatrixView<S> x, MatrixView<S> y_out) const {
    if (b >= 0) {
      Backend::broadcast_cols(ctx, p + b, y_out);
      Backend::gemm(ctx, true, false, S(1), wt(p), x, S(1), y_out);
    } else {
      Backend::gemm(ctx, true, false, S(1), wt(p), x, S(0), y_out);
    }
  }

  /// d_x (+)= W^T d_y: accumulates if `accumulate`, else overwrites.        linear.md (2)
  void backward_input(Context& ctx, const S* p, ConstMatrixView<S> d_y, MatrixView<S> d_x,
                      bool accumulate) const {
    Backend::gemm(ctx, false, false, S(1), wt(p), d_y, accumulate ? S(1) : S(0), d_x);
  }

  /// d_W += d_y x^T ;  d_b += sum over the batch of d_y (accumulates).      linear.md (3)-(4)
  void backward_params(Context& ctx, ConstMatrixView<S> x, ConstMatrixView<S> d_y, S* d_p) const {
    Backend::gemm(ctx, false, true, S(1), x, d_y, S(1), MatrixView<S>(d_p + w, in, out, in));
    if (b >= 0) Backend::sum_cols(ctx, d_y, d_p + b);
  }

  /// dy_out = W dx (tangent propagation: the bias drops out).               linear.md (5)
  void jvp(Context& ctx, const S* p, ConstMatrixView<S> dx, MatrixView<S> dy_out) const {
    Backend::gemm(ctx, true, false, S(1), wt(p), dx, S(0), dy_out);
  }

  /// Xavier-uniform weight (bound sqrt(6 / (in + out))) and zero bias, as torch.nn.init.
  void init_xavier(S* p, Rng& rng) const {
    const double bound = std::sqrt(6.0 / static_cast<double>(in + out));
    for (Index i = 0; i < in * out; ++i) p[w + i] = static_cast<S>(uniform(rng, -bound, bound));
    init_bias_zero(p);
  }
  /// Weight ~ N(0, std^2), zero bias.
  void init_normal(S* p, Rng& rng, double stddev) const {
    for (Index i = 0; i < in * out; ++i) p[w + i] = static_cast<S>(stddev * normal01(rng));
    init_bias_zero(p);
  }
  /// Zero weight and bias.
  void init_zero(S* p) const {
    for (Index i = 0; i < in * out; ++i) p[w + i] = S(0);
    init_bias_zero(p);
  }
  void init_bias_zero(S* p) const {
    if (b >= 0)
      for (Index i = 0; i < out; ++i) p[b + i] = S(0);
  }
};

}  // namespace nn
}  // namespace flowprior
