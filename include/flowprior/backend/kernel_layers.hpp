/// @file
/// KernelBackend's activations, time features, LayerNorm + modulation and gated residual
/// (docs/math/activations.md, time_embedding.md, layer_norm.md, adaln.md). The semantics of each
/// primitive are those of the CpuBackend primitive of the same name (docs/backends.md): outputs
/// `*_out` overwritten, `d_*` accumulated, K-broadcast tangents (column b K + k belongs to sample
/// b), time groups through `group` (sample b reads modulation column group[b]).
///
/// Work split: element-wise work runs one body per output element (i fastest); a column's
/// reduction (LayerNorm moments, the means of the backward and of the JVP) runs one body per
/// column, looping over the features in the CPU's order, its results kept in scratch slot 2 for
/// the element pass that follows; sums over samples (affine gradients, grouped modulation
/// gradients) run one body per feature row, looping over the samples in order. The bodies call
/// the scalar formulas of core/math.hpp and core/activation.hpp. No Eigen, no CUDA header.
#pragma once

#include <cmath>
#include <flowprior/backend/kernel_common.hpp>
#include <flowprior/core/activation.hpp>
#include <flowprior/core/math.hpp>
#include <flowprior/core/types.hpp>

namespace flowprior {
namespace kernel {

template <class Exec>
struct LayerOps {
  using Context = typename Exec::Context;
  using K = Core<Exec>;

  // ---------------------------------------------------------------------------------------------
  // Activations: docs/math/activations.md. The kind is switched once per call (one kernel per
  // kind, math::Act<A>).

  /// a_out = act(z), one body per element.                               activations.md (2), (5)
  template <class S>
  static void activation_forward(Context& ctx, Activation act, CView<S> z, MatrixView<S> a_out) {
    if (act == Activation::SiLU) return act_map<math::Act<Activation::SiLU>>(ctx, z, a_out);
    return act_map<math::Act<Activation::GELU>>(ctx, z, a_out);
  }

  /// d_z_out = act'(z) * d_a (overwrite; d_z_out may alias d_a).        activations.md (7)
  template <class S>
  static void activation_backward(Context& ctx, Activation act, CView<S> z, CView<S> d_a,
                                  MatrixView<S> d_z_out) {
    activation_jvp(ctx, act, z, d_a, d_z_out, 1);
  }

  /// K-broadcast JVP: out(:, bK+k) = act'(z(:, b)) * dz(:, bK+k), one body per element of out
  /// (out may alias dz: each element is read before it is written).      activations.md (7)
  template <class S>
  static void activation_jvp(Context& ctx, Activation act, CView<S> z, CView<S> dz,
                             MatrixView<S> out, Index K) {
    if (act == Activation::SiLU) return act_jvp<math::Act<Activation::SiLU>>(ctx, z, dz, out, K);
    return act_jvp<math::Act<Activation::GELU>>(ctx, z, dz, out, K);
  }

  /// The kernel of activation_forward for one kind A (public: it defines a kernel body).
  template <class A, class S>
  static void act_map(Context& ctx, CView<S> z, MatrixView<S> a_out) {
    K::for_each_element(
        ctx, z.rows, z.cols, FLOWPRIOR_LAMBDA(Index i, Index j) { a_out(i, j) = A::f(z(i, j)); });
  }

  /// The kernel of activation_jvp for one kind A (public: it defines a kernel body).
  template <class A, class S>
  static void act_jvp(Context& ctx, CView<S> z, CView<S> dz, MatrixView<S> out, Index K_) {
    K::for_each_element(
        ctx, dz.rows, dz.cols,
        FLOWPRIOR_LAMBDA(Index i, Index c) { out(i, c) = A::df(z(i, c / K_)) * dz(i, c); });
  }

  // ---------------------------------------------------------------------------------------------
  // Sinusoidal time features: docs/math/time_embedding.md (1).

