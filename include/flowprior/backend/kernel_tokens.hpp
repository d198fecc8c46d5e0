/// @file
/// KernelBackend's column softmax and cross-entropy, image tokens and the Gaussian posterior
/// (docs/math/attention.md, patches.md, classifier.md, tokenizer.md). The semantics of each
/// primitive are those of the CpuBackend primitive of the same name (docs/backends.md); the
/// batched products are in kernel_backend.hpp. No Eigen, no CUDA header.
///
/// Work split (docs/cuda.md "Kernel backend"):
/// - softmax_cols, softmax_backward_cols, softmax_xent_cols: one body per column computes the
///   column's statistics (max and sum, dot, log-sum-exp and loss) serially in the CPU's order
///   into scratch slot 2, then one body per element writes the result from them;
/// - patchify, unpatchify, add_per_token, sequence_map, the posterior's forward and backward:
///   one body per output element (i fastest);
/// - sum_per_token: one body per element of the table, the sequences added in order;
/// - gaussian_kl: chunked (K::reduce_chunks over the elements in column-major order).
#pragma once

#include <cmath>
#include <cstdint>
#include <flowprior/backend/kernel_common.hpp>
#include <flowprior/backend/xent_args.hpp>
#include <flowprior/core/math.hpp>
#include <flowprior/core/types.hpp>
#include <type_traits>

namespace flowprior {
namespace kernel {

template <class Exec>
struct TokenOps {
  using Context = typename Exec::Context;
  using K = Core<Exec>;

  /// In place, per column: a <- softmax(a) = exp(a - max a) / sum exp(a - max a)
  /// (attention.md (2)). One body per column finds the maximum and the sum of the shifted
  /// exponentials (in S, rows in order) and keeps (max, 1 / sum) in scratch slot 2; then one
  /// body per element writes exp(a - max) (1 / sum), the same exp as the column pass.
  template <class S>
  static void softmax_cols(Context& ctx, MatrixView<S> A) {
    if (A.rows <= 0 || A.cols <= 0) return;
    S* stat = K::template scratch<S>(ctx, 2, 2 * A.cols);
    Exec::launch(
        ctx, A.cols, FLOWPRIOR_LAMBDA(Index j) {
          using std::exp;
          const S* a = A.col(j);
          S top = a[0];
          for (Index i = 1; i < A.rows; ++i)
            if (a[i] > top) top = a[i];
          S sum = 0;
          for (Index i = 0; i < A.rows; ++i) sum += exp(a[i] - top);
          stat[2 * j] = top;
          stat[2 * j + 1] = S(1) / sum;
        });
    K::for_each_element(
        ctx, A.rows, A.cols, FLOWPRIOR_LAMBDA(Index i, Index j) {
          using std::exp;
          A(i, j) = exp(A(i, j) - stat[2 * j]) * stat[2 * j + 1];
        });
  }

  /// In place, per column, the backward of softmax_cols given its output P:
  /// d <- P * (d - <P, d>)  (attention.md (5)). One body per column forms the dot product (in S,
  /// rows in order) into scratch slot 2, then one body per element.
  template <class S>
  static void softmax_backward_cols(Context& ctx, CView<S> P, MatrixView<S> D) {
    if (P.rows <= 0 || P.cols <= 0) return;
    S* dot = K::template scratch<S>(ctx, 2, P.cols);
    Exec::launch(
        ctx, P.cols, FLOWPRIOR_LAMBDA(Index j) {
          S acc = 0;
          for (Index i = 0; i < P.rows; ++i) acc += P(i, j) * D(i, j);
          dot[j] = acc;
        });
    K::for_each_element(
        ctx, P.rows, P.cols,
        FLOWPRIOR_LAMBDA(Index i, Index j) { D(i, j) = P(i, j) * (D(i, j) - dot[j]); });
  }

