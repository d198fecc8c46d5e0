/// @file
/// The two AdaLN building blocks of the released flow head (docs/math/adaln.md):
///
/// ResBlock (one per depth), with conditioning s = SiLU(c):
///   [shift, scale, gate] = W_ada s + b_ada            (3 chunks of `width` rows, in this order)
///   m = LayerNorm_affine(h) * (1 + scale) + shift
///   h <- h + gate * (W2 act(W1 m + b1) + b2)
/// FinalLayer:
///   [shift, scale] = W_ada s + b_ada
///   v = W_out (LayerNorm_noaffine(h) * (1 + scale) + shift) + b_out
///
/// Each block offers forward (caching what backward needs), backward (input gradient, and
/// optionally the conditioning and parameter gradients) and a K-broadcast JVP w.r.t. h.
///
/// Time groups (adaln.md "Time groups"): the conditioning s and the modulations may have one
/// column per group of samples sharing t (R <= B columns); Cache::group then maps sample b to
/// its column. Gradients w.r.t. s and the modulation parameters are summed over each group.
#pragma once

#include <flowprior/core/activation.hpp>
#include <flowprior/nn/linear.hpp>
#include <flowprior/nn/params.hpp>
#include <flowprior/nn/workspace.hpp>
#include <string>

namespace flowprior {
namespace nn {

/// Scratch a block needs in backward: two (width, B) tensors and one (3 width, B) tensor.
template <class S>
struct BlockScratch {
  MatrixView<S> t1, t2, d_mod;
};

/// Scratch a block needs in the JVP: two (width, B*K) tensors.
template <class S>
struct JvpScratch {
  MatrixView<S> t1, t2;
};

template <class S, class Backend>
struct ResBlock {
  /// The backend context every method that runs primitives takes first.
  using Context = typename Backend::Context;

  Index width = 0;
  S ln_eps = S(1e-6);
  Activation act = Activation::SiLU;
  Index ln_w = -1, ln_b = -1;  ///< offsets of in_ln.weight / in_ln.bias
  Linear<S, Backend> mlp0, mlp2, ada;

  /// Saved tensors: modulation (3W,B), normalised input n (W,B), 1/std (B), modulated input
  /// m (W,B), pre-activation z1 (W,B), activation a1 (W,B), branch output z3 (W,B).
  struct Cache {
    MatrixView<S> mod, nhat, rstd, m, z1, a1, z3;
    const Index* group = nullptr;  ///< sample -> modulation column, or null (one per sample)
    ConstMatrixView<S> shift() const { return ConstMatrixView<S>(mod).row_block(0, mod.rows / 3); }
    ConstMatrixView<S> scale() const {
      return ConstMatrixView<S>(mod).row_block(mod.rows / 3, mod.rows / 3);
    }
    ConstMatrixView<S> gate() const {
      return ConstMatrixView<S>(mod).row_block(2 * (mod.rows / 3), mod.rows / 3);
    }
  };

  static ResBlock make(ParamLayout& layout, const std::string& prefix, Index width, S ln_eps,
                       Activation act) {
    ResBlock r;
    r.width = width;
    r.ln_eps = ln_eps;
    r.act = act;
    r.ln_w = layout.add(prefix + ".in_ln.weight", {width});
    r.ln_b = layout.add(prefix + ".in_ln.bias", {width});
    r.mlp0 = Linear<S, Backend>::make(layout, prefix + ".mlp.0", width, width);
    r.mlp2 = Linear<S, Backend>::make(layout, prefix + ".mlp.2", width, width);
    r.ada = Linear<S, Backend>::make(layout, prefix + ".adaLN_modulation.1", width, 3 * width);
    return r;
  }

  /// Caches for `batch` samples whose modulations have `groups` columns (= batch if ungrouped).
  Cache carve(Arena<S, Backend>& a, Index batch, Index groups) const {
    Cache c;
    c.mod = a.take(3 * width, groups);
    c.nhat = a.take(width, batch);
    c.rstd = a.take(1, batch);
    c.m = a.take(width, batch);
    c.z1 = a.take(width, batch);
    c.a1 = a.take(width, batch);
    c.z3 = a.take(width, batch);
    return c;
  }