  /// e(i, b) = cos(t_b f_i), e(half + i, b) = sin(t_b f_i), f_i = exp(-ln(max_period) i / half),
  /// half = e_out.rows / 2, in double whatever S is. One body per (i, b) writes both halves
  /// (an odd last row is left untouched, as on the CPU).
  template <class S>
  static void time_features(Context& ctx, CVec<S> t, S max_period, MatrixView<S> e_out) {
    const Index half = e_out.rows / 2;
    const double lp = std::log(static_cast<double>(max_period));
    K::for_each_element(
        ctx, half, e_out.cols, FLOWPRIOR_LAMBDA(Index i, Index b) {
          using std::cos;
          using std::exp;
          using std::sin;
          const double f = exp(-lp * static_cast<double>(i) / static_cast<double>(half));
          const double arg = static_cast<double>(t[b]) * f;
          e_out(i, b) = static_cast<S>(cos(arg));
          e_out(half + i, b) = static_cast<S>(sin(arg));
        });
  }

  // ---------------------------------------------------------------------------------------------
  // LayerNorm fused with the AdaLN modulation: docs/math/layer_norm.md, docs/math/adaln.md.

  /// Per column: n = (h - mean) * rstd, a = n * gamma + beta (gamma/beta may be null: no
  /// affine), m = a * (1 + scale) + shift (scale/shift may be empty: no modulation; with `group`,
  /// sample b reads column group[b]). Caches n (nhat_out) and rstd (rstd_out, one per column).
  /// Kernels: one body per column for the moments (in double, features in order; the mean kept
  /// in scratch slot 2, rstd written to rstd_out), then one body per element.
  ///                                                     layer_norm.md (1)-(2), adaln.md (1)
  template <class S>
  static void norm_modulate_forward(Context& ctx, CView<S> h, const S* gamma, const S* beta, S eps,
                                    CView<S> shift, CView<S> scale, MatrixView<S> nhat_out,
                                    S* rstd_out, MatrixView<S> m_out,
                                    const Index* group = nullptr) {
    const Index C = h.rows, B = h.cols;
    if (B <= 0) return;
    const bool mod = !scale.empty();
    S* mean_s = K::template scratch<S>(ctx, 2, B);
    Exec::launch(
        ctx, B, FLOWPRIOR_LAMBDA(Index b) {
          double mean = 0;
          for (Index i = 0; i < C; ++i) mean += h(i, b);
          mean /= static_cast<double>(C);
          double var = 0;
          for (Index i = 0; i < C; ++i) {
            const double d = h(i, b) - mean;
            var += d * d;
          }
          var /= static_cast<double>(C);  // biased variance, as torch.nn.LayerNorm
          using std::sqrt;
          rstd_out[b] = static_cast<S>(1.0 / sqrt(var + static_cast<double>(eps)));
          mean_s[b] = static_cast<S>(mean);
        });
    K::for_each_element(
        ctx, C, B, FLOWPRIOR_LAMBDA(Index i, Index b) {
          const S ni = (h(i, b) - mean_s[b]) * rstd_out[b];
          nhat_out(i, b) = ni;
          const S a = gamma ? ni * gamma[i] + beta[i] : ni;
          if (mod) {
            const Index gb = group ? group[b] : b;
            m_out(i, b) = a * (S(1) + scale(i, gb)) + shift(i, gb);
          } else {
            m_out(i, b) = a;
          }
        });
  }

