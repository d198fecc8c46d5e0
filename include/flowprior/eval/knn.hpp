/// @file
/// k-nearest-neighbour distances of query points to a reference set: per query, the mean
/// Euclidean distance to its k nearest references (the paper's "kNN distance of latents to
/// target samples", Fig. 4). docs/math/evaluation.md (5).
#pragma once

#include <algorithm>
#include <cmath>
#include <flowprior/backend/parallel.hpp>
#include <flowprior/core/check.hpp>
#include <flowprior/core/size.hpp>
#include <flowprior/core/types.hpp>
#include <string>
#include <vector>

namespace flowprior {
namespace eval {

/// Tile sizes of knn_distances: queries x references handled together (cache blocking only;
/// the results do not depend on them).
struct KnnOptions {
  Index query_block = 64;  ///< queries per tile, also the unit of work of a thread
  Index ref_block = 256;   ///< references per tile
};

/// knn(q) = 1/k sum_{j=1..k} |q - r_(j)|_2, r_(1), r_(2), ... the references sorted by their
/// distance to q                                                        evaluation.md (5)
/// for every column q of queries (d, Nq), against refs (d, Nr); returns Nq values.
///
/// Squared distances are summed in double in a fixed order (coordinate 0 to d-1) and never
/// formed as |q|^2 + |r|^2 - 2 q.r (which cancels for near points). The k smallest are kept per
/// query while the references stream past in tiles of KnnOptions, so memory is O(Nq k) and no
/// Nq x Nr matrix is formed; the k smallest values do not depend on the order in which ties
/// arrive. Queries are shared among the library's thread team (backend/parallel.hpp), each query
/// computed by one thread: the results are the same bits for every thread count and tile size.
/// Throws shape_error when the dimensions differ, config_error for k < 1, k > Nr or non-positive
/// tile sizes, numeric_error for non-finite coordinates.
template <class S>
std::vector<double> knn_distances(ConstMatrixView<S> queries, ConstMatrixView<S> refs, Index k,
                                  const KnnOptions& opt = {}) {
  const char* w = "knn_distances";
  check_shape(w, "refs", refs, queries.rows, refs.cols);
  if (k < 1 || k > refs.cols)
    raise_config(
        w, "k must lie in [1, Nr = " + std::to_string(refs.cols) + "], got " + std::to_string(k));
  if (opt.query_block < 1 || opt.ref_block < 1)
    raise_config(w, "KnnOptions: tile sizes must be positive");
  check_finite(w, "queries", queries);
  check_finite(w, "refs", refs);
  const Index Nq = queries.cols, Nr = refs.cols, d = queries.rows;
  std::vector<double> out;
  checked_resize(w, "the distances", out, Nq);
  // best[q k .. q k + k): the smallest squared distances of query q so far, ascending.
  std::vector<double> best;
  checked_resize(w, "Nq x k nearest distances", best, checked_mul(w, "Nq x k", Nq, k));
  const double work = double(Nq) * double(Nr) * double(std::max<Index>(d, 1));
  const Index chunks = (Nq + opt.query_block - 1) / opt.query_block;
  flowprior::detail::run_chunks(flowprior::detail::team_size(work, chunks), Nq, opt.query_block,
                                [&](Index q0, Index q1) {
                                  for (Index qa = q0; qa < q1; qa += opt.query_block) {
                                    const Index qb = std::min(q1, qa + opt.query_block);
                                    for (Index r0 = 0; r0 < Nr; r0 += opt.ref_block) {
                                      const Index r1 = std::min(Nr, r0 + opt.ref_block);
                                      for (Index q = qa; q < qb; ++q) {
                                        const S* x = queries.col(q);
                                        double* top = best.data() + q * k;
                                        for (Index r = r0; r < r1; ++r) {
                                          const S* y = refs.col(r);
                                          double s = 0;
                                          for (Index i = 0; i < d; ++i) {
                                            const double t = double(x[i]) - double(y[i]);
                                            s += t * t;
                                          }
                                          // Insert into the ascending list of the r (capped at k) values seen so far.
                                          Index n = std::min(r, k);
                                          if (n == k) {
                                            if (!(s < top[k - 1])) continue;
                                            --n;
                                          }
                                          while (n > 0 && top[n - 1] > s) {
                                            top[n] = top[n - 1];
                                            --n;
                                          }
                                          top[n] = s;
                                        }
                                      }
                                    }
                                    for (Index q = qa; q < qb; ++q) {
                                      const double* top = best.data() + q * k;
                                      double sum = 0;
                                      for (Index j = 0; j < k; ++j) sum += std::sqrt(top[j]);
                                      out[std::size_t(q)] = sum / double(k);
                                    }
                                  }
                                });
  return out;
}

}  // namespace eval
}  // namespace flowprior
