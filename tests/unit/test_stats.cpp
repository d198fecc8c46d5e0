// Evaluation statistics (eval/stats.hpp, docs/toy_targets.md "statistics"): correlations, KDE,
// nearest neighbours, mode occupancy, Monte Carlo entropy.
#include <cmath>
#include <flowprior/toy2d/stats.hpp>
#include <flowprior/toy2d/targets.hpp>
#include <vector>

#include "catch.hpp"
#include "gradcheck.hpp"

using flowprior::Index;
using flowprior::Rng;
using fpt::Mat;
namespace ev = flowprior::eval;

TEST_CASE("stats: pearson and spearman", "[eval]") {
  std::vector<double> a(50), lin(50), rev(50), expo(50);
  for (int i = 0; i < 50; ++i) {
    a[std::size_t(i)] = 0.1 * i - 2;
    lin[std::size_t(i)] = 3 * a[std::size_t(i)] + 1;
    rev[std::size_t(i)] = -0.5 * a[std::size_t(i)];
    expo[std::size_t(i)] = std::exp(3 * a[std::size_t(i)]);
  }
  REQUIRE(ev::pearson(a.data(), lin.data(), 50) == Approx(1.0).margin(1e-14));
  REQUIRE(ev::pearson(a.data(), rev.data(), 50) == Approx(-1.0).margin(1e-14));
  REQUIRE(ev::pearson(a.data(), expo.data(), 50) < 0.9);
  REQUIRE(ev::spearman(a.data(), expo.data(), 50) == Approx(1.0).margin(1e-14));
  REQUIRE(ev::spearman(expo.data(), rev.data(), 50) == Approx(-1.0).margin(1e-14));
  // Hand example: pearson({1,2,3}, {1,3,2}) = 0.5.
  const double x3[3] = {1, 2, 3}, y3[3] = {1, 3, 2};
  REQUIRE(ev::pearson(x3, y3, 3) == Approx(0.5));
  // Ties get average ranks: {10, 20, 20, 30} -> {1, 2.5, 2.5, 4}; rho with {1,2,3,4} = 3/sqrt(10).
  const double t[4] = {10, 20, 20, 30}, u[4] = {1, 2, 3, 4};
  const auto r = ev::average_ranks(t, 4);
  REQUIRE(r == std::vector<double>{1, 2.5, 2.5, 4});
  REQUIRE(ev::average_ranks(u, 4) == std::vector<double>{1, 2, 3, 4});
  REQUIRE(ev::spearman(t, u, 4) == Approx(3 / std::sqrt(10.0)));
  const double rt[5] = {3, 1, 3, 3, 0};  // ranks {4, 2, 4, 4, 1}
  REQUIRE(ev::average_ranks(rt, 5) == std::vector<double>{4, 2, 4, 4, 1});
  // Errors: too few values, constant input, NaN.
  REQUIRE_THROWS_AS(ev::pearson(x3, y3, 1), flowprior::value_error);
  const double c3[3] = {2, 2, 2}, n3[3] = {1, NAN, 3};
  REQUIRE_THROWS_AS(ev::pearson(x3, c3, 3), flowprior::value_error);
  REQUIRE_THROWS_AS(ev::spearman(c3, x3, 3), flowprior::value_error);
  REQUIRE_THROWS_AS(ev::spearman(n3, x3, 3), flowprior::numeric_error);
}

