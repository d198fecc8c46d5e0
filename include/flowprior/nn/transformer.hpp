/// @file
/// Transformer blocks with hand-written gradients, on token matrices (C, B T), column b T + j for
/// token j of sequence b (nn/attention.hpp):
///
/// - TransformerBlock, pre-norm (timm's Block, ViT/MAR style):
///     h <- h + Attn(LN1(h)),   h <- h + fc2(GELU(fc1(LN2(h))))     docs/math/transformer.md (1)
///   Parameter names follow timm: norm1.weight/.bias, attn.*, norm2.weight/.bias, mlp.fc1.*,
///   mlp.fc2.*.
/// - AdaLNTransformerBlock, the same block conditioned on one vector per sequence through adaLN
///   modulation with gates (DiT's DiTBlock, Peebles & Xie 2023):  transformer.md (3)-(7)
///   Parameter names follow DiT: attn.*, mlp.fc1.*, mlp.fc2.*, adaLN_modulation.1.*.
///   SequenceMap holds the token -> sequence map it broadcasts the modulations with.
#pragma once

#include <flowprior/core/activation.hpp>
#include <flowprior/core/check.hpp>
#include <flowprior/core/random.hpp>
#include <flowprior/core/size.hpp>
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

/// The token -> sequence map of B sequences of L tokens, in backend memory: entry b L + j is b.
/// It is the `group` array through which the per-sequence modulations of AdaLNTransformerBlock
/// reach every token of their sequence (norm_modulate_*, gated_residual_*). Written by the
/// backend's sequence_map primitive; the buffer never shrinks, so a map no longer than one
/// written before allocates nothing. One map serves every block of a model.
template <class Backend>
class SequenceMap {
 public:
  /// Writes the map of `batch` sequences of `tokens` tokens and returns it (batch x tokens
  /// entries). Throws config_error unless both are >= 1.
  const Index* update(typename Backend::Context& ctx, Index batch, Index tokens) {
    const char* w = "SequenceMap";
    if (batch < 1 || tokens < 1)
      raise_config(w, "batch and tokens must be >= 1, got batch " + std::to_string(batch) +
                          ", tokens " + std::to_string(tokens));
    const Index n = checked_mul(w, "batch x tokens", batch, tokens);
    Backend::resize(map_, n);
    Backend::sequence_map(ctx, tokens, VectorView<Index>(map_.data(), n));
    batch_ = batch;
    tokens_ = tokens;
    return map_.data();
  }
  /// The map of the last update (null before the first).
  const Index* data() const { return batch_ < 0 ? nullptr : map_.data(); }
  Index batch() const { return batch_; }
  Index tokens() const { return tokens_; }

 private:
  typename Backend::template Buffer<Index> map_;
  Index batch_ = -1, tokens_ = -1;
};

/// DiT's block (DiTBlock of Peebles & Xie 2023, "adaLN-Zero"): the pre-norm transformer block
/// whose LayerNorms have no affine parameters and are modulated, and whose branches are gated, by
/// a Linear map of SiLU(c), c one conditioning column (a time or class embedding) per sequence:
///
///   [shift_msa; scale_msa; gate_msa; shift_mlp; scale_mlp; gate_mlp] = W_ada SiLU(c) + b_ada
///   h <- h + gate_msa * Attn(LN1(h) * (1 + scale_msa) + shift_msa)
///   h <- h + gate_mlp * MLP(LN2(h) * (1 + scale_mlp) + shift_mlp)     transformer.md (3)-(7)
///
/// on h (C, B L) and c (cond_dim, B); every modulation column of sequence b acts on the L token
/// columns of sequence b (through the SequenceMap given to carve). Parameters, in DiT's
/// registration order: attn.* (MultiHeadAttention, timm names), mlp.fc1.*, mlp.fc2.*,
/// adaLN_modulation.1.weight (6C, cond_dim) and .bias (6C); norm1 and norm2 have none.
template <class S, class Backend>
struct AdaLNTransformerBlock {
  using Context = typename Backend::Context;
  using Attention = MultiHeadAttention<S, Backend>;

  Index width = 0;     ///< C
  Index hidden = 0;    ///< the MLP's hidden width (mlp_ratio C)
  Index cond_dim = 0;  ///< rows of the conditioning c
  S ln_eps = S(1e-6);
  Activation act = Activation::GELU;
  Attention attn;
  Linear<S, Backend> fc1, fc2, ada;

