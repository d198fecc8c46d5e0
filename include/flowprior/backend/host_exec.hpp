/// @file
/// HostExec: the serial host executor of KernelBackend (kernel_common.hpp). It runs the CUDA
/// backend's kernel bodies in a loop on the calling thread, over host memory, so that the
/// kernels' logic (every index computation, every reduction order) is tested on machines
/// without a GPU against CpuBackend, and so that a GPU run can be compared with the same code on
/// the host (docs/cuda.md "Kernel backend"). `HostKernelBackend` is KernelBackend<HostExec>.
///
/// It is a reference, not a fast path: one thread, and products by a plain triple loop in S.
/// No Eigen, no CUDA header: compiles with the host compiler and with nvcc.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <flowprior/backend/batch_args.hpp>
#include <flowprior/backend/kernel_common.hpp>
#include <flowprior/core/types.hpp>
#include <vector>

namespace flowprior {

struct HostExec {
  /// The scratch of the kernels (kernel::kSlots byte buffers, grown, never shrunk).
  struct Context {
    std::vector<std::max_align_t> slots[kernel::kSlots];
  };

  template <class T>
  using Buffer = std::vector<T>;

  static constexpr bool host_memory = true;
  static constexpr const char* name() { return "host-kernels"; }

  template <class T>
  static void copy_from_host(const T* src, Index n, Buffer<T>& dst) {
    dst.assign(src, src + n);
  }
  template <class T>
  static void copy_to_host(const Buffer<T>& src, T* dst) {
    std::copy(src.begin(), src.end(), dst);
  }
  template <class T>
  static void copy_from_host(const T* src, Index n, T* dst) {
    if (n > 0) std::memcpy(dst, src, sizeof(T) * static_cast<std::size_t>(n));
  }
  template <class T>
  static void copy_to_host(const T* src, Index n, T* dst) {
    if (n > 0) std::memcpy(dst, src, sizeof(T) * static_cast<std::size_t>(n));
  }

  /// f(i) for i = 0, 1, ..., n - 1 in order.
  template <class F>
  static void launch(Context&, Index n, F f) {
    for (Index i = 0; i < n; ++i) f(i);
  }

  static void* scratch(Context& ctx, int slot, std::size_t bytes) {
    auto& s = ctx.slots[slot];
    const std::size_t n = (bytes + sizeof(std::max_align_t) - 1) / sizeof(std::max_align_t);
    if (s.size() < n) s.resize(n);
    return s.data();
  }

  /// C = alpha op(A) op(B) + beta C (beta = 0 ignores C), each element summed over p = 0..k-1
  /// in order, in S.
  template <class S>
  static void gemm(Context&, bool ta, bool tb, Index m, Index n, Index k, S alpha, const S* A,
                   Index lda, const S* B, Index ldb, S beta, S* C, Index ldc) {
    for (Index j = 0; j < n; ++j)
      for (Index i = 0; i < m; ++i) {
        S acc = 0;
        for (Index p = 0; p < k; ++p) {
          const S a = ta ? A[p + i * lda] : A[i + p * lda];
          const S b = tb ? B[j + p * ldb] : B[p + j * ldb];
          acc += a * b;
        }
        S& c = C[i + j * ldc];
        c = beta == S(0) ? alpha * acc : alpha * acc + beta * c;
      }
  }

  /// gemm for every problem of `batch` (batch_args.hpp), at the offsets it gives.
  template <class S>
  static void gemm_batched(Context& ctx, bool ta, bool tb, Index m, Index n, Index k, S alpha,
                           const S* A, Index lda, const S* B, Index ldb, S beta, S* C, Index ldc,
                           const GemmBatch& batch) {
    for (Index o = 0; o < batch.outer; ++o)
      for (Index i = 0; i < batch.inner; ++i)
        gemm(ctx, ta, tb, m, n, k, alpha, A + o * batch.a_outer + i * batch.a_inner, lda,
             B + o * batch.b_outer + i * batch.b_inner, ldb, beta,
             C + o * batch.c_outer + i * batch.c_inner, ldc);
  }
};

}  // namespace flowprior