  /// h <- h + gate * branch(h); sc = SiLU(c) is (width, B).          adaln.md (1), (5)
  void forward(Context& ctx, const S* p, ConstMatrixView<S> sc, MatrixView<S> h,
               const Cache& k) const {
    ada.forward(ctx, p, sc, k.mod);
    Backend::norm_modulate_forward(ctx, ConstMatrixView<S>(h), p + ln_w, p + ln_b, ln_eps,
                                   k.shift(), k.scale(), k.nhat, k.rstd.data, k.m, k.group);
    mlp0.forward(ctx, p, k.m, k.z1);
    Backend::activation_forward(ctx, act, k.z1, k.a1);
    mlp2.forward(ctx, p, k.a1, k.z3);
    Backend::gated_residual_forward(ctx, k.gate(), k.z3, h, k.group);
  }

  /// On entry d_h holds dL/dh_out; on exit dL/dh_in (in place: the residual passes d_h through
  /// and the branch adds to it). With d_p non-null, also accumulates the parameter gradients and
  /// d_sc += dL/dsc.                                               adaln.md (2)-(3), (6)-(7)
  void backward(Context& ctx, const S* p, ConstMatrixView<S> sc, const Cache& k, MatrixView<S> d_h,
                MatrixView<S> d_sc, S* d_p, const BlockScratch<S>& s) const {
    const bool params = d_p != nullptr;
    const MatrixView<S> d_mod = s.d_mod.col_block(0, k.mod.cols);
    if (params && k.group) Backend::fill(ctx, d_mod, S(0));  // grouped: summed over each group
    const MatrixView<S> d_gate = params ? d_mod.row_block(2 * width, width) : MatrixView<S>();
    Backend::gated_residual_backward(ctx, k.gate(), k.z3, d_h, s.t1, d_gate, k.group);  // t1 = d_z3
    if (params) mlp2.backward_params(ctx, k.a1, s.t1, d_p);
    mlp2.backward_input(ctx, p, s.t1, s.t2, false);            // t2 = d_a1
    Backend::activation_backward(ctx, act, k.z1, s.t2, s.t2);  // t2 = d_z1
    if (params) mlp0.backward_params(ctx, k.m, s.t2, d_p);
    mlp0.backward_input(ctx, p, s.t2, s.t1, false);  // t1 = d_m
    Backend::norm_modulate_backward(ctx, k.nhat, k.rstd.data, p + ln_w, p + ln_b, k.scale(), s.t1,
                                    d_h, params ? d_mod.row_block(0, width) : MatrixView<S>(),
                                    params ? d_mod.row_block(width, width) : MatrixView<S>(),
                                    params ? d_p + ln_w : nullptr, params ? d_p + ln_b : nullptr,
                                    k.group);
    if (params) {
      ada.backward_params(ctx, sc, d_mod, d_p);
      ada.backward_input(ctx, p, d_mod, d_sc, true);
    }
  }

  /// dh (width, B*K) <- J_block dh, in place (K tangents per sample).    adaln.md (4), (8)
  void jvp(Context& ctx, const S* p, const Cache& k, MatrixView<S> dh, Index K,
           const JvpScratch<S>& s) const {
    Backend::norm_modulate_jvp(ctx, k.nhat, k.rstd.data, p + ln_w, k.scale(), dh, s.t1, K, k.group);
    mlp0.jvp(ctx, p, s.t1, s.t2);
    Backend::activation_jvp(ctx, act, k.z1, s.t2, s.t2, K);
    mlp2.jvp(ctx, p, s.t2, s.t1);
    Backend::gated_residual_jvp(ctx, k.gate(), s.t1, dh, K, k.group);
  }

  /// Released initialisation: Xavier MLP, LayerNorm (1, 0), zero adaLN modulation.
  void init(S* p, Rng& rng) const {
    for (Index i = 0; i < width; ++i) {
      p[ln_w + i] = S(1);
      p[ln_b + i] = S(0);
    }
    mlp0.init_xavier(p, rng);
    mlp2.init_xavier(p, rng);
    ada.init_zero(p);
  }
};

template <class S, class Backend>
struct FinalLayer {
  /// The backend context every method that runs primitives takes first.
  using Context = typename Backend::Context;

  Index width = 0;
  Index out = 0;
  S ln_eps = S(1e-6);
  Linear<S, Backend> linear, ada;

