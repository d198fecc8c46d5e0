/// @file
/// CudaBackend: the backend primitives on an NVIDIA GPU (docs/cuda.md). It is
/// KernelBackend<CudaExec> (kernel_backend.hpp): the kernel bodies that the tests run on the host
/// through HostExec are launched here as CUDA kernels on the context's stream, over device memory;
/// the products go to cuBLAS. Include it from a .cu file compiled by nvcc with --extended-lambda
/// and link CUDA::cudart and CUDA::cublas (the CMake target flowprior::cuda does all three).
///
/// - Memory: `DeviceBuffer<T>` (cudaMalloc; grown, never shrunk; copies are device copies). A
///   warmed-up step allocates nothing: the buffers of the stack and the scratch of the contexts
///   keep their size.
/// - Context: one CUDA stream and one cuBLAS handle bound to it, created on first use, and the
///   kernels' scratch; the GEMM precision of float products (GemmPrecision). One context per
///   stream, used from one thread at a time.
/// - Transfers (`copy_to_host`, `copy_from_host`) are synchronous cudaMemcpy calls on the legacy
///   default stream, which waits for the contexts' streams (created blocking): a value read back
///   is the value the kernels before it wrote. Do not build with --default-stream per-thread.
/// - Errors: every CUDA and cuBLAS call is checked; a failure throws flowprior::device_error
///   "[flowprior.device] <call>: <the runtime's message> (<its error name>)". An error inside a
///   kernel is reported by the next checked call (launches are asynchronous).
#pragma once

#if !defined(__CUDACC__)
#error "flowprior/backend/cuda.cuh is CUDA code: compile it with nvcc (flowprior::cuda)"
#endif

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cstddef>
#include <flowprior/backend/batch_args.hpp>
#include <flowprior/backend/kernel_backend.hpp>
#include <flowprior/backend/kernel_common.hpp>
#include <flowprior/core/error.hpp>
#include <flowprior/core/types.hpp>
#include <string>
#include <utility>

namespace flowprior {

/// The arithmetic of float products (CudaExec::gemm). Double products are always FP64.
enum class GemmPrecision {
  fp32,  ///< IEEE FP32 products and sums (the default)
  tf32,  ///< TF32 tensor cores: inputs rounded to 10 mantissa bits, FP32 accumulation
  bf16   ///< inputs converted to BF16 (7 mantissa bits), FP32 accumulation (dense products;
         ///< the batched attention products use TF32)
};

namespace cuda_detail {

[[noreturn]] inline void raise_device(const std::string& call, const std::string& what) {
  throw device_error("[flowprior.device] " + call + ": " + what);
}

inline void check(cudaError_t e, const char* call) {
  if (e == cudaSuccess) return;
  (void)cudaGetLastError();  // clear a sticky launch error so the next call reports its own
  raise_device(call, std::string(cudaGetErrorString(e)) + " (" + cudaGetErrorName(e) + ")");
}

inline const char* cublas_status_name(cublasStatus_t s) {
  switch (s) {
    case CUBLAS_STATUS_SUCCESS:
      return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED:
      return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED:
      return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE:
      return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH:
      return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR:
      return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED:
      return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR:
      return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED:
      return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_LICENSE_ERROR:
      return "CUBLAS_STATUS_LICENSE_ERROR";
    default:
      return "unknown cuBLAS status";
  }
}

inline void check(cublasStatus_t s, const char* call) {
  if (s != CUBLAS_STATUS_SUCCESS) raise_device(call, cublas_status_name(s));
}

/// Grid-stride loop over [0, n): the body of every KernelBackend launch.
template <class F>
__global__ void run_bodies(Index n, F f) {
  const Index stride = Index(gridDim.x) * blockDim.x;
  for (Index i = Index(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) f(i);
}

inline constexpr int kThreads = 256;
inline constexpr Index kMaxBlocks = Index(1) << 20;

/// BF16 copy of a rows x cols column-major block with leading dimension ld (same ld).
template <class Src>  // a template: a header may define it in every translation unit
__global__ void to_bf16(Index rows, Index cols, Index ld, const Src* src, __nv_bfloat16* dst) {
  const Index n = rows * cols, stride = Index(gridDim.x) * blockDim.x;
  for (Index e = Index(blockIdx.x) * blockDim.x + threadIdx.x; e < n; e += stride) {
    const Index i = e % rows, j = e / rows;
    dst[i + j * ld] = __float2bfloat16_rn(src[i + j * ld]);
  }
}

}  // namespace cuda_detail

/// The number of device allocations made by DeviceBuffer (all threads) since the program
/// started: the tests check that a warmed-up step makes none.
inline std::atomic<long>& device_allocations() {
  static std::atomic<long> n{0};
  return n;
}

/// The number of CUDA devices visible, 0 when there is none or no driver (never throws): the
/// GPU tests skip on 0.
inline int cuda_device_count() noexcept {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return n;
}

/// Owning device memory: size(), empty(), data(), resize(n) (keeps the first size() elements;
/// grows the allocation only past its capacity). Copies are device-to-device copies. No element
/// access from the host: transfer with CudaBackend::copy_to_host / copy_from_host.
template <class T>
class DeviceBuffer {
 public:
  using value_type = T;
  DeviceBuffer() = default;
  DeviceBuffer(const DeviceBuffer& o) { *this = o; }
  DeviceBuffer(DeviceBuffer&& o) noexcept { swap(o); }
  DeviceBuffer& operator=(const DeviceBuffer& o) {
    if (this == &o) return *this;
    resize(o.size_);
    if (o.size_ > 0)
      cuda_detail::check(cudaMemcpy(data_, o.data_, o.size_ * sizeof(T), cudaMemcpyDeviceToDevice),
                         "cudaMemcpy (device buffer copy)");
    return *this;
  }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    DeviceBuffer tmp(std::move(o));
    swap(tmp);
    return *this;
  }
  ~DeviceBuffer() {
    if (data_ != nullptr) (void)cudaFree(data_);
  }