  /// Softmax cross-entropy of every column of logits z (classes, B) against its label y_b
  /// (backend memory, 0 <= y_b < classes: not checked), in double (classifier.md (5)-(7)):
  ///   loss += lse_b - z(y_b, b),   lse_b = m_b + log sum_k exp(z(k, b) - m_b),  m_b = max_k z
  ///   d_logits_out(:, b) = scale (exp(z(:, b) - lse_b) - e_{y_b})    (skipped if empty)
  /// and counts the columns whose first largest logit is at y_b. One body per column writes
  /// (lse_b, loss_b, hit_b) to scratch slot 2; one body adds the columns in order into slot 3
  /// (the CPU's order: the same bits); then, if wanted, one body per element of the gradient.
  /// Every column is read before any gradient is written, so d_logits_out may alias logits.
  template <class S>
  static XentSums softmax_xent_cols(Context& ctx, CView<S> logits, const std::int32_t* labels,
                                    double scale, MatrixView<S> d_logits_out) {
    const Index C = logits.rows, B = logits.cols;
    if (B <= 0) return XentSums{};
    double* col = K::template scratch<double>(ctx, 2, 3 * B);
    XentSums* sums = K::template scratch<XentSums>(ctx, 3, 1);
    Exec::launch(
        ctx, B, FLOWPRIOR_LAMBDA(Index b) {
          using std::exp;
          using std::log;
          const S* z = logits.col(b);
          const Index y = labels[b];
          Index top = 0;
          for (Index k = 1; k < C; ++k)
            if (z[k] > z[top]) top = k;
          const double m = static_cast<double>(z[top]);
          double sum = 0;
          for (Index k = 0; k < C; ++k) sum += exp(static_cast<double>(z[k]) - m);
          const double lse = m + log(sum);
          col[3 * b] = lse;
          col[3 * b + 1] = lse - static_cast<double>(z[y]);
          col[3 * b + 2] = top == y ? 1.0 : 0.0;
        });
    Exec::launch(
        ctx, 1, FLOWPRIOR_LAMBDA(Index) {
          double loss = 0;
          Index correct = 0;
          for (Index b = 0; b < B; ++b) {
            loss += col[3 * b + 1];
            correct += col[3 * b + 2] != 0.0 ? 1 : 0;
          }
          sums->loss = loss;
          sums->correct = correct;
        });
    if (!d_logits_out.empty())
      K::for_each_element(
          ctx, C, B, FLOWPRIOR_LAMBDA(Index k, Index b) {
            using std::exp;
            const double p = exp(static_cast<double>(logits(k, b)) - col[3 * b]);
            d_logits_out(k, b) = static_cast<S>(scale * (k == labels[b] ? p - 1.0 : p));
          });
    XentSums out;
    Exec::copy_to_host(sums, 1, &out);
    return out;
  }

  // ---------------------------------------------------------------------------------------------
  // Image tokens: images as columns of (channels height width) values in CHW order, tokens as
  // the patches of a p x p grid (docs/math/patches.md).

  /// tokens_out (C p p, B T) <- the patches of images (C H W, B): token t = gy (W / p) + gx of
  /// image b is column b T + t, element c p^2 + i p + j of it the pixel (c, gy p + i, gx p + j).
  /// H and W are multiples of p (the caller checks). One body per token element (a gather).
  ///                                                                              patches.md (1)
  template <class S>
  static void patchify(Context& ctx, CView<S> images, Index channels, Index height, Index width,
                       Index patch, MatrixView<S> tokens_out) {
    if (patch <= 0) return;
    const Index gw = width / patch, T = (height / patch) * gw, pp = patch * patch;
    K::for_each_element(
        ctx, channels * pp, images.cols * T, FLOWPRIOR_LAMBDA(Index r, Index col) {
          const Index b = col / T, t = col % T;
          const Index c = r / pp, i = (r % pp) / patch, x = r % patch;
          const Index y0 = (t / gw) * patch, x0 = (t % gw) * patch;
          tokens_out(r, col) = images(c * height * width + (y0 + i) * width + x0 + x, b);
        });
  }

  /// images_out (C H W, B) <- the image whose patches tokens (C p p, B T) are: the inverse of
  /// patchify (a permutation, so its adjoint too). One body per pixel (a gather).
  ///                                                                              patches.md (2)
  template <class S>
  static void unpatchify(Context& ctx, CView<S> tokens, Index channels, Index height, Index width,
                         Index patch, MatrixView<S> images_out) {
    if (patch <= 0) return;
    const Index gw = width / patch, T = (height / patch) * gw, hw = height * width;
    K::for_each_element(
        ctx, channels * hw, images_out.cols, FLOWPRIOR_LAMBDA(Index r, Index b) {
          const Index c = r / hw, y = (r % hw) / width, x = r % width;
          const Index t = (y / patch) * gw + x / patch;
          images_out(r, b) = tokens((c * patch + y % patch) * patch + x % patch, b * T + t);
        });
  }

  /// tokens(:, b T + j) += table(:, j) for every sequence b; table is (D, T). One body per
  /// element of tokens.                                                          patches.md (3)
  template <class S>
  static void add_per_token(Context& ctx, CView<S> table, MatrixView<S> tokens) {
    const Index T = table.cols;
    if (T <= 0) return;
    K::for_each_element(
        ctx, tokens.rows, tokens.cols,
        FLOWPRIOR_LAMBDA(Index i, Index j) { tokens(i, j) += table(i, j % T); });
  }

  /// d_table(:, j) += sum_b d_tokens(:, b T + j): one body per element of d_table, adding the
  /// sequences in order into its value (in S: the CPU's order and bits).         patches.md (3)
  template <class S>
  static void sum_per_token(Context& ctx, CView<S> d_tokens, MatrixView<S> d_table) {
    const Index T = d_table.cols, B = T == 0 ? 0 : d_tokens.cols / T;
    K::for_each_element(
        ctx, d_table.rows, T, FLOWPRIOR_LAMBDA(Index i, Index j) {
          S acc = d_table(i, j);
          for (Index b = 0; b < B; ++b) acc += d_tokens(i, b * T + j);
          d_table(i, j) = acc;
        });
  }

