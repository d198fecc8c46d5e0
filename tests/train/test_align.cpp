// Stage 2 on free latents: the latent aligner against the exact field of the paper's ring.
#include <flowprior/flowprior.hpp>
#include <flowprior/train/align.hpp>

#include "catch.hpp"
#include "gradcheck.hpp"

using flowprior::Convention;
using flowprior::Index;
using flowprior::MatrixView;
using flowprior::Prior;
using flowprior::Rng;
namespace analytic = flowprior::analytic;
namespace train = flowprior::train;
using Field = analytic::GaussianMixtureField<double>;

TEST_CASE("aligner: latents from N(0, I) reach the ring's modes and its NLL falls", "[train]") {
  const Convention conv = GENERATE(Convention::Paper, Convention::Code);
  CAPTURE(flowprior::to_string(conv));
  const double s = std::sqrt(0.09 + 4.5);
  Eigen::MatrixXd means(2, 5);
  for (int k = 0; k < 5; ++k)
    means.col(k) << 3 * std::cos(2 * M_PI * k / 5) / s, 3 * std::sin(2 * M_PI * k / 5) / s;
  const analytic::GaussianMixture ring(means, std::vector<double>(5, 0.3 / s),
                                       std::vector<double>(5, 1.0));
  Field field(ring);
  const auto prior = Prior<Field>(field, Convention::Paper).as(conv);
  const Index n = 300;
  Rng rng(8);
  Eigen::MatrixXd y(2, n);
  for (Index b = 0; b < n; ++b) y.col(b) << flowprior::normal01(rng), flowprior::normal01(rng);
  Eigen::VectorXd logp(n);
  ring.log_density<double>(y, logp);
  const double nll0 = -logp.mean();
  train::AlignConfig cfg;
  train::LatentAligner<Field> aligner(prior, conv, n, cfg);
  double first = 0, last = 0;
  for (int step = 0; step < 300; ++step) {
    const double l = aligner.step(MatrixView<double>(y), rng);
    if (step == 0) first = l;
    last = l;
  }
  ring.log_density<double>(y, logp);
  const double nll1 = -logp.mean();
  INFO("NLL " << nll0 << " -> " << nll1 << ", loss " << first << " -> " << last);
  REQUIRE(nll0 > 5);
  REQUIRE(nll1 < 1.0);
  REQUIRE(last < first);
  REQUIRE(aligner.steps() == 300);
  std::vector<int> count(5, 0);
  for (Index b = 0; b < n; ++b) {
    Eigen::Index k;
    (means.colwise() - y.col(b)).colwise().squaredNorm().minCoeff(&k);
    ++count[std::size_t(k)];
  }
  for (int c : count) REQUIRE(c > 20);  // every mode receives latents
  // Wrong sizes and conventions are refused.
  Eigen::MatrixXd wrong(2, n + 1);
  REQUIRE_THROWS_AS(aligner.step(MatrixView<double>(wrong), rng), flowprior::shape_error);
  REQUIRE_THROWS_AS(train::LatentAligner<Field>(prior, flowprior::flipped(conv), n, cfg),
                    flowprior::convention_error);
}

TEST_CASE("aligner: a non-finite loss is refused naming the step and the latents stay unchanged",
          "[train][error]") {
  const Convention conv = Convention::Code;
  Eigen::MatrixXd means(2, 2);
  means << -1, 1, 0, 0;
  const analytic::GaussianMixture gmm(means, std::vector<double>(2, 0.2),
                                      std::vector<double>(2, 1.0));
  Field field(gmm);
  const auto prior = Prior<Field>(field, Convention::Paper).as(conv);
  const Index n = 8;
  Rng rng(3);
  Eigen::MatrixXd y(2, n);
  for (Index b = 0; b < n; ++b) y.col(b) << flowprior::normal01(rng), flowprior::normal01(rng);
  train::AlignConfig cfg;
  train::LatentAligner<Field> aligner(prior, conv, n, cfg);
  aligner.step(MatrixView<double>(y), rng);
  y(0, 3) = 1e300;  // the residual's square overflows: the loss is +Inf
  const Eigen::MatrixXd before = y;
  REQUIRE_THROWS_AS(aligner.step(MatrixView<double>(y), rng), flowprior::numeric_error);
  REQUIRE_THROWS_WITH(aligner.step(MatrixView<double>(y), rng), Catch::Contains("diverged") &&
                                                                    Catch::Contains("step 2") &&
                                                                    Catch::Contains("not applied"));
  REQUIRE(y == before);
  REQUIRE(aligner.steps() == 1);
}
