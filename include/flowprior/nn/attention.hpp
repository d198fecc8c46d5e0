/// @file
/// Multi-head self-attention over token sequences (scaled dot product, softmax, optional qk-norm
/// as in timm's Attention with qk_norm=True, which MAR uses), with hand-written gradients.
/// Equations and memory: docs/math/attention.md.
///
/// Layout: a batch of B sequences of T tokens of width C is one (C, B*T) matrix, column b*T + j
/// for token j of sequence b (docs/conventions.md "layout"). Every Linear acts on all B*T
/// columns at once; the per-(sequence, head) products run as one batched product over the
/// (B, H) grid (Backend::gemm_batched), reading each head's rows in place (no permutation pass).
/// Parameter names follow timm: qkv.weight (3C, C), qkv.bias, q_norm.weight/.bias and
/// k_norm.weight/.bias (head_dim, with qk_norm), proj.weight (C, C), proj.bias.
#pragma once

#include <cmath>
#include <flowprior/backend/batch_args.hpp>
#include <flowprior/core/check.hpp>
#include <flowprior/core/types.hpp>
#include <flowprior/nn/linear.hpp>
#include <flowprior/nn/params.hpp>
#include <flowprior/nn/workspace.hpp>
#include <string>

namespace flowprior {
namespace nn {

template <class S, class Backend>
struct MultiHeadAttention {
  /// The backend context every method that runs primitives takes first.
  using Context = typename Backend::Context;

  Index width = 0;     ///< C
  Index heads = 0;     ///< H
  Index head_dim = 0;  ///< C / H
  bool qk_norm = false;
  S ln_eps = S(1e-6);
  Linear<S, Backend> qkv, proj;
  Index qn_w = -1, qn_b = -1, kn_w = -1, kn_b = -1;  ///< qk-norm affine offsets

  /// Saved tensors of one forward: the projections qkv (3C, BT); with qk-norm the normalised
  /// q and k before (qhat, khat) and after (qn, kn) the LayerNorm's affine map (C, BT each) and
  /// their 1/std (BT, H: column h for head h); the probabilities P (T, T H B), block (b, h) at
  /// columns (b H + h) T; the heads' outputs before the projection o (C, BT).
  struct Cache {
    Index batch = 0, tokens = 0;
    MatrixView<S> qkv, qhat, khat, qn, kn, rstd_q, rstd_k, P, o;
  };
  /// Backward scratch: d_o (C, BT), d_qkv (3C, BT), dP (T, T H B), and with qk-norm the
  /// gradients of the normalised q and k (C, BT each).
  struct Scratch {
    MatrixView<S> d_o, d_qkv, dP, d_qn, d_kn;
  };

  /// Registers the parameters under `prefix` ("blocks.0.attn"). Throws config_error unless
  /// heads >= 1 divides width.
  static MultiHeadAttention make(ParamLayout& layout, const std::string& prefix, Index width,
                                 Index heads, bool qk_norm, S ln_eps = S(1e-6)) {
    if (width <= 0 || heads <= 0 || width % heads != 0)
      raise_config("MultiHeadAttention", "heads must be >= 1 and divide width, got width " +
                                             std::to_string(width) + ", heads " +
                                             std::to_string(heads));
    MultiHeadAttention a;
    a.width = width;
    a.heads = heads;
    a.head_dim = width / heads;
    a.qk_norm = qk_norm;
    a.ln_eps = ln_eps;
    a.qkv = Linear<S, Backend>::make(layout, prefix + ".qkv", width, 3 * width);
    if (qk_norm) {
      a.qn_w = layout.add(prefix + ".q_norm.weight", {a.head_dim});
      a.qn_b = layout.add(prefix + ".q_norm.bias", {a.head_dim});
      a.kn_w = layout.add(prefix + ".k_norm.weight", {a.head_dim});
      a.kn_b = layout.add(prefix + ".k_norm.bias", {a.head_dim});
    }
    a.proj = Linear<S, Backend>::make(layout, prefix + ".proj", width, width);
    return a;
  }

  /// The forward caches of B sequences of T tokens.
  Cache carve(Arena<S, Backend>& a, Index batch, Index tokens) const {
    Cache c;
    c.batch = batch;
    c.tokens = tokens;
    const Index n = checked_mul("MultiHeadAttention", "batch x tokens", batch, tokens);
    c.qkv = a.take(3 * width, n);
    if (qk_norm) {
      c.qhat = a.take(width, n);
      c.khat = a.take(width, n);
      c.qn = a.take(width, n);
      c.kn = a.take(width, n);
      c.rstd_q = a.take(n, heads);
      c.rstd_k = a.take(n, heads);
    }
    c.P = a.take(tokens, checked_mul("MultiHeadAttention", "tokens x heads x batch", n, heads));
    c.o = a.take(width, n);
    return c;
  }
  Scratch carve_scratch(Arena<S, Backend>& a, Index batch, Index tokens) const {
    Scratch s;
    const Index n = checked_mul("MultiHeadAttention", "batch x tokens", batch, tokens);
    s.d_o = a.take(width, n);
    s.d_qkv = a.take(3 * width, n);
    s.dP = a.take(tokens, checked_mul("MultiHeadAttention", "tokens x heads x batch", n, heads));
    if (qk_norm) {
      s.d_qn = a.take(width, n);
      s.d_kn = a.take(width, n);
    }
    return s;
  }