  /// Backward of norm_modulate_forward, given d_m:          adaln.md (2)-(3), layer_norm.md (3)-(5)
  ///   d_shift_out = d_m,  d_scale_out = d_m * a  (written, if non-empty; with `group`,
  ///   accumulated into the group's column instead),
  ///   d_gamma += sum_b d_a * n,  d_beta += sum_b d_a  (if non-null),
  ///   d_h += rstd (g - mean(g) - n mean(g n)),  g = d_a * gamma,  d_a = d_m * (1 + scale).
  /// Kernels: one body per column for mean(g) and mean(g n) (in double, features in order,
  /// rounded to S into scratch slot 2); one body per element for d_h and the per-sample
  /// modulation gradients; if needed, one body per feature row for the sums over samples (the
  /// affine gradients, the grouped modulation gradients), samples in order.
  template <class S>
  static void norm_modulate_backward(Context& ctx, CView<S> nhat, const S* rstd, const S* gamma,
                                     const S* beta, CView<S> scale, CView<S> d_m, MatrixView<S> d_h,
                                     MatrixView<S> d_shift_out, MatrixView<S> d_scale_out,
                                     S* d_gamma, S* d_beta, const Index* group = nullptr) {
    const Index C = nhat.rows, B = nhat.cols;
    if (B <= 0 || C <= 0) return;
    const bool mod = !scale.empty();
    const bool want_mod = !d_scale_out.empty();
    S* means = K::template scratch<S>(ctx, 2, 2 * B);  // (mean(g), mean(g n)) per column
    Exec::launch(
        ctx, B, FLOWPRIOR_LAMBDA(Index b) {
          const Index gb = group ? group[b] : b;
          double sum_g = 0, sum_gn = 0;
          for (Index i = 0; i < C; ++i) {
            const S da = mod ? d_m(i, b) * (S(1) + scale(i, gb)) : d_m(i, b);
            const S g = gamma ? da * gamma[i] : da;
            sum_g += g;
            sum_gn += g * nhat(i, b);
          }
          means[2 * b] = static_cast<S>(sum_g / static_cast<double>(C));
          means[2 * b + 1] = static_cast<S>(sum_gn / static_cast<double>(C));
        });
    const bool per_sample_mod = want_mod && !group;
    K::for_each_element(
        ctx, C, B, FLOWPRIOR_LAMBDA(Index i, Index b) {
          const Index gb = group ? group[b] : b;
          const S dm = d_m(i, b);
          const S n = nhat(i, b);
          if (per_sample_mod) {
            d_shift_out(i, b) = dm;
            d_scale_out(i, b) = dm * (gamma ? n * gamma[i] + beta[i] : n);
          }
          const S da = mod ? dm * (S(1) + scale(i, gb)) : dm;
          const S g = gamma ? da * gamma[i] : da;
          d_h(i, b) += rstd[b] * (g - means[2 * b] - n * means[2 * b + 1]);
        });
    const bool grouped_mod = want_mod && group;
    if (grouped_mod || d_gamma)
      norm_modulate_sum_rows(ctx, nhat, gamma, beta, scale, d_m, d_shift_out, d_scale_out, d_gamma,
                             d_beta, grouped_mod ? group : nullptr, group);
  }

  /// The row pass of norm_modulate_backward (public: it defines a kernel body): one body per
  /// feature i, the samples b in order: the grouped modulation gradients (if mod_group is
  /// non-null) accumulated into column mod_group[b], and d_gamma[i], d_beta[i] (if non-null).
  /// `group` is the map the scale is read through.
  template <class S>
  static void norm_modulate_sum_rows(Context& ctx, CView<S> nhat, const S* gamma, const S* beta,
                                     CView<S> scale, CView<S> d_m, MatrixView<S> d_shift_out,
                                     MatrixView<S> d_scale_out, S* d_gamma, S* d_beta,
                                     const Index* mod_group, const Index* group) {
    const Index B = nhat.cols;
    const bool mod = !scale.empty();
    Exec::launch(
        ctx, nhat.rows, FLOWPRIOR_LAMBDA(Index i) {
          S dg = d_gamma ? d_gamma[i] : S(0);
          S db = d_gamma ? d_beta[i] : S(0);
          for (Index b = 0; b < B; ++b) {
            const S dm = d_m(i, b);
            const S n = nhat(i, b);
            if (mod_group) {
              const Index gb = mod_group[b];
              d_shift_out(i, gb) += dm;
              d_scale_out(i, gb) += dm * (gamma ? n * gamma[i] + beta[i] : n);
            }
            if (d_gamma) {
              const S da = mod ? dm * (S(1) + scale(i, group ? group[b] : b)) : dm;
              dg += da * n;
              db += da;
            }
          }
          if (d_gamma) {
            d_gamma[i] = dg;
            d_beta[i] = db;
          }
        });
  }