  /// Saved tensors of one forward of B sequences of L tokens (n = B L): a copy of c and s =
  /// SiLU(c) (cond_dim, B), the modulations mod (6C, B), LN1's nhat and 1/std and the modulated
  /// a1 (C, n), the attention's cache and output y1 (C, n), LN2's nhat, 1/std and a2, the MLP's
  /// pre-activation z and activation g (hidden, n) and output y2 (C, n). map: the SequenceMap
  /// whose token -> sequence map the modulations are broadcast with (read at every call).
  struct Cache {
    Index batch = 0, tokens = 0;
    const SequenceMap<Backend>* map = nullptr;
    MatrixView<S> c, s, mod, nhat1, a1, rstd1, y1, nhat2, a2, rstd2, z, g, y2;
    typename Attention::Cache attn;
    /// Chunk i of the modulations (0 shift_msa, 1 scale_msa, 2 gate_msa, 3 shift_mlp,
    /// 4 scale_mlp, 5 gate_mlp), (C, B).
    ConstMatrixView<S> chunk(Index i) const {
      const Index C = mod.rows / 6;
      return ConstMatrixView<S>(mod).row_block(i * C, C);
    }
  };
  /// Backward scratch: d_a and d_y (C, n), d_g (hidden, n), the modulations' gradient d_mod
  /// (6C, B), d_s (cond_dim, B), and the attention's.
  struct Scratch {
    Index batch = 0, tokens = 0;
    MatrixView<S> d_a, d_y, d_g, d_mod, d_s;
    typename Attention::Scratch attn;
  };

  /// Registers the block's parameters under `prefix` ("blocks.0"). mlp_hidden is the MLP's
  /// hidden width (DiT: mlp_ratio 4 gives 4 C), cond_dim the rows of the conditioning (DiT: C).
  /// Throws config_error for a non-positive mlp_hidden or cond_dim, and as MultiHeadAttention
  /// for width and heads.
  static AdaLNTransformerBlock make(ParamLayout& layout, const std::string& prefix, Index width,
                                    Index heads, Index mlp_hidden, Index cond_dim, bool qk_norm,
                                    S ln_eps = S(1e-6), Activation act = Activation::GELU) {
    const char* w = "AdaLNTransformerBlock";
    if (mlp_hidden <= 0)
      raise_config(w, "mlp_hidden must be >= 1, got " + std::to_string(mlp_hidden));
    if (cond_dim <= 0) raise_config(w, "cond_dim must be >= 1, got " + std::to_string(cond_dim));
    if (!(ln_eps > S(0))) raise_config(w, "ln_eps must be > 0");
    AdaLNTransformerBlock t;
    t.width = width;
    t.hidden = mlp_hidden;
    t.cond_dim = cond_dim;
    t.ln_eps = ln_eps;
    t.act = act;
    t.attn = Attention::make(layout, prefix + ".attn", width, heads, qk_norm, ln_eps);
    t.fc1 = Linear<S, Backend>::make(layout, prefix + ".mlp.fc1", width, mlp_hidden);
    t.fc2 = Linear<S, Backend>::make(layout, prefix + ".mlp.fc2", mlp_hidden, width);
    t.ada = Linear<S, Backend>::make(layout, prefix + ".adaLN_modulation.1", cond_dim,
                                     checked_mul(w, "6 x width", Index(6), width));
    return t;
  }

