// 03: exact log-likelihoods by the probability-flow ODE. For a Gaussian mixture in dim d (2 and
// 32 by default), the ODE log-likelihood of points drawn from it, with the exact velocity field
// and exact divergence, is compared with the closed-form density; the Hutchinson estimate with
// K probes is shown next to it. Prints the agreement, the field evaluations and the time.
#include <CLI/CLI.hpp>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <flowprior/flowprior.hpp>
#include <limits>
#include <string>

namespace {}  // namespace

int main(int argc, char** argv) {
  using namespace flowprior;
  CLI::App app{"ODE log-likelihood of Gaussian-mixture samples against the closed form"};
  Index n = 1000, components = 5, probes = 4;
  std::vector<Index> dims = {2, 32};
  double tol = 1e-6;
  app.add_option("--points", n, "points per dimension (> 0)");
  app.add_option("--dims", dims, "dimensions to run (each > 0)");
  app.add_option("--components", components, "mixture components (> 0)");
  app.add_option("--tol", tol, "Dopri5 atol = rtol, in [1e-14, 1)");
  app.add_option("--probes", probes, "Hutchinson probes (> 0)");
  CLI11_PARSE(app, argc, argv);
  // Every option is checked before any work; messages name the option.
  auto check = [](bool ok, const std::string& what) {
    if (!ok) std::fprintf(stderr, "error: [flowprior.config] 03_likelihood: %s\n", what.c_str());
    return ok;
  };
  if (!check(n > 0, "--points must be a positive integer, got " + std::to_string(n)) ||
      !check(components > 0,
             "--components must be a positive integer, got " + std::to_string(components)) ||
      !check(probes > 0, "--probes must be a positive integer, got " + std::to_string(probes)) ||
      !check(std::isfinite(tol) && tol >= 1e-14 && tol < 1,
             "--tol must be finite and lie in [1e-14, 1), got " + flowprior::short_number(tol)) ||
      !check(!dims.empty(), "--dims needs at least one dimension"))
    return 1;
  for (Index d : dims) {
    if (!check(d > 0,
               "--dims: every dimension must be a positive integer, got " + std::to_string(d)))
      return 1;
    // points x dim for x, the ODE state and its stages, the probes; dim x components means.
    const double bytes =
        double(n) * double(d) * 8.0 * double(8 + probes) + double(d) * double(components) * 8.0;
    if (!check(bytes <= double(flowprior::physical_memory_bytes()),
               "--points x --dims x --probes = " + std::to_string(n) + " x " + std::to_string(d) +
                   " x " + std::to_string(probes) + " need more than this machine's memory"))
      return 1;
  }
  try {
    using Field = analytic::GaussianMixtureField<double>;
    std::printf("%4s %7s %12s %12s %12s %8s %9s %14s\n", "dim", "points", "mean logp", "max |err|",
                "Hutch. err", "nfe", "time [s]", "bits/dim");
    for (Index d : dims) {
      Rng rng{static_cast<std::uint64_t>(d)};
      Eigen::MatrixXd means(d, components);
      for (Index k = 0; k < components; ++k)
        for (Index i = 0; i < d; ++i) means(i, k) = 2.0 * normal01(rng);
      std::vector<double> stds, weights;
      for (Index k = 0; k < components; ++k) {
        stds.push_back(0.2 + 0.6 * uniform01(rng));
        weights.push_back(0.5 + uniform01(rng));
      }
      analytic::GaussianMixture gmm(means, stds, weights);
      Field field(gmm);
      // The closed form is in the paper convention; evaluate in the released code's convention.
      const auto prior = Prior<Field>(field, Convention::Paper).as(Convention::Code);
      Eigen::MatrixXd x(d, n);
      gmm.sample<double>(x, rng);
      Eigen::VectorXd exact(n), logp(n), hutch(n);
      gmm.log_density<double>(x, exact);
      ode::LikelihoodOptions opt;
      opt.solver.atol = opt.solver.rtol = tol;
      ode::OdeWorkspace<Field> ws;
      const auto t0 = std::chrono::steady_clock::now();
      const auto st = ode::log_likelihood(prior, Convention::Code, x, logp, opt, ws);
      const double secs =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      opt.divergence = ode::Divergence::Hutchinson;
      opt.probes = probes;
      ode::log_likelihood(prior, Convention::Code, x, hutch, opt, ws, &rng);
      std::printf("%4td %7td %12.5f %12.2e %12.2e %8td %9.3f %14.4f\n", d, n, logp.mean(),
                  (logp - exact).cwiseAbs().maxCoeff(), std::abs(hutch.mean() - exact.mean()),
                  st.nfe, secs, ode::bits_per_dim(logp.mean(), d));
    }
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
