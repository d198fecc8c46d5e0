/// @file
/// Work sharing of the CPU backend (docs/benchmarks.md "Threads").
///
/// flowprior never forces OpenMP on a consumer: compiled without -fopenmp, every helper here runs
/// its body once over the whole range on the calling thread. Compiled with it, ranges big enough
/// to pay for a parallel region are cut into one contiguous chunk per thread. The thread count is
/// Eigen's (`Eigen::nbThreads()`: OMP_NUM_THREADS unless the program calls Eigen::setNbThreads),
/// so one setting governs the products and the element-wise passes alike. Inside an enclosing
/// parallel region (a caller that parallelises over its own work) everything runs serially.
///
/// Determinism: every output element is written by exactly one thread, and reductions over
/// columns are cut by rows (each sum keeps its serial order, or the fixed lane order of
/// lane_sum). Results depend on the thread count only through rounding: the GEMM's blocking of
/// each thread's share (cpu_gemm.hpp) and the grouping of sum_range's partial sums. For a fixed
/// thread count every run gives the same bits.
#pragma once

#include <Eigen/Core>
#include <algorithm>

#ifdef _OPENMP
#include <omp.h>
#endif

#include <flowprior/core/types.hpp>

namespace flowprior::detail {

/// Element count below which a pass stays on one thread: a parallel region costs a few
/// microseconds, the time to stream about 16k floats through one core.
inline constexpr double kParallelElements = 16384.0;

/// Threads to use for `work` units of work split into at most `chunks` pieces (1 without OpenMP,
/// inside a parallel region, or when the work is too small).
inline int team_size(double work, Index chunks, double threshold = kParallelElements) {
#ifdef _OPENMP
  if (work < threshold || chunks < 2 || omp_in_parallel()) return 1;
  const int nt = Eigen::nbThreads();
  return static_cast<int>(std::min<Index>(nt, chunks));
#else
  (void)work;
  (void)chunks;
  (void)threshold;
  return 1;
#endif
}

/// Calls f(begin, end) on contiguous, disjoint sub-ranges of [0, n) whose boundaries are
/// multiples of `grain` (except the last end), one per thread of a team of `threads`.
/// f must not throw (arithmetic kernels only).
template <class F>
void run_chunks(int threads, Index n, Index grain, F&& f) {
#ifdef _OPENMP
  if (threads > 1) {
#pragma omp parallel num_threads(threads)
    {
      const Index nt = omp_get_num_threads();
      const Index tid = omp_get_thread_num();
      const Index per = ((n + nt - 1) / nt + grain - 1) / grain * grain;
      const Index begin = std::min(n, tid * per);
      const Index end = std::min(n, begin + per);
      if (begin < end) f(begin, end);
    }
    return;
  }
#else
  (void)threads;
  (void)grain;
#endif
  if (n > 0) f(Index(0), n);
}

/// Column-parallel pass: f(j0, j1) over the columns of a (rows x cols) operand.
template <class F>
void for_cols(Index rows, Index cols, F&& f) {
  run_chunks(team_size(double(rows) * double(cols), cols), cols, 1, f);
}

/// Row-parallel pass for reductions over columns: f(i0, i1) handles feature rows [i0, i1) of
/// every column, so that each accumulator has a single writer. Rows are cut at multiples of 16
/// (one AVX-512 register of floats).
template <class F>
void for_rows(Index rows, Index cols, F&& f) {
  run_chunks(team_size(double(rows) * double(cols), (rows + 15) / 16), rows, 16, f);
}

/// Element-wise pass over a flat range [0, n): f(i0, i1) on chunks of whole 1024-element blocks.
template <class F>
void for_range(Index n, F&& f) {
  run_chunks(team_size(double(n), (n + 1023) / 1024), n, 1024, f);
}

/// Lanes of lane_sum and lane_sums: 8 doubles, one AVX-512 register or two AVX ones.
inline constexpr int kSumLanes = 8;

/// sum_{i < n} f(i) in double, kept as kSumLanes running sums (lane l adds the terms with
/// i % kSumLanes == l, in increasing i) that are combined by halving at the end (lane l += lane
/// l + w for w = 4, 2, 1). A single running double sum is a chain of dependent additions that the
/// compiler must keep in order (one element per addition latency, about 4 cycles); the lanes
/// vectorise, about 3x faster on a column of 1024 floats. The order is fixed by n alone, so the
/// bits do not depend on the thread count. docs/benchmarks.md "Element-wise passes".
template <class F>
double lane_sum(Index n, F&& f) {
  double acc[kSumLanes] = {};
  Index i = 0;
  for (; i + kSumLanes <= n; i += kSumLanes)
    for (int l = 0; l < kSumLanes; ++l) acc[l] += f(i + l);
  const int rest = static_cast<int>(n - i);
  for (int l = 0; l < rest; ++l) acc[l] += f(i + l);
  for (int w = kSumLanes / 2; w > 0; w /= 2)
    for (int l = 0; l < w; ++l) acc[l] += acc[l + w];
  return acc[0];
}

/// Two sums of one pass, each in the order of lane_sum: f(i) returns both terms of element i.
struct LanePair {
  double a = 0, b = 0;
};
template <class F>
LanePair lane_sums(Index n, F&& f) {
  double acc_a[kSumLanes] = {}, acc_b[kSumLanes] = {};
  Index i = 0;
  for (; i + kSumLanes <= n; i += kSumLanes)
    for (int l = 0; l < kSumLanes; ++l) {
      const LanePair t = f(i + l);
      acc_a[l] += t.a;
      acc_b[l] += t.b;
    }
  const int rest = static_cast<int>(n - i);
  for (int l = 0; l < rest; ++l) {
    const LanePair t = f(i + l);
    acc_a[l] += t.a;
    acc_b[l] += t.b;
  }
  for (int w = kSumLanes / 2; w > 0; w /= 2)
    for (int l = 0; l < w; ++l) {
      acc_a[l] += acc_a[l + w];
      acc_b[l] += acc_b[l + w];
    }
  return {acc_a[0], acc_b[0]};
}

/// Sum over a flat range: f(i0, i1) returns the partial sum of a chunk; partial sums are added in
/// chunk order. (The grouping, hence the last bits of the result, depends on the thread count.)
template <class F>
double sum_range(Index n, F&& f) {
  constexpr int kMaxTeam = 64;
  const int threads = std::min(kMaxTeam, team_size(double(n), (n + 1023) / 1024));
  if (threads == 1) return n > 0 ? f(Index(0), n) : 0.0;
  double partial[kMaxTeam] = {};
#ifdef _OPENMP
#pragma omp parallel num_threads(threads)
  {
    const Index nt = omp_get_num_threads();
    const Index tid = omp_get_thread_num();
    const Index per = ((n + nt - 1) / nt + 1023) / 1024 * 1024;
    const Index begin = std::min(n, tid * per);
    const Index end = std::min(n, begin + per);
    if (begin < end) partial[tid] = f(begin, end);
  }
#endif
  double total = 0;
  for (int c = 0; c < threads; ++c) total += partial[c];
  return total;
}

}  // namespace flowprior::detail
