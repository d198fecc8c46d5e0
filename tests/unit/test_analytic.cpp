// Gaussian mixtures and their exact velocity fields (the oracles of the loss and ODE tests), and
// the time-reversed Prior view.
#include <flowprior/flowprior.hpp>

#include "catch.hpp"
#include "field_checks.hpp"

using flowprior::Convention;
using flowprior::Index;
using flowprior::Prior;
using flowprior::Rng;
using fpt::Mat;
using fpt::Vec;
namespace analytic = flowprior::analytic;
using GmmField = analytic::GaussianMixtureField<double>;

namespace {
analytic::GaussianMixture mixture(Index d) {
  Rng rng(7);
  Mat means = fpt::random_mat(d, 3, rng, -2, 2);
  return analytic::GaussianMixture(means, {0.3, 0.6, 0.2}, {2.0, 1.0, 1.0});
}
}  // namespace

TEST_CASE("mixture: log density, normalisation and sampling", "[analytic]") {
  auto g = mixture(2);
  REQUIRE(g.weight(0) == Approx(0.5));
  // One Gaussian: log N(x; mu, s^2 I) by hand.
  auto iso = analytic::GaussianMixture::isotropic(3, 0.5, {1.0, 0.0, -1.0});
  const double x[3] = {1.5, 0.5, -1.0};
  REQUIRE(iso.log_density(x) == Approx(-1.5 * std::log(2 * M_PI * 0.25) - 0.5 * 0.5 / 0.25));
  // The density integrates to one (grid quadrature in 2-D).
  double integral = 0;
  const double h = 0.02;
  for (double a = -5; a < 5; a += h)
    for (double b = -5; b < 5; b += h) {
      const double p[2] = {a + h / 2, b + h / 2};
      integral += std::exp(g.log_density(p)) * h * h;
    }
  REQUIRE(integral == Approx(1.0).epsilon(1e-4));
  // Samples reproduce the mean.
  Rng rng(8);
  Mat s(2, 200000);
  g.sample<double>(s, rng);
  Vec mean = Vec::Zero(2);
  for (Index k = 0; k < 3; ++k) mean += g.weight(k) * Eigen::Map<const Vec>(g.mean(k), 2);
  REQUIRE((s.rowwise().mean() - mean).norm() < 0.01);
  const Mat zero = Mat::Zero(2, 2);
  REQUIRE_THROWS_AS(analytic::GaussianMixture(zero, {0.1, -0.1}, {1, 1}), flowprior::config_error);
  REQUIRE_THROWS_AS(analytic::GaussianMixture(zero, {0.1}, {1, 1}), flowprior::shape_error);
}

TEST_CASE("mixture field: boundary values and Jacobian products", "[analytic][grad]") {
  auto g = mixture(3);
  GmmField field(g);
  Rng rng(9);
  Mat z = fpt::random_mat(3, 5, rng), v(3, 5);
  GmmField::Workspace ws;
  // t = 0: x_0 = eps, so v = E[x] - z.
  const Vec t0 = Vec::Zero(5), t1 = Vec::Ones(5);
  field.forward(z, t0, v, ws);
  Vec mean = Vec::Zero(3);
  for (Index k = 0; k < 3; ++k) mean += g.weight(k) * Eigen::Map<const Vec>(g.mean(k), 3);
  REQUIRE((v - (mean.replicate(1, 5) - z)).norm() < 1e-12);
  // t = 1 with one component: x_1 = x, v = E[x - eps | x = z] = z.
  GmmField one(analytic::GaussianMixture::isotropic(3, 0.7, {0.1, 0.2, 0.3}));
  GmmField::Workspace ws1;
  one.forward(z, t1, v, ws1);
  REQUIRE((v - z).norm() < 1e-12);
  // JVP vs VJP vs finite differences; divergence vs finite-difference trace.
  auto in = fpt::make_inputs(3, 6, 0, rng);
  fpt::check_jvp(field, in, rng, 2);
  fpt::check_divergence(field, in);
}

TEST_CASE("mixture field: it is the conditional expectation E[x - eps | x_t]", "[analytic]") {
  // v* = E[u | x_t] iff the residual u - v*(x_t) is orthogonal to every function of (x_t, t).
  // Monte Carlo over the path of the paper convention, with two test functions.
  auto g = mixture(2);
  GmmField field(g);
  Rng rng(10);
  const Index N = 200000;
  Mat x(2, N), eps(2, N), xt(2, N), v(2, N);
  Vec t(N);
  g.sample<double>(x, rng);
  for (Index b = 0; b < N; ++b) {
    t[b] = flowprior::uniform01(rng);
    for (Index i = 0; i < 2; ++i) eps(i, b) = flowprior::normal01(rng);
  }
  for (Index b = 0; b < N; ++b) xt.col(b) = (1 - t[b]) * eps.col(b) + t[b] * x.col(b);
  GmmField::Workspace ws;
  field.forward(xt, t, v, ws);
  Mat r = (x - eps) - v;
  for (int test = 0; test < 2; ++test) {
    Vec h(N);
    for (Index b = 0; b < N; ++b)
      h[b] = test == 0 ? r.col(b).dot(v.col(b)) : r.col(b).dot(xt.col(b)) * t[b];
    const double m = h.mean();
    const double se = std::sqrt((h.array() - m).square().sum() / double(N - 1) / double(N));
    INFO("test function " << test << ": mean " << m << " +- " << se);
    REQUIRE(std::abs(m) < 4 * se);
  }
  // A wrong field (scaled) is detected by the same statistic.
  Vec h(N);
  for (Index b = 0; b < N; ++b) h[b] = ((x - eps).col(b) - 1.1 * v.col(b)).dot(v.col(b));
  const double se = std::sqrt((h.array() - h.mean()).square().sum() / double(N - 1) / double(N));
  REQUIRE(std::abs(h.mean()) > 10 * se);
}

TEST_CASE("prior: the reversed view is v'(x, t) = -v(x, 1 - t) with consistent derivatives",
          "[analytic][grad]") {
  GmmField field(mixture(2));
  Prior<GmmField> paper(field, Convention::Paper);
  auto code = paper.as(Convention::Code);
  REQUIRE(code.reversed());
  REQUIRE(code.convention() == Convention::Code);
  REQUIRE(code.trained_convention() == Convention::Paper);
  REQUIRE_FALSE(code.as(Convention::Paper).reversed());
  Rng rng(11);
  auto in = fpt::make_inputs(2, 5, 0, rng);
  Mat v1(2, 5), v2(2, 5);
  Prior<GmmField>::Workspace ws;
  code.forward(in.x, in.t, v1, ws);
  Vec t_rev = Vec::Ones(5) - in.t;
  paper.forward(in.x, t_rev, v2, ws);
  REQUIRE((v1 + v2).norm() == 0.0);
  fpt::check_jvp(code, in, rng, 2);
  fpt::check_divergence(code, in);
}