  /// Saved tensors: modulation (2W,B), n (W,B), 1/std (B), modulated input m (W,B).
  struct Cache {
    MatrixView<S> mod, nhat, rstd, m;
    const Index* group = nullptr;  ///< sample -> modulation column, or null (one per sample)
    ConstMatrixView<S> shift() const { return ConstMatrixView<S>(mod).row_block(0, mod.rows / 2); }
    ConstMatrixView<S> scale() const {
      return ConstMatrixView<S>(mod).row_block(mod.rows / 2, mod.rows / 2);
    }
  };

  static FinalLayer make(ParamLayout& layout, const std::string& prefix, Index width, Index out,
                         S ln_eps) {
    FinalLayer f;
    f.width = width;
    f.out = out;
    f.ln_eps = ln_eps;
    f.linear = Linear<S, Backend>::make(layout, prefix + ".linear", width, out);
    f.ada = Linear<S, Backend>::make(layout, prefix + ".adaLN_modulation.1", width, 2 * width);
    return f;
  }

  Cache carve(Arena<S, Backend>& a, Index batch, Index groups) const {
    Cache c;
    c.mod = a.take(2 * width, groups);
    c.nhat = a.take(width, batch);
    c.rstd = a.take(1, batch);
    c.m = a.take(width, batch);
    return c;
  }

  /// v_out (out, B) from h (width, B).                                  adaln.md (9)
  void forward(Context& ctx, const S* p, ConstMatrixView<S> sc, ConstMatrixView<S> h,
               const Cache& k, MatrixView<S> v_out) const {
    ada.forward(ctx, p, sc, k.mod);
    Backend::norm_modulate_forward(ctx, h, static_cast<const S*>(nullptr),
                                   static_cast<const S*>(nullptr), ln_eps, k.shift(), k.scale(),
                                   k.nhat, k.rstd.data, k.m, k.group);
    linear.forward(ctx, p, k.m, v_out);
  }

  /// d_h_out = dL/dh (overwritten); with d_p, parameter gradients and d_sc += dL/dsc.
  ///                                                                     adaln.md (10)
  void backward(Context& ctx, const S* p, ConstMatrixView<S> sc, const Cache& k,
                ConstMatrixView<S> d_v, MatrixView<S> d_h_out, MatrixView<S> d_sc, S* d_p,
                const BlockScratch<S>& s) const {
    const bool params = d_p != nullptr;
    if (params) linear.backward_params(ctx, k.m, d_v, d_p);
    linear.backward_input(ctx, p, d_v, s.t1, false);  // t1 = d_m
    Backend::fill(ctx, d_h_out, S(0));
    MatrixView<S> d_mod =
        params ? s.d_mod.col_block(0, k.mod.cols).row_block(0, 2 * width) : MatrixView<S>();
    if (params && k.group) Backend::fill(ctx, d_mod, S(0));  // grouped: summed over each group
    Backend::norm_modulate_backward(ctx, k.nhat, k.rstd.data, static_cast<const S*>(nullptr),
                                    static_cast<const S*>(nullptr), k.scale(), s.t1, d_h_out,
                                    params ? d_mod.row_block(0, width) : MatrixView<S>(),
                                    params ? d_mod.row_block(width, width) : MatrixView<S>(),
                                    static_cast<S*>(nullptr), static_cast<S*>(nullptr), k.group);
    if (params) {
      ada.backward_params(ctx, sc, d_mod, d_p);
      ada.backward_input(ctx, p, d_mod, d_sc, true);
    }
  }

  /// dv_out (out, B*K) = J dh for K tangents per sample.                adaln.md (11)
  void jvp(Context& ctx, const S* p, const Cache& k, ConstMatrixView<S> dh, MatrixView<S> dv_out,
           Index K, const JvpScratch<S>& s) const {
    Backend::norm_modulate_jvp(ctx, k.nhat, k.rstd.data, static_cast<const S*>(nullptr), k.scale(),
                               dh, s.t1, K, k.group);
    linear.jvp(ctx, p, s.t1, dv_out);
  }

  /// Released initialisation: everything zero (so that v == 0 at initialisation).
  void init(S* p) const {
    linear.init_zero(p);
    ada.init_zero(p);
  }
};

}  // namespace nn
}  // namespace flowprior