  std::size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  std::size_t capacity() const { return cap_; }
  T* data() { return data_; }
  const T* data() const { return data_; }

  void resize(std::size_t n) {
    if (n > cap_) {
      if (n > std::size_t(-1) / 2 / sizeof(T))
        cuda_detail::raise_device("cudaMalloc",
                                  "size overflow (" + std::to_string(n) + " elements)");
      void* fresh = nullptr;
      const std::string call = "cudaMalloc(" + std::to_string(n * sizeof(T)) + " bytes)";
      cuda_detail::check(cudaMalloc(&fresh, n * sizeof(T)), call.c_str());
      ++device_allocations();
      if (size_ > 0) {
        const cudaError_t e = cudaMemcpy(fresh, data_, size_ * sizeof(T), cudaMemcpyDeviceToDevice);
        if (e != cudaSuccess) {
          (void)cudaFree(fresh);
          cuda_detail::check(e, "cudaMemcpy (device buffer growth)");
        }
      }
      if (data_ != nullptr) (void)cudaFree(data_);
      data_ = static_cast<T*>(fresh);
      cap_ = n;
    }
    size_ = n;
  }

 private:
  void swap(DeviceBuffer& o) noexcept {
    std::swap(data_, o.data_);
    std::swap(size_, o.size_);
    std::swap(cap_, o.cap_);
  }
  T* data_ = nullptr;
  std::size_t size_ = 0, cap_ = 0;
};

/// The CUDA executor of KernelBackend (kernel_common.hpp).
struct CudaExec {
  /// A stream, a cuBLAS handle on it, the kernels' scratch, and the precision of float
  /// products. The stream and the handle are created on first use (on the current device), so
  /// that a context can be constructed, moved and destroyed where no GPU is present.
  class Context {
   public:
    Context() = default;
    explicit Context(GemmPrecision p) : precision_(p) {}
    Context(const Context&) = delete;
    Context& operator=(const Context&) = delete;
    Context(Context&& o) noexcept { swap(o); }
    Context& operator=(Context&& o) noexcept {
      Context tmp(std::move(o));
      swap(tmp);
      return *this;
    }
    ~Context() {
      if (blas_ != nullptr) (void)cublasDestroy(blas_);
      if (stream_ != nullptr) (void)cudaStreamDestroy(stream_);
    }

    /// The stream the kernels and the products of this context run on.
    cudaStream_t stream() {
      if (stream_ == nullptr) cuda_detail::check(cudaStreamCreate(&stream_), "cudaStreamCreate");
      return stream_;
    }
    /// The cuBLAS handle bound to stream().
    cublasHandle_t blas() {
      if (blas_ == nullptr) {
        cudaStream_t s = stream();
        cuda_detail::check(cublasCreate(&blas_), "cublasCreate");
        cuda_detail::check(cublasSetStream(blas_, s), "cublasSetStream");
        cuda_detail::check(cublasSetPointerMode(blas_, CUBLAS_POINTER_MODE_HOST),
                           "cublasSetPointerMode");
      }
      return blas_;
    }
    /// Waits for the work queued on this context.
    void synchronize() {
      if (stream_ != nullptr)
        cuda_detail::check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
    }
    GemmPrecision gemm_precision() const { return precision_; }
    void set_gemm_precision(GemmPrecision p) { precision_ = p; }

