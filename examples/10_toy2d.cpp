// 10: the paper's 2-D proof of concept, end to end (docs/proof_of_concept.md): train a flow prior
// on a toy target, evaluate its likelihood, compare the alignment-loss landscape with the NLL,
// and align free latents with the alignment loss alone. Writes PNG figures, metrics.json, the
// checkpoint and the prior into --out, and prints a one-screen summary.
//
// Every option is checked, and the output folder created and probed for writing, before any
// work (docs/errors.md "Guarantees"). A diverging training stops with a non-zero exit and keeps
// its last good checkpoint; --resume continues a stopped run from its checkpoint (--stop-at
// stops one on purpose).
//
// Built with flowprior::mpi it also runs data-parallel, unchanged: `mpirun -np N 10_toy2d ...`
// (--batch and --latents are the totals over the ranks and must be multiples of N; every rank
// evaluates, rank 0 alone prints and writes; a checkpoint resumes on any number of ranks;
// docs/distributed.md "Examples").
#include <CLI/CLI.hpp>
#include <cstdio>
#include <filesystem>
#include <flowprior/flowprior.hpp>
#include <flowprior/toy2d/figures.hpp>
#include <memory>
#include <string>
#include <system_error>

#if defined(FLOWPRIOR_EXAMPLE_MPI)
#include <flowprior/mpi/communicator.hpp>
#endif

#include "example_cli.hpp"
#include "example_ranks.hpp"

namespace {
// Thrown by the prior's step hook at --stop-at, on every rank at the same step (no collective
// in between): the run ends like a kill after that step, keeping the last checkpoint.
struct Stopped {
  flowprior::Index step;
};
}  // namespace