  /// y_out (C, BT) = attention(x), x (C, BT): the cache k must come from carve(B, T).
  ///   [q; k; v] = W_qkv x + b,  (qk-norm: q_h, k_h <- LayerNorm_dh(q_h), LayerNorm_dh(k_h)),
  ///   P_bh = softmax_cols(k_bh^T q_bh / sqrt(dh)),  o_bh = v_bh P_bh,  y = W_o o + b_o
  ///                                                                 attention.md (1)-(3)
  void forward(Context& ctx, const S* p, ConstMatrixView<S> x, MatrixView<S> y_out,
               const Cache& k) const {
    qkv.forward(ctx, p, x, k.qkv);
    const ConstMatrixView<S> q = queries(k), key = keys(k);
    if (qk_norm) {
      for (Index h = 0; h < heads; ++h) {
        norm(ctx, p + qn_w, p + qn_b, h, k.qhat, k.rstd_q, k.qn, k);
        norm(ctx, p + kn_w, p + kn_b, heads + h, k.khat, k.rstd_k, k.kn, k);
      }
    }
    const Index T = k.tokens;
    const S scale = S(1.0 / std::sqrt(double(head_dim)));
    // Scores S_bh = k_bh^T q_bh scale (T_k, T_q), into P.
    Backend::gemm_batched(ctx, true, false, scale, head_seq(key, k), head_seq(q, k), S(0),
                          MatrixView<S>(k.P.data, T, T), grid(key.ld, q.ld, -1, k));
    Backend::softmax_cols(ctx, k.P);
    // o_bh = v_bh P_bh (dh, T_q).
    const ConstMatrixView<S> v = values(k);
    Backend::gemm_batched(ctx, false, false, S(1), head_seq(v, k),
                          ConstMatrixView<S>(k.P.data, T, T), S(0),
                          MatrixView<S>(k.o.data, head_dim, T, width), grid(v.ld, -1, width, k));
    proj.forward(ctx, p, k.o, y_out);
  }

  /// Backward given d_y (C, BT) of the last forward (cache k): d_x += dL/dx and, with d_p
  /// non-null, the parameter gradients accumulate into d_p.         attention.md (4)-(7)
  void backward(Context& ctx, const S* p, ConstMatrixView<S> x, const Cache& k,
                ConstMatrixView<S> d_y, MatrixView<S> d_x, S* d_p, const Scratch& s) const {
    const Index T = k.tokens;
    const S scale = S(1.0 / std::sqrt(double(head_dim)));
    if (d_p != nullptr) proj.backward_params(ctx, k.o, d_y, d_p);
    proj.backward_input(ctx, p, d_y, s.d_o, false);
    const ConstMatrixView<S> q = queries(k), key = keys(k), v = values(k);
    const ConstMatrixView<S> P(k.P.data, T, T);
    const ConstMatrixView<S> d_o(s.d_o.data, head_dim, T, width);
    // d_v_bh = d_o_bh P_bh^T (dh, T_k), into the v rows of d_qkv.
    const MatrixView<S> d_qkv = s.d_qkv;
    Backend::gemm_batched(ctx, false, true, S(1), d_o, P, S(0),
                          MatrixView<S>(d_qkv.data + 2 * width, head_dim, T, d_qkv.ld),
                          grid(width, -1, d_qkv.ld, k));
    // dP_bh = v_bh^T d_o_bh (T_k, T_q); then dS = P * (dP - <P, dP>) in place.
    Backend::gemm_batched(ctx, true, false, S(1), head_seq(v, k), d_o, S(0),
                          MatrixView<S>(s.dP.data, T, T), grid(v.ld, width, -1, k));
    Backend::softmax_backward_cols(ctx, ConstMatrixView<S>(k.P), s.dP);
    // d_q_bh = scale k_bh dS_bh (dh, T_q); d_k_bh = scale q_bh dS_bh^T (dh, T_k).
    const MatrixView<S> dq = qk_norm ? s.d_qn : d_qkv.row_block(0, width);
    const MatrixView<S> dk = qk_norm ? s.d_kn : d_qkv.row_block(width, width);
    const ConstMatrixView<S> dS(s.dP.data, T, T);
    Backend::gemm_batched(ctx, false, false, scale, head_seq(key, k), dS, S(0),
                          MatrixView<S>(dq.data, head_dim, T, dq.ld), grid(key.ld, -1, dq.ld, k));
    Backend::gemm_batched(ctx, false, true, scale, head_seq(q, k), dS, S(0),
                          MatrixView<S>(dk.data, head_dim, T, dk.ld), grid(q.ld, -1, dk.ld, k));
    if (qk_norm) {  // through the LayerNorms into the q and k rows of d_qkv
      Backend::fill(ctx, d_qkv.row_block(0, 2 * width), S(0));
      for (Index h = 0; h < heads; ++h) {
        norm_backward(ctx, p, d_p, qn_w, qn_b, h, k.qhat, k.rstd_q, s.d_qn, d_qkv);
        norm_backward(ctx, p, d_p, kn_w, kn_b, heads + h, k.khat, k.rstd_k, s.d_kn, d_qkv);
      }
    }
    if (d_p != nullptr) qkv.backward_params(ctx, x, d_qkv, d_p);
    qkv.backward_input(ctx, p, d_qkv, d_x, true);
  }

