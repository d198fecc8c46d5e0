// The kNN distances of eval/knn.hpp on the thread team (docs/math/evaluation.md (5)
// "Determinism"): every thread count gives the same bits, and the team is really used when
// OpenMP is on (this suite links it).
#include <flowprior/eval/knn.hpp>
#include <flowprior/flowprior.hpp>
#include <vector>

#include "catch.hpp"

using flowprior::Index;

TEST_CASE("knn: the same bits for 1, 2, 3 and 4 threads", "[eval][knn][threads]") {
  flowprior::Rng rng(511);
  const Index d = 6, Nq = 301, Nr = 257;
  Eigen::MatrixXf q(d, Nq), r(d, Nr);
  for (Index j = 0; j < Nq; ++j)
    for (Index i = 0; i < d; ++i) q(i, j) = float(flowprior::normal01(rng));
  for (Index j = 0; j < Nr; ++j)
    for (Index i = 0; i < d; ++i) r(i, j) = float(flowprior::normal01(rng));
  const flowprior::eval::KnnOptions opt{16, 64};
#ifdef _OPENMP
  Eigen::setNbThreads(3);
  REQUIRE(flowprior::detail::team_size(double(Nq) * Nr * d, (Nq + 15) / 16) == 3);
#endif
  std::vector<std::vector<double>> runs;
  for (int threads : {1, 2, 3, 4}) {
    Eigen::setNbThreads(threads);
    runs.push_back(flowprior::eval::knn_distances<float>(q, r, 5, opt));
  }
  Eigen::setNbThreads(0);  // back to the OpenMP default
  for (std::size_t t = 1; t < runs.size(); ++t) REQUIRE(runs[t] == runs[0]);
}
