/// @file
/// CpuBackend: the Eigen implementation of the backend primitives that the layers in nn/ are
/// written against (docs/backends.md). Matrix products run Eigen's GEMM kernel on views (no
/// copies, no temporaries, packing buffers reused: cpu_gemm.hpp); element-wise primitives are
/// loops over the scalar formulas of core/math.hpp, which the CUDA kernels share. Both use the
/// thread team of parallel.hpp when the program is built with OpenMP.
///
/// Conventions of every primitive:
/// - views are column-major (features, batch), one column per sample;
/// - outputs named `*_out` are overwritten, outputs named `d_*` are accumulated (+=);
/// - "K-broadcast" primitives take per-sample quantities of shape (C, B) and tangents of shape
///   (C, B*K), where tangent column b*K + k belongs to sample b.
/// - Time-grouped evaluation (docs/math/adaln.md "Time groups"): the AdaLN modulations (shift,
///   scale, gate) may have one column per group of samples that share t; `group` (length B)
///   then maps sample b to its column group[b]. A null `group` means one column per sample.
///   Gradients w.r.t. grouped modulations are summed over the group (accumulated).
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <flowprior/backend/batch_args.hpp>
#include <flowprior/backend/cpu_blas.hpp>
#include <flowprior/backend/cpu_gemm.hpp>
#include <flowprior/backend/ode_args.hpp>
#include <flowprior/backend/optim_args.hpp>
#include <flowprior/backend/parallel.hpp>
#include <flowprior/backend/views.hpp>
#include <flowprior/backend/xent_args.hpp>
#include <flowprior/core/activation.hpp>
#include <flowprior/core/convention.hpp>
#include <flowprior/core/math.hpp>
#include <flowprior/core/random.hpp>
#include <flowprior/core/types.hpp>
#include <limits>
#include <type_traits>
#include <unsupported/Eigen/SpecialFunctions>  // the vectorised erf of the float GELU
#include <vector>

namespace flowprior {

struct CpuBackend {
  /// The execution context that every primitive takes as its first argument (docs/backends.md
  /// "Context"). It is empty on the CPU: the thread team of parallel.hpp and the per-thread GEMM
  /// packing buffers of cpu_gemm.hpp need no per-caller state. A CUDA backend's context will hold
  /// what its primitives run on: the stream, a cuBLAS handle bound to that stream, and device
  /// scratch (reduction partials), all owned by the context. It is owned by the caller or by a
  /// workspace (nn::FieldWorkspace), never by the library globally, and is used from one thread
  /// at a time; one context per stream.
  struct Context {};

  /// Owning storage of the backend (16-byte aligned for Eigen's vectorised kernels).
  template <class S>
  using Buffer = std::vector<S, Eigen::aligned_allocator<S>>;

  static constexpr const char* name() { return "cpu"; }
  /// Buffers are ordinary host memory: a host library (MPI, docs/distributed.md) may read and
  /// write them in place. A backend without this member (or with false) is reached through
  /// copy_to_host / copy_from_host.
  static constexpr bool host_memory = true;
  /// The GEMM engine compiled in: "eigen", "openblas" or "blis" (cpu_blas.hpp).
  static const char* gemm_engine() { return detail::gemm_engine_name(); }

  template <class S>
  static void resize(Buffer<S>& b, Index n) {
    if (Index(b.size()) < n) b.resize(static_cast<std::size_t>(n));
  }
  template <class S>
  static void copy_from_host(const S* src, Index n, Buffer<S>& dst) {
    dst.assign(src, src + n);
  }
  template <class S>
  static void copy_to_host(const Buffer<S>& src, S* dst) {
    std::copy(src.begin(), src.end(), dst);
  }
  /// n elements from host memory into backend memory at dst (a Buffer's data() or a view's).
  template <class S>
  static void copy_from_host(const S* src, Index n, S* dst) {
    std::copy(src, src + n, dst);
  }
  /// n elements of backend memory at src (a Buffer's data() or a view's) into host memory.
  template <class S>
  static void copy_to_host(const S* src, Index n, S* dst) {
    std::copy(src, src + n, dst);
  }

  // ---------------------------------------------------------------------------------------------
  // Matrix products.

  /// C = alpha op(A) op(B) + beta C, op(X) = X or X^T (BLAS gemm semantics; beta = 0 ignores
  /// the previous content of C, NaN included). Runs on the engine chosen at compile time
  /// (cpu_blas.hpp: OpenBLAS or BLIS through flowprior::blas); the default, Eigen's kernel, uses
  /// per-thread packing buffers reused from call to call (cpu_gemm.hpp). No engine allocates
  /// once warmed up (tests/perf).
  template <class S>
  static void gemm(Context& ctx, bool trans_a, bool trans_b, S alpha, CView<S> A, CView<S> B,
                   S beta, MatrixView<S> C) {
    if (C.empty()) return;
    const Index k = trans_a ? A.rows : A.cols;
#if defined(FLOWPRIOR_CBLAS)
    if (detail::gemm_cblas(trans_a, trans_b, C.rows, C.cols, k, alpha, A.data, A.ld, B.data, B.ld,
                           beta, C.data, C.ld))
      return;
#endif
    if (beta == S(0))
      fill(ctx, C, S(0));
    else if (beta != S(1))
      scale(ctx, C, beta);
    detail::gemm_accumulate(trans_a, trans_b, C.rows, C.cols, k, alpha, A.data, A.ld, B.data, B.ld,
                            C.data, C.ld);
  }

  // ---------------------------------------------------------------------------------------------
  // Simple element-wise primitives. Column passes run on the thread team of parallel.hpp;
  // reductions over columns (sum_cols and the grouped gradients) are cut by feature rows.

  /// C(:, j) = b for every column.
  template <class S>
  static void broadcast_cols(Context&, const S* b, MatrixView<S> C_out) {
    detail::for_cols(C_out.rows, C_out.cols, [&](Index j0, Index j1) {
      for (Index j = j0; j < j1; ++j) std::memcpy(C_out.col(j), b, sizeof(S) * C_out.rows);
    });
  }

  /// C(:, j) += b for every column.
  template <class S>
  static void add_cols(Context&, const S* b, MatrixView<S> C) {
    detail::for_cols(C.rows, C.cols, [&](Index j0, Index j1) {
      for (Index j = j0; j < j1; ++j) {
        S* c = C.col(j);
        for (Index i = 0; i < C.rows; ++i) c[i] += b[i];
      }
    });
  }

  /// d_b += sum_j C(:, j).
  template <class S>
  static void sum_cols(Context&, CView<S> C, S* d_b) {
    detail::for_rows(C.rows, C.cols, [&](Index i0, Index i1) {
      for (Index j = 0; j < C.cols; ++j) {
        const S* c = C.col(j);
        for (Index i = i0; i < i1; ++i) d_b[i] += c[i];
      }
    });
  }

  template <class S>
  static void fill(Context&, MatrixView<S> C_out, S value) {
    detail::for_cols(C_out.rows, C_out.cols, [&](Index j0, Index j1) {
      for (Index j = j0; j < j1; ++j) std::fill(C_out.col(j), C_out.col(j) + C_out.rows, value);
    });
  }

  /// C *= alpha.
  template <class S>
  static void scale(Context&, MatrixView<S> C, S alpha) {
    detail::for_cols(C.rows, C.cols, [&](Index j0, Index j1) {
      for (Index j = j0; j < j1; ++j) {
        S* c = C.col(j);
        for (Index i = 0; i < C.rows; ++i) c[i] *= alpha;
      }
    });
  }

  template <class S>
  static void copy(Context&, CView<S> A, MatrixView<S> B_out) {
    detail::for_cols(A.rows, A.cols, [&](Index j0, Index j1) {
      for (Index j = j0; j < j1; ++j) std::memcpy(B_out.col(j), A.col(j), sizeof(S) * A.rows);
    });
  }

  /// B += alpha A.
  template <class S>
  static void axpy(Context&, S alpha, CView<S> A, MatrixView<S> B) {
    detail::for_cols(A.rows, A.cols, [&](Index j0, Index j1) {
      for (Index j = j0; j < j1; ++j) {
        const S* a = A.col(j);
        S* b = B.col(j);
        for (Index i = 0; i < A.rows; ++i) b[i] += alpha * a[i];
      }
    });
  }