int main(int argc, char** argv) {
  using namespace flowprior;
#if defined(FLOWPRIOR_EXAMPLE_MPI)
  std::unique_ptr<mpi::Session> session;
  if (!examples::start_mpi(&argc, &argv, session)) return 1;
  const bool lead = examples::world_rank() == 0;
#else
  const bool lead = true;
#endif
  CLI::App app{"flowprior: the paper's 2-D proof of concept (flow prior + alignment loss)"};
  pipeline::Toy2dConfig cfg;
  std::string target = "ring5", out = "toy2d_out", conv = "code";
  bool paper = false, quiet = false;
  Index stop_at = 0;
  app.add_option("--target", target,
                 "ring5, grid16, moons, rings, spiral, swissroll or checkerboard");
  app.add_option("--out", out, "output folder (created)");
  app.add_option("--seed", cfg.seed, "random seed (a non-negative integer)")
      ->check(example::kNonNegativeInteger);
  app.add_option("--convention", conv, "time convention of the prior: code or paper")
      ->check(CLI::IsMember({"code", "paper"}));
  app.add_flag("--paper", paper,
               "the paper's settings: width 512, depth 4, 100k prior steps, Adam 1e-4, batch 256; "
               "1000 latents, Adam 1e-2, 5000 steps (hours on a CPU)");
  app.add_option("--width", cfg.width, "prior width");
  app.add_option("--depth", cfg.depth, "prior residual blocks");
  app.add_option("--prior-steps", cfg.prior_steps, "flow-matching steps");
  app.add_option("--batch", cfg.batch, "flow-matching batch");
  app.add_option("--prior-lr", cfg.prior_lr, "peak learning rate of the prior");
  app.add_option("--latents", cfg.latents, "free latents to align");
  app.add_option("--align-steps", cfg.align_steps, "Adam steps on the latents");
  app.add_option("--align-lr", cfg.align_lr, "Adam learning rate of the latents");
  app.add_option("--grid", cfg.grid, "landscape grid size per axis");
  app.add_option("--landscape-draws", cfg.landscape_draws, "(t, eps) draws per grid point");
  app.add_option("--eval-points", cfg.eval_points, "held-out points for the ODE NLL");
  app.add_option("--prior-samples", cfg.prior_samples, "samples drawn from the prior");
  app.add_option("--kde-samples", cfg.kde_samples, "target samples for the KDE and distances");
  app.add_flag("--float", cfg.single_precision,
               "train the prior and align the latents in float32 (evaluation stays in double)");
  app.add_option("--prior-time-group", cfg.prior_time_group,
                 "flow-matching draws sharing one t (stratified; 1 = one t per draw)");
  app.add_option("--align-time-group", cfg.align_time_group,
                 "alignment draws sharing one t (stratified; 1 = one t per draw)");
  app.add_option("--prior-draws", cfg.prior_draws, "(t, eps) draws per target sample (K)");
  app.add_option("--prior-warmup", cfg.prior_warmup,
                 "linear warmup steps of the prior (-1: min(200, prior steps / 10))");
  app.add_option("--ema-decay", cfg.ema_decay, "EMA decay of the prior's weights, in [0, 1)");
  app.add_option("--ode-tol", cfg.ode_tol, "Dopri5 atol = rtol, in [1e-14, 1)");
  app.add_option("--kde-bandwidth", cfg.kde_bandwidth, "KDE bandwidth (normalised units)");
  app.add_option("--pad", cfg.pad, "landscape padding of the data range (fraction, each side)");
  app.add_option("--align-draws", cfg.align_draws, "(t, eps) draws per latent and step");
  app.add_option("--track-every", cfg.track_every, "alignment steps between tracked points");
  app.add_option("--divergence-factor", cfg.divergence_factor,
                 "stop when the running mean of a loss exceeds this multiple of its first value "
                 "(> 1; inf: only on a non-finite loss)");
  app.add_option("--checkpoint-every", cfg.checkpoint_every,
                 "save the training checkpoint every N prior steps (0: only at the start and "
                 "the end)");
  app.add_flag("--resume", cfg.resume,
               "continue the prior's training from the checkpoint in --out (same options)");
  app.add_option("--stop-at", stop_at,
                 "stop after this prior step, as a kill would (0: never); the last checkpoint "
                 "is kept, --resume continues (on any number of ranks)");
  app.add_flag("--quiet", quiet, "no progress bars");
#if defined(FLOWPRIOR_EXAMPLE_MPI)
  // Every rank evaluates the prior and the landscape itself (cheap in 2-D), so the ranks meet
  // at every collective within their difference in speed; the deadline only ends a run whose
  // rank hangs (a rank that throws ends the job with abort_all below).
  mpi::MpiOptions mpi_options;
  mpi_options.timeout_s = 600;
  app.add_option("--mpi-timeout", mpi_options.timeout_s,
                 "seconds a rank waits for the others at a collective under mpirun (> 0)");
#endif
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return lead ? app.exit(e) : (e.get_exit_code() == 0 ? 0 : 1);
  }
  // Before any work, on every rank alike (no collective yet): the options, then (rank 0) the
  // output folder. Rank 0 prints the error; every rank exits 1.
  std::unique_ptr<train::Communicator> ranks;
  try {
    if (paper) {  // the paper's preset; options given explicitly still win
      pipeline::Toy2dConfig p = pipeline::Toy2dConfig::paper();
      const pipeline::Toy2dConfig given = cfg;
      auto keep = [&](const char* name, auto member) {
        if (app.count(name) > 0) p.*member = given.*member;
      };
      keep("--seed", &pipeline::Toy2dConfig::seed);
      keep("--width", &pipeline::Toy2dConfig::width);
      keep("--depth", &pipeline::Toy2dConfig::depth);
      keep("--prior-steps", &pipeline::Toy2dConfig::prior_steps);
      keep("--batch", &pipeline::Toy2dConfig::batch);
      keep("--prior-lr", &pipeline::Toy2dConfig::prior_lr);
      keep("--latents", &pipeline::Toy2dConfig::latents);
      keep("--align-steps", &pipeline::Toy2dConfig::align_steps);
      keep("--align-lr", &pipeline::Toy2dConfig::align_lr);
      keep("--grid", &pipeline::Toy2dConfig::grid);
      keep("--landscape-draws", &pipeline::Toy2dConfig::landscape_draws);
      keep("--eval-points", &pipeline::Toy2dConfig::eval_points);
      keep("--prior-samples", &pipeline::Toy2dConfig::prior_samples);
      keep("--kde-samples", &pipeline::Toy2dConfig::kde_samples);
      keep("--prior-time-group", &pipeline::Toy2dConfig::prior_time_group);
      keep("--align-time-group", &pipeline::Toy2dConfig::align_time_group);
      keep("--prior-draws", &pipeline::Toy2dConfig::prior_draws);
      keep("--prior-warmup", &pipeline::Toy2dConfig::prior_warmup);
      keep("--ema-decay", &pipeline::Toy2dConfig::ema_decay);
      keep("--ode-tol", &pipeline::Toy2dConfig::ode_tol);
      keep("--kde-bandwidth", &pipeline::Toy2dConfig::kde_bandwidth);
      keep("--pad", &pipeline::Toy2dConfig::pad);
      keep("--align-draws", &pipeline::Toy2dConfig::align_draws);
      keep("--track-every", &pipeline::Toy2dConfig::track_every);
      keep("--divergence-factor", &pipeline::Toy2dConfig::divergence_factor);
      keep("--checkpoint-every", &pipeline::Toy2dConfig::checkpoint_every);
      keep("--float", &pipeline::Toy2dConfig::single_precision);
      keep("--resume", &pipeline::Toy2dConfig::resume);
      cfg = p;
    }
    cfg.target = data::parse_toy2d(target);
    cfg.convention = conv == "paper" ? Convention::Paper : Convention::Code;
    cfg.progress = !quiet;
#if defined(FLOWPRIOR_EXAMPLE_MPI)
    ranks = std::make_unique<mpi::MpiCommunicator>(MPI_COMM_WORLD, mpi_options);
    cfg.comm = ranks.get();
#endif
    // Before any work: the options (config_error naming the option; --batch and --latents
    // multiples of the ranks), then the output folder (created, then probed for writing by
    // run_toy2d).
    cfg.validate();
    if (stop_at < 0 || stop_at > cfg.prior_steps)
      raise_config("10_toy2d", "--stop-at must lie in [0, --prior-steps] (0: never), got " +
                                   std::to_string(stop_at));
    if (stop_at > 0)
      cfg.on_prior_step = [stop_at](Index done) {
        if (done == stop_at) throw Stopped{done};
      };
    std::error_code ec;
    if (lead) std::filesystem::create_directories(out, ec);
    if (ec) io::fail(out, "cannot create the output folder (" + ec.message() + ")");
  } catch (const std::exception& e) {
    if (lead) std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  const bool many = cfg.ranks() > 1;
  try {
    const auto result = pipeline::run_toy2d(cfg, out);
    if (!lead) return 0;  // rank 0 prints and writes; the others hold the same results
    if (result.resumed_from >= 0)
      std::printf("resumed the prior's training from its checkpoint at step %td\n",
                  result.resumed_from);
    pipeline::write_metrics(out + "/metrics.json", pipeline::toy2d_metrics(cfg, result));
    const auto figures = pipeline::write_toy2d_figures(result, out);
    std::printf("%s", pipeline::toy2d_summary(result).c_str());
    if (many) std::printf("data-parallel on %d ranks (rank 0 wrote the files)\n", result.ranks);
    std::printf("\nwrote %s/metrics.json, the prior (%s) and its checkpoint, and figures:\n",
                out.c_str(), result.prior_path.c_str());
    for (const auto& f : figures) std::printf("  %s\n", f.c_str());
    return 0;
  } catch (const Stopped& s) {  // every rank alike
    if (lead)
      std::printf(
          "stopped after prior step %td (--stop-at): --resume continues from the last "
          "checkpoint\n",
          s.step);
    return 0;
  } catch (const std::exception& e) {
    if (many)
      std::fprintf(stderr, "error (rank %d): %s\n", cfg.comm->rank(), e.what());
    else
      std::fprintf(stderr, "error: %s\n", e.what());
#if defined(FLOWPRIOR_EXAMPLE_MPI)
    // The other ranks may be waiting in a collective: end the job now (docs/distributed.md).
    if (many) mpi::MpiCommunicator::abort_all(1);
#endif
    return 1;
  }
}
