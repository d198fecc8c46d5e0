/// @file
/// KernelBackend's simple element-wise primitives, the gather, the draws and the time scans
/// (the semantics of each are those of the CpuBackend primitive of the same name: docs/backends.md).
/// Element-wise work runs one body per element (i fastest); per-column sums one body per row of
/// the result, looping over the columns in order. No Eigen, no CUDA header.
#pragma once

#include <cstdint>
#include <flowprior/backend/kernel_common.hpp>
#include <flowprior/core/random.hpp>
#include <flowprior/core/types.hpp>

namespace flowprior {
namespace kernel {

template <class Exec>
struct BasicOps {
  using Context = typename Exec::Context;
  using K = Core<Exec>;

  /// C(:, j) = b for every column.
  template <class S>
  static void broadcast_cols(Context& ctx, const S* b, MatrixView<S> C_out) {
    K::for_each_element(
        ctx, C_out.rows, C_out.cols, FLOWPRIOR_LAMBDA(Index i, Index j) { C_out(i, j) = b[i]; });
  }

  /// C(:, j) += b for every column.
  template <class S>
  static void add_cols(Context& ctx, const S* b, MatrixView<S> C) {
    K::for_each_element(
        ctx, C.rows, C.cols, FLOWPRIOR_LAMBDA(Index i, Index j) { C(i, j) += b[i]; });
  }

  /// d_b += sum_j C(:, j): one body per row, the columns added in order (in S, as the CPU).
  template <class S>
  static void sum_cols(Context& ctx, CView<S> C, S* d_b) {
    if (C.rows <= 0) return;
    Exec::launch(
        ctx, C.rows, FLOWPRIOR_LAMBDA(Index i) {
          S acc = d_b[i];
          for (Index j = 0; j < C.cols; ++j) acc += C(i, j);
          d_b[i] = acc;
        });
  }

  template <class S>
  static void fill(Context& ctx, MatrixView<S> C_out, S value) {
    K::for_each_element(
        ctx, C_out.rows, C_out.cols, FLOWPRIOR_LAMBDA(Index i, Index j) { C_out(i, j) = value; });
  }

  /// C *= alpha.
  template <class S>
  static void scale(Context& ctx, MatrixView<S> C, S alpha) {
    K::for_each_element(
        ctx, C.rows, C.cols, FLOWPRIOR_LAMBDA(Index i, Index j) { C(i, j) *= alpha; });
  }

  /// B = A.
  template <class S>
  static void copy(Context& ctx, CView<S> A, MatrixView<S> B_out) {
    K::for_each_element(
        ctx, A.rows, A.cols, FLOWPRIOR_LAMBDA(Index i, Index j) { B_out(i, j) = A(i, j); });
  }

  /// B += alpha A.
  template <class S>
  static void axpy(Context& ctx, S alpha, CView<S> A, MatrixView<S> B) {
    K::for_each_element(
        ctx, A.rows, A.cols, FLOWPRIOR_LAMBDA(Index i, Index j) { B(i, j) += alpha * A(i, j); });
  }

  /// out (dim, B*dim) = B copies of the dim x dim identity.
  template <class S>
  static void identity_tiles(Context& ctx, MatrixView<S> out) {
    const Index d = out.rows;
    K::for_each_element(
        ctx, out.rows, out.cols,
        FLOWPRIOR_LAMBDA(Index i, Index j) { out(i, j) = i == j % d ? S(1) : S(0); });
  }

  /// div[b] = sum_k J(k, b*dim + k), k in order.
  template <class S>
  static void block_traces(Context& ctx, CView<S> J, S* div_out) {
    const Index d = J.rows;
    if (d <= 0) return;
    Exec::launch(
        ctx, J.cols / d, FLOWPRIOR_LAMBDA(Index b) {
          S acc = 0;
          for (Index k = 0; k < d; ++k) acc += J(k, b * d + k);
          div_out[b] = acc;
        });
  }

  /// B_out(:, j) = A(:, idx[j]) (idx in backend memory, in range: not checked).
  template <class S>
  static void gather_cols(Context& ctx, CView<S> A, const Index* idx, MatrixView<S> B_out) {
    K::for_each_element(
        ctx, B_out.rows, B_out.cols,
        FLOWPRIOR_LAMBDA(Index i, Index j) { B_out(i, j) = A(i, idx[j]); });
  }

  /// Standard normal noise from the Philox stream (key, stream): out(i, j) is element
  /// i + (col0 + j) rows of the stream, a function of its position alone (the bits of
  /// CpuBackend::gaussian_noise, in double then rounded to S), so col0 > 0 gives exactly columns
  /// col0, col0 + 1, ... of a wider draw (one rank's slice of a data-parallel batch). With
  /// antithetic_K > 0 the columns whose global index (col0 + j) % antithetic_K is odd are minus
  /// their left neighbour (col0 a multiple of antithetic_K). One body per element.
  template <class S>
  static void gaussian_noise(Context& ctx, std::uint64_t key, std::uint64_t stream,
                             MatrixView<S> out, Index antithetic_K, Index col0 = 0) {
    const Index d = out.rows;
    K::for_each_element(
        ctx, out.rows, out.cols, FLOWPRIOR_LAMBDA(Index i, Index j) {
          const Index jg = col0 + j;
          const bool negated = antithetic_K > 0 && (jg % antithetic_K) % 2 == 1;
          const Index src = negated ? jg - 1 : jg;
          const auto e = static_cast<std::uint64_t>(i + src * d);
          const NormalPair z = philox_normal_pair(key, stream, e >> 1);
          const double v = (e & 1) ? z.z1 : z.z0;
          out(i, j) = static_cast<S>(negated ? -v : v);
        });
  }

  /// t_out = 1 - t (t_out may alias t).
  template <class S>
  static void reverse_times(Context& ctx, CVec<S> t, VectorView<S> t_out) {
    Exec::launch(
        ctx, t.size, FLOWPRIOR_LAMBDA(Index i) { t_out[i] = S(1) - t[i]; });
  }

  /// Index of the first t outside [0, 1] (NaN included), or -1.
  template <class S>
  static Index first_outside_unit(Context& ctx, ConstVectorView<S> t) {
    return K::first_index(
        ctx, t.size, FLOWPRIOR_LAMBDA(Index i) { return !(t[i] >= S(0) && t[i] <= S(1)); });
  }

  /// The runs of equal consecutive times (adaln.md "Time groups"): one body scans t in order
  /// (a batch's times are few next to its features). Returns the number of runs.
  template <class S>
  static Index time_runs(Context& ctx, CVec<S> t, S* times_out, Index* map_out) {
    if (t.size == 0) return 0;
    Index* count = K::template scratch<Index>(ctx, 1, 1);
    Exec::launch(
        ctx, 1, FLOWPRIOR_LAMBDA(Index) {
          Index r = 0;
          times_out[0] = t[0];
          map_out[0] = 0;
          for (Index b = 1; b < t.size; ++b) {
            if (t[b] != t[b - 1]) times_out[++r] = t[b];
            map_out[b] = r;
          }
          count[0] = r + 1;
        });
    Index out = 0;
    Exec::copy_to_host(count, 1, &out);
    return out;
  }
};

}  // namespace kernel
}  // namespace flowprior