 private:
  ConstMatrixView<S> queries(const Cache& k) const {
    return qk_norm ? ConstMatrixView<S>(k.qn) : ConstMatrixView<S>(k.qkv).row_block(0, width);
  }
  ConstMatrixView<S> keys(const Cache& k) const {
    return qk_norm ? ConstMatrixView<S>(k.kn) : ConstMatrixView<S>(k.qkv).row_block(width, width);
  }
  ConstMatrixView<S> values(const Cache& k) const {
    return ConstMatrixView<S>(k.qkv).row_block(2 * width, width);
  }
  // Problem (0, 0)'s operand: head 0 of sequence 0, (dh, T) with the matrix's leading dimension.
  ConstMatrixView<S> head_seq(ConstMatrixView<S> m, const Cache& k) const {
    return {m.data, head_dim, k.tokens, m.ld};
  }
  // The (B, H) grid. An operand given by its leading dimension ld >= 0 moves by T ld from one
  // sequence to the next and by dh rows from one head to the next; ld = -1 names a (T, T) block
  // of the probability layout, which moves by H T^2 and T^2.
  GemmBatch grid(Index lda, Index ldb, Index ldc, const Cache& k) const {
    const Index T = k.tokens;
    GemmBatch g;
    g.outer = k.batch;
    g.inner = heads;
    auto set = [&](Index ld, Index& outer, Index& inner) {
      if (ld >= 0) {
        outer = T * ld;
        inner = head_dim;
      } else {
        outer = heads * T * T;
        inner = T * T;
      }
    };
    set(lda, g.a_outer, g.a_inner);
    set(ldb, g.b_outer, g.b_inner);
    set(ldc, g.c_outer, g.c_inner);
    return g;
  }
  // The qk-norm of head h (h < H: a query head, H <= h < 2H: key head h - H, as rows of qkv):
  // LayerNorm over its dh rows of every column, nhat and the affine output in the rows of head
  // h mod H of nhat / out, 1/std in column h mod H of rstd.                 attention.md (8)
  void norm(Context& ctx, const S* gamma, const S* beta, Index h, MatrixView<S> nhat,
            MatrixView<S> rstd, MatrixView<S> out, const Cache& k) const {
    const Index hh = h % heads;
    Backend::norm_modulate_forward(ctx, ConstMatrixView<S>(k.qkv).row_block(h * head_dim, head_dim),
                                   gamma, beta, ln_eps, ConstMatrixView<S>(), ConstMatrixView<S>(),
                                   nhat.row_block(hh * head_dim, head_dim), rstd.col(hh),
                                   out.row_block(hh * head_dim, head_dim));
  }
  // Backward of norm: d_qkv rows of head h += the LayerNorm's input gradient given d_out's rows
  // of head h mod H; with d_p, the affine gradients accumulate (shared by the heads).
  void norm_backward(Context& ctx, const S* p, S* d_p, Index w, Index b, Index h,
                     MatrixView<S> nhat, MatrixView<S> rstd, MatrixView<S> d_out,
                     MatrixView<S> d_qkv) const {
    const Index hh = h % heads;
    Backend::norm_modulate_backward(
        ctx, ConstMatrixView<S>(nhat).row_block(hh * head_dim, head_dim), rstd.col(hh), p + w,
        p + b, ConstMatrixView<S>(), ConstMatrixView<S>(d_out).row_block(hh * head_dim, head_dim),
        d_qkv.row_block(h * head_dim, head_dim), MatrixView<S>(), MatrixView<S>(),
        d_p != nullptr ? d_p + w : nullptr, d_p != nullptr ? d_p + b : nullptr);
  }
};

}  // namespace nn
}  // namespace flowprior
