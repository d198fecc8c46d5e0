/// @file
/// The executor contract of KernelBackend and the launch helpers its primitives are written with
/// (docs/cuda.md "Kernel backend"). No Eigen, no CUDA header: compiles with the host compiler
/// and with nvcc.
///
/// A KernelBackend primitive is a few *kernels*: a body `f(i)` run for every i of an index range
/// (one element, one column, one chunk), written once as a `FLOWPRIOR_LAMBDA` (a `[=]` lambda
/// that is `__host__ __device__` under nvcc) and handed to its executor:
///
/// - `HostExec` (host_exec.hpp) runs the bodies in a serial loop on the host: the kernels' logic
///   is tested on every machine against CpuBackend (tests/kernel);
/// - `CudaExec` (cuda.cuh) launches them as CUDA kernels on the context's stream.
///
/// An executor `E` provides (every function static):
///
///     struct Context;                      // default-constructible, movable, one per stream
///     template <class T> using Buffer;     // owning storage: size(), empty(), data(), resize(n)
///                                          // (keeps the first size() elements), copyable
///     static constexpr bool host_memory;   // whether the host may touch Buffer elements
///     static const char* name();
///     copy_from_host(src, n, Buffer&) / copy_to_host(const Buffer&, dst)
///     copy_from_host(src, n, T* dst) / copy_to_host(const T* src, n, dst)   // synchronous
///     launch(ctx, n, f)                    // f(i) for i in [0, n), in any order, in parallel
///     scratch(ctx, slot, bytes) -> void*   // backend memory owned by ctx, slot in [0, kSlots)
///     gemm(ctx, ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc)   // BLAS semantics
///     gemm_batched(ctx, ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc, GemmBatch)
///
/// Determinism: a body that reduces (a column's sum, a chunk's partial sum) loops serially in a
/// fixed order, and the partials of a chunked reduction are added in chunk order by one body,
/// so every primitive gives the same bits on every run of the same executor.
#pragma once

#include <cstddef>
#include <flowprior/backend/views.hpp>
#include <flowprior/config.hpp>
#include <flowprior/core/types.hpp>

/// A kernel body: a by-value lambda that runs on the host and, under nvcc, on the device
/// (an extended lambda: flowprior::cuda builds with --extended-lambda).
#define FLOWPRIOR_LAMBDA [=] FLOWPRIOR_HD

namespace flowprior {
namespace kernel {

/// Elements per chunk of the chunked reductions (the same blocks as the CPU's optimizer
/// primitives: docs/backends.md).
inline constexpr Index kChunk = 1024;

/// Scratch slots of an executor's context. Slot 0: the partials of a reduction and its result
/// (reduce_chunks); slot 1: index results (first_index); slots 2-3: free for a primitive.
inline constexpr int kSlots = 4;

/// Ceil(n / c) for n >= 0, c > 0.
FLOWPRIOR_HD inline Index div_up(Index n, Index c) { return (n + c - 1) / c; }

/// The launch helpers shared by the primitive groups (kernel_basic.hpp, kernel_layers.hpp, ...).
template <class Exec>
struct Core {
  using Context = typename Exec::Context;

  /// Typed scratch of the context: n elements of T in slot `slot`.
  template <class T>
  static T* scratch(Context& ctx, int slot, Index n) {
    return static_cast<T*>(
        Exec::scratch(ctx, slot, sizeof(T) * static_cast<std::size_t>(n > 0 ? n : 1)));
  }

  /// f(i, j) for every element of a rows x cols range (i fastest: coalesced on the device).
  template <class F>
  static void for_each_element(Context& ctx, Index rows, Index cols, F f) {
    if (rows <= 0 || cols <= 0) return;
    Exec::launch(
        ctx, rows * cols, FLOWPRIOR_LAMBDA(Index e) { f(e % rows, e / rows); });
  }

  /// The sum over c in [0, chunks) of partial(c) (a double), the partials added in chunk order:
  /// one body per chunk, then one body that adds them. Returns the sum on the host.
  template <class F>
  static double reduce_chunks(Context& ctx, Index chunks, F partial) {
    return combine_chunks(ctx, chunks, partial, false);
  }

  /// The largest of partial(c) over the chunks (partials >= 0, NaN skipped), 0 when there are
  /// none.
  template <class F>
  static double max_chunks(Context& ctx, Index chunks, F partial) {
    return combine_chunks(ctx, chunks, partial, true);
  }

  /// reduce_chunks (take_max false) or max_chunks (true): the partials into scratch slot 0, then
  /// one body combines them in chunk order and the result is read back.
  template <class F>
  static double combine_chunks(Context& ctx, Index chunks, F partial, bool take_max) {
    if (chunks <= 0) return 0.0;
    double* part = scratch<double>(ctx, 0, chunks + 1);
    Exec::launch(
        ctx, chunks, FLOWPRIOR_LAMBDA(Index c) { part[c] = partial(c); });
    Exec::launch(
        ctx, 1, FLOWPRIOR_LAMBDA(Index) {
          double acc = 0;
          for (Index c = 0; c < chunks; ++c) {
            if (!take_max)
              acc += part[c];
            else if (part[c] > acc)
              acc = part[c];
          }
          part[chunks] = acc;
        });
    double out = 0;
    Exec::copy_to_host(part + chunks, 1, &out);
    return out;
  }

  /// The smallest i in [0, n) with pred(i), or -1: one body per chunk finds its chunk's first,
  /// then one body takes the first chunk that has one.
  template <class P>
  static Index first_index(Context& ctx, Index n, P pred) {
    if (n <= 0) return -1;
    const Index chunks = div_up(n, kChunk);
    Index* first = scratch<Index>(ctx, 1, chunks + 1);
    Exec::launch(
        ctx, chunks, FLOWPRIOR_LAMBDA(Index c) {
          const Index i1 = (c + 1) * kChunk < n ? (c + 1) * kChunk : n;
          Index found = -1;
          for (Index i = c * kChunk; i < i1; ++i)
            if (pred(i)) {
              found = i;
              break;
            }
          first[c] = found;
        });
    Exec::launch(
        ctx, 1, FLOWPRIOR_LAMBDA(Index) {
          Index found = -1;
          for (Index c = 0; c < chunks; ++c)
            if (first[c] >= 0) {
              found = first[c];
              break;
            }
          first[chunks] = found;
        });
    Index out = -1;
    Exec::copy_to_host(first + chunks, 1, &out);
    return out;
  }
};

}  // namespace kernel
}  // namespace flowprior
