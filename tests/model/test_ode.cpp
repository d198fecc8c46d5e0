// ODE integrators, sampling and exact likelihoods, checked against closed forms.
#include <flowprior/flowprior.hpp>
#include <flowprior/ode/flow_ode.hpp>

#include "catch.hpp"
#include "field_checks.hpp"
#include "fixtures.hpp"

using flowprior::ConstMatrixView;
using flowprior::Convention;
using flowprior::Index;
using flowprior::MatrixView;
using flowprior::Prior;
using flowprior::Rng;
using fpt::Mat;
using fpt::Vec;
namespace analytic = flowprior::analytic;
namespace ode = flowprior::ode;
using GmmField = analytic::GaussianMixtureField<double>;

namespace {

// dz/dt = cos(t) z + 0.1 z^2: smooth and non-linear, for convergence orders.
void test_rhs(double t, ConstMatrixView<double> z, MatrixView<double> dz) {
  for (Index j = 0; j < z.cols; ++j)
    for (Index i = 0; i < z.rows; ++i) dz(i, j) = std::cos(t) * z(i, j) + 0.1 * z(i, j) * z(i, j);
}

}  // namespace

TEST_CASE("ode: an empty batch integrates to nothing on every solver, without a NaN step",
          "[ode][robustness]") {
  std::vector<double> work;
  auto rhs = [&](double t, ConstMatrixView<double> z, MatrixView<double> dz) {
    REQUIRE(std::isfinite(t));
    test_rhs(t, z, dz);
  };
  for (const ode::Method m :
       {ode::Method::Euler, ode::Method::Heun, ode::Method::RK4, ode::Method::Dopri5}) {
    CAPTURE(ode::to_string(m));
    ode::SolverOptions o;
    o.method = m;
    o.steps = 4;
    Mat z(3, 0);
    const auto st = ode::integrate<double>(rhs, 0.0, 1.0, z, o, work);
    REQUIRE(z.cols() == 0);
    if (m == ode::Method::Dopri5) REQUIRE(st.nfe == 0);
    // And with observation times: every observation is still made, at its time.
    std::vector<double> seen;
    ode::integrate_observed<double>(rhs, 0.0, {0.25, 0.5, 1.0}, z, o, work,
                                    [&](auto, double t, auto) { seen.push_back(t); });
    REQUIRE(seen == std::vector<double>{0.25, 0.5, 1.0});
  }
}

TEST_CASE("ode: fixed-step solvers converge at their order; dopri5 meets its tolerance", "[ode]") {
  std::vector<double> work;
  Mat z0(1, 2);
  z0 << 0.5, -0.3;
  Mat ref = z0;
  ode::SolverOptions tight;
  tight.atol = tight.rtol = 1e-13;
  ode::integrate<double>(test_rhs, 0.0, 2.0, ref, tight, work);
  struct Case {
    ode::Method m;
    double order;
  };
  for (const Case c :
       {Case{ode::Method::Euler, 1}, Case{ode::Method::Heun, 2}, Case{ode::Method::RK4, 4}}) {
    CAPTURE(ode::to_string(c.m));
    double prev = 0;
    for (Index n : {32, 64, 128}) {
      Mat z = z0;
      ode::SolverOptions o;
      o.method = c.m;
      o.steps = n;
      const auto st = ode::integrate<double>(test_rhs, 0.0, 2.0, z, o, work);
      const double err = (z - ref).norm();
      if (prev > 0) {
        const double ratio = prev / err;
        CAPTURE(n, err, ratio);
        REQUIRE(ratio == Approx(std::pow(2.0, c.order)).epsilon(0.1));
      }
      prev = err;
      const Index per_step = c.m == ode::Method::Euler ? 1 : c.m == ode::Method::Heun ? 2 : 4;
      REQUIRE(st.nfe == n * per_step);
      REQUIRE(st.accepted == n);
    }
  }
  // Dopri5: the error shrinks with the tolerance, backwards in time too (a round trip).
  for (double tol : {1e-4, 1e-7, 1e-10}) {
    Mat z = z0;
    ode::SolverOptions o;
    o.atol = o.rtol = tol;
    const auto st = ode::integrate<double>(test_rhs, 0.0, 2.0, z, o, work);
    CAPTURE(tol, st.nfe);
    REQUIRE((z - ref).norm() < 100 * tol);
    ode::integrate<double>(test_rhs, 2.0, 0.0, z, o, work);
    REQUIRE((z - z0).norm() < 200 * tol);
  }
}