TEST_CASE("stats: Kde2D recovers a Gaussian density and uses Scott's rule", "[eval]") {
  const Index n = 20000;
  Rng rng(0x5eed);
  Mat s(2, n);
  for (Index b = 0; b < n; ++b) {
    s(0, b) = flowprior::normal01(rng);
    s(1, b) = flowprior::normal01(rng);
  }
  const ev::Kde2D kde(s, 0);
  // Scott: n^(-1/6) * sqrt((Var x + Var y) / 2), unbiased variances.
  const Eigen::Vector2d m = s.rowwise().mean();
  const double var = (s.colwise() - m).squaredNorm() / double(n - 1) / 2;
  REQUIRE(kde.bandwidth() == Approx(std::pow(double(n), -1.0 / 6) * std::sqrt(var)));
  REQUIRE(kde.bandwidth() == Approx(0.192).margin(0.005));
  REQUIRE(ev::Kde2D::scott_bandwidth(s) == kde.bandwidth());
  REQUIRE(kde.size() == n);
  const double h2 = kde.bandwidth() * kde.bandwidth();
  for (const auto& q : {std::array<double, 2>{0, 0}, std::array<double, 2>{1.0, -0.5}}) {
    const double r2 = q[0] * q[0] + q[1] * q[1];
    const double truth = -std::log(2 * M_PI) - 0.5 * r2;
    const double smoothed = -std::log(2 * M_PI * (1 + h2)) - 0.5 * r2 / (1 + h2);  // E[KDE]
    const double est = kde.log_density(q.data());
    CAPTURE(q[0], q[1], est, truth, smoothed);
    REQUIRE(std::abs(est - truth) < 0.1);
    REQUIRE(std::abs(est - smoothed) < 0.04);
  }
  // Batched evaluation equals the pointwise one; an explicit bandwidth is kept.
  Mat q(2, 3);
  q << 0, 1, -2, 0, 0.5, 1;
  Eigen::VectorXd out(3);
  kde.log_density(q, out);
  for (Index b = 0; b < 3; ++b) REQUIRE(out[b] == kde.log_density(q.col(b).data()));
  REQUIRE(ev::Kde2D(s.leftCols(10), 0.3).bandwidth() == 0.3);
}

TEST_CASE("stats: Kde2D is stable far from the data", "[eval]") {
  Mat one(2, 1);
  one << 0, 0;
  const ev::Kde2D kde(one, 0.5);
  const double far[2] = {100, 0};
  REQUIRE(kde.log_density(far) == Approx(-1e4 / (2 * 0.25) - std::log(2 * M_PI * 0.25)));
  Mat two(2, 2);
  two << 0, 1, 0, 0;
  const ev::Kde2D k2(two, 0.1);
  const double x[2] = {1e3, 1e3};
  REQUIRE(std::isfinite(k2.log_density(x)));
  REQUIRE_THROWS_AS(ev::Kde2D(Mat(3, 5), 0.1), flowprior::shape_error);
  const Mat zeros = Mat::Zero(2, 4);
  REQUIRE_THROWS_AS(ev::Kde2D(zeros, 0), flowprior::value_error);  // zero Scott bandwidth
}

TEST_CASE("stats: NearestNeighbor2D equals brute force", "[eval]") {
  Rng rng(0x5eed);
  SECTION("ring targets, queries inside, around and far outside the grid") {
    const auto t = flowprior::data::ToyTarget::make(flowprior::data::Toy2D::Ring5);
    Mat targets(2, 5000);
    t.sample<double>(targets, rng);
    const ev::NearestNeighbor2D nn(targets);
    REQUIRE(nn.size() == 5000);
    REQUIRE(nn.grid_cols() * nn.grid_rows() <= 5000);
    Mat q = fpt::random_mat(2, 1500, rng, -4, 4);
    q.rightCols(100) *= 500;  // far queries
    q.col(0) << 1e6, -3e5;
    for (Index b = 0; b < q.cols(); ++b) {
      const double bf = ev::nearest_distance(q.col(b).data(), targets);
      CAPTURE(b, q(0, b), q(1, b));
      REQUIRE(nn.distance(q.col(b).data()) == Approx(bf).epsilon(1e-14).margin(1e-300));
      REQUIRE((targets.col(nn.nearest(q.col(b).data())) - q.col(b)).norm() ==
              Approx(bf).epsilon(1e-14));
    }
    // A target itself is at distance 0.
    REQUIRE(nn.distance(targets.col(17).data()) == 0.0);
  }
  SECTION("degenerate target sets: one point, a line, duplicates") {
    Mat one(2, 1);
    one << 0.5, -1;
    Mat line(2, 300);
    for (Index b = 0; b < 300; ++b) line.col(b) << 0.01 * double(b), 2.0;
    Mat dup = Mat::Ones(2, 50);
    dup.col(7) << 3, 3;
    for (const Mat* t : {&one, &line, &dup}) {
      const ev::NearestNeighbor2D nn(*t);
      const Mat q = fpt::random_mat(2, 200, rng, -5, 5);
      for (Index b = 0; b < q.cols(); ++b)
        REQUIRE(nn.distance(q.col(b).data()) ==
                Approx(ev::nearest_distance(q.col(b).data(), *t)).epsilon(1e-14));
    }
  }
  // nearest_distance works in any dimension.
  Mat t3(3, 2);
  t3 << 0, 1, 0, 1, 0, 1;
  const double x3[3] = {1, 1, 3};
  REQUIRE(ev::nearest_distance(x3, t3) == Approx(2.0));
  REQUIRE_THROWS_AS(ev::NearestNeighbor2D(Mat(2, 0)), flowprior::value_error);
  REQUIRE_THROWS_AS(ev::nearest_distance(x3, Mat(3, 0)), flowprior::value_error);
}

