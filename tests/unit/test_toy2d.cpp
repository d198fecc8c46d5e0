// The 2-D targets of the proof of concept (data/toy2d.hpp, docs/toy_targets.md): names,
// normalisation, mixture parameters, exact densities, determinism.
#include <cmath>
#include <flowprior/toy2d/stats.hpp>
#include <flowprior/toy2d/targets.hpp>

#include "catch.hpp"
#include "gradcheck.hpp"

using flowprior::Index;
using flowprior::Rng;
using flowprior::data::parse_toy2d;
using flowprior::data::Toy2D;
using flowprior::data::ToyTarget;
using fpt::Mat;

namespace {

Mat draw(const ToyTarget& t, Index n, std::uint64_t seed) {
  Rng rng(seed);
  Mat x(2, n);
  t.sample<double>(x, rng);
  return x;
}

/// sqrt((Var x + Var y) / 2), each coordinate about its own sample mean.
double pooled_std(const Mat& x) {
  const Eigen::Vector2d m = x.rowwise().mean();
  return std::sqrt((x.colwise() - m).squaredNorm() / double(x.cols() - 1) / 2.0);
}

}  // namespace

TEST_CASE("toy2d: names round trip, bad names list the valid ones", "[data]") {
  for (Toy2D k : flowprior::data::all_toy2d()) {
    CAPTURE(to_string(k));
    REQUIRE(parse_toy2d(to_string(k)) == k);
    REQUIRE(ToyTarget::make(k).kind() == k);
    REQUIRE(ToyTarget::make(k).name() == to_string(k));
  }
  REQUIRE(to_string(Toy2D::SwissRoll) == "swissroll");
  REQUIRE(parse_toy2d("Ring5") == Toy2D::Ring5);  // case-insensitive
  REQUIRE(ToyTarget::make("checkerboard").kind() == Toy2D::Checkerboard);
  REQUIRE_THROWS_AS(parse_toy2d("ring"), flowprior::config_error);
  REQUIRE_THROWS_AS(parse_toy2d(""), flowprior::config_error);
  REQUIRE_THROWS_WITH(parse_toy2d("swiss_roll"),
                      Catch::Contains("swissroll") && Catch::Contains("ring5, grid16, moons"));
}

TEST_CASE("toy2d: every target has overall per-coordinate std 1 after normalisation", "[data]") {
  const Index n = 60000;
  for (Toy2D k : flowprior::data::all_toy2d()) {
    const ToyTarget t = ToyTarget::make(k);
    const Mat x = draw(t, n, 0x5eed);
    CAPTURE(t.name(), t.scale());
    REQUIRE(x.allFinite());
    REQUIRE(std::abs(pooled_std(x) - 1.0) < 0.01);
    // Every target but the spiral arms is centred at the origin by construction.
    if (k != Toy2D::Spiral && k != Toy2D::SwissRoll) REQUIRE(x.rowwise().mean().norm() < 0.02);
  }
  // The analytic constants (docs/toy_targets.md).
  REQUIRE(ToyTarget::make(Toy2D::Ring5).scale() == Approx(std::sqrt(4.59)));
  REQUIRE(ToyTarget::make(Toy2D::Ring5).scale() == Approx(2.1424).margin(1e-4));
  REQUIRE(ToyTarget::make(Toy2D::Grid16).scale() == Approx(std::sqrt(1.26)));
  REQUIRE(ToyTarget::make(Toy2D::Checkerboard).scale() == Approx(std::sqrt(4.0 / 3.0)));
  REQUIRE(ToyTarget::make(Toy2D::Rings).scale() == Approx(std::sqrt(224.0 / 54.0 + 0.01)));
  REQUIRE(ToyTarget::make(Toy2D::Moons).scale() == Approx(std::sqrt((5.27 - 4.0 / M_PI) / 2.0)));
}