  /// The forward caches of B sequences of L tokens. The cache keeps the address of map, which
  /// must hold the map of L tokens per sequence for at least B sequences when forward and
  /// backward run (SequenceMap::update(ctx, B, L), before or after carving).
  Cache carve(Arena<S, Backend>& a, Index batch, Index tokens,
              const SequenceMap<Backend>& map) const {
    const Index n = checked_mul("AdaLNTransformerBlock", "batch x tokens", batch, tokens);
    Cache c;
    c.batch = batch;
    c.tokens = tokens;
    c.map = &map;
    c.c = a.take(cond_dim, batch);
    c.s = a.take(cond_dim, batch);
    c.mod = a.take(6 * width, batch);
    c.nhat1 = a.take(width, n);
    c.a1 = a.take(width, n);
    c.rstd1 = a.take(1, n);
    c.attn = attn.carve(a, batch, tokens);
    c.y1 = a.take(width, n);
    c.nhat2 = a.take(width, n);
    c.a2 = a.take(width, n);
    c.rstd2 = a.take(1, n);
    c.z = a.take(hidden, n);
    c.g = a.take(hidden, n);
    c.y2 = a.take(width, n);
    return c;
  }
  Scratch carve_scratch(Arena<S, Backend>& a, Index batch, Index tokens) const {
    const Index n = checked_mul("AdaLNTransformerBlock", "batch x tokens", batch, tokens);
    Scratch s;
    s.batch = batch;
    s.tokens = tokens;
    s.d_a = a.take(width, n);
    s.d_y = a.take(width, n);
    s.d_g = a.take(hidden, n);
    s.d_mod = a.take(6 * width, batch);
    s.d_s = a.take(cond_dim, batch);
    s.attn = attn.carve_scratch(a, batch, tokens);
    return s;
  }

  /// h (C, B L) <- block(h, c), in place, c (cond_dim, B) the conditioning of each sequence; the
  /// cache k must come from carve(B, L, map). Throws shape_error for shapes that do not match
  /// the cache, config_error when the cache's SequenceMap does not hold the map of its sizes.
  ///                                                                  transformer.md (3)-(7)
  void forward(Context& ctx, const S* p, ConstMatrixView<S> c, MatrixView<S> h,
               const Cache& k) const {
    const char* w = "AdaLNTransformerBlock::forward";
    const Index* group = group_of(w, k);
    check_shape(w, "h", h, width, k.batch * k.tokens);
    check_shape(w, "c", c, cond_dim, k.batch);
    // (3): the modulations from s = SiLU(c); c is kept for SiLU' in backward.
    Backend::copy(ctx, c, k.c);
    Backend::activation_forward(ctx, Activation::SiLU, ConstMatrixView<S>(k.c), k.s);
    ada.forward(ctx, p, k.s, k.mod);
    const S* none = nullptr;  // no LayerNorm affine
    // (4)-(5): attention branch.
    Backend::norm_modulate_forward(ctx, ConstMatrixView<S>(h), none, none, ln_eps, k.chunk(0),
                                   k.chunk(1), k.nhat1, k.rstd1.data, k.a1, group);
    attn.forward(ctx, p, k.a1, k.y1, k.attn);
    Backend::gated_residual_forward(ctx, k.chunk(2), k.y1, h, group);
    // (6)-(7): MLP branch.
    Backend::norm_modulate_forward(ctx, ConstMatrixView<S>(h), none, none, ln_eps, k.chunk(3),
                                   k.chunk(4), k.nhat2, k.rstd2.data, k.a2, group);
    fc1.forward(ctx, p, k.a2, k.z);
    Backend::activation_forward(ctx, act, k.z, k.g);
    fc2.forward(ctx, p, k.g, k.y2);
    Backend::gated_residual_forward(ctx, k.chunk(5), k.y2, h, group);
  }

