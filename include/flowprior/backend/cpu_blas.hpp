/// @file
/// GEMM engines of the CPU backend (docs/backends.md "GEMM engines", docs/benchmarks.md).
///
/// CpuBackend::gemm runs on one of three engines, chosen when the program is compiled:
///
///   eigen     Eigen's kernel driven by cpu_gemm.hpp (the default; no dependency beyond Eigen)
///   openblas  cblas_sgemm / cblas_dgemm of OpenBLAS   (FLOWPRIOR_CBLAS_OPENBLAS)
///   blis      cblas_sgemm / cblas_dgemm of BLIS       (FLOWPRIOR_CBLAS_BLIS)
///
/// A consumer never sets these macros by hand: linking the optional CMake target
/// `flowprior::blas` defines FLOWPRIOR_CBLAS and the engine's macro, adds the engine's include
/// directory (its own cblas.h) and links the library. The library target `flowprior::flowprior`
/// stays header-only and Eigen-only.
///
/// Threads: the BLAS runs single-threaded on each block of flowprior's own thread team (see
/// gemm_cblas below), so the thread count is Eigen::nbThreads() for every engine, as for the
/// element-wise passes. Products whose sizes do not fit the BLAS's 32-bit integers fall back to
/// the Eigen engine.
#pragma once

#include <climits>
#include <flowprior/core/types.hpp>
#include <type_traits>

#if defined(FLOWPRIOR_CBLAS_OPENBLAS) || defined(FLOWPRIOR_CBLAS_BLIS)
#ifndef FLOWPRIOR_CBLAS
#define FLOWPRIOR_CBLAS 1
#endif
#endif

#if defined(FLOWPRIOR_CBLAS)
#include <cblas.h>

#include <algorithm>
#ifdef _OPENMP
#include <omp.h>
#endif

#include <flowprior/backend/cpu_gemm.hpp>
#if defined(FLOWPRIOR_CBLAS_BLIS)
#include <blis.h>  // bli_thread_set_num_threads
#endif
#endif

namespace flowprior::detail {

/// Name of the engine CpuBackend::gemm runs on ("eigen", "openblas", "blis" or "cblas").
inline const char* gemm_engine_name() {
#if defined(FLOWPRIOR_CBLAS_OPENBLAS)
  return "openblas";
#elif defined(FLOWPRIOR_CBLAS_BLIS)
  return "blis";
#elif defined(FLOWPRIOR_CBLAS)
  return "cblas";
#else
  return "eigen";
#endif
}

#if defined(FLOWPRIOR_CBLAS)

/// The engine runs single-threaded inside flowprior's thread team: gemm_split (cpu_gemm.hpp) cuts
/// C into one block per thread and each thread calls the BLAS on its block. One team then serves
/// the products and the element-wise passes, results do not depend on the BLAS's own threading,
/// and no engine allocates per call (OpenBLAS's threaded driver allocates its job table, 512 KB,
/// on every call; its serial path and BLIS's allocate nothing once warmed up, BLIS after each of
/// its per-caller small-block pools has served every kind of product: docs/backends.md).
///
/// BLIS: its thread count is set to 1 once. OpenBLAS: a pthread build is set to 1 thread once;
/// an OpenMP build runs serially inside a parallel region by itself (it checks
/// omp_in_parallel()), and for a call outside one (a team of 1) SerialBlasCall lowers this
/// thread's OpenMP thread count to 1 for the duration of the call. A serial OpenBLAS build is not
/// safe to call from two threads at once (Debian builds it without USE_LOCKING: measured wrong
/// products), so with it every product runs whole on the calling thread. Defining
/// FLOWPRIOR_CBLAS_ENGINE_THREADS instead hands every product whole to the BLAS and its own
/// threading (for comparison: docs/benchmarks.md).
inline void blas_init_threads() {
  static const bool done = [] {
#if !defined(FLOWPRIOR_CBLAS_ENGINE_THREADS)
#if defined(FLOWPRIOR_CBLAS_BLIS)
    bli_thread_set_num_threads(1);
#elif defined(FLOWPRIOR_CBLAS_OPENBLAS)
    if (openblas_get_parallel() != 2) openblas_set_num_threads(1);  // 2: the OpenMP build
#endif
#endif
    return true;
  }();
  (void)done;
}

/// True when the BLAS may be called from several threads at once.
inline bool blas_reentrant() {
#if defined(FLOWPRIOR_CBLAS_OPENBLAS)
  static const bool reentrant = openblas_get_parallel() != 0;  // 0: the serial build
  return reentrant;
#else
  return true;
#endif
}

/// Makes a BLAS call outside a parallel region run on one thread (see above); a no-op inside one,
/// without OpenMP, or with FLOWPRIOR_CBLAS_ENGINE_THREADS.
class SerialBlasCall {
 public:
  SerialBlasCall() {
#if defined(_OPENMP) && defined(FLOWPRIOR_CBLAS_OPENBLAS) && \
    !defined(FLOWPRIOR_CBLAS_ENGINE_THREADS)
    if (!omp_in_parallel()) {
      saved_ = omp_get_max_threads();
      if (saved_ > 1) omp_set_num_threads(1);
    }
#endif
  }
  ~SerialBlasCall() {
#if defined(_OPENMP) && defined(FLOWPRIOR_CBLAS_OPENBLAS) && \
    !defined(FLOWPRIOR_CBLAS_ENGINE_THREADS)
    if (saved_ > 1) omp_set_num_threads(saved_);
#endif
  }
  SerialBlasCall(const SerialBlasCall&) = delete;
  SerialBlasCall& operator=(const SerialBlasCall&) = delete;

