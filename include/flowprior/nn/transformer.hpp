/// @file
/// A pre-norm transformer block (timm's Block, ViT/MAR style) with hand-written gradients:
///
///   h <- h + Attn(LN1(h)),   h <- h + fc2(GELU(fc1(LN2(h))))       docs/math/transformer.md (1)
///
/// on token matrices (C, B T), column b T + j for token j of sequence b (nn/attention.hpp).
/// Parameter names follow timm: norm1.weight/.bias, attn.*, norm2.weight/.bias, mlp.fc1.*,
/// mlp.fc2.*.
#pragma once

#include <flowprior/core/activation.hpp>
#include <flowprior/core/types.hpp>
#include <flowprior/nn/attention.hpp>
#include <flowprior/nn/linear.hpp>
#include <flowprior/nn/params.hpp>
#include <flowprior/nn/workspace.hpp>
#include <string>

namespace flowprior {
namespace nn {

template <class S, class Backend>
struct TransformerBlock {
  using Context = typename Backend::Context;
  using Attention = MultiHeadAttention<S, Backend>;

  Index width = 0;   ///< C
  Index hidden = 0;  ///< the MLP's hidden width (mlp_ratio C)
  S ln_eps = S(1e-6);
  Activation act = Activation::GELU;
  Index n1_w = -1, n1_b = -1, n2_w = -1, n2_b = -1;
  Attention attn;
  Linear<S, Backend> fc1, fc2;

  /// Saved tensors: LN1's nhat and output a1 and 1/std, the attention's cache, LN2's nhat,
  /// output a2 and 1/std, the MLP's pre-activation z (hidden, n) and activation g.
  struct Cache {
    MatrixView<S> nhat1, a1, rstd1, nhat2, a2, rstd2, z, g;
    typename Attention::Cache attn;
  };
  /// Backward scratch: d_a (C, n), d_g (hidden, n), and the attention's.
  struct Scratch {
    MatrixView<S> d_a, d_g;
    typename Attention::Scratch attn;
  };

  /// Registers the block's parameters under `prefix` ("blocks.0"). mlp_hidden is the MLP's
  /// hidden width (timm: mlp_ratio 4 gives 4 C).
  static TransformerBlock make(ParamLayout& layout, const std::string& prefix, Index width,
                               Index heads, Index mlp_hidden, bool qk_norm, S ln_eps = S(1e-6),
                               Activation act = Activation::GELU) {
    if (mlp_hidden <= 0)
      raise_config("TransformerBlock",
                   "mlp_hidden must be >= 1, got " + std::to_string(mlp_hidden));
    TransformerBlock t;
    t.width = width;
    t.hidden = mlp_hidden;
    t.ln_eps = ln_eps;
    t.act = act;
    t.n1_w = layout.add(prefix + ".norm1.weight", {width});
    t.n1_b = layout.add(prefix + ".norm1.bias", {width});
    t.attn = Attention::make(layout, prefix + ".attn", width, heads, qk_norm, ln_eps);
    t.n2_w = layout.add(prefix + ".norm2.weight", {width});
    t.n2_b = layout.add(prefix + ".norm2.bias", {width});
    t.fc1 = Linear<S, Backend>::make(layout, prefix + ".mlp.fc1", width, mlp_hidden);
    t.fc2 = Linear<S, Backend>::make(layout, prefix + ".mlp.fc2", mlp_hidden, width);
    return t;
  }