TEST_CASE("stats: mode occupancy", "[eval]") {
  const std::vector<std::array<double, 2>> modes = {{0, 0}, {2, 0}, {0, 2}};
  Mat p(2, 6);
  p << 0.1, 1.9, 2.5, 0.0, 0.9, 4.5,  //
      0.0, 0.1, 0.0, 1.7, 0.0, 5.0;
  // nearest modes: 0, 1, 1, 2, 0, 2 ; distances 0.1, 0.14, 0.5, 0.3, 0.9, 5.41
  REQUIRE(ev::mode_occupancy(p, modes, -1) == std::vector<Index>{2, 2, 2});
  REQUIRE(ev::mode_occupancy(p, modes, 0.35) == std::vector<Index>{1, 1, 1});
  REQUIRE(ev::mode_occupancy(p, modes, 1.0) == std::vector<Index>{2, 2, 1});
  REQUIRE(ev::mode_occupancy(p, modes, 0.0) == std::vector<Index>{0, 0, 0});
  // Ring5 samples: every point within 4 component stds of its mode, about n/5 per mode.
  const auto t = flowprior::data::ToyTarget::make(flowprior::data::Toy2D::Ring5);
  Rng rng(3);
  Mat x(2, 5000);
  t.sample<double>(x, rng);
  const auto occ = ev::mode_occupancy(x, t.modes(), 4 * 0.14 * 1.3);
  Index total = 0;
  for (Index c : occ) {
    total += c;
    REQUIRE(std::abs(double(c) - 1000) < 100);
  }
  REQUIRE(total == 5000);
  REQUIRE_THROWS_AS(ev::mode_occupancy(p, {}, 1.0), flowprior::value_error);
  REQUIRE_THROWS_AS(ev::mode_occupancy(Mat(3, 2), modes, 1.0), flowprior::shape_error);
}

TEST_CASE("stats: Monte Carlo mixture entropy of a Gaussian", "[eval]") {
  const double s = 0.7;
  const auto g = flowprior::analytic::GaussianMixture::isotropic(3, s);
  Rng rng(0x5eed);
  const auto h = ev::mixture_entropy_mc(g, 50000, rng);
  const double exact = 1.5 * std::log(2 * M_PI * M_E * s * s);
  CAPTURE(h.value, h.std_error, exact);
  REQUIRE(h.std_error == Approx(std::sqrt(1.5 / 50000)).epsilon(0.05));
  REQUIRE(std::abs(h.value - exact) < 3 * h.std_error);
  // Deterministic for a seed.
  Rng r1(9), r2(9);
  REQUIRE(ev::mixture_entropy_mc(g, 100, r1).value == ev::mixture_entropy_mc(g, 100, r2).value);
  REQUIRE_THROWS_AS(ev::mixture_entropy_mc(g, 1, r1), flowprior::value_error);
}
