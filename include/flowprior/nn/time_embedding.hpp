/// @file
/// Sinusoidal time embedding followed by its MLP (TimestepEmbedder of the released flow head):
///   e = [cos(t f), sin(t f)],  f_i = exp(-ln(max_period) i / half),  c = W2 SiLU(W0 e + b0) + b2.
/// t is used raw (the released flow head does not multiply it by 1000).
/// Equations: docs/math/time_embedding.md. t carries no gradient (it is never optimised).
#pragma once

#include <flowprior/core/activation.hpp>
#include <flowprior/nn/linear.hpp>
#include <flowprior/nn/params.hpp>
#include <flowprior/nn/workspace.hpp>
#include <string>

namespace flowprior {
namespace nn {

template <class S, class Backend>
struct TimeEmbedding {
  /// The backend context every method that runs primitives takes first.
  using Context = typename Backend::Context;

  Index freq_dim = 256;  ///< number of sinusoidal features (even)
  Index width = 0;
  S max_period = S(10000);
  Linear<S, Backend> mlp0;  ///< `prefix.mlp.0`: freq_dim -> width
  Linear<S, Backend> mlp2;  ///< `prefix.mlp.2`: width -> width

  /// What backward needs: the features e, the pre-activation z and the activation s = SiLU(z).
  struct Cache {
    MatrixView<S> e, z, s;
  };

  static TimeEmbedding make(ParamLayout& layout, const std::string& prefix, Index freq_dim,
                            Index width, S max_period) {
    TimeEmbedding m;
    m.freq_dim = freq_dim;
    m.width = width;
    m.max_period = max_period;
    m.mlp0 = Linear<S, Backend>::make(layout, prefix + ".mlp.0", freq_dim, width);
    m.mlp2 = Linear<S, Backend>::make(layout, prefix + ".mlp.2", width, width);
    return m;
  }

  Cache carve(Arena<S, Backend>& a, Index batch) const {
    return {a.take(freq_dim, batch), a.take(width, batch), a.take(width, batch)};
  }

  /// c_out (width, B) from t (B).                           time_embedding.md (1)-(2)
  void forward(Context& ctx, const S* p, ConstVectorView<S> t, const Cache& cache,
               MatrixView<S> c_out) const {
    Backend::time_features(ctx, t, max_period, cache.e);
    mlp0.forward(ctx, p, cache.e, cache.z);
    Backend::activation_forward(ctx, Activation::SiLU, cache.z, cache.s);
    mlp2.forward(ctx, p, cache.s, c_out);
  }

  /// Parameter gradients (accumulated into d_p) from d_c; `scratch` is (width, B).
  ///                                                         time_embedding.md (3)-(4)
  void backward(Context& ctx, const S* p, const Cache& cache, ConstMatrixView<S> d_c, S* d_p,
                MatrixView<S> scratch) const {
    mlp2.backward_params(ctx, cache.s, d_c, d_p);
    mlp2.backward_input(ctx, p, d_c, scratch, false);                                // d_s
    Backend::activation_backward(ctx, Activation::SiLU, cache.z, scratch, scratch);  // d_z
    mlp0.backward_params(ctx, cache.e, scratch, d_p);
  }

  /// Released initialisation: both weights N(0, 0.02^2), zero biases.
  void init(S* p, Rng& rng) const {
    mlp0.init_normal(p, rng, 0.02);
    mlp2.init_normal(p, rng, 0.02);
  }
};

}  // namespace nn
}  // namespace flowprior