  Cache carve(Arena<S, Backend>& a, Index batch, Index tokens) const {
    const Index n = checked_mul("TransformerBlock", "batch x tokens", batch, tokens);
    Cache c;
    c.nhat1 = a.take(width, n);
    c.a1 = a.take(width, n);
    c.rstd1 = a.take(1, n);
    c.attn = attn.carve(a, batch, tokens);
    c.nhat2 = a.take(width, n);
    c.a2 = a.take(width, n);
    c.rstd2 = a.take(1, n);
    c.z = a.take(hidden, n);
    c.g = a.take(hidden, n);
    return c;
  }
  Scratch carve_scratch(Arena<S, Backend>& a, Index batch, Index tokens) const {
    const Index n = checked_mul("TransformerBlock", "batch x tokens", batch, tokens);
    Scratch s;
    s.d_a = a.take(width, n);
    s.d_g = a.take(hidden, n);
    s.attn = attn.carve_scratch(a, batch, tokens);
    return s;
  }

  /// h (C, B T) <- block(h), in place; the cache k must come from carve(B, T).
  void forward(Context& ctx, const S* p, MatrixView<S> h, const Cache& k) const {
    Backend::norm_modulate_forward(ctx, ConstMatrixView<S>(h), p + n1_w, p + n1_b, ln_eps,
                                   ConstMatrixView<S>(), ConstMatrixView<S>(), k.nhat1,
                                   k.rstd1.data, k.a1);
    // The attention's output lands in a2 (free until LN2) and is added to the residual.
    attn.forward(ctx, p, k.a1, k.a2, k.attn);
    Backend::axpy(ctx, S(1), ConstMatrixView<S>(k.a2), h);
    Backend::norm_modulate_forward(ctx, ConstMatrixView<S>(h), p + n2_w, p + n2_b, ln_eps,
                                   ConstMatrixView<S>(), ConstMatrixView<S>(), k.nhat2,
                                   k.rstd2.data, k.a2);
    fc1.forward(ctx, p, k.a2, k.z);
    Backend::activation_forward(ctx, act, k.z, k.g);
    // h += fc2 g + b: the bias and the product accumulate onto the residual.
    Backend::add_cols(ctx, p + fc2.b, h);
    Backend::gemm(ctx, true, false, S(1), fc2.wt(p), ConstMatrixView<S>(k.g), S(1), h);
  }

  /// On entry d_h holds dL/dh_out; on exit dL/dh_in (in place). With d_p non-null the parameter
  /// gradients accumulate into it.                                 docs/math/transformer.md (2)
  void backward(Context& ctx, const S* p, const Cache& k, MatrixView<S> d_h, S* d_p,
                const Scratch& s) const {
    // MLP branch: d_g = W2^T d_h, d_z = act'(z) d_g, d_a2 = W1^T d_z, then LN2 into d_h.
    if (d_p != nullptr) fc2.backward_params(ctx, k.g, d_h, d_p);
    fc2.backward_input(ctx, p, d_h, s.d_g, false);
    Backend::activation_backward(ctx, act, k.z, s.d_g, s.d_g);
    if (d_p != nullptr) fc1.backward_params(ctx, k.a2, s.d_g, d_p);
    fc1.backward_input(ctx, p, s.d_g, s.d_a, false);
    Backend::norm_modulate_backward(ctx, k.nhat2, k.rstd2.data, p + n2_w, p + n2_b,
                                    ConstMatrixView<S>(), s.d_a, d_h, MatrixView<S>(),
                                    MatrixView<S>(), d_p != nullptr ? d_p + n2_w : nullptr,
                                    d_p != nullptr ? d_p + n2_b : nullptr);
    // Attention branch: d_a1 = Attn^T d_h, then LN1 into d_h.
    Backend::fill(ctx, s.d_a, S(0));
    attn.backward(ctx, p, k.a1, k.attn, d_h, s.d_a, d_p, s.attn);
    Backend::norm_modulate_backward(ctx, k.nhat1, k.rstd1.data, p + n1_w, p + n1_b,
                                    ConstMatrixView<S>(), s.d_a, d_h, MatrixView<S>(),
                                    MatrixView<S>(), d_p != nullptr ? d_p + n1_w : nullptr,
                                    d_p != nullptr ? d_p + n1_b : nullptr);
  }
};

}  // namespace nn
}  // namespace flowprior
