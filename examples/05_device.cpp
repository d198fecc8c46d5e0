// 05: the method's two stages on a backend chosen at run time (docs/cuda.md). A flow prior is
// trained on the paper's 5-Gaussian ring, target samples are scored by its ODE likelihood, and
// free latents are aligned to it by the ODE-free loss -- all on
//   --device cpu            CpuBackend (Eigen, the reference),
//   --device host-kernels   the CUDA backend's kernel bodies run serially on the host,
//   --device cuda           CudaBackend (builds with flowprior::cuda, a machine with a GPU).
// The three run the same code (examples/device_run/run.hpp), not three code paths. Writes
// <out>/metrics.json and <out>/device.png (targets, latents before and after, loss curves).
// Built with flowprior::mpi it also runs data-parallel, unchanged: `mpirun -np N 05_device ...`
// (--batch and --latents are the totals over the ranks; rank 0 prints and writes).
#include <CLI/CLI.hpp>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <flowprior/backend/kernel_backend.hpp>
#include <flowprior/flowprior.hpp>
#include <flowprior/plot/figure.hpp>
#include <flowprior/toy2d/progress.hpp>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#if defined(FLOWPRIOR_EXAMPLE_MPI)
#include <flowprior/mpi/communicator.hpp>
#endif

#include "device_run/run.hpp"
#include "example_cli.hpp"

namespace {

// The paper's ring, in normalised units (examples/02_align_gmm.cpp).
flowprior::analytic::GaussianMixture ring_mixture(Eigen::MatrixXd& means) {
  const double s = std::sqrt(0.09 + 4.5);
  means.resize(2, 5);
  for (int k = 0; k < 5; ++k) {
    means(0, k) = 3 * std::cos(2 * M_PI * k / 5) / s;
    means(1, k) = 3 * std::sin(2 * M_PI * k / 5) / s;
  }
  return flowprior::analytic::GaussianMixture(means, std::vector<double>(5, 0.3 / s),
                                              std::vector<double>(5, 1.0));
}

// Mean negative log-density under the ring of (2, n) float points.
double mean_nll(const flowprior::analytic::GaussianMixture& ring, const std::vector<float>& pts) {
  const Eigen::Index n = Eigen::Index(pts.size() / 2);
  const Eigen::MatrixXd y = Eigen::Map<const Eigen::MatrixXf>(pts.data(), 2, n).cast<double>();
  Eigen::VectorXd logp(n);
  ring.log_density<double>(y, logp);
  return -logp.mean();
}

std::vector<int> nearest_mode_counts(const Eigen::MatrixXd& means, const std::vector<float>& pts) {
  std::vector<int> count(std::size_t(means.cols()), 0);
  for (std::size_t b = 0; b + 1 < pts.size(); b += 2) {
    Eigen::Index k;
    const Eigen::Vector2d p(pts[b], pts[b + 1]);
    (means.colwise() - p).colwise().squaredNorm().minCoeff(&k);
    ++count[std::size_t(k)];
  }
  return count;
}

void plot(const std::string& path, const std::vector<float>& targets,
          const example::DeviceRunResult& r) {
  using namespace flowprior::plot;
  auto xy = [](const std::vector<float>& v, std::size_t max_points) {
    std::vector<double> x, y;
    for (std::size_t b = 0; b + 1 < v.size() && x.size() < max_points; b += 2) {
      x.push_back(v[b]);
      y.push_back(v[b + 1]);
    }
    return std::make_pair(x, y);
  };
  Figure fig(4, 1, 360, 340, "05_device on " + r.backend);
  const auto t = xy(targets, 2000), s = xy(r.latents_start, 2000), e = xy(r.latents_end, 2000);
  fig.panel(0, 0)
      .set_title("targets")
      .set_limits(-2.5, 2.5, -2.5, 2.5)
      .set_equal_aspect()
      .scatter(t.first.data(), t.second.data(), int(t.first.size()), colors::gray, 1.5);
  fig.panel(1, 0)
      .set_title("latents: start")
      .set_limits(-2.5, 2.5, -2.5, 2.5)
      .set_equal_aspect()
      .scatter(s.first.data(), s.second.data(), int(s.first.size()), colors::blue, 1.5);
  fig.panel(2, 0)
      .set_title("latents: aligned")
      .set_limits(-2.5, 2.5, -2.5, 2.5)
      .set_equal_aspect()
      .scatter(e.first.data(), e.second.data(), int(e.first.size()), colors::red, 1.5);
  std::vector<double> steps(r.prior_loss.size());
  for (std::size_t i = 0; i < steps.size(); ++i) steps[i] = double(i + 1);
  fig.panel(3, 0)
      .set_title("prior loss")
      .set_xlabel("step")
      .set_log_y()
      .line(steps.data(), r.prior_loss.data(), int(steps.size()), colors::blue, 1.5);
  fig.save(path);
}

}  // namespace