TEST_CASE("toy2d: spiral scale matches a closed form of its first moments", "[data]") {
  // s = sqrt(u) has density 2s; x = 4 s cos(6 pi s), y = 4 s sin(6 pi s).
  // E[x] = 16 / k^2, E[y] = -8 / k (k = 6 pi); E[x^2] + E[y^2] = 16 E[s^2] = 8.
  const double k = 6 * M_PI, ex = 16 / (k * k), ey = -8 / k;
  const double var = 0.5 * (8.0 - ex * ex - ey * ey) + 0.01;
  REQUIRE(ToyTarget::make(Toy2D::Spiral).scale() == Approx(std::sqrt(var)).epsilon(1e-10));
}

TEST_CASE("toy2d: Ring5 and Grid16 mixtures in normalised units", "[data]") {
  const ToyTarget ring = ToyTarget::make(Toy2D::Ring5);
  REQUIRE(ring.has_exact_density());
  const auto* g = ring.mixture();
  REQUIRE(g != nullptr);
  REQUIRE(g->components() == 5);
  const auto modes = ring.modes();
  REQUIRE(modes.size() == 5);
  for (Index c = 0; c < 5; ++c) {
    CAPTURE(c);
    REQUIRE(std::hypot(g->mean(c)[0], g->mean(c)[1]) == Approx(3.0 / std::sqrt(4.59)));
    REQUIRE(std::hypot(g->mean(c)[0], g->mean(c)[1]) == Approx(1.4003).margin(1e-4));
    REQUIRE(std::atan2(g->mean(c)[1], g->mean(c)[0]) ==
            Approx(std::remainder(2 * M_PI * double(c) / 5, 2 * M_PI)).margin(1e-12));
    REQUIRE(g->stddev(c) == Approx(0.1400).margin(1e-4));
    REQUIRE(g->weight(c) == Approx(0.2));
    REQUIRE(modes[std::size_t(c)][0] == g->mean(c)[0]);
  }
  const ToyTarget grid = ToyTarget::make(Toy2D::Grid16);
  REQUIRE(grid.modes().size() == 16);
  REQUIRE(grid.mixture()->stddev(3) == Approx(0.1 / std::sqrt(1.26)));
  double mx = -1e9;
  for (const auto& m : grid.modes()) mx = std::max(mx, m[0]);
  REQUIRE(mx == Approx(1.5 / std::sqrt(1.26)));
  // log_density is the mixture's.
  const double x[2] = {0.3, -0.2};
  REQUIRE(ring.log_density(x) == g->log_density(x));
}

TEST_CASE("toy2d: the exact mixture densities integrate to one", "[data]") {
  for (Toy2D k : {Toy2D::Ring5, Toy2D::Grid16}) {
    const ToyTarget t = ToyTarget::make(k);
    CAPTURE(t.name());
    double integral = 0;
    const double h = 0.02;  // midpoint rule, h / std <= 0.23: exact to ~1e-10 for Gaussians
    for (double a = -2.6; a < 2.6; a += h)
      for (double b = -2.6; b < 2.6; b += h) {
        const double p[2] = {a + h / 2, b + h / 2};
        integral += std::exp(t.log_density(p)) * h * h;
      }
    REQUIRE(integral == Approx(1.0).epsilon(1e-4));
  }
}

TEST_CASE("toy2d: Ring5 entropy in normalised units is about 0.5155 nats", "[data]") {
  const ToyTarget ring = ToyTarget::make(Toy2D::Ring5);
  Rng rng(0x5eed);
  const auto h = flowprior::eval::mixture_entropy_mc(*ring.mixture(), 200000, rng);
  // Components 11.8 std apart: H = log 5 + log(2 pi e s^2) up to ~1e-30.
  const double s = 0.3 / std::sqrt(4.59);
  const double closed = std::log(5.0) + 1 + std::log(2 * M_PI * s * s);
  CAPTURE(h.value, h.std_error, closed);
  REQUIRE(closed == Approx(0.5155).margin(5e-5));
  REQUIRE(h.std_error == Approx(1.0 / std::sqrt(200000.0)).epsilon(0.05));  // Var(-log p) = d/2
  REQUIRE(std::abs(h.value - 0.5155) < 3 * h.std_error);
}