TEST_CASE("ode: the likelihood of the exact mixture field equals the closed-form density",
          "[ode]") {
  const Convention conv = GENERATE(Convention::Paper, Convention::Code);
  CAPTURE(flowprior::to_string(conv));
  const auto gmm = fpt::three_modes();
  GmmField field(gmm);
  const auto prior = Prior<GmmField>(field, Convention::Paper).as(conv);
  // Near the modes, between them, and far out in the tails.
  Mat x(2, 8);
  x << -1.0, 0.5, 1.5, -0.25, 1.0, 0.3, 4.0, -3.0,  //
      0.5, -1.0, 1.0, -0.25, 0.0, 0.6, 4.0, 3.0;
  Vec logp(8), exact(8);
  gmm.log_density<double>(x, exact);
  ode::LikelihoodOptions opt;
  opt.solver.atol = opt.solver.rtol = 1e-9;
  ode::OdeWorkspace<GmmField> ws;
  Mat z_noise(2, 8);
  const auto st = ode::log_likelihood(prior, conv, x, logp, opt, ws, nullptr, z_noise);
  INFO("ODE - closed form: " << (logp - exact).transpose() << "; nfe " << st.nfe);
  REQUIRE((logp - exact).cwiseAbs().maxCoeff() < 1e-4);
  // The noise maps back to the data through sampling.
  Mat back = z_noise;
  ode::SolverOptions sopt;
  sopt.atol = sopt.rtol = 1e-9;
  ode::sample(prior, conv, MatrixView<double>(back), sopt, ws);
  REQUIRE((back - x).cwiseAbs().maxCoeff() < 1e-5);
  // Bits per dimension.
  REQUIRE(ode::bits_per_dim(logp[0], 2) == Approx(-logp[0] / (2 * std::log(2.0))));
}

TEST_CASE("ode: Hutchinson estimates of the log-likelihood are unbiased", "[ode]") {
  const auto probe = GENERATE(ode::Probe::Rademacher, ode::Probe::Gaussian);
  CAPTURE(int(probe));
  GmmField field(fpt::three_modes());
  const Prior<GmmField> prior(field, Convention::Paper);
  Mat x(2, 3);
  x << -0.8, 0.4, 2.0,  //
      0.3, -0.9, 0.5;
  ode::LikelihoodOptions exact_opt;
  exact_opt.solver.method = ode::Method::RK4;  // the same discretisation for both estimates
  exact_opt.solver.steps = 40;
  ode::OdeWorkspace<GmmField> ws;
  Vec exact(3);
  ode::log_likelihood(prior, Convention::Paper, x, exact, exact_opt, ws);
  ode::LikelihoodOptions h = exact_opt;
  h.divergence = ode::Divergence::Hutchinson;
  h.probes = 2;
  h.probe = probe;
  Rng rng(44);
  const int reps = 400;
  Mat est(3, reps);
  for (int r = 0; r < reps; ++r) {
    Vec lp(3);
    ode::log_likelihood(prior, Convention::Paper, x, lp, h, ws, &rng);
    est.col(r) = lp;
  }
  for (Index b = 0; b < 3; ++b) {
    const double m = est.row(b).mean();
    const double se = std::sqrt((est.row(b).array() - m).square().sum() / (reps - 1) / reps);
    INFO("point " << b << ": Hutchinson " << m << " +- " << se << ", exact " << exact[b]);
    REQUIRE(se > 0);
    REQUIRE(std::abs(m - exact[b]) < 3 * se);
  }
}