  /// map_out[i] = i / tokens for every i < map_out.size (backend memory): the `group` map of one
  /// modulation column per sequence (transformer.md (4)-(7)). tokens >= 1 (the caller checks).
  /// One body per entry.
  template <class I>
  static void sequence_map(Context& ctx, Index tokens, VectorView<I> map_out) {
    static_assert(std::is_integral<I>::value, "sequence_map writes integer indices");
    Exec::launch(
        ctx, map_out.size, FLOWPRIOR_LAMBDA(Index i) { map_out[i] = static_cast<I>(i / tokens); });
  }

  // ---------------------------------------------------------------------------------------------
  // Gaussian posterior of the tokenizer's latents: docs/math/tokenizer.md "Gaussian posterior".
  // moments is (2 d, N): rows [0, d) the means mu, rows [d, 2 d) the raw log-variances; the
  // other operands are (d, N).

  /// logvar_out = clamp(raw, -30, 20) and z_out = mu + exp(logvar / 2) eps, in S
  /// (core/math.hpp clamp_logvar, posterior_sample); an empty eps means eps = 0: z_out = mu,
  /// copied. One body per element of (d, N).                              tokenizer.md (7)-(8)
  template <class S>
  static void gaussian_posterior_forward(Context& ctx, CView<S> moments, CView<S> eps,
                                         MatrixView<S> logvar_out, MatrixView<S> z_out) {
    const Index d = logvar_out.rows;
    const bool noise = !eps.empty();
    K::for_each_element(
        ctx, d, logvar_out.cols, FLOWPRIOR_LAMBDA(Index i, Index j) {
          const S mu = moments(i, j);
          const S lv = math::clamp_logvar(moments(d + i, j));
          logvar_out(i, j) = lv;
          z_out(i, j) = noise ? math::posterior_sample(mu, lv, eps(i, j)) : mu;
        });
  }

  /// sum over the elements of KL(N(mu, exp(logvar)) || N(0, 1)) = sum (mu^2 + exp(logvar) - 1 -
  /// logvar) / 2 in double (core/math.hpp gaussian_kl); logvar the clamped (d, N) of
  /// gaussian_posterior_forward. The elements in column-major order are cut into chunks of
  /// kChunk, each summed in order, the partials added in chunk order (K::reduce_chunks): the
  /// same bits on every run; the CPU adds all elements in one running sum, so the two differ
  /// by rounding only.                                                         tokenizer.md (9)
  template <class S>
  static double gaussian_kl(Context& ctx, ConstMatrixView<S> moments, ConstMatrixView<S> logvar) {
    const Index d = logvar.rows, n = logvar.rows * logvar.cols;
    if (n <= 0) return 0.0;
    return K::reduce_chunks(
        ctx, div_up(n, kChunk), FLOWPRIOR_LAMBDA(Index c) {
          const Index e1 = (c + 1) * kChunk < n ? (c + 1) * kChunk : n;
          double acc = 0;
          for (Index e = c * kChunk; e < e1; ++e) {
            const Index i = e % d, j = e / d;
            acc += math::gaussian_kl(double(moments(i, j)), double(logvar(i, j)));
          }
          return acc;
        });
  }

  /// The adjoint of gaussian_posterior_forward plus kl_weight times the gradient of
  /// gaussian_kl's sum, written (not accumulated) into d_moments_out (2 d, N):
  ///   d_mu  = d_z + kl_weight mu
  ///   d_raw = [-30 <= raw <= 20] (d_z eps exp(logvar / 2) / 2 + kl_weight (exp(logvar) - 1) / 2)
  /// in S; an empty eps drops the first term of d_raw (z = mu). d_moments_out must not overlap
  /// the inputs. One body per element of (d, N) writes both d_mu and d_raw.   tokenizer.md (10)
  template <class S>
  static void gaussian_posterior_backward(Context& ctx, CView<S> moments, CView<S> logvar,
                                          CView<S> eps, CView<S> d_z, S kl_weight,
                                          MatrixView<S> d_moments_out) {
    const Index d = logvar.rows;
    const bool noise = !eps.empty();
    K::for_each_element(
        ctx, d, logvar.cols, FLOWPRIOR_LAMBDA(Index i, Index j) {
          using std::exp;
          const S g = d_z(i, j);
          d_moments_out(i, j) = g + kl_weight * moments(i, j);
          if (!math::logvar_in_range(moments(d + i, j))) {
            d_moments_out(d + i, j) = S(0);
            return;
          }
          const S lv = logvar(i, j);
          const S kl = kl_weight * S(0.5) * (exp(lv) - S(1));
          d_moments_out(d + i, j) = noise ? S(0.5) * g * eps(i, j) * exp(lv * S(0.5)) + kl : kl;
        });
  }
};

}  // namespace kernel
}  // namespace flowprior
