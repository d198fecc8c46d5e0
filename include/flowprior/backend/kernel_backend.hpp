/// @file
/// KernelBackend<Exec>: the backend primitives written once as kernel bodies over an executor
/// (kernel_common.hpp), and the backend the CUDA build runs on (docs/cuda.md "Kernel backend").
///
/// - `KernelBackend<CudaExec>` = `CudaBackend` (cuda.cuh, nvcc only): device memory, the bodies
///   launched as CUDA kernels on the context's stream, products through cuBLAS.
/// - `KernelBackend<HostExec>` = `HostKernelBackend` (here): the same bodies in a serial loop
///   on the host; the tests check it against CpuBackend, primitive by primitive and through the
///   whole stack (tests/kernel), and the GPU tests check CudaBackend against it (tests/cuda).
///
/// Each primitive has the signature and the semantics of the CpuBackend primitive of the same
/// name (docs/backends.md): the stack above `backend/` runs on either by a template argument.
/// The primitives live in groups (kernel_basic.hpp, kernel_layers.hpp, kernel_loss.hpp,
/// kernel_optim.hpp, kernel_ode.hpp, kernel_tokens.hpp), gathered here by inheritance; the
/// memory functions and the products forward to the executor. No Eigen, no CUDA header.
#pragma once

#include <flowprior/backend/batch_args.hpp>
#include <flowprior/backend/host_exec.hpp>
#include <flowprior/backend/kernel_basic.hpp>
#include <flowprior/backend/kernel_common.hpp>
#include <flowprior/backend/kernel_layers.hpp>
#include <flowprior/backend/kernel_loss.hpp>
#include <flowprior/backend/kernel_ode.hpp>
#include <flowprior/backend/kernel_optim.hpp>
#include <flowprior/backend/kernel_tokens.hpp>
#include <flowprior/core/types.hpp>

namespace flowprior {

template <class Exec>
struct KernelBackend : kernel::BasicOps<Exec>,
                       kernel::LayerOps<Exec>,
                       kernel::LossOps<Exec>,
                       kernel::OptimOps<Exec>,
                       kernel::OdeOps<Exec>,
                       kernel::TokenOps<Exec> {
  using Executor = Exec;
  /// The executor's context (for CUDA: the stream, the cuBLAS handle, the scratch).
  using Context = typename Exec::Context;
  template <class S>
  using Buffer = typename Exec::template Buffer<S>;
  /// Whether the host may read and write the elements of a Buffer (HostExec: yes; CUDA: no).
  static constexpr bool host_memory = Exec::host_memory;

  static constexpr const char* name() { return Exec::name(); }
  static const char* gemm_engine() { return Exec::name(); }

  template <class S>
  static void resize(Buffer<S>& b, Index n) {
    if (Index(b.size()) < n) b.resize(static_cast<std::size_t>(n));
  }
  template <class S>
  static void copy_from_host(const S* src, Index n, Buffer<S>& dst) {
    Exec::copy_from_host(src, n, dst);
  }
  template <class S>
  static void copy_to_host(const Buffer<S>& src, S* dst) {
    Exec::copy_to_host(src, dst);
  }
  template <class S>
  static void copy_from_host(const S* src, Index n, S* dst) {
    Exec::copy_from_host(src, n, dst);
  }
  template <class S>
  static void copy_to_host(const S* src, Index n, S* dst) {
    Exec::copy_to_host(src, n, dst);
  }

  /// C = alpha op(A) op(B) + beta C (BLAS semantics; beta = 0 ignores C, NaN included).
  template <class S>
  static void gemm(Context& ctx, bool trans_a, bool trans_b, S alpha, CView<S> A, CView<S> B,
                   S beta, MatrixView<S> C) {
    if (C.empty()) return;
    const Index k = trans_a ? A.rows : A.cols;
    Exec::gemm(ctx, trans_a, trans_b, C.rows, C.cols, k, alpha, A.data, A.ld, B.data, B.ld, beta,
               C.data, C.ld);
  }

  /// gemm for every problem of `batch` (batch_args.hpp; the views are problem (0, 0)).
  template <class S>
  static void gemm_batched(Context& ctx, bool trans_a, bool trans_b, S alpha, CView<S> A,
                           CView<S> B, S beta, MatrixView<S> C, const GemmBatch& batch) {
    if (C.empty() || batch.count() <= 0) return;
    const Index k = trans_a ? A.rows : A.cols;
    Exec::gemm_batched(ctx, trans_a, trans_b, C.rows, C.cols, k, alpha, A.data, A.ld, B.data, B.ld,
                       beta, C.data, C.ld, batch);
  }
};

/// The kernel bodies run serially on the host (host_exec.hpp): the reference the CUDA backend
/// is tested against, and a way to run the GPU code path under a host debugger.
using HostKernelBackend = KernelBackend<HostExec>;

}  // namespace flowprior