  /// Backward of the last forward on the cache k. On entry d_h holds dL/dh_out, on exit dL/dh_in
  /// (in place). With d_p non-null the parameter gradients accumulate into it; with d_c
  /// non-empty (cond_dim, B), d_c += dL/dc. With neither, the conditioning path is skipped.
  ///                                                                  transformer.md (8)-(14)
  void backward(Context& ctx, const S* p, const Cache& k, MatrixView<S> d_h, MatrixView<S> d_c,
                S* d_p, const Scratch& s) const {
    const char* w = "AdaLNTransformerBlock::backward";
    const Index* group = group_of(w, k);
    if (s.batch != k.batch || s.tokens != k.tokens)
      raise_config(w, "the scratch was carved for " + std::to_string(s.batch) + " x " +
                          std::to_string(s.tokens) + " tokens, the cache for " +
                          std::to_string(k.batch) + " x " + std::to_string(k.tokens));
    check_shape(w, "d_h", d_h, width, k.batch * k.tokens);
    if (!d_c.empty()) check_shape(w, "d_c", d_c, cond_dim, k.batch);
    const bool cond = d_p != nullptr || !d_c.empty();
    // d_mod collects the sums over the tokens of each sequence (accumulated through the group).
    if (cond) Backend::fill(ctx, s.d_mod, S(0));
    auto d_chunk = [&](Index i) {
      return cond ? s.d_mod.row_block(i * width, width) : MatrixView<S>();
    };
    const S* none = nullptr;
    S* no_grad = nullptr;
    // MLP branch: (8) the gate, the MLP, (9)-(10) the modulated LN2 into d_h.
    Backend::gated_residual_backward(ctx, k.chunk(5), k.y2, d_h, s.d_y, d_chunk(5), group);
    if (d_p != nullptr) fc2.backward_params(ctx, k.g, s.d_y, d_p);
    fc2.backward_input(ctx, p, s.d_y, s.d_g, false);
    Backend::activation_backward(ctx, act, k.z, s.d_g, s.d_g);
    if (d_p != nullptr) fc1.backward_params(ctx, k.a2, s.d_g, d_p);
    fc1.backward_input(ctx, p, s.d_g, s.d_a, false);
    Backend::norm_modulate_backward(ctx, k.nhat2, k.rstd2.data, none, none, k.chunk(4), s.d_a, d_h,
                                    d_chunk(3), d_chunk(4), no_grad, no_grad, group);
    // Attention branch: (11) the gate, the attention, (12) the modulated LN1 into d_h.
    Backend::gated_residual_backward(ctx, k.chunk(2), k.y1, d_h, s.d_y, d_chunk(2), group);
    Backend::fill(ctx, s.d_a, S(0));
    attn.backward(ctx, p, k.a1, k.attn, s.d_y, s.d_a, d_p, s.attn);
    Backend::norm_modulate_backward(ctx, k.nhat1, k.rstd1.data, none, none, k.chunk(1), s.d_a, d_h,
                                    d_chunk(0), d_chunk(1), no_grad, no_grad, group);
    // Conditioning: (13) the modulation Linear, (14) SiLU.
    if (d_p != nullptr) ada.backward_params(ctx, k.s, s.d_mod, d_p);
    if (d_c.empty()) return;
    ada.backward_input(ctx, p, s.d_mod, s.d_s, false);
    Backend::activation_backward(ctx, Activation::SiLU, k.c, s.d_s, s.d_s);
    Backend::axpy(ctx, S(1), ConstMatrixView<S>(s.d_s), d_c);
  }

  /// DiT's initialisation into host memory p (upload it with copy_from_host): Xavier-uniform
  /// Linear weights (qkv as one (3C, C) matrix) and zero biases, qk-norm weights 1 and biases 0;
  /// adaLN_modulation zero when zero_modulation (DiT's adaLN-Zero: the block is then the
  /// identity), else Xavier-uniform with zero bias.
  void init(S* p, Rng& rng, bool zero_modulation = true) const {
    attn.qkv.init_xavier(p, rng);
    if (attn.qk_norm)
      for (Index i = 0; i < attn.head_dim; ++i) {
        p[attn.qn_w + i] = p[attn.kn_w + i] = S(1);
        p[attn.qn_b + i] = p[attn.kn_b + i] = S(0);
      }
    attn.proj.init_xavier(p, rng);
    fc1.init_xavier(p, rng);
    fc2.init_xavier(p, rng);
    if (zero_modulation)
      ada.init_zero(p);
    else
      ada.init_xavier(p, rng);
  }

 private:
  // The token -> sequence map of the cache's sizes: the SequenceMap given to carve must have
  // been updated for the cache's tokens per sequence and at least its batch (a longer map's
  // first B L entries are the same).
  static const Index* group_of(const char* w, const Cache& k) {
    const SequenceMap<Backend>* m = k.map;
    if (m == nullptr || m->data() == nullptr || m->tokens() != k.tokens || m->batch() < k.batch)
      raise_config(w,
                   "the SequenceMap of the cache must be updated for " + std::to_string(k.batch) +
                       " sequences of " + std::to_string(k.tokens) + " tokens, holds " +
                       (m == nullptr || m->data() == nullptr
                            ? std::string("none")
                            : std::to_string(m->batch()) + " of " + std::to_string(m->tokens())));
    return m->data();
  }
};

}  // namespace nn
}  // namespace flowprior