  /// K-broadcast JVP of norm_modulate_forward w.r.t. h:       layer_norm.md (6), adaln.md (4)
  ///   out = (1 + scale) * gamma * rstd (dh - mean(dh) - n mean(n dh)),
  /// tangent column col reading sample b = col / K's nhat, rstd and (through `group`) scale.
  /// Kernels: one body per tangent column for the two means (in double, features in order,
  /// rounded to S into scratch slot 2), then one body per element (out may alias dh).
  template <class S>
  static void norm_modulate_jvp(Context& ctx, CView<S> nhat, const S* rstd, const S* gamma,
                                CView<S> scale, CView<S> dh, MatrixView<S> out, Index K_,
                                const Index* group = nullptr) {
    const Index C = nhat.rows, N = dh.cols;
    if (N <= 0 || C <= 0) return;
    const bool mod = !scale.empty();
    S* means = K::template scratch<S>(ctx, 2, 2 * N);  // (mean(dh), mean(n dh)) per column
    Exec::launch(
        ctx, N, FLOWPRIOR_LAMBDA(Index col) {
          const Index b = col / K_;
          double s1 = 0, s2 = 0;
          for (Index i = 0; i < C; ++i) {
            const S x = dh(i, col);
            s1 += x;
            s2 += x * nhat(i, b);
          }
          means[2 * col] = static_cast<S>(s1 / static_cast<double>(C));
          means[2 * col + 1] = static_cast<S>(s2 / static_cast<double>(C));
        });
    K::for_each_element(
        ctx, C, N, FLOWPRIOR_LAMBDA(Index i, Index col) {
          const Index b = col / K_;
          S y = rstd[b] * (dh(i, col) - means[2 * col] - nhat(i, b) * means[2 * col + 1]);
          if (gamma) y *= gamma[i];
          if (mod) y *= S(1) + scale(i, group ? group[b] : b);
          out(i, col) = y;
        });
  }

  // ---------------------------------------------------------------------------------------------
  // Gated residual h <- h + gate * z: docs/math/adaln.md (5)-(8).

  /// h += gate * z, sample b reading gate column group[b] (or b): one body per element.
  ///                                                                          adaln.md (5)
  template <class S>
  static void gated_residual_forward(Context& ctx, CView<S> gate, CView<S> z, MatrixView<S> h,
                                     const Index* group = nullptr) {
    K::for_each_element(
        ctx, h.rows, h.cols,
        FLOWPRIOR_LAMBDA(Index i, Index b) { h(i, b) += gate(i, group ? group[b] : b) * z(i, b); });
  }

  /// d_z_out = gate * d_h; d_gate_out = d_h * z (written if non-empty; with `group`,
  /// accumulated into the group's column). One body per element; the grouped gate gradient one
  /// body per feature row, the samples in order.                         adaln.md (6)-(7)
  template <class S>
  static void gated_residual_backward(Context& ctx, CView<S> gate, CView<S> z, CView<S> d_h,
                                      MatrixView<S> d_z_out, MatrixView<S> d_gate_out,
                                      const Index* group = nullptr) {
    const Index C = d_h.rows, B = d_h.cols;
    const bool want_gate = !d_gate_out.empty();
    const bool per_sample_gate = want_gate && !group;
    K::for_each_element(
        ctx, C, B, FLOWPRIOR_LAMBDA(Index i, Index b) {
          d_z_out(i, b) = gate(i, group ? group[b] : b) * d_h(i, b);
          if (per_sample_gate) d_gate_out(i, b) = d_h(i, b) * z(i, b);  // d_h read after d_z
        });
    if (!want_gate || !group || B <= 0) return;
    Exec::launch(
        ctx, C, FLOWPRIOR_LAMBDA(Index i) {
          for (Index b = 0; b < B; ++b) d_gate_out(i, group[b]) += d_h(i, b) * z(i, b);
        });
  }

  /// K-broadcast JVP: dh(:, bK+k) += gate(:, b) * dz(:, bK+k) (gate column group[b] with
  /// `group`), one body per element.                                      adaln.md (8)
  template <class S>
  static void gated_residual_jvp(Context& ctx, CView<S> gate, CView<S> dz, MatrixView<S> dh,
                                 Index K_, const Index* group = nullptr) {
    K::for_each_element(
        ctx, dh.rows, dh.cols, FLOWPRIOR_LAMBDA(Index i, Index col) {
          const Index b = col / K_;
          dh(i, col) += gate(i, group ? group[b] : b) * dz(i, col);
        });
  }
};

}  // namespace kernel
}  // namespace flowprior
