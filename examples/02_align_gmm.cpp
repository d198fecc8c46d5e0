// 02: stage 2 of the method on its own. Free latents start from N(0, I) and are moved by Adam on
// the ODE-free alignment loss alone, against the exact velocity field of the paper's 5-Gaussian
// ring (normalised units). Their mean NLL under the ring falls as the loss falls; at the end the
// latents sit on the modes (the loss is mode-seeking: see docs/math/alignment.md).
#include <CLI/CLI.hpp>
#include <cmath>
#include <cstdio>
#include <flowprior/flowprior.hpp>
#include <limits>
#include <string>

#include "example_cli.hpp"

int main(int argc, char** argv) {
  using namespace flowprior;
  CLI::App app{"Align free latents to a Gaussian-mixture prior with the alignment loss"};
  Index n = 1000, steps = 500, K = 4;
  double lr = 1e-2, divergence_factor = 100;
  std::uint64_t seed = 0;
  std::string conv_name = "code";
  app.add_option("--latents", n, "number of free latents (> 0)");
  app.add_option("--steps", steps, "Adam steps (>= 0)");
  app.add_option("--draws", K, "(t, eps) draws per latent and step (> 0)");
  app.add_option("--lr", lr, "Adam learning rate, in (0, 1e3]");
  app.add_option("--seed", seed, "random seed (a non-negative integer)")
      ->check(example::kNonNegativeInteger);
  app.add_option("--convention", conv_name, "time convention: paper or code")
      ->check(CLI::IsMember({"paper", "code"}));
  app.add_option("--divergence-factor", divergence_factor,
                 "stop when the running mean of the loss exceeds this multiple of the first "
                 "step's loss (> 1; inf: only on a non-finite loss)");
  CLI11_PARSE(app, argc, argv);
  // Every option is checked before any work; messages name the option.
  const char* w = "02_align_gmm";
  auto check = [&](bool ok, const std::string& what) {
    if (!ok) {
      std::fprintf(stderr, "error: [flowprior.config] %s: %s\n", w, what.c_str());
      return false;
    }
    return true;
  };
  if (!check(n > 0, "--latents must be a positive integer, got " + std::to_string(n)) ||
      !check(steps >= 0, "--steps must be >= 0, got " + std::to_string(steps)) ||
      !check(K > 0, "--draws must be a positive integer, got " + std::to_string(K)) ||
      !check(std::isfinite(lr) && lr > 0 && lr <= flowprior::optim::AdamConfig::max_lr,
             "--lr must be finite and lie in (0, 1e3], got " + flowprior::short_number(lr)) ||
      !check(divergence_factor > 1,
             "--divergence-factor must be > 1 (inf: only non-finite losses stop), got " +
                 flowprior::short_number(divergence_factor)) ||
      // latents (y, NLL, gradient, Adam's moments) and latents x draws (t, eps) per step
      !check(double(n) * 48.0 + double(n) * double(K) * 24.0 <=
                 double(flowprior::physical_memory_bytes()),
             "--latents x --draws = " + std::to_string(n) + " x " + std::to_string(K) +
                 " need more than this machine's memory"))
    return 1;
  try {
    // The paper's ring: 5 Gaussians (std 0.3) on a circle of radius 3, divided by the overall
    // sample std sqrt(0.09 + 4.5): means at radius 1.4003, std 0.1400.
    const double s = std::sqrt(0.09 + 4.5);
    Eigen::MatrixXd means(2, 5);
    for (int k = 0; k < 5; ++k) {
      means(0, k) = 3 * std::cos(2 * M_PI * k / 5) / s;
      means(1, k) = 3 * std::sin(2 * M_PI * k / 5) / s;
    }
    analytic::GaussianMixture ring(means, std::vector<double>(5, 0.3 / s),
                                   std::vector<double>(5, 1.0));
    analytic::GaussianMixtureField<double> exact(ring);
    // The exact field is written in the paper convention; .as() gives the requested one.
    const Convention conv = conv_name == "paper" ? Convention::Paper : Convention::Code;
    const auto prior =
        Prior<analytic::GaussianMixtureField<double>>(exact, Convention::Paper).as(conv);

    Rng rng(seed);
    Eigen::MatrixXd y(2, n);
    for (Index b = 0; b < n; ++b) y.col(b) << normal01(rng), normal01(rng);
    // Adam (lr 1e-2) on the paper's L_align (sum over channels), K draws per latent and step.
    train::AlignConfig cfg;
    cfg.K = K;
    cfg.adam.lr = lr;
    train::LatentAligner<analytic::GaussianMixtureField<double>> aligner(prior, conv, n, cfg);
    Eigen::VectorXd nll(n);
    auto mean_nll = [&] {
      ring.log_density<double>(y, nll);
      return -nll.mean();
    };
    // A non-finite loss stops the run (the aligner refuses the step), and so does a running
    // loss above divergence_factor x the first one (train::DivergenceGuard).
    train::DivergenceGuard guard("alignment", divergence_factor, 0.95);
    std::printf("%6s %12s %10s\n", "step", "align loss", "mean NLL");
    for (Index step = 0; step <= steps; ++step) {
      const double before = mean_nll();
      const double l = step < steps ? aligner.step(MatrixView<double>(y), rng) : 0.0;
      if (step < steps) guard.observe(step + 1, l);
      if (step % std::max<Index>(1, steps / 10) == 0 && step < steps)
        std::printf("%6td %12.4f %10.4f\n", step, l, before);
      if (step == steps) std::printf("%6td %12s %10.4f\n", step, "", before);
    }
    // Which mode each latent ended nearest to: every mode should receive latents.
    std::vector<int> count(5, 0);
    for (Index b = 0; b < n; ++b) {
      Eigen::Index k;
      (means.colwise() - y.col(b)).colwise().squaredNorm().minCoeff(&k);
      ++count[std::size_t(k)];
    }
    std::printf("latents nearest each mode:");
    for (int c : count) std::printf(" %d", c);
    std::printf("\nmixture entropy (the NLL of its own samples) is about 0.5155 nats\n");
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