 private:
  int saved_ = 0;
};

/// One BLAS call: C = alpha op(A) op(B) + beta C for column-major operands whose sizes fit int.
template <class S>
void cblas_gemm_call(bool trans_a, bool trans_b, Index m, Index n, Index k, S alpha, const S* A,
                     Index lda, const S* B, Index ldb, S beta, S* C, Index ldc) {
  const CBLAS_TRANSPOSE ta = trans_a ? CblasTrans : CblasNoTrans;
  const CBLAS_TRANSPOSE tb = trans_b ? CblasTrans : CblasNoTrans;
  // BLAS requires ld >= max(1, rows of the stored operand) even when a size is zero.
  const int la = static_cast<int>(std::max<Index>(lda, 1));
  const int lb = static_cast<int>(std::max<Index>(ldb, 1));
  const int lc = static_cast<int>(std::max<Index>(ldc, 1));
  if constexpr (std::is_same<S, float>::value)
    cblas_sgemm(CblasColMajor, ta, tb, int(m), int(n), int(k), alpha, A, la, B, lb, beta, C, lc);
  else
    cblas_dgemm(CblasColMajor, ta, tb, int(m), int(n), int(k), alpha, A, la, B, lb, beta, C, lc);
}

/// C = alpha op(A) op(B) + beta C through the BLAS (BLAS semantics: beta = 0 ignores C), on
/// flowprior's thread team. Returns false, doing nothing, when a size or leading dimension does
/// not fit the BLAS's int or S is neither float nor double: the caller then uses the Eigen
/// engine.
template <class S>
bool gemm_cblas(bool trans_a, bool trans_b, Index m, Index n, Index k, S alpha, const S* A,
                Index lda, const S* B, Index ldb, S beta, S* C, Index ldc) {
  if constexpr (!std::is_same<S, float>::value && !std::is_same<S, double>::value) {
    return false;
  } else {
    constexpr Index imax = INT_MAX;
    if (m > imax || n > imax || k > imax || lda > imax || ldb > imax || ldc > imax) return false;
    blas_init_threads();
#if defined(FLOWPRIOR_CBLAS_ENGINE_THREADS)
    cblas_gemm_call(trans_a, trans_b, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc);
#else
    if (!blas_reentrant()) {
      cblas_gemm_call(trans_a, trans_b, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc);
      return true;
    }
    gemm_split(trans_a, trans_b, m, n, k, A, lda, B, ldb, C, ldc,
               [&](Index mb, Index nb, const S* a, const S* b, S* c) {
                 const SerialBlasCall serial;
                 cblas_gemm_call(trans_a, trans_b, mb, nb, k, alpha, a, lda, b, ldb, beta, c, ldc);
                 return true;
               });
#endif
    return true;
  }
}

#endif  // FLOWPRIOR_CBLAS

}  // namespace flowprior::detail