TEST_CASE("ode: samples of the mixture field reproduce its weights and moments", "[ode]") {
  const Convention conv = GENERATE(Convention::Paper, Convention::Code);
  CAPTURE(flowprior::to_string(conv));
  const auto gmm = fpt::three_modes();
  GmmField field(gmm);
  const auto prior = Prior<GmmField>(field, Convention::Paper).as(conv);
  const Index N = 4000;
  Mat z(2, N);
  Rng rng(45);
  ode::draw_noise<double>(z, rng);
  ode::SolverOptions opt;
  opt.atol = opt.rtol = 1e-6;
  ode::OdeWorkspace<GmmField> ws;
  ode::sample(prior, conv, MatrixView<double>(z), opt, ws);
  // Component responsibilities average to the weights (exactly, in expectation).
  Vec resp_mean = Vec::Zero(3);
  for (Index b = 0; b < N; ++b) {
    Vec lw(3);
    for (Index k = 0; k < 3; ++k) {
      const double s = gmm.stddev(k);
      const double r2 = (z.col(b) - Eigen::Map<const Vec>(gmm.mean(k), 2)).squaredNorm();
      lw[k] = std::log(gmm.weight(k)) - 2 * std::log(s) - 0.5 * r2 / (s * s);
    }
    lw = (lw.array() - lw.maxCoeff()).exp();
    resp_mean += lw / lw.sum() / double(N);
  }
  for (Index k = 0; k < 3; ++k) {
    CAPTURE(k, resp_mean[k]);
    REQUIRE(std::abs(resp_mean[k] - gmm.weight(k)) < 4 * std::sqrt(0.25 / N));
  }
  // Mean and covariance.
  Vec mean = Vec::Zero(2);
  Mat second = Mat::Zero(2, 2);
  for (Index k = 0; k < 3; ++k) {
    Eigen::Map<const Vec> mu(gmm.mean(k), 2);
    mean += gmm.weight(k) * mu;
    second +=
        gmm.weight(k) * (mu * mu.transpose() + gmm.stddev(k) * gmm.stddev(k) * Mat::Identity(2, 2));
  }
  const Mat cov = second - mean * mean.transpose();
  const Vec smean = z.rowwise().mean();
  const Mat centered = z.colwise() - smean;
  const Mat scov = centered * centered.transpose() / double(N - 1);
  REQUIRE((smean - mean).norm() < 4 * std::sqrt(cov.trace() / N));
  REQUIRE((scov - cov).norm() < 0.1 * cov.norm());
}

TEST_CASE("ode: trajectories at requested times; memory independent of the step count", "[ode]") {
  GmmField field(fpt::three_modes());
  const Prior<GmmField> prior(field, Convention::Paper);
  Mat z0(2, 5);
  Rng rng(46);
  ode::draw_noise<double>(z0, rng);
  ode::SolverOptions opt;
  opt.method = ode::Method::RK4;
  opt.steps = 40;
  ode::OdeWorkspace<GmmField> ws;
  Mat z = z0;
  std::vector<double> seen;
  Mat mid(2, 5);
  ode::sample_trajectory(prior, Convention::Paper, MatrixView<double>(z), {0.25, 0.5, 1.0}, opt, ws,
                         [&](std::size_t i, double t, ConstMatrixView<double> s) {
                           seen.push_back(t);
                           if (i == 1)
                             for (Index b = 0; b < 5; ++b) mid.col(b) << s(0, b), s(1, b);
                         });
  REQUIRE(seen == std::vector<double>{0.25, 0.5, 1.0});
  Mat direct = z0;
  ode::sample(prior, Convention::Paper, MatrixView<double>(direct), opt, ws);
  REQUIRE((direct - z).norm() < 1e-6);
  // The workspace holds a fixed number of stage buffers whatever the number of steps.
  const auto size40 = ws.work.size();
  opt.steps = 4000;
  Mat z2 = z0;
  ode::sample(prior, Convention::Paper, MatrixView<double>(z2), opt, ws);
  REQUIRE(ws.work.size() == size40);
}