TEST_CASE("toy2d: sampling is deterministic for a seed and uses only the caller's rng", "[data]") {
  for (Toy2D k : flowprior::data::all_toy2d()) {
    const ToyTarget t = ToyTarget::make(k);
    CAPTURE(t.name());
    const Mat a = draw(t, 500, 11), b = draw(t, 500, 11), c = draw(t, 500, 12);
    REQUIRE(a == b);
    REQUIRE(a != c);
    // Two calls continue the stream: (first 200, next 300) == one call of 500.
    Rng rng(11);
    Mat p(2, 200), q(2, 300);
    t.sample<double>(p, rng);
    t.sample<double>(q, rng);
    REQUIRE(p == a.leftCols(200));
    REQUIRE(q == a.rightCols(300));
    // float output is the double sample rounded.
    Rng rf(11);
    Eigen::MatrixXf f(2, 500);
    t.sample<float>(f, rf);
    REQUIRE(f == a.cast<float>());
  }
}

TEST_CASE("toy2d: shapes of the raw constructions", "[data]") {
  const Index n = 4000;
  SECTION("checkerboard fills the cells with i + j even, inside [-2, 2]^2") {
    const ToyTarget t = ToyTarget::make(Toy2D::Checkerboard);
    const Mat x = draw(t, n, 3) * t.scale();
    REQUIRE(x.cwiseAbs().maxCoeff() <= 2.0);
    for (Index b = 0; b < n; ++b) {
      const int i = int(std::floor(x(0, b))), j = int(std::floor(x(1, b)));
      REQUIRE(((i + j) % 2 + 2) % 2 == 0);
    }
  }
  SECTION("rings: radii 4/3, 8/3, 4 with about a third of the mass each") {
    const ToyTarget t = ToyTarget::make(Toy2D::Rings);
    const Mat x = draw(t, n, 4) * t.scale();
    Index count[3] = {0, 0, 0};
    for (Index b = 0; b < n; ++b) {
      const double r = x.col(b).norm();
      const int ring = int(std::lround(r * 3 / 4)) - 1;
      REQUIRE(ring >= 0);
      REQUIRE(ring <= 2);
      REQUIRE(std::abs(r - 4.0 * (ring + 1) / 3) < 0.6);
      ++count[ring];
    }
    for (Index c : count) REQUIRE(std::abs(double(c) / double(n) - 1.0 / 3) < 0.03);
  }
  SECTION("spiral and swiss roll stay within radius 4 (+ noise)") {
    for (Toy2D k : {Toy2D::Spiral, Toy2D::SwissRoll}) {
      const ToyTarget t = ToyTarget::make(k);
      const Mat x = draw(t, n, 5) * t.scale();
      REQUIRE(x.colwise().norm().maxCoeff() < 4.6);
    }
    // Swiss roll starts at t0 = 1.5 pi: inner radius 4 * 1.5 / 7.5 = 0.8.
    const auto p = ToyTarget::swiss_point(0.0);
    REQUIRE(std::hypot(p[0], p[1]) == Approx(0.8));
    const auto q = ToyTarget::spiral_point(1.0);
    REQUIRE(q[0] == Approx(4.0));
  }
  SECTION("moons: centred, point-symmetric halves") {
    const ToyTarget t = ToyTarget::make(Toy2D::Moons);
    const Mat x = draw(t, n, 6) * t.scale();
    // Every point lies near one of the two arcs of radius 2 centred at (-1, -1/2), (1, 1/2).
    for (Index b = 0; b < n; ++b) {
      const double du = std::hypot(x(0, b) + 1, x(1, b) + 0.5);
      const double dl = std::hypot(x(0, b) - 1, x(1, b) - 0.5);
      REQUIRE(std::min(std::abs(du - 2), std::abs(dl - 2)) < 0.6);
    }
  }
}

TEST_CASE("toy2d: errors", "[data]") {
  const ToyTarget t = ToyTarget::make(Toy2D::Moons);
  REQUIRE_FALSE(t.has_exact_density());
  REQUIRE(t.mixture() == nullptr);
  REQUIRE(t.modes().empty());
  const double x[2] = {0, 0};
  REQUIRE_THROWS_AS(t.log_density(x), flowprior::value_error);
  Rng rng(1);
  Mat bad(3, 4);
  REQUIRE_THROWS_AS(t.sample<double>(bad, rng), flowprior::shape_error);
}