  /// Tangents of the identity for K = dim directions per sample: out (dim, B*dim) holds B copies
  /// of the dim x dim identity (used for the exact divergence).
  template <class S>
  static void identity_tiles(Context&, MatrixView<S> out) {
    const Index d = out.rows;
    for (Index j = 0; j < out.cols; ++j) {
      S* c = out.col(j);
      std::fill(c, c + d, S(0));
      c[j % d] = S(1);
    }
  }

  /// div[b] = sum_k J(k, b*dim + k): the traces of B stacked dim x dim blocks.
  template <class S>
  static void block_traces(Context&, CView<S> J, S* div_out) {
    const Index d = J.rows;
    const Index batch = J.cols / d;
    for (Index b = 0; b < batch; ++b) {
      S acc = 0;
      for (Index k = 0; k < d; ++k) acc += J(k, b * d + k);
      div_out[b] = acc;
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Loss primitives: the path mix, the residuals with their per-row reductions, and the input
  // gradient of the alignment loss (docs/math/flow_matching.md (4)-(6), docs/math/alignment.md
  // (1)). Operands of N*K columns hold K draws per row of x: column col = b*K + k belongs to row
  // b. Each column's coefficients are path_coefficients(conv, t[col]), evaluated in double and
  // rounded to S. Column passes on the thread team; every reduction keeps its serial order, so
  // the results do not depend on the thread count.

  /// xt_out(:, col) = a x(:, col / K) + b eps(:, col) for the N*K columns of eps, with (a, b) of
  /// convention conv at t[col] (flow_matching.md (4)). Returns the number of columns whose t is
  /// not in [0, 1] (NaN included), for the caller to report; those columns hold whatever the
  /// formula gives.
  template <class S>
  static Index path_mix(Context&, Convention conv, CVec<S> t, CView<S> x, CView<S> eps,
                        MatrixView<S> xt_out, Index K) {
    const Index d = eps.rows;
    std::atomic<Index> bad{0};
    detail::for_cols(d, eps.cols, [&](Index j0, Index j1) {
      Index local = 0;
      for (Index col = j0; col < j1; ++col) {
        const S tc = t[col];
        if (!(tc >= S(0) && tc <= S(1))) ++local;
        const PathCoefficients pc = path_coefficients(conv, double(tc));
        const S a = S(pc.a), b = S(pc.b);
        const S* xb = x.col(col / K);
        const S* e = eps.col(col);
        S* o = xt_out.col(col);
        for (Index i = 0; i < d; ++i) o[i] = a * xb[i] + b * e[i];
      }
      if (local != 0) bad.fetch_add(local, std::memory_order_relaxed);
    });
    return bad.load(std::memory_order_relaxed);
  }

  /// The residuals and their per-row sums (flow_matching.md (4)-(5)). In place over the N*K
  /// columns of v, which holds the field's output: r = sign v - (c x(:, col / K) + e eps(:, col)),
  /// with (c, e) of convention conv at t[col]. Row b's sum of r^2 over its K columns (in column
  /// order, each column in element order, in double), times row_scale, goes to row_out[b] and,
  /// if loss_per_row_out is not empty, rounded to S into loss_per_row_out[b]. Returns
  /// sum_b row_out[b], added in row order.
  template <class S>
  static double path_residuals(Context&, Convention conv, S sign, CVec<S> t, CView<S> x,
                               CView<S> eps, MatrixView<S> v, Index K, double row_scale,
                               double* row_out, VectorView<S> loss_per_row_out) {
    const Index d = v.rows, N = x.cols;
    detail::for_cols(d * K, N, [&](Index b0, Index b1) {
      for (Index b = b0; b < b1; ++b) {
        const S* xb = x.col(b);
        double row = 0;
        for (Index k = 0; k < K; ++k) {
          const Index col = b * K + k;
          const PathCoefficients pc = path_coefficients(conv, double(t[col]));
          const S c = S(pc.c), e = S(pc.e);
          const S* ec = eps.col(col);
          S* r = v.col(col);
          for (Index i = 0; i < d; ++i) {
            const S ri = sign * r[i] - (c * xb[i] + e * ec[i]);
            r[i] = ri;
            row += double(ri) * double(ri);
          }
        }
        row *= row_scale;
        row_out[b] = row;
        if (loss_per_row_out.size != 0) loss_per_row_out[b] = static_cast<S>(row);
      }
    });
    double total = 0;
    for (Index b = 0; b < N; ++b) total += row_out[b];
    return total;
  }

  /// B_out = alpha A (one pass: the scaled residuals d_v of the losses).
  template <class S>
  static void scaled_copy(Context&, S alpha, CView<S> A, MatrixView<S> B_out) {
    detail::for_cols(A.rows, A.cols, [&](Index j0, Index j1) {
      for (Index j = j0; j < j1; ++j) {
        const S* a = A.col(j);
        S* o = B_out.col(j);
        for (Index i = 0; i < A.rows; ++i) o[i] = alpha * a[i];
      }
    });
  }

  /// The gradient of the path mix and of the target velocity with respect to the rows
  /// (alignment.md (1)): d_x(:, b) += sum_k [a dxt(:, col) - sign c dv(:, col)], col = b*K + k,
  /// with (a, c) of convention conv at t[col], the K columns of a row added in order. An empty
  /// dxt drops the a term (the prediction detached).
  template <class S>
  static void path_grad(Context&, Convention conv, S sign, CVec<S> t, CView<S> dv, CView<S> dxt,
                        MatrixView<S> d_x, Index K) {
    const Index d = d_x.rows;
    const bool through_v = !dxt.empty();
    detail::for_cols(d * K, d_x.cols, [&](Index b0, Index b1) {
      for (Index b = b0; b < b1; ++b) {
        S* g_out = d_x.col(b);
        for (Index k = 0; k < K; ++k) {
          const Index col = b * K + k;
          const PathCoefficients pc = path_coefficients(conv, double(t[col]));
          const S a = S(pc.a), c_f = sign * S(pc.c);
          const S* dvc = dv.col(col);
          const S* dxc = through_v ? dxt.col(col) : nullptr;
          for (Index i = 0; i < d; ++i) {
            S g = -c_f * dvc[i];
            if (through_v) g += a * dxc[i];
            g_out[i] += g;
          }
        }
      }
    });
  }

  // ---------------------------------------------------------------------------------------------
  // Draws, times and input scans: the noise of the losses from a counter-based generator
  // (core/random.hpp), the time reversal of a reversed prior, the time groups of a batch, and the
  // scans behind the argument checks (backend/checks.hpp).

  /// Standard normal noise: out(i, j) = n(i + (col0 + j) * out.rows), where n(e) is element e
  /// of the Philox stream (key, stream): pair e / 2 of philox_normal_pair, its first value for
  /// even e, its second for odd e, rounded to S. With antithetic_K > 0, the columns with
  /// (col0 + j) % antithetic_K odd hold the negation of their left neighbour instead (antithetic
  /// pairs; col0 a multiple of antithetic_K). Every element is a function of its position alone:
  /// any split of the work gives the same bits, and `col0` > 0 gives exactly columns col0, col0 +
  /// 1, ... of a wider draw (one rank's slice of a global batch, docs/distributed.md).
  /// docs/math/flow_matching.md "Sampling".
  template <class S>
  static void gaussian_noise(Context&, std::uint64_t key, std::uint64_t stream, MatrixView<S> out,
                             Index antithetic_K, Index col0 = 0) {
    const Index d = out.rows;
    // A Philox block with a logarithm, a square root and a sine costs some 20 element copies.
    detail::for_cols(16 * d, out.cols, [&](Index j0, Index j1) {
      for (Index j = j0; j < j1; ++j) {
        const Index jg = col0 + j;  // the column of the wider draw
        const bool negated = antithetic_K > 0 && (jg % antithetic_K) % 2 == 1;
        const Index src = negated ? jg - 1 : jg;
        S* o = out.col(j);
        std::uint64_t have = ~std::uint64_t(0);
        NormalPair z{0, 0};
        for (Index i = 0; i < d; ++i) {
          const auto e = static_cast<std::uint64_t>(i + src * d);
          if ((e >> 1) != have) {
            have = e >> 1;
            z = philox_normal_pair(key, stream, have);
          }
          const double v = (e & 1) ? z.z1 : z.z0;
          o[i] = static_cast<S>(negated ? -v : v);
        }
      }
    });
  }

  /// t_out = 1 - t: the times of the other convention (flow_matching.md (3)). t_out may alias t.
  template <class S>
  static void reverse_times(Context&, CVec<S> t, VectorView<S> t_out) {
    detail::for_cols(1, t.size, [&](Index i0, Index i1) {
      for (Index i = i0; i < i1; ++i) t_out[i] = S(1) - t[i];
    });
  }

  /// Index of the first t outside [0, 1] (NaN included), or -1.
  template <class S>
  static Index first_outside_unit(Context&, ConstVectorView<S> t) {
    for (Index i = 0; i < t.size; ++i)
      if (!(t[i] >= S(0) && t[i] <= S(1))) return i;
    return -1;
  }

  /// The time groups of t (adaln.md "Time groups"): runs of equal consecutive times. Writes the
  /// time of each run to times_out (in order) and, for every b, the run of t[b] to map_out[b];
  /// returns the number of runs R (0 for an empty t). times_out and map_out hold t.size
  /// elements.
  template <class S>
  static Index time_runs(Context&, CVec<S> t, S* times_out, Index* map_out) {
    if (t.size == 0) return 0;
    Index r = 0;
    times_out[0] = t[0];
    map_out[0] = 0;
    for (Index b = 1; b < t.size; ++b) {
      if (t[b] != t[b - 1]) times_out[++r] = t[b];
      map_out[b] = r;
    }
    return r + 1;
  }

  // ---------------------------------------------------------------------------------------------
  // Attention primitives: batched products over the (batch, head) grid and the column softmax
  // (docs/math/attention.md).

  /// For every problem of `batch` (batch_args.hpp): C = alpha op(A) op(B) + beta C, with the
  /// shapes and leading dimensions of the views A, B, C (those of problem (0, 0)); beta = 0
  /// ignores C's content. The problems run in parallel on the thread team, each on one thread
  /// with Eigen's serial kernel and that thread's packing buffers (no allocation once warmed
  /// up); the products of attention are small (head_dim x tokens), so one thread per product
  /// beats splitting each. The C blocks of different problems must not overlap.
  template <class S>
  static void gemm_batched(Context&, bool trans_a, bool trans_b, S alpha, CView<S> A, CView<S> B,
                           S beta, MatrixView<S> C, const GemmBatch& batch) {
    const Index count = batch.count();
    if (C.empty() || count <= 0) return;
    const Index m = C.rows, n = C.cols, k = trans_a ? A.rows : A.cols;
    const double macs = double(m) * double(n) * double(k) * double(count);
    std::atomic<bool> failed{false};
    detail::run_chunks(
        detail::team_size(macs, count, detail::kParallelMacs), count, 1, [&](Index p0, Index p1) {
          for (Index p = p0; p < p1; ++p) {
            const Index o = p / batch.inner, i = p % batch.inner;
            const S* a = A.data + o * batch.a_outer + i * batch.a_inner;
            const S* b = B.data + o * batch.b_outer + i * batch.b_inner;
            S* c = C.data + o * batch.c_outer + i * batch.c_inner;
            for (Index j = 0; j < n; ++j) {
              S* cj = c + j * C.ld;
              if (beta == S(0))
                std::fill(cj, cj + m, S(0));
              else if (beta != S(1))
                for (Index r = 0; r < m; ++r) cj[r] *= beta;
            }
            try {
              detail::gemm_serial(trans_a, trans_b, m, n, k, alpha, a, A.ld, b, B.ld, c, C.ld);
            } catch (...) {  // only a thread's first growth of its scratch
              failed.store(true);
            }
          }
        });
    if (failed.load()) throw std::bad_alloc();
  }

  /// In place, per column: a <- softmax(a) = exp(a - max a) / sum exp(a - max a)
  /// (attention.md (2)). A column of -inf entries only is not expected (no masking here).
  template <class S>
  static void softmax_cols(Context&, MatrixView<S> A) {
    using Arr = Eigen::Array<S, Eigen::Dynamic, 1>;
    detail::for_cols(8 * A.rows, A.cols, [&](Index j0, Index j1) {
      for (Index j = j0; j < j1; ++j) {
        Eigen::Map<Arr> a(A.col(j), A.rows);
        const S top = a.maxCoeff();
        a = (a - top).exp();
        a *= S(1) / a.sum();
      }
    });
  }

  /// In place, per column, the backward of softmax_cols given its output P:
  /// d <- P * (d - <P, d>)  (attention.md (5)).
  template <class S>
  static void softmax_backward_cols(Context&, CView<S> P, MatrixView<S> D) {
    using Arr = Eigen::Array<S, Eigen::Dynamic, 1>;
    detail::for_cols(4 * P.rows, P.cols, [&](Index j0, Index j1) {
      for (Index j = j0; j < j1; ++j) {
        const Eigen::Map<const Arr> p(P.col(j), P.rows);
        Eigen::Map<Arr> d(D.col(j), P.rows);
        const S dot = (p * d).sum();
        d = p * (d - dot);
      }
    });
  }

  /// Softmax cross-entropy of every column of logits z (classes, B) against its label y_b
  /// (backend memory, 0 <= y_b < classes: not checked, the caller checks on the host), in
  /// double with the log-sum-exp shifted by the column's maximum (classifier.md (5)-(6)):
  ///   loss += lse_b - z(y_b, b),   lse_b = m_b + log sum_k exp(z(k, b) - m_b),  m_b = max_k z
  ///   d_logits_out(:, b) = scale (exp(z(:, b) - lse_b) - e_{y_b})    (skipped if empty)
  /// and counts the columns whose first largest logit is at y_b (classifier.md (7)). Columns are
  /// visited in order on the calling thread (a batch of logits is small next to the products),
  /// so the sums are the same bits for any thread count. d_logits_out may alias logits.
  template <class S>
  static XentSums softmax_xent_cols(Context&, CView<S> logits, const std::int32_t* labels,
                                    double scale, MatrixView<S> d_logits_out) {
    XentSums sums;
    const Index C = logits.rows;
    const bool grad = !d_logits_out.empty();
    for (Index b = 0; b < logits.cols; ++b) {
      const S* z = logits.col(b);
      const Index y = labels[b];
      Index top = 0;
      for (Index k = 1; k < C; ++k)
        if (z[k] > z[top]) top = k;
      const double m = static_cast<double>(z[top]);
      double sum = 0;
      for (Index k = 0; k < C; ++k) sum += std::exp(static_cast<double>(z[k]) - m);
      const double lse = m + std::log(sum);
      sums.loss += lse - static_cast<double>(z[y]);
      sums.correct += top == y ? 1 : 0;
      if (!grad) continue;
      S* d = d_logits_out.col(b);
      for (Index k = 0; k < C; ++k) {
        const double p = std::exp(static_cast<double>(z[k]) - lse);
        d[k] = static_cast<S>(scale * (k == y ? p - 1.0 : p));
      }
    }
    return sums;
  }

  // ---------------------------------------------------------------------------------------------
  // Image token primitives: images as columns of (channels height width) values in CHW order,
  // tokens as the patches of a p x p grid (docs/math/patches.md).

  /// tokens_out (C p p, B T) <- the patches of images (C H W, B): token t = gy (W / p) + gx of
  /// image b is column b T + t, element c p^2 + i p + j of it the pixel (c, gy p + i, gx p + j)
  /// (the order of a PyTorch Conv2d patch embedding's flattened weight). H and W are multiples
  /// of p (the caller checks).                                                  patches.md (1)
  template <class S>
  static void patchify(Context&, CView<S> images, Index channels, Index height, Index width,
                       Index patch, MatrixView<S> tokens_out) {
    const Index gw = width / patch, T = (height / patch) * gw;
    detail::for_cols(images.rows, images.cols, [&](Index b0, Index b1) {
      for (Index b = b0; b < b1; ++b) {
        const S* img = images.col(b);
        for (Index t = 0; t < T; ++t) {
          S* o = tokens_out.col(b * T + t);
          const Index y0 = (t / gw) * patch, x0 = (t % gw) * patch;
          for (Index c = 0; c < channels; ++c)
            for (Index i = 0; i < patch; ++i) {
              const S* row = img + c * height * width + (y0 + i) * width + x0;
              std::copy(row, row + patch, o + (c * patch + i) * patch);
            }
        }
      }
    });
  }

  /// images_out (C H W, B) <- the image whose patches tokens (C p p, B T) are: the inverse of
  /// patchify (a permutation, so its adjoint too).                                patches.md (2)
  template <class S>
  static void unpatchify(Context&, CView<S> tokens, Index channels, Index height, Index width,
                         Index patch, MatrixView<S> images_out) {
    const Index gw = width / patch, T = (height / patch) * gw;
    detail::for_cols(images_out.rows, images_out.cols, [&](Index b0, Index b1) {
      for (Index b = b0; b < b1; ++b) {
        S* img = images_out.col(b);
        for (Index t = 0; t < T; ++t) {
          const S* o = tokens.col(b * T + t);
          const Index y0 = (t / gw) * patch, x0 = (t % gw) * patch;
          for (Index c = 0; c < channels; ++c)
            for (Index i = 0; i < patch; ++i) {
              const S* src = o + (c * patch + i) * patch;
              std::copy(src, src + patch, img + c * height * width + (y0 + i) * width + x0);
            }
        }
      }
    });
  }

  /// tokens(:, b T + j) += table(:, j) for every sequence b (positional embeddings, learned or
  /// fixed, added to B sequences of T tokens); table is (D, T).                  patches.md (3)
  template <class S>
  static void add_per_token(Context&, CView<S> table, MatrixView<S> tokens) {
    const Index T = table.cols;
    detail::for_cols(tokens.rows, tokens.cols, [&](Index j0, Index j1) {
      for (Index j = j0; j < j1; ++j) {
        const S* a = table.col(j % T);
        S* o = tokens.col(j);
        for (Index i = 0; i < tokens.rows; ++i) o[i] += a[i];
      }
    });
  }

  /// d_table(:, j) += sum_b d_tokens(:, b T + j): the gradient of add_per_token's table, summed
  /// over the sequences in order (a row pass: one writer per element).             patches.md (3)
  template <class S>
  static void sum_per_token(Context&, CView<S> d_tokens, MatrixView<S> d_table) {
    const Index T = d_table.cols, B = T == 0 ? 0 : d_tokens.cols / T;
    detail::for_rows(d_table.rows, T * B, [&](Index i0, Index i1) {
      for (Index j = 0; j < T; ++j) {
        S* o = d_table.col(j);
        for (Index b = 0; b < B; ++b) {
          const S* g = d_tokens.col(b * T + j);
          for (Index i = i0; i < i1; ++i) o[i] += g[i];
        }
      }
    });
  }

  /// map_out[i] = i / tokens for every i < map_out.size: the sequence of each column of a token
  /// matrix of B sequences of `tokens` tokens (column b tokens + j is token j of sequence b).
  /// It is the `group` map through which one modulation column per sequence reaches every token
  /// of its sequence (norm_modulate_*, gated_residual_*; transformer.md (4)-(7)). tokens >= 1
  /// (the caller checks). Templated on the index type only so that wrappers can forward it.
  template <class I>
  static void sequence_map(Context&, Index tokens, VectorView<I> map_out) {
    static_assert(std::is_integral<I>::value, "sequence_map writes integer indices");
    detail::for_range(map_out.size, [&](Index j0, Index j1) {
      for (Index j = j0; j < j1; ++j) map_out[j] = static_cast<I>(j / tokens);
    });
  }

  // ---------------------------------------------------------------------------------------------
  // Gaussian posterior of the tokenizer's latents: docs/math/tokenizer.md "Gaussian posterior".
  // moments is (2 d, N): rows [0, d) the means mu, rows [d, 2 d) the raw log-variances; the
  // other operands are (d, N). Column passes on the thread team; every element is written by
  // one thread, so any split gives the same bits.

  /// logvar_out = clamp(raw, -30, 20) and z_out = mu + exp(logvar / 2) eps, in S
  /// (core/math.hpp clamp_logvar, posterior_sample); an empty eps means eps = 0: z_out = mu,
  /// copied.                                                               tokenizer.md (7)-(8)
  template <class S>
  static void gaussian_posterior_forward(Context&, CView<S> moments, CView<S> eps,
                                         MatrixView<S> logvar_out, MatrixView<S> z_out) {
    const Index d = logvar_out.rows;
    const bool noise = !eps.empty();
    detail::for_cols(4 * d, logvar_out.cols, [&](Index j0, Index j1) {
      for (Index j = j0; j < j1; ++j) {
        const S* mu = moments.col(j);
        const S* raw = mu + d;
        S* lv = logvar_out.col(j);
        S* z = z_out.col(j);
        for (Index i = 0; i < d; ++i) {
          lv[i] = math::clamp_logvar(raw[i]);
          z[i] = noise ? math::posterior_sample(mu[i], lv[i], eps(i, j)) : mu[i];
        }
      }
    });
  }

  /// sum over the elements of KL(N(mu, exp(logvar)) || N(0, 1)) = sum (mu^2 + exp(logvar) - 1 -
  /// logvar) / 2 in double (core/math.hpp gaussian_kl), added column by column in order (the same
  /// bits for any thread count); logvar the clamped (d, N) of gaussian_posterior_forward.
  ///                                                                          tokenizer.md (9)
  template <class S>
  static double gaussian_kl(Context&, ConstMatrixView<S> moments, ConstMatrixView<S> logvar) {
    const Index d = logvar.rows;
    double acc = 0;
    for (Index j = 0; j < logvar.cols; ++j) {
      const S* mu = moments.col(j);
      const S* lv = logvar.col(j);
      for (Index i = 0; i < d; ++i) acc += math::gaussian_kl(double(mu[i]), double(lv[i]));
    }
    return acc;
  }

  /// The adjoint of gaussian_posterior_forward plus kl_weight times the gradient of
  /// gaussian_kl's sum, written (not accumulated) into d_moments_out (2 d, N):
  ///   d_mu  = d_z + kl_weight mu
  ///   d_raw = [-30 <= raw <= 20] (d_z eps exp(logvar / 2) / 2 + kl_weight (exp(logvar) - 1) / 2)
  /// in S; an empty eps drops the first term of d_raw (z = mu). d_moments_out must not overlap
  /// the inputs.                                                              tokenizer.md (10)
  template <class S>
  static void gaussian_posterior_backward(Context&, CView<S> moments, CView<S> logvar, CView<S> eps,
                                          CView<S> d_z, S kl_weight, MatrixView<S> d_moments_out) {
    using std::exp;
    const Index d = logvar.rows;
    const bool noise = !eps.empty();
    detail::for_cols(4 * d, logvar.cols, [&](Index j0, Index j1) {
      for (Index j = j0; j < j1; ++j) {
        const S* mu = moments.col(j);
        const S* raw = mu + d;
        const S* lv = logvar.col(j);
        const S* g = d_z.col(j);
        S* dmu = d_moments_out.col(j);
        S* draw = dmu + d;
        for (Index i = 0; i < d; ++i) {
          dmu[i] = g[i] + kl_weight * mu[i];
          if (!math::logvar_in_range(raw[i])) {
            draw[i] = S(0);
            continue;
          }
          const S kl = kl_weight * S(0.5) * (exp(lv[i]) - S(1));
          draw[i] = noise ? S(0.5) * g[i] * eps(i, j) * exp(lv[i] * S(0.5)) + kl : kl;
        }
      }
    });
  }

  // ---------------------------------------------------------------------------------------------
  // Activations: docs/math/activations.md.

  /// a = act(z).
  template <class S>
  static void activation_forward(Context&, Activation act, CView<S> z, MatrixView<S> a_out) {
    if (act == Activation::SiLU) {  // vectorised: Eigen's packet exp
      detail::for_cols(z.rows, z.cols, [&](Index j0, Index j1) {
        for (Index j = j0; j < j1; ++j) silu_col(z.col(j), a_out.col(j), z.rows);
      });
      return;
    }
    if constexpr (std::is_same<S, float>::value) {  // vectorised: Eigen's packet erf
      detail::for_cols(z.rows, z.cols, [&](Index j0, Index j1) {
        for (Index j = j0; j < j1; ++j) gelu_col(z.col(j), a_out.col(j), z.rows);
      });
      return;
    }
    return map_act<math::Act<Activation::GELU>>(z, a_out);
  }

  /// d_z_out = act'(z) * d_a (overwrite; d_z_out may alias d_a).  activations.md (7)
  template <class S>
  static void activation_backward(Context& ctx, Activation act, CView<S> z, CView<S> d_a,
                                  MatrixView<S> d_z_out) {
    return activation_jvp(ctx, act, z, d_a, d_z_out, 1);
  }

  /// K-broadcast JVP: out(:, bK+k) = act'(z(:, b)) * dz(:, bK+k).  activations.md (7)
  template <class S>
  static void activation_jvp(Context&, Activation act, CView<S> z, CView<S> dz, MatrixView<S> out,
                             Index K) {
    if (act == Activation::SiLU) {  // vectorised: Eigen's packet exp
      detail::for_cols(dz.rows, dz.cols, [&](Index j0, Index j1) {
        for (Index c = j0; c < j1; ++c)
          silu_grad_mul_col(z.col(c / K), dz.col(c), out.col(c), dz.rows);
      });
      return;
    }
    if constexpr (std::is_same<S, float>::value) {  // vectorised: Eigen's packet erf and exp
      detail::for_cols(dz.rows, dz.cols, [&](Index j0, Index j1) {
        for (Index c = j0; c < j1; ++c)
          gelu_grad_mul_col(z.col(c / K), dz.col(c), out.col(c), dz.rows);
      });
      return;
    }
    return act_jvp<math::Act<Activation::GELU>>(z, dz, out, K);
  }

  // ---------------------------------------------------------------------------------------------
  // Sinusoidal time features: docs/math/time_embedding.md (1).

  /// e(i, b) = cos(t_b f_i), e(half + i, b) = sin(t_b f_i), f_i = exp(-ln(max_period) i / half).
  /// Evaluated in double whatever S is.
  template <class S>
  static void time_features(Context&, CVec<S> t, S max_period, MatrixView<S> e_out) {
    const Index half = e_out.rows / 2;
    const double lp = std::log(static_cast<double>(max_period));
    // Cost ~ 30 ns per element (exp, cos, sin), so parallel from a few hundred elements.
    const int threads =
        detail::team_size(30.0 * double(e_out.rows) * double(e_out.cols), e_out.cols);
    detail::run_chunks(threads, e_out.cols, 1, [&](Index j0, Index j1) {
      for (Index b = j0; b < j1; ++b) {
        S* e = e_out.col(b);
        for (Index i = 0; i < half; ++i) {
          const double f = std::exp(-lp * static_cast<double>(i) / static_cast<double>(half));
          const double arg = static_cast<double>(t[b]) * f;
          e[i] = static_cast<S>(std::cos(arg));
          e[half + i] = static_cast<S>(std::sin(arg));
        }
      }
    });
  }

  // ---------------------------------------------------------------------------------------------
  // LayerNorm fused with the AdaLN modulation: docs/math/layer_norm.md, docs/math/adaln.md.

  /// Per column: n = (h - mean) * rstd, a = n * gamma + beta (gamma/beta may be null: no
  /// affine), m = a * (1 + scale) + shift (scale/shift may be empty: no modulation).
  /// Caches n (nhat_out) and rstd (rstd_out, one per column).  layer_norm.md (1)-(2), adaln.md (1)
  /// One pass over h for the moments, one for the outputs.
  template <class S>
  static void norm_modulate_forward(Context&, CView<S> h, const S* gamma, const S* beta, S eps,
                                    CView<S> shift, CView<S> scale, MatrixView<S> nhat_out,
                                    S* rstd_out, MatrixView<S> m_out,
                                    const Index* group = nullptr) {
    const Index C = h.rows;
    const bool mod = !scale.empty();
    detail::for_cols(C, h.cols, [&](Index j0, Index j1) {
      for (Index b = j0; b < j1; ++b) {
        const S* x = h.col(b);
        const double mean =
            detail::lane_sum(C, [&](Index i) { return double(x[i]); }) / static_cast<double>(C);
        const double var = detail::lane_sum(C,
                                            [&](Index i) {
                                              const double d = double(x[i]) - mean;
                                              return d * d;
                                            }) /
                           static_cast<double>(C);  // biased variance, as torch.nn.LayerNorm
        const S rstd = static_cast<S>(1.0 / std::sqrt(var + static_cast<double>(eps)));
        rstd_out[b] = rstd;
        S* n = nhat_out.col(b);
        S* m = m_out.col(b);
        const Index gb = group ? group[b] : b;
        const S* sh = mod ? shift.col(gb) : nullptr;
        const S* sc = mod ? scale.col(gb) : nullptr;
        const S mu = static_cast<S>(mean);
        if (gamma && mod) {
          for (Index i = 0; i < C; ++i) {
            const S ni = (x[i] - mu) * rstd;
            n[i] = ni;
            m[i] = (ni * gamma[i] + beta[i]) * (S(1) + sc[i]) + sh[i];
          }
        } else if (mod) {
          for (Index i = 0; i < C; ++i) {
            const S ni = (x[i] - mu) * rstd;
            n[i] = ni;
            m[i] = ni * (S(1) + sc[i]) + sh[i];
          }
        } else {
          for (Index i = 0; i < C; ++i) {
            const S ni = (x[i] - mu) * rstd;
            n[i] = ni;
            m[i] = gamma ? ni * gamma[i] + beta[i] : ni;
          }
        }
      }
    });
  }

  /// Backward of norm_modulate_forward, given d_m:          adaln.md (2)-(3), layer_norm.md (3)-(5)
  ///   d_shift_out = d_m,  d_scale_out = d_m * a  (written, if non-empty; with `group`,
  ///   accumulated into the group's column instead),
  ///   d_gamma += sum_b d_a * n,  d_beta += sum_b d_a  (if non-null),
  ///   d_h += rstd (g - mean(g) - n mean(g n)),  g = d_a * gamma,  d_a = d_m * (1 + scale).
  /// d_h and the per-sample modulation gradients: one column pass; the sums over samples (the
  /// affine gradients, grouped modulation gradients): one row pass, race-free.
  template <class S>
  static void norm_modulate_backward(Context&, CView<S> nhat, const S* rstd, const S* gamma,
                                     const S* beta, CView<S> scale, CView<S> d_m, MatrixView<S> d_h,
                                     MatrixView<S> d_shift_out, MatrixView<S> d_scale_out,
                                     S* d_gamma, S* d_beta, const Index* group = nullptr) {
    const Index C = nhat.rows;
    const Index B = nhat.cols;
    const bool mod = !scale.empty();
    const bool want_mod = !d_scale_out.empty();
    detail::for_cols(C, B, [&](Index j0, Index j1) {
      for (Index b = j0; b < j1; ++b) {
        const Index gb = group ? group[b] : b;
        const S* n = nhat.col(b);
        const S* dm = d_m.col(b);
        const S* sc = mod ? scale.col(gb) : nullptr;
        if (want_mod && !group) {
          S* dsh = d_shift_out.col(b);
          S* dsc = d_scale_out.col(b);
          for (Index i = 0; i < C; ++i) {
            dsh[i] = dm[i];
            dsc[i] = dm[i] * (gamma ? n[i] * gamma[i] + beta[i] : n[i]);
          }
        }
        const detail::LanePair sums = detail::lane_sums(C, [&](Index i) {
          const S da = mod ? dm[i] * (S(1) + sc[i]) : dm[i];
          const S g = gamma ? da * gamma[i] : da;
          return detail::LanePair{double(g), double(g * n[i])};
        });
        const S mean_g = static_cast<S>(sums.a / static_cast<double>(C));
        const S mean_gn = static_cast<S>(sums.b / static_cast<double>(C));
        S* dh = d_h.col(b);
        const S r = rstd[b];
        for (Index i = 0; i < C; ++i) {
          const S da = mod ? dm[i] * (S(1) + sc[i]) : dm[i];
          const S g = gamma ? da * gamma[i] : da;
          dh[i] += r * (g - mean_g - n[i] * mean_gn);
        }
      }
    });
    const bool grouped_mod = want_mod && group;
    if (!grouped_mod && !d_gamma) return;
    detail::for_rows(C, B, [&](Index i0, Index i1) {
      for (Index b = 0; b < B; ++b) {
        const Index gb = group ? group[b] : b;
        const S* n = nhat.col(b);
        const S* dm = d_m.col(b);
        if (grouped_mod) {
          S* dsh = d_shift_out.col(gb);
          S* dsc = d_scale_out.col(gb);
          for (Index i = i0; i < i1; ++i) {
            dsh[i] += dm[i];
            dsc[i] += dm[i] * (gamma ? n[i] * gamma[i] + beta[i] : n[i]);
          }
        }
        if (d_gamma) {
          const S* sc = mod ? scale.col(gb) : nullptr;
          for (Index i = i0; i < i1; ++i) {
            const S da = mod ? dm[i] * (S(1) + sc[i]) : dm[i];
            d_gamma[i] += da * n[i];
            d_beta[i] += da;
          }
        }
      }
    });
  }

  /// K-broadcast JVP of norm_modulate_forward w.r.t. h:       layer_norm.md (6), adaln.md (4)
  ///   out = (1 + scale) * gamma * rstd (dh - mean(dh) - n mean(n dh)).
  template <class S>
  static void norm_modulate_jvp(Context&, CView<S> nhat, const S* rstd, const S* gamma,
                                CView<S> scale, CView<S> dh, MatrixView<S> out, Index K,
                                const Index* group = nullptr) {
    const Index C = nhat.rows;
    const bool mod = !scale.empty();
    detail::for_cols(C, dh.cols, [&](Index j0, Index j1) {
      for (Index col = j0; col < j1; ++col) {
        const Index b = col / K;
        const S* n = nhat.col(b);
        const S* sc = mod ? scale.col(group ? group[b] : b) : nullptr;
        const S* x = dh.col(col);
        S* o = out.col(col);
        const detail::LanePair sums = detail::lane_sums(C, [&](Index i) {
          return detail::LanePair{double(x[i]), double(x[i] * n[i])};
        });
        const S m1 = static_cast<S>(sums.a / static_cast<double>(C));
        const S m2 = static_cast<S>(sums.b / static_cast<double>(C));
        const S r = rstd[b];
        for (Index i = 0; i < C; ++i) {
          S y = r * (x[i] - m1 - n[i] * m2);
          if (gamma) y *= gamma[i];
          if (mod) y *= S(1) + sc[i];
          o[i] = y;
        }
      }
    });
  }

  // ---------------------------------------------------------------------------------------------
  // Gated residual h <- h + gate * z: docs/math/adaln.md (5)-(7).

  template <class S>
  static void gated_residual_forward(Context&, CView<S> gate, CView<S> z, MatrixView<S> h,
                                     const Index* group = nullptr) {
    detail::for_cols(h.rows, h.cols, [&](Index j0, Index j1) {
      for (Index b = j0; b < j1; ++b) {
        const S* g = gate.col(group ? group[b] : b);
        const S* zz = z.col(b);
        S* hh = h.col(b);
        for (Index i = 0; i < h.rows; ++i) hh[i] += g[i] * zz[i];
      }
    });
  }

  /// d_z_out = gate * d_h; d_gate_out = d_h * z (written if non-empty; with `group`,
  /// accumulated into the group's column: a row pass, race-free).
  template <class S>
  static void gated_residual_backward(Context&, CView<S> gate, CView<S> z, CView<S> d_h,
                                      MatrixView<S> d_z_out, MatrixView<S> d_gate_out,
                                      const Index* group = nullptr) {
    const Index C = d_h.rows;
    const bool want_gate = !d_gate_out.empty();
    detail::for_cols(C, d_h.cols, [&](Index j0, Index j1) {
      for (Index b = j0; b < j1; ++b) {
        const S* g = gate.col(group ? group[b] : b);
        const S* dh = d_h.col(b);
        S* dz = d_z_out.col(b);
        for (Index i = 0; i < C; ++i) dz[i] = g[i] * dh[i];
        if (want_gate && !group) {
          const S* zz = z.col(b);
          S* dg = d_gate_out.col(b);
          for (Index i = 0; i < C; ++i) dg[i] = dh[i] * zz[i];
        }
      }
    });
    if (!want_gate || !group) return;
    detail::for_rows(C, d_h.cols, [&](Index i0, Index i1) {
      for (Index b = 0; b < d_h.cols; ++b) {
        const S* dh = d_h.col(b);
        const S* zz = z.col(b);
        S* dg = d_gate_out.col(group[b]);
        for (Index i = i0; i < i1; ++i) dg[i] += dh[i] * zz[i];
      }
    });
  }

  /// K-broadcast JVP: dh(:, bK+k) += gate(:, b) * dz(:, bK+k).
  template <class S>
  static void gated_residual_jvp(Context&, CView<S> gate, CView<S> dz, MatrixView<S> dh, Index K,
                                 const Index* group = nullptr) {
    detail::for_cols(dh.rows, dh.cols, [&](Index j0, Index j1) {
      for (Index col = j0; col < j1; ++col) {
        const S* g = gate.col(group ? group[col / K] : col / K);
        const S* x = dz.col(col);
        S* o = dh.col(col);
        for (Index i = 0; i < dh.rows; ++i) o[i] += g[i] * x[i];
      }
    });
  }

  // ---------------------------------------------------------------------------------------------
  // ODE primitives: the stages, the error norms and the state checks of the solvers
  // (ode/integrate.hpp), and the per-sample reductions of the likelihood (ode/flow_ode.hpp),
  // docs/math/ode.md. Coefficients are doubles; every element is evaluated in double and rounded
  // to S once. Views may have ld > rows (the likelihood's state is a row block of its augmented
  // state). Element-wise work runs by columns on the thread team; the sums that steer the step
  // size are added serially in column-major order (column by column, each column top to bottom),
  // so they are the same bits for any thread count.

  /// out = z + h sum_k c_k k_k over the terms (ode.md (1)-(4)): per element, acc = 0 plus each
  /// c_k double(k_k) in the order of the terms, out = S(double(z) + h acc). out may alias z or a
  /// stage (each element is read before it is written).
  template <class S>
  static void lincomb(Context&, CView<S> z, double h, const StageTerms<S>& terms,
                      MatrixView<S> out) {
    const Index n = out.rows;
    const int nt = terms.count;
    detail::for_cols(n, out.cols, [&](Index j0, Index j1) {
      const S* kc[StageTerms<S>::kMax] = {};
      for (Index j = j0; j < j1; ++j) {
        for (int t = 0; t < nt; ++t) kc[t] = terms.stage[t].col(j);
        const S* zc = z.col(j);
        S* o = out.col(j);
        for (Index i = 0; i < n; ++i) {
          double acc = 0;
          for (int t = 0; t < nt; ++t) acc += terms.coef[t] * double(kc[t][i]);
          o[i] = static_cast<S>(double(zc[i]) + h * acc);
        }
      }
    });
  }

  /// The embedded error of an adaptive step, as a sum of squares (ode.md (5)): over every element,
  /// (double(e) / (atol + rtol max(|y0|, |y1|)))^2 with e = S(h acc) and acc the terms' sum as in
  /// lincomb (the estimate rounded to S, as a stored one would be; it is not stored). y0, y1 and
  /// the stages have one shape. Added serially in column-major order; NaN or Inf when an element
  /// is not finite. The caller's RMS is sqrt(sum / max(1, rows cols)).
  template <class S>
  static double error_sq_sum(Context&, CView<S> y0, CView<S> y1, double h,
                             const StageTerms<S>& terms, double atol, double rtol) {
    const int nt = terms.count;
    double s = 0;
    for (Index j = 0; j < y0.cols; ++j) {
      const S* a = y0.col(j);
      const S* b = y1.col(j);
      for (Index i = 0; i < y0.rows; ++i) {
        double acc = 0;
        for (int t = 0; t < nt; ++t) acc += terms.coef[t] * double(terms.stage[t](i, j));
        const double e = double(static_cast<S>(h * acc));
        const double sc = atol + rtol * std::max(std::abs(double(a[i])), std::abs(double(b[i])));
        const double r = e / sc;
        s += r * r;
      }
    }
    return s;
  }

  /// sum over every element of ((a - b) / (atol + rtol |y|))^2, the difference taken in double (an
  /// empty b: a alone). The norms of the automatic starting step (ode.md (6)): |z|, |f(z)| and
  /// |f(z + h0 f) - f(z)| with y = z. Added serially in column-major order.
  template <class S>
  static double scaled_sq_sum(Context&, CView<S> y, CView<S> a, CView<S> b, double atol,
                              double rtol) {
    const bool diff = !b.empty();
    double s = 0;
    for (Index j = 0; j < y.cols; ++j) {
      const S* yc = y.col(j);
      const S* ac = a.col(j);
      const S* bc = diff ? b.col(j) : nullptr;
      for (Index i = 0; i < y.rows; ++i) {
        const double sc = atol + rtol * std::abs(double(yc[i]));
        const double v = diff ? double(ac[i]) - double(bc[i]) : double(ac[i]);
        s += std::pow(v / sc, 2);
      }
    }
    return s;
  }

  /// The first NaN or Inf of A in column-major order, with its position and value (NonFinite,
  /// backend/ode_args.hpp; not found: i = j = -1). A flag scan by columns on the thread team; the
  /// position search only when it trips. The input checks and the state checks of ode/.
  template <class S>
  static NonFinite find_nonfinite(Context&, ConstMatrixView<S> A) {
    const S big = std::numeric_limits<S>::max();
    std::atomic<unsigned> flagged{0};
    detail::for_cols(A.rows, A.cols, [&](Index j0, Index j1) {
      unsigned bad = 0;
      for (Index j = j0; j < j1; ++j) {
        const S* c = A.col(j);
        for (Index i = 0; i < A.rows; ++i) bad |= static_cast<unsigned>(!(std::abs(c[i]) <= big));
      }
      if (bad != 0) flagged.fetch_or(1u, std::memory_order_relaxed);
    });
    NonFinite r;
    if (flagged.load(std::memory_order_relaxed) == 0) return r;
    for (Index j = 0; j < A.cols; ++j)
      for (Index i = 0; i < A.rows; ++i)
        if (!std::isfinite(A(i, j))) {
          r.i = i;
          r.j = j;
          r.value = double(A(i, j));
          return r;
        }
    return r;
  }

  /// Hutchinson's divergence estimate from K probes a sample (ode.md (9)): div_out(0, b) =
  /// S(acc / K), acc = sum over k, then i, of double(eps(i, c)) double(jv(i, c)), c = b*K + k,
  /// in that order. div_out is a 1 x B view (a row of a matrix: any ld); eps and jv are (d, B*K).
  template <class S>
  static void probe_dots(Context&, CView<S> eps, CView<S> jv, Index K, MatrixView<S> div_out) {
    const Index d = eps.rows;
    detail::for_cols(d * K, div_out.cols, [&](Index b0, Index b1) {
      for (Index b = b0; b < b1; ++b) {
        double acc = 0;
        for (Index k = 0; k < K; ++k) {
          const S* e = eps.col(b * K + k);
          const S* p = jv.col(b * K + k);
          for (Index i = 0; i < d; ++i) acc += double(e[i]) * double(p[i]);
        }
        div_out(0, b) = static_cast<S>(acc / double(K));
      }
    });
  }

  /// The log-density of a standard normal plus an accumulated term, per column (ode.md (7)):
  /// logp_out[b] = S(-r2 / 2 - (d / 2) log(2 pi) + double(l(0, b))), r2 = sum_i double(z(i, b))^2
  /// in order, d = z.rows. l is a 1 x B view (a row of a matrix: any ld); empty adds nothing.
  template <class S>
  static void normal_logpdf(Context&, CView<S> z, CView<S> l, VectorView<S> logp_out) {
    const double log2pi = std::log(2.0 * 3.14159265358979323846);
    const Index d = z.rows;
    const bool with_l = !l.empty();
    detail::for_cols(d, logp_out.size, [&](Index b0, Index b1) {
      for (Index b = b0; b < b1; ++b) {
        const S* zc = z.col(b);
        double r2 = 0;
        for (Index i = 0; i < d; ++i) r2 += double(zc[i]) * double(zc[i]);
        const double base = -0.5 * r2 - 0.5 * double(d) * log2pi;
        logp_out[b] = static_cast<S>(with_l ? base + double(l(0, b)) : base);
      }
    });
  }

  // ---------------------------------------------------------------------------------------------
  // Flat-vector primitives of the optimizer: docs/math/optim.md. They work on contiguous vectors
  // of n elements (parameters, gradients, moments, averaged weights) in chunks of whole
  // 1024-element blocks on the thread team (parallel.hpp for_range / sum_range). Coefficients
  // are doubles; every element is evaluated in double and rounded to S once.

  /// One Adam / AdamW update of every element, with the coefficients of a (optim_args.hpp,
  /// optim.md (1)-(4)): the gradient gets a.l2 p, the moments m and v are updated and stored in
  /// S, and the parameter moves with the moments as stored. grads is not modified. Element-wise,
  /// so any split of the range gives the same bits.
  template <class S>
  static void adam_update(Context&, VectorView<S> params, CVec<S> grads, VectorView<S> m,
                          VectorView<S> v, const AdamStep& a) {
    const double b1 = a.beta1, b2 = a.beta2, l2 = a.l2;
    // Each block is widened to double on the stack and updated with Eigen's packet arithmetic:
    // a scalar std::sqrt cannot be vectorised without -fno-math-errno, and the square root and
    // the division were most of the step.
    detail::for_range(params.size, [&](Index c0, Index c1) {
      using AD = Eigen::Array<double, Eigen::Dynamic, 1>;
      constexpr Index kBlock = 512;
      alignas(64) double pb[kBlock], gb[kBlock], mb[kBlock], vb[kBlock];
      S* ps = params.data;
      const S* gs = grads.data;
      S* mm = m.data;
      S* vv = v.data;
      for (Index i0 = c0; i0 < c1; i0 += kBlock) {
        const Index len = std::min(kBlock, c1 - i0);
        for (Index j = 0; j < len; ++j) {  // widen (plain loops: the compiler vectorises them)
          pb[j] = static_cast<double>(ps[i0 + j]);
          gb[j] = static_cast<double>(gs[i0 + j]);
          mb[j] = static_cast<double>(mm[i0 + j]);
          vb[j] = static_cast<double>(vv[i0 + j]);
        }
        Eigen::Map<AD> pa(pb, len), ga(gb, len), ma(mb, len), va(vb, len);
        ga += l2 * pa;                          // (4)
        ma = b1 * ma + (1.0 - b1) * ga;         // (1)
        va = b2 * va + ((1.0 - b2) * ga) * ga;  // (1)
        for (Index j = 0; j < len; ++j) {       // store the moments; continue with them as stored
          mm[i0 + j] = static_cast<S>(mb[j]);
          vv[i0 + j] = static_cast<S>(vb[j]);
          mb[j] = static_cast<double>(mm[i0 + j]);
          vb[j] = static_cast<double>(vv[i0 + j]);
        }
        pa = pa * a.shrink - a.step_size * ma / (va.sqrt() / a.bc2_sqrt + a.eps);  // (2)-(3)
        for (Index j = 0; j < len; ++j) ps[i0 + j] = static_cast<S>(pb[j]);
      }
    });
  }

  /// sum_i (x_i / divisor)^2 in double (divisor 1: sum_i x_i^2, no division), each chunk summed
  /// in the lanes of parallel.hpp lane_sum and the chunks' partial sums added in chunk order
  /// (sum_range: for a fixed thread count, the same bits on every run). NaN or Inf if x holds
  /// one or the squares overflow.                                                 optim.md (5)
  template <class S>
  static double sum_squares(Context&, ConstVectorView<S> x, double divisor = 1.0) {
    const S* p = x.data;
    if (divisor == 1.0)
      return detail::sum_range(x.size, [&](Index i0, Index i1) {
        return detail::lane_sum(i1 - i0, [&](Index i) {
          const double xi = static_cast<double>(p[i0 + i]);
          return xi * xi;
        });
      });
    return detail::sum_range(x.size, [&](Index i0, Index i1) {
      return detail::lane_sum(i1 - i0, [&](Index i) {
        const double xi = static_cast<double>(p[i0 + i]) / divisor;
        return xi * xi;
      });
    });
  }

  /// max_i |x_i| in double (0 if x is empty). NaN entries are skipped; +Inf is returned if
  /// there is an infinite entry.
  template <class S>
  static double max_abs(Context&, ConstVectorView<S> x) {
    double amax = 0;
    for (Index i = 0; i < x.size; ++i) {
      const double a = std::abs(static_cast<double>(x.data[i]));
      if (a > amax) amax = a;
    }
    return amax;
  }

  /// Index of the first NaN or Inf of x, or -1. A vectorisable flag scan on the thread team
  /// first; the index search only when it trips.
  template <class S>
  static Index first_nonfinite(Context&, ConstVectorView<S> x) {
    const S* p = x.data;
    const S big = std::numeric_limits<S>::max();
    const double flagged = detail::sum_range(x.size, [&](Index i0, Index i1) {
      unsigned bad = 0;
      for (Index i = i0; i < i1; ++i) bad |= static_cast<unsigned>(!(std::abs(p[i]) <= big));
      return double(bad);
    });
    if (flagged == 0.0) return -1;
    for (Index i = 0; i < x.size; ++i)
      if (!std::isfinite(p[i])) return i;
    return -1;
  }

  /// x_i <- a x_i, evaluated in double (gradient clipping, optim.md (5)).
  template <class S>
  static void scale_vec(Context&, VectorView<S> x, double a) {
    S* p = x.data;
    detail::for_range(x.size, [&](Index i0, Index i1) {
      for (Index i = i0; i < i1; ++i) p[i] = static_cast<S>(static_cast<double>(p[i]) * a);
    });
  }

  /// w_i <- decay w_i + (1 - decay) p_i, evaluated in double (the moving average of the
  /// weights, optim.md (8)). p has the size of w.
  template <class S>
  static void ema_update(Context&, VectorView<S> w, CVec<S> p, double decay) {
    const double a = decay, b = 1.0 - decay;
    S* ws = w.data;
    const S* ps = p.data;
    detail::for_range(w.size, [&](Index i0, Index i1) {
      for (Index i = i0; i < i1; ++i)
        ws[i] = static_cast<S>(a * static_cast<double>(ws[i]) + b * static_cast<double>(ps[i]));
    });
  }

  // ---------------------------------------------------------------------------------------------
  // Gather primitive: the trainer's batch drawn from its targets (train/trainer.hpp).

  /// B_out(:, j) = A(:, idx[j]) for the B_out.cols columns of B_out (the trainer's batch drawn
  /// from its targets). idx is backend memory (a Buffer<Index> filled with copy_from_host).
  /// @pre A.rows == B_out.rows and 0 <= idx[j] < A.cols for every j: the indices are not checked
  /// (the caller draws them in range; a device backend could not report one without a
  /// reduction). B_out must not overlap A.
  template <class S>
  static void gather_cols(Context&, CView<S> A, const Index* idx, MatrixView<S> B_out) {
    detail::for_cols(B_out.rows, B_out.cols, [&](Index j0, Index j1) {
      for (Index j = j0; j < j1; ++j)
        std::memcpy(B_out.col(j), A.col(idx[j]), sizeof(S) * std::size_t(B_out.rows));
    });
  }

 private:
  /// SiLU on packets: a = z / (1 + exp(-z)). Same limits as math::silu (0 as z -> -inf, z as
  /// z -> +inf: exp overflows to inf or underflows to 0, never NaN for finite z); within a few
  /// ulp of it (Eigen's exp is accurate to about 1 ulp).              activations.md (2)
  template <class S>
  static void silu_col(const S* z, S* a, Index n) {
    using A = Eigen::Array<S, Eigen::Dynamic, 1>;
    const Eigen::Map<const A> zz(z, n);
    Eigen::Map<A> aa(a, n);
    aa = zz / (S(1) + (-zz).exp());
  }

  /// out = SiLU'(z) * x = s (1 + z (1 - s)) x, s = 1 / (1 + exp(-z)), in blocks with s on the
  /// stack (out may alias x).                                          activations.md (3)
  template <class S>
  static void silu_grad_mul_col(const S* z, const S* x, S* out, Index n) {
    using A = Eigen::Array<S, Eigen::Dynamic, 1>;
    constexpr Index kBlock = 256;
    alignas(64) S sbuf[kBlock];
    for (Index i0 = 0; i0 < n; i0 += kBlock) {
      const Index len = std::min(kBlock, n - i0);
      const Eigen::Map<const A> zz(z + i0, len), xx(x + i0, len);
      Eigen::Map<A> s(sbuf, len), oo(out + i0, len);
      s = (S(1) + (-zz).exp()).inverse();
      oo = xx * s * (S(1) + zz * (S(1) - s));
    }
  }

  /// a = GELU(z) = z (1 + erf(z / sqrt 2)) / 2 in float, with Eigen's vectorised erf (a rational
  /// approximation within a few ulp of erf: activations.md "Float GELU").   activations.md (5)
  static void gelu_col(const float* z, float* a, Index n) {
    using A = Eigen::Array<float, Eigen::Dynamic, 1>;
    const Eigen::Map<const A> zz(z, n);
    Eigen::Map<A> aa(a, n);
    aa = 0.5f * zz * (1.0f + (zz * 0.70710678118654752440f).erf());
  }

  /// out = GELU'(z) * x = (Phi(z) + z phi(z)) x in float, in blocks with Phi on the stack (out
  /// may alias x).                                                      activations.md (6)
  static void gelu_grad_mul_col(const float* z, const float* x, float* out, Index n) {
    using A = Eigen::Array<float, Eigen::Dynamic, 1>;
    constexpr Index kBlock = 256;
    alignas(64) float cbuf[kBlock];
    for (Index i0 = 0; i0 < n; i0 += kBlock) {
      const Index len = std::min(kBlock, n - i0);
      const Eigen::Map<const A> zz(z + i0, len), xx(x + i0, len);
      Eigen::Map<A> cdf(cbuf, len), oo(out + i0, len);
      cdf = 0.5f * (1.0f + (zz * 0.70710678118654752440f).erf());
      oo = xx * (cdf + zz * (0.39894228040143267794f * (-0.5f * zz * zz).exp()));
    }
  }

  template <class A, class S>
  static void map_act(CView<S> z, MatrixView<S> a_out) {
    detail::for_cols(z.rows, z.cols, [&](Index j0, Index j1) {
      for (Index j = j0; j < j1; ++j) {
        const S* zz = z.col(j);
        S* aa = a_out.col(j);
        for (Index i = 0; i < z.rows; ++i) aa[i] = A::f(zz[i]);
      }
    });
  }
  template <class A, class S>
  static void act_jvp(CView<S> z, CView<S> dz, MatrixView<S> out, Index K) {
    detail::for_cols(dz.rows, dz.cols, [&](Index j0, Index j1) {
      for (Index col = j0; col < j1; ++col) {
        const S* zz = z.col(col / K);
        const S* x = dz.col(col);
        S* o = out.col(col);
        for (Index i = 0; i < dz.rows; ++i) o[i] = A::df(zz[i]) * x[i];
      }
    });
  }
};

}  // namespace flowprior
