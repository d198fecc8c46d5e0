// Draws of (t, eps) and the random projection.
#include <flowprior/flowprior.hpp>

#include <algorithm>

#include "catch.hpp"
#include "gradcheck.hpp"

using flowprior::Convention;
using flowprior::Index;
using flowprior::Rng;
namespace loss = flowprior::loss;

TEST_CASE("draws: the same seed gives the same draws; layout is row-major in draws",
          "[loss]") {
  loss::FlowDraws<double> a, b;
  Rng r1(5), r2(5);
  loss::draw(a, Convention::Code, 3, 2, 4, loss::TimeSampler::uniform(), r1);
  loss::draw(b, Convention::Code, 3, 2, 4, loss::TimeSampler::uniform(), r2);
  REQUIRE(a.t == b.t);
  REQUIRE(a.eps == b.eps);
  REQUIRE(a.cols() == 12);
  REQUIRE(a.convention == Convention::Code);
  REQUIRE(a.noise().rows == 2);
  REQUIRE(a.noise().cols == 12);
}

TEST_CASE("draws: samplers have the documented distributions", "[loss]") {
  Rng rng(6);
  loss::FlowDraws<double> d;
  SECTION("stratified: exactly one draw per stratum") {
    loss::draw(d, Convention::Paper, 50, 1, 4, loss::TimeSampler::stratified(), rng);
    std::vector<double> t = d.t;
    std::sort(t.begin(), t.end());
    for (std::size_t i = 0; i < t.size(); ++i) {
      REQUIRE(t[i] >= double(i) / 200.0);
      REQUIRE(t[i] < double(i + 1) / 200.0);
    }
  }
  SECTION("grid: midpoints per draw index") {
    loss::draw(d, Convention::Paper, 3, 1, 4, loss::TimeSampler::grid(), rng);
    for (Index b = 0; b < 3; ++b)
      for (Index k = 0; k < 4; ++k) REQUIRE(d.t[std::size_t(b * 4 + k)] == (k + 0.5) / 4);
  }
  SECTION("logit-normal: logit(t) has the requested mean and std") {
    loss::draw(d, Convention::Paper, 50000, 1, 1, loss::TimeSampler::logit_normal(0.5, 0.8), rng);
    double s = 0, s2 = 0;
    for (double t : d.t) {
      const double l = std::log(t / (1 - t));
      s += l;
      s2 += l * l;
    }
    const double n = double(d.t.size()), m = s / n;
    REQUIRE(m == Approx(0.5).margin(4 * 0.8 / std::sqrt(n)));
    REQUIRE(std::sqrt(s2 / n - m * m) == Approx(0.8).epsilon(0.02));
  }
  SECTION("uniform and antithetic: pairs negate eps, every draw has its own t") {
    loss::draw(d, Convention::Paper, 1000, 3, 2, loss::TimeSampler::uniform(), rng, true);
    double s = 0;
    int same_t = 0;
    for (Index b = 0; b < 1000; ++b) {
      same_t += d.t[std::size_t(2 * b)] == d.t[std::size_t(2 * b + 1)];
      for (Index i = 0; i < 3; ++i)
        REQUIRE(d.noise()(i, 2 * b) == -d.noise()(i, 2 * b + 1));
      s += d.t[std::size_t(2 * b)] + d.t[std::size_t(2 * b + 1)];
    }
    REQUIRE(same_t == 0);
    REQUIRE(s / 2000 == Approx(0.5).margin(4 * std::sqrt(1.0 / 12 / 2000)));
  }
  SECTION("grid with antithetic noise keeps every grid point") {
    loss::draw(d, Convention::Paper, 2, 1, 4, loss::TimeSampler::grid(), rng, true);
    for (Index k = 0; k < 4; ++k) REQUIRE(d.t[std::size_t(4 + k)] == (k + 0.5) / 4);
    REQUIRE(d.noise()(0, 5) == -d.noise()(0, 4));
  }
}

TEST_CASE("projection: seeded N(0, 1/d2) entries, scale, validation", "[data]") {
  flowprior::data::RandomProjection<double> p(32, 768, 1234, 2.0), q(32, 768, 1234, 2.0);
  auto W = p.matrix();
  double s2 = 0;
  for (Index j = 0; j < W.cols; ++j)
    for (Index i = 0; i < W.rows; ++i) {
      REQUIRE(W(i, j) == q.matrix()(i, j));
      s2 += W(i, j) * W(i, j);
    }
  REQUIRE(s2 / double(32 * 768) == Approx(1.0 / 768).epsilon(0.03));
  Rng rng(3);
  Eigen::MatrixXd f = fpt::random_mat(768, 5, rng), out(32, 5);
  p.apply(f, out);
  Eigen::Map<const Eigen::MatrixXd> Wm(W.data, 32, 768);
  REQUIRE((out - 2.0 * Wm * f).norm() < 1e-10 * out.norm());
  Eigen::MatrixXd bad(700, 5), out_bad(31, 5);
  bad.setZero();
  REQUIRE_THROWS_AS(p.apply(bad, out), flowprior::shape_error);
  REQUIRE_THROWS_AS(p.apply(f, out_bad), flowprior::shape_error);
  f(3, 3) = std::nan("");
  REQUIRE_THROWS_AS(p.apply(f, out), flowprior::numeric_error);
  REQUIRE_THROWS_AS(flowprior::data::RandomProjection<double>(0, 3, 1), flowprior::config_error);
}