   private:
    friend struct CudaExec;
    void swap(Context& o) noexcept {
      std::swap(stream_, o.stream_);
      std::swap(blas_, o.blas_);
      std::swap(precision_, o.precision_);
      for (int s = 0; s < kernel::kSlots; ++s) std::swap(slots_[s], o.slots_[s]);
      std::swap(a16_, o.a16_);
      std::swap(b16_, o.b16_);
    }
    cudaStream_t stream_ = nullptr;
    cublasHandle_t blas_ = nullptr;
    GemmPrecision precision_ = GemmPrecision::fp32;
    DeviceBuffer<double> slots_[kernel::kSlots];  // double: aligned for every scratch type
    DeviceBuffer<__nv_bfloat16> a16_, b16_;       // the BF16 operands of a product
  };

  template <class T>
  using Buffer = DeviceBuffer<T>;

  static constexpr bool host_memory = false;
  static constexpr const char* name() { return "cuda"; }

  template <class T>
  static void copy_from_host(const T* src, Index n, Buffer<T>& dst) {
    dst.resize(static_cast<std::size_t>(n));
    copy_from_host(src, n, dst.data());
  }
  template <class T>
  static void copy_to_host(const Buffer<T>& src, T* dst) {
    copy_to_host(src.data(), Index(src.size()), dst);
  }
  template <class T>
  static void copy_from_host(const T* src, Index n, T* dst) {
    if (n > 0)
      cuda_detail::check(cudaMemcpy(dst, src, sizeof(T) * std::size_t(n), cudaMemcpyHostToDevice),
                         "cudaMemcpy (host to device)");
  }
  template <class T>
  static void copy_to_host(const T* src, Index n, T* dst) {
    if (n > 0)
      cuda_detail::check(cudaMemcpy(dst, src, sizeof(T) * std::size_t(n), cudaMemcpyDeviceToHost),
                         "cudaMemcpy (device to host)");
  }

  /// f(i) for i in [0, n): a grid-stride kernel of 256-thread blocks on ctx's stream.
  template <class F>
  static void launch(Context& ctx, Index n, F f) {
    if (n <= 0) return;
    Index blocks = kernel::div_up(n, cuda_detail::kThreads);
    if (blocks > cuda_detail::kMaxBlocks) blocks = cuda_detail::kMaxBlocks;
    cuda_detail::run_bodies<<<unsigned(blocks), cuda_detail::kThreads, 0, ctx.stream()>>>(n, f);
    cuda_detail::check(cudaGetLastError(), "kernel launch");
  }

  static void* scratch(Context& ctx, int slot, std::size_t bytes) {
    auto& s = ctx.slots_[slot];
    const std::size_t n = (bytes + sizeof(double) - 1) / sizeof(double);
    if (s.size() < n) s.resize(n);
    return s.data();
  }

  static void gemm(Context& ctx, bool ta, bool tb, Index m, Index n, Index k, double alpha,
                   const double* A, Index lda, const double* B, Index ldb, double beta, double* C,
                   Index ldc) {
    cuda_detail::check(cublasDgemm(ctx.blas(), op(ta), op(tb), int(m), int(n), int(k), &alpha, A,
                                   int(lda), B, int(ldb), &beta, C, int(ldc)),
                       "cublasDgemm");
  }