TEST_CASE("ode: bad input and unreachable tolerances give typed errors", "[ode][error]") {
  GmmField field(fpt::three_modes());
  const Prior<GmmField> prior(field, Convention::Paper);
  ode::OdeWorkspace<GmmField> ws;
  Mat x = Mat::Zero(2, 3);
  Vec lp(3);
  ode::LikelihoodOptions opt;
  REQUIRE_THROWS_AS(ode::log_likelihood(prior, Convention::Code, x, lp, opt, ws),
                    flowprior::convention_error);
  Mat x3 = Mat::Zero(3, 3);
  REQUIRE_THROWS_WITH(ode::log_likelihood(prior, Convention::Paper, x3, lp, opt, ws),
                      Catch::Contains("'x'") && Catch::Contains("(3, 3)"));
  Vec lp2(2);
  REQUIRE_THROWS_WITH(ode::log_likelihood(prior, Convention::Paper, x, lp2, opt, ws),
                      Catch::Contains("'logp'"));
  opt.solver.rtol = 0;
  REQUIRE_THROWS_WITH(ode::log_likelihood(prior, Convention::Paper, x, lp, opt, ws),
                      Catch::Contains("rtol"));
  opt = ode::LikelihoodOptions{};
  opt.solver.method = ode::Method::RK4;
  opt.solver.steps = 0;
  REQUIRE_THROWS_AS(ode::log_likelihood(prior, Convention::Paper, x, lp, opt, ws),
                    flowprior::config_error);
  opt = ode::LikelihoodOptions{};
  opt.divergence = ode::Divergence::Hutchinson;
  REQUIRE_THROWS_WITH(ode::log_likelihood(prior, Convention::Paper, x, lp, opt, ws),
                      Catch::Contains("random generator"));
  x(1, 1) = std::numeric_limits<double>::infinity();
  REQUIRE_THROWS_AS(
      ode::log_likelihood(prior, Convention::Paper, x, lp, ode::LikelihoodOptions{}, ws),
      flowprior::numeric_error);
  // A right-hand side that blows up: non-finite state.
  std::vector<double> work;
  Mat z = Mat::Ones(1, 1);
  auto blowup = [](double, ConstMatrixView<double> s, MatrixView<double> ds) {
    ds(0, 0) = s(0, 0) * s(0, 0) * 1e300;
  };
  ode::SolverOptions fixed;
  fixed.method = ode::Method::Euler;
  fixed.steps = 10;
  REQUIRE_THROWS_AS(ode::integrate<double>(blowup, 0.0, 1.0, z, fixed, work),
                    flowprior::numeric_error);
  // An adaptive solve that cannot meet its tolerance stops with the time and step reached.
  ode::SolverOptions few;
  few.atol = few.rtol = 1e-12;
  few.max_steps = 3;
  Mat z1 = Mat::Constant(1, 1, 0.5);
  REQUIRE_THROWS_AS(ode::integrate<double>(test_rhs, 0.0, 2.0, z1, few, work),
                    flowprior::ode_error);
  REQUIRE_THROWS_WITH(ode::integrate<double>(test_rhs, 0.0, 2.0, z1, few, work),
                      Catch::Contains("t = ") && Catch::Contains("h = "));
  auto kink = [](double t, ConstMatrixView<double>, MatrixView<double> ds) {
    ds(0, 0) = t < 0.5 ? 0.0 : 1.0 / std::sqrt(t - 0.5 + 1e-300);  // singular at t = 0.5
  };
  ode::SolverOptions tight;
  tight.atol = tight.rtol = 1e-10;
  tight.min_step = 1e-9;
  Mat z2 = Mat::Zero(1, 1);
  REQUIRE_THROWS_WITH(ode::integrate<double>(kink, 0.0, 1.0, z2, tight, work),
                      Catch::Contains("min_step"));
  REQUIRE_THROWS_AS(ode::sample_trajectory(prior, Convention::Paper, MatrixView<double>(z2),
                                           {0.5, 0.2}, ode::SolverOptions{}, ws,
                                           [](std::size_t, double, ConstMatrixView<double>) {}),
                    flowprior::error);
}