int main(int argc, char** argv) {
  using flowprior::Index;
#if defined(FLOWPRIOR_EXAMPLE_MPI)
  // One process without mpirun (MPI's singleton start), or every rank of `mpirun -np N`.
  std::unique_ptr<flowprior::mpi::Session> session;
  std::unique_ptr<flowprior::mpi::MpiCommunicator> ranks;
  try {
    session = std::make_unique<flowprior::mpi::Session>(&argc, &argv);
    ranks = std::make_unique<flowprior::mpi::MpiCommunicator>();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  const bool lead = ranks->rank() == 0, many = ranks->size() > 1;
#else
  const bool lead = true, many = false;
#endif
  CLI::App app{
      "Train a 2-D flow prior, score it, align latents to it: on cpu, host-kernels or cuda"};
  example::DeviceRunConfig cfg;
  std::string device = "cpu", out = "out/05_device";
  Index samples = 20000;
  bool quiet = false;
  app.add_option("--device", device, "backend: cpu, host-kernels or cuda")
      ->check(CLI::IsMember({"cpu", "host-kernels", "cuda"}));
  app.add_option("--out", out, "output folder (metrics.json, device.png)");
  app.add_option("--samples", samples, "target samples drawn from the ring (> 0)");
  app.add_option("--width", cfg.width, "the prior's width (> 0)");
  app.add_option("--depth", cfg.depth, "the prior's residual blocks (> 0)");
  app.add_option("--prior-steps", cfg.prior_steps, "flow-matching steps (>= 0)");
  app.add_option("--batch", cfg.batch, "target rows per step (> 0)");
  app.add_option("--nll-points", cfg.nll_points, "targets scored by the ODE likelihood (>= 0)");
  app.add_option("--latents", cfg.latents, "free latents to align (> 0)");
  app.add_option("--align-steps", cfg.align_steps, "alignment steps (>= 0)");
  app.add_option("--seed", cfg.seed, "random seed")->check(example::kNonNegativeInteger);
  app.add_flag("--quiet", quiet, "no progress bars");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return lead ? app.exit(e) : (e.get_exit_code() == 0 ? 0 : 1);
  }
  const char* w = "05_device";
  auto bad = [&](bool fail, const std::string& what) {
    if (fail && lead) std::fprintf(stderr, "error: [flowprior.config] %s: %s\n", w, what.c_str());
    return fail;
  };
  if (bad(samples <= 0, "--samples must be positive") ||
      bad(cfg.width <= 0, "--width must be positive") ||
      bad(cfg.depth <= 0, "--depth must be positive") ||
      bad(cfg.prior_steps < 0, "--prior-steps must be >= 0") ||
      bad(cfg.batch <= 0, "--batch must be positive") ||
      bad(cfg.nll_points < 0, "--nll-points must be >= 0") ||
      bad(cfg.latents <= 0, "--latents must be positive") ||
      bad(cfg.align_steps < 0, "--align-steps must be >= 0"))
    return 1;
#if !defined(FLOWPRIOR_EXAMPLE_CUDA)
  if (device == "cuda") {
    if (lead)
      std::fprintf(
          stderr,
          "error: [flowprior.config] %s: --device cuda needs a build with the CUDA backend "
          "(configure with -DFLOWPRIOR_CUDA=ON; docs/cuda.md)\n",
          w);
    return 1;
  }
#endif
  try {
#if defined(FLOWPRIOR_EXAMPLE_MPI)
    cfg.comm = ranks.get();
#endif
    std::error_code ec;
    if (lead) std::filesystem::create_directories(out, ec);
    if (ec)
      throw flowprior::io_error("[flowprior.io] " + out + ": cannot create the output folder (" +
                                ec.message() + ")");
    Eigen::MatrixXd means;
    const auto ring = ring_mixture(means);
    flowprior::Rng data_rng(cfg.seed + 1);
    std::vector<float> targets(std::size_t(2 * samples));
    {
      Eigen::MatrixXd x(2, samples);
      ring.sample(flowprior::MatrixView<double>(x), data_rng);
      for (Index i = 0; i < x.size(); ++i) targets[std::size_t(i)] = float(x.data()[i]);
    }
    flowprior::util::Progress prior_bar("prior  ", cfg.prior_steps, !quiet && lead);
    flowprior::util::Progress align_bar("align  ", cfg.align_steps, !quiet && lead);
    const example::DeviceProgress progress = [&](const char* stage, Index s, Index, double l) {
      char st[48];
      std::snprintf(st, sizeof st, "loss %.4f", l);
      (stage[0] == 'p' ? prior_bar : align_bar).update(s, st);
    };
    example::DeviceRunResult r;
    if (device == "cpu")
      r = example::run_on<flowprior::CpuBackend>(cfg, targets, progress);
    else if (device == "host-kernels")
      r = example::run_on<flowprior::HostKernelBackend>(cfg, targets, progress);
#if defined(FLOWPRIOR_EXAMPLE_CUDA)
    else
      r = example::run_on_cuda(cfg, targets, progress);
#endif
    prior_bar.finish();
    align_bar.finish();

    // Evaluation on the host, against the exact ring.
    const std::vector<float> scored(targets.begin(),
                                    targets.begin() + std::ptrdiff_t(2 * r.prior_logp.size()));
    double prior_nll = 0;
    for (double lp : r.prior_logp) prior_nll -= lp;
    if (!r.prior_logp.empty()) prior_nll /= double(r.prior_logp.size());
    const double exact_nll = scored.empty() ? 0.0 : mean_nll(ring, scored);
    const double nll_start = mean_nll(ring, r.latents_start),
                 nll_end = mean_nll(ring, r.latents_end);
    const std::vector<int> modes = nearest_mode_counts(means, r.latents_end);

    nlohmann::ordered_json doc;
    doc["example"] = "05_device";
    doc["backend"] = r.backend;
    doc["config"] = {{"samples", samples},     {"width", cfg.width},
                     {"depth", cfg.depth},     {"prior_steps", cfg.prior_steps},
                     {"batch", cfg.batch},     {"nll_points", cfg.nll_points},
                     {"latents", cfg.latents}, {"align_steps", cfg.align_steps},
                     {"seed", cfg.seed}};
    doc["prior"] = {{"final_loss", r.prior_loss.empty() ? 0.0 : r.prior_loss.back()},
                    {"ode_nll_mean", prior_nll},
                    {"exact_nll_mean_same_points", exact_nll},
                    {"seconds", r.train_seconds},
                    {"nll_seconds", r.nll_seconds}};
    doc["alignment"] = {{"final_loss", r.align_loss.empty() ? 0.0 : r.align_loss.back()},
                        {"ring_nll_start", nll_start},
                        {"ring_nll_end", nll_end},
                        {"nearest_mode_counts", modes},
                        {"seconds", r.align_seconds}};
    doc["ranks"] = cfg.comm != nullptr ? cfg.comm->size() : 1;
    if (!lead) return 0;  // rank 0 writes and prints; the others hold the same results
    const std::string text =
        doc.dump(2, ' ', false, nlohmann::ordered_json::error_handler_t::replace) + "\n";
    flowprior::io::atomic_write(out + "/metrics.json",
                                [&](flowprior::io::Writer& wr) { wr.write(text); });
    plot(out + "/device.png", targets, r);

    std::printf("backend %s, %d rank(s)\n", r.backend.c_str(), doc["ranks"].get<int>());
    std::printf("prior:     %td steps in %.1f s, final loss %.4f\n", cfg.prior_steps,
                r.train_seconds, r.prior_loss.empty() ? 0.0 : r.prior_loss.back());
    std::printf("ODE NLL of %zu targets under the prior: %.4f nats (exact ring: %.4f) in %.1f s\n",
                r.prior_logp.size(), prior_nll, exact_nll, r.nll_seconds);
    std::printf("alignment: ring NLL of the latents %.4f -> %.4f in %.1f s; per mode:", nll_start,
                nll_end, r.align_seconds);
    for (int c : modes) std::printf(" %d", c);
    std::printf("\nwrote %s/metrics.json and %s/device.png\n", out.c_str(), out.c_str());
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
#if defined(FLOWPRIOR_EXAMPLE_MPI)
    // The other ranks may be waiting in a collective: end the job now (docs/distributed.md).
    if (many) flowprior::mpi::MpiCommunicator::abort_all(1);
#endif
    (void)many;
    return 1;
  }
}