  static void gemm(Context& ctx, bool ta, bool tb, Index m, Index n, Index k, float alpha,
                   const float* A, Index lda, const float* B, Index ldb, float beta, float* C,
                   Index ldc) {
    cublasHandle_t h = ctx.blas();
    switch (ctx.precision_) {
      case GemmPrecision::fp32:
        cuda_detail::check(cublasSgemm(h, op(ta), op(tb), int(m), int(n), int(k), &alpha, A,
                                       int(lda), B, int(ldb), &beta, C, int(ldc)),
                           "cublasSgemm");
        return;
      case GemmPrecision::tf32:
        cuda_detail::check(
            cublasGemmEx(h, op(ta), op(tb), int(m), int(n), int(k), &alpha, A, CUDA_R_32F, int(lda),
                         B, CUDA_R_32F, int(ldb), &beta, C, CUDA_R_32F, int(ldc),
                         CUBLAS_COMPUTE_32F_FAST_TF32, CUBLAS_GEMM_DEFAULT),
            "cublasGemmEx (TF32)");
        return;
      case GemmPrecision::bf16: {
        const Index ar = ta ? k : m, ac = ta ? m : k, br = tb ? n : k, bc = tb ? k : n;
        const __nv_bfloat16* a16 = to_bf16(ctx, ctx.a16_, ar, ac, lda, A);
        const __nv_bfloat16* b16 = to_bf16(ctx, ctx.b16_, br, bc, ldb, B);
        cuda_detail::check(
            cublasGemmEx(h, op(ta), op(tb), int(m), int(n), int(k), &alpha, a16, CUDA_R_16BF,
                         int(lda), b16, CUDA_R_16BF, int(ldb), &beta, C, CUDA_R_32F, int(ldc),
                         CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
            "cublasGemmEx (BF16)");
        return;
      }
    }
  }

  /// Every problem of `batch`: one strided-batched cuBLAS call when the two levels form one
  /// stride, else one call per problem of the shorter level, strided over the longer.
  template <class S>
  static void gemm_batched(Context& ctx, bool ta, bool tb, Index m, Index n, Index k, S alpha,
                           const S* A, Index lda, const S* B, Index ldb, S beta, S* C, Index ldc,
                           const GemmBatch& batch) {
    const bool one_stride = batch.inner == 1 || batch.outer == 1 ||
                            (batch.a_outer == batch.inner * batch.a_inner &&
                             batch.b_outer == batch.inner * batch.b_inner &&
                             batch.c_outer == batch.inner * batch.c_inner);
    if (one_stride) {
      const bool by_inner = batch.inner > 1 || batch.outer == 1;
      strided(ctx, ta, tb, m, n, k, alpha, A, lda, by_inner ? batch.a_inner : batch.a_outer, B, ldb,
              by_inner ? batch.b_inner : batch.b_outer, beta, C, ldc,
              by_inner ? batch.c_inner : batch.c_outer, batch.count());
      return;
    }
    if (batch.outer <= batch.inner) {
      for (Index o = 0; o < batch.outer; ++o)
        strided(ctx, ta, tb, m, n, k, alpha, A + o * batch.a_outer, lda, batch.a_inner,
                B + o * batch.b_outer, ldb, batch.b_inner, beta, C + o * batch.c_outer, ldc,
                batch.c_inner, batch.inner);
    } else {
      for (Index i = 0; i < batch.inner; ++i)
        strided(ctx, ta, tb, m, n, k, alpha, A + i * batch.a_inner, lda, batch.a_outer,
                B + i * batch.b_inner, ldb, batch.b_outer, beta, C + i * batch.c_inner, ldc,
                batch.c_outer, batch.outer);
    }
  }

 private:
  static cublasOperation_t op(bool t) { return t ? CUBLAS_OP_T : CUBLAS_OP_N; }

  static const __nv_bfloat16* to_bf16(Context& ctx, DeviceBuffer<__nv_bfloat16>& buf, Index rows,
                                      Index cols, Index ld, const float* src) {
    const std::size_t n = std::size_t(ld) * std::size_t(cols > 0 ? cols : 1);
    if (buf.size() < n) buf.resize(n);
    Index blocks = kernel::div_up(rows * cols, cuda_detail::kThreads);
    if (blocks > cuda_detail::kMaxBlocks) blocks = cuda_detail::kMaxBlocks;
    if (blocks > 0) {
      cuda_detail::to_bf16<<<unsigned(blocks), cuda_detail::kThreads, 0, ctx.stream()>>>(
          rows, cols, ld, src, buf.data());
      cuda_detail::check(cudaGetLastError(), "kernel launch (BF16 conversion)");
    }
    return buf.data();
  }

  static void strided(Context& ctx, bool ta, bool tb, Index m, Index n, Index k, double alpha,
                      const double* A, Index lda, Index sa, const double* B, Index ldb, Index sb,
                      double beta, double* C, Index ldc, Index sc, Index count) {
    cuda_detail::check(cublasDgemmStridedBatched(ctx.blas(), op(ta), op(tb), int(m), int(n), int(k),
                                                 &alpha, A, int(lda), sa, B, int(ldb), sb, &beta, C,
                                                 int(ldc), sc, int(count)),
                       "cublasDgemmStridedBatched");
  }
  static void strided(Context& ctx, bool ta, bool tb, Index m, Index n, Index k, float alpha,
                      const float* A, Index lda, Index sa, const float* B, Index ldb, Index sb,
                      float beta, float* C, Index ldc, Index sc, Index count) {
    const cublasComputeType_t compute =
        ctx.precision_ == GemmPrecision::fp32 ? CUBLAS_COMPUTE_32F : CUBLAS_COMPUTE_32F_FAST_TF32;
    cuda_detail::check(cublasGemmStridedBatchedEx(
                           ctx.blas(), op(ta), op(tb), int(m), int(n), int(k), &alpha, A,
                           CUDA_R_32F, int(lda), sa, B, CUDA_R_32F, int(ldb), sb, &beta, C,
                           CUDA_R_32F, int(ldc), sc, int(count), compute, CUBLAS_GEMM_DEFAULT),
                       "cublasGemmStridedBatchedEx");
  }
};

/// The backend of the GPU: KernelBackend over CudaExec. `AdaLNMlp<float, CudaBackend>`, its
/// losses, trainers, solvers and likelihood run on the GPU with no other change.
using CudaBackend = KernelBackend<CudaExec>;

}  // namespace flowprior
