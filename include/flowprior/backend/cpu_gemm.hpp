/// @file
/// The CPU backend's matrix product: Eigen's GEMM kernel (the Goto panel/block algorithm of
/// Eigen/src/Core/products/GeneralMatrixMatrix.h) driven with packing buffers that live for the
/// whole run, one set per thread, and split across threads by flowprior (docs/benchmarks.md).
///
/// Why not `C.noalias() = A * B` (what BM_Sgemm measures): Eigen's product wrapper allocates its
/// packing buffers (kc x mc and kc x nc scalars, hundreds of KB) on the heap for every product
/// above EIGEN_STACK_ALLOCATION_LIMIT, so a training step would allocate on every layer; and with
/// OpenMP it shares one packed panel between threads through spin-waits. Here each thread runs
/// the sequential kernel on its own contiguous block of C with buffers that are grown once and
/// then reused, so a warmed-up step performs no heap allocation (tests/perf), and the element-wise
/// passes use the same thread team.
///
/// This relies on Eigen's internal `general_matrix_matrix_product` and `level3_blocking`, whose
/// interface is stable across the 3.3 and 3.4 series; the build requires Eigen 3.4.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <atomic>
#include <flowprior/backend/parallel.hpp>
#include <flowprior/core/types.hpp>
#include <new>
#include <vector>

namespace flowprior::detail {

/// Per-thread packing storage of the GEMM kernel: grown on first use, never shrunk.
template <class S>
std::vector<S, Eigen::aligned_allocator<S>>& gemm_scratch() {
  static thread_local std::vector<S, Eigen::aligned_allocator<S>> buffer;
  return buffer;
}

/// Eigen's blocking descriptor pointed at this thread's scratch. Block sizes come from Eigen's
/// own cache heuristic (computeProductBlockingSizes) for a single thread.
template <class S>
class GemmBlocking : public Eigen::internal::level3_blocking<S, S> {
 public:
  GemmBlocking(Index m, Index n, Index k) {
    this->m_mc = m;
    this->m_nc = n;
    this->m_kc = k;
    Eigen::internal::computeProductBlockingSizes<S, S, 1>(this->m_kc, this->m_mc, this->m_nc,
                                                          Index(1));
    // The kernel packs kc x min(m, mc) of op(A) and kc x min(n, nc) of op(B).
    const Index pad = 64 / Index(sizeof(S));  // keep blockB on a 64-byte boundary
    const Index size_a = (this->m_kc * std::min(m, this->m_mc) + pad - 1) / pad * pad;
    const Index size_b = this->m_kc * std::min(n, this->m_nc);
    auto& buf = gemm_scratch<S>();
    if (Index(buf.size()) < size_a + size_b) buf.resize(static_cast<std::size_t>(size_a + size_b));
    this->m_blockA = buf.data();
    this->m_blockB = buf.data() + size_a;
  }
};

/// C += alpha op(A) op(B) on one thread. op(A) is m x k, op(B) k x n, C m x n, all column-major
/// storage with leading dimensions lda, ldb, ldc (a transposed operand is read as row-major).
template <class S>
void gemm_serial(bool trans_a, bool trans_b, Index m, Index n, Index k, S alpha, const S* A,
                 Index lda, const S* B, Index ldb, S* C, Index ldc) {
  using Eigen::ColMajor;
  using Eigen::RowMajor;
  using Eigen::internal::general_matrix_matrix_product;
  if (m <= 0 || n <= 0 || k <= 0) return;
  GemmBlocking<S> blocking(m, n, k);
  if (!trans_a && !trans_b)
    general_matrix_matrix_product<Index, S, ColMajor, false, S, ColMajor, false, ColMajor, 1>::run(
        m, n, k, A, lda, B, ldb, C, 1, ldc, alpha, blocking, nullptr);
  else if (trans_a && !trans_b)
    general_matrix_matrix_product<Index, S, RowMajor, false, S, ColMajor, false, ColMajor, 1>::run(
        m, n, k, A, lda, B, ldb, C, 1, ldc, alpha, blocking, nullptr);
  else if (!trans_a && trans_b)
    general_matrix_matrix_product<Index, S, ColMajor, false, S, RowMajor, false, ColMajor, 1>::run(
        m, n, k, A, lda, B, ldb, C, 1, ldc, alpha, blocking, nullptr);
  else
    general_matrix_matrix_product<Index, S, RowMajor, false, S, RowMajor, false, ColMajor, 1>::run(
        m, n, k, A, lda, B, ldb, C, 1, ldc, alpha, blocking, nullptr);
}

/// Multiply-adds below which a product stays on one thread (about 15 microseconds of one core).
inline constexpr double kParallelMacs = 1 << 20;

/// Runs kernel(m_b, n_b, A_b, B_b, C_b) on disjoint blocks of C = op(A) op(B) (m x n, inner size
/// k), one per thread of the team (parallel.hpp): blocks of columns of C, or of rows when C has
/// more rows than columns, each with the matching panel of op(A) or op(B). The kernel is a serial
/// GEMM of any engine (Eigen's below, a BLAS's in cpu_blas.hpp); each thread packs its own
/// operands, and the duplicated packing of the shared operand costs O(1/threads) of the
/// multiply-adds. The kernel must not throw; it returns false on failure, and gemm_split then
/// throws std::bad_alloc (the only failure: a thread's first growth of its packing scratch).
template <class S, class Kernel>
void gemm_split(bool trans_a, bool trans_b, Index m, Index n, Index k, const S* A, Index lda,
                const S* B, Index ldb, S* C, Index ldc, Kernel&& kernel) {
  if (m <= 0 || n <= 0) return;
  const bool split_cols = n >= m;
  const Index len = split_cols ? n : m;
  // Whole micro-panels per thread: 8 columns, or 48 rows (3 AVX-512 registers of floats).
  const Index grain = split_cols ? 8 : 48;
  const int threads =
      team_size(double(m) * double(n) * double(k), (len + grain - 1) / grain, kParallelMacs);
  if (threads == 1) {
    if (!kernel(m, n, A, B, C)) throw std::bad_alloc();
    return;
  }
  std::atomic<bool> failed{false};
  run_chunks(threads, len, grain, [&](Index begin, Index end) {
    bool ok;
    if (split_cols) {
      const S* b = trans_b ? B + begin : B + begin * ldb;
      ok = kernel(m, end - begin, A, b, C + begin * ldc);
    } else {
      const S* a = trans_a ? A + begin * lda : A + begin;
      ok = kernel(end - begin, n, a, B, C + begin);
    }
    if (!ok) failed.store(true);
  });
  if (failed.load()) throw std::bad_alloc();
}

/// C += alpha op(A) op(B) on the Eigen engine, split over the thread team.
template <class S>
void gemm_accumulate(bool trans_a, bool trans_b, Index m, Index n, Index k, S alpha, const S* A,
                     Index lda, const S* B, Index ldb, S* C, Index ldc) {
  if (m <= 0 || n <= 0 || k <= 0) return;
  gemm_split(trans_a, trans_b, m, n, k, A, lda, B, ldb, C, ldc,
             [&](Index mb, Index nb, const S* a, const S* b, S* c) {
               try {
                 gemm_serial(trans_a, trans_b, mb, nb, k, alpha, a, lda, b, ldb, c, ldc);
                 return true;
               } catch (...) {  // only the first growth of a thread's scratch can throw
                 return false;
               }
             });
}

}  // namespace flowprior::detail
