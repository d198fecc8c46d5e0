/// @file
/// The paper's 2-D proof of concept as a reusable pipeline (docs/proof_of_concept.md):
///
///   (a) train a flow prior (AdaLN field) on a toy target by flow matching, with an EMA, and
///       save a checkpoint and the EMA prior;
///   (b) evaluate it: ODE NLL of held-out target samples against the true NLL (exact for the
///       mixtures, a KDE otherwise), and samples drawn from the prior by the ODE;
///   (c) the landscape: alignment loss (trained and exact field, the same (t, eps) draws) and
///       the target NLL on a grid over the data range padded by 20%, and their correlations;
///   (d) align free latents drawn from N(0, I) with Adam on the alignment loss alone, tracking
///       their mean alignment loss and mean target NLL, then where they ended;
///   (e) the same alignment against the exact analytic field (mixtures), as the ceiling.
///
/// Data-parallel (docs/distributed.md "Examples"): with Toy2dConfig::comm of P ranks, every rank
/// calls run_toy2d with the same options; the prior's trainer takes batch / P rows per step and
/// the aligners move latents / P latents each (their slices of one process's run), every rank
/// evaluates (b, c) itself (cheap in 2-D), and rank 0 alone writes the files. The results are one
/// process's within the tolerance of docs/math/data_parallel.md.
///
/// The example examples/10_toy2d.cpp wires command-line options to run_toy2d and writes the
/// metrics (toy2d_metrics) and figures (toy2d/figures.hpp).
#pragma once

#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <system_error>
#include <vector>

#if defined(__unix__) || defined(__APPLE__)
#include <unistd.h>
#endif

#include <Eigen/Core>
#include <flowprior/analytic/gaussian_mixture.hpp>
#include <flowprior/backend/cpu.hpp>  // the pipeline runs on the CPU backend
#include <flowprior/core/convention.hpp>
#include <flowprior/core/size.hpp>
#include <flowprior/io/file.hpp>
#include <flowprior/io/state_dict.hpp>
#include <flowprior/loss/flow_loss.hpp>
#include <flowprior/nn/adaln_mlp.hpp>
#include <flowprior/ode/flow_ode.hpp>
#include <flowprior/toy2d/progress.hpp>
#include <flowprior/toy2d/stats.hpp>
#include <flowprior/toy2d/targets.hpp>
#include <flowprior/train/align.hpp>
#include <flowprior/train/checkpoint.hpp>
#include <flowprior/train/communicator.hpp>
#include <flowprior/train/trainer.hpp>
#include <flowprior/version.hpp>
#include <nlohmann/json.hpp>

namespace flowprior {
namespace pipeline {

namespace detail {

/// The shortest decimal form that reads back as exactly x (checkpoint metadata, run identity).
inline std::string toy2d_exact(double x) {
  char b[40];
  for (int digits = 15; digits <= 17; ++digits) {
    std::snprintf(b, sizeof b, "%.*g", digits, x);
    if (std::strtod(b, nullptr) == x || std::isnan(x)) break;
  }
  return b;
}

}  // namespace detail

/// Every option of the 2-D pipeline. The defaults finish on the ring in a few minutes on two
/// cores; Toy2dConfig::paper() holds the paper's settings. validate() checks every option
/// before anything is allocated (docs/errors.md "The 2-D pipeline").
struct Toy2dConfig {
  data::Toy2D target = data::Toy2D::Ring5;
  std::uint64_t seed = 0;
  Convention convention = Convention::Code;  ///< the released code's convention
  // (a) the prior
  Index width = 128;
  Index depth = 3;
  Index prior_steps = 4000;
  Index batch = 256;
  Index prior_draws = 1;     ///< K of flow matching (released: 4)
  double prior_lr = 2e-3;    ///< peak learning rate
  bool prior_cosine = true;  ///< cosine decay after a linear warmup (else constant)
  Index prior_warmup = -1;   ///< linear warmup steps; -1: min(200, prior_steps / 10)
  double ema_decay = 0.999;
  /// Train the prior and align the latents in float32 (as the PyTorch reference does); the
  /// evaluation (ODE likelihood, sampling, landscape) always runs in double on the EMA weights.
  bool single_precision = false;
  /// Consecutive flow-matching draws sharing t (time groups, stratified t; 1: one t per draw).
  Index prior_time_group = 1;
  // (b) evaluation
  Index eval_points = 2000;     ///< held-out target samples for the ODE NLL
  Index prior_samples = 2000;   ///< samples drawn from the prior by the ODE
  double ode_tol = 1e-5;        ///< Dopri5 atol = rtol
  Index kde_samples = 20000;    ///< KDE of non-mixture targets and nearest-sample distances
  double kde_bandwidth = 0.05;  ///< in normalised units (docs/toy_targets.md)
  // (c) the landscape
  Index grid = 50;             ///< grid x grid points
  double pad = 0.2;            ///< padding of the data range on each side (fraction of the extent)
  Index landscape_draws = 64;  ///< (t, eps) draws per grid point, stratified in t
  // (d, e) alignment of free latents
  Index latents = 1000;
  Index align_steps = 1000;
  Index align_draws = 4;
  double align_lr = 1e-2;
  Index align_time_group = 1;  ///< consecutive alignment draws sharing t (stratified t)
  Index track_every = 10;
  // Robustness (these do not change the results of a run that completes).
  /// Divergence guard of the prior's training and of the alignments (train::DivergenceGuard):
  /// the run stops with numeric_error when a loss is not finite or the running mean of the loss
  /// exceeds divergence_factor times the first step's loss. > 1; +inf: non-finite losses only.
  double divergence_factor = 100;
  /// Save the training checkpoint every this many prior steps (and always at step 0 and at the
  /// end); 0: only at step 0 and at the end.
  Index checkpoint_every = 500;
  /// Continue the prior's training from out_dir/prior.ckpt.safetensors (written by a run with
  /// the same options, checked) instead of starting afresh; bit-exact with an uninterrupted run
  /// on the same number of ranks, within docs/math/data_parallel.md "Tolerance" on another (the
  /// checkpoint holds the global batch and the global generator: any rank count resumes it).
  bool resume = false;
  bool progress = true;  ///< progress bars on stderr
  /// Called after every prior step with the number of steps done (after any checkpoint save).
  /// For progress reporting and tests (an exception thrown here stops the run like a kill).
  /// On several ranks it is called on every rank; one that throws there leaves the others at
  /// their next collective until the communicator's deadline (or the program's abort).
  std::function<void(Index)> on_prior_step;
  /// The ranks of a data-parallel run (docs/distributed.md; not owned), or null: one process.
  /// Every rank calls run_toy2d with the same options; batch and latents stay the totals over
  /// the ranks and must be multiples of comm->size() (config_error). Progress bars and files
  /// come from rank 0 only.
  train::Communicator* comm = nullptr;

  /// Smallest kde_samples: the landscape's data range and the KDE need a real sample.
  static constexpr Index kMinKdeSamples = 100;
  /// Largest learning rate accepted (prior_lr, align_lr): catches typos such as 1e30; a large
  /// rate that is accepted but diverges is stopped by the divergence guard.
  static constexpr double kMaxLearningRate = optim::AdamConfig::max_lr;

  /// The paper's settings: width 512, depth 4, 100k prior steps, Adam 1e-4 (constant), batch
  /// 256; 1000 latents, Adam 1e-2, 5000 steps; float32 training and alignment, one t per draw.
  static Toy2dConfig paper() {
    Toy2dConfig c;
    c.width = 512;
    c.depth = 4;
    c.prior_steps = 100000;
    c.batch = 256;
    c.prior_lr = 1e-4;
    c.prior_cosine = false;
    c.prior_warmup = 0;
    c.ema_decay = 0.9999;
    c.single_precision = true;  // the reference trains in float32
    c.latents = 1000;
    c.align_lr = 1e-2;
    c.align_steps = 5000;
    c.track_every = 25;
    return c;
  }

  /// Throws config_error naming the option (its field name) unless every option is valid:
  /// counts positive, every real finite and in its range, and every buffer the run allocates
  /// (products of sizes: grid x grid x landscape_draws, latents x align_draws,
  /// batch x prior_draws, width x width x depth, ...) small enough to possibly fit in this
  /// machine's memory. Sizes are estimated in double (lower bounds of what the run holds), so
  /// no product can overflow before it is checked. run_toy2d calls it before anything else.
  void validate() const {
    const char* w = "Toy2dConfig";
    auto pos = [&](Index v, const char* name) {
      if (v <= 0)
        raise_config(w, std::string(name) + " must be positive, got " + std::to_string(v));
    };
    pos(width, "width");
    pos(depth, "depth");
    pos(prior_steps, "prior_steps");
    pos(batch, "batch");
    pos(prior_draws, "prior_draws");
    pos(eval_points, "eval_points");
    pos(prior_samples, "prior_samples");
    pos(kde_samples, "kde_samples");
    pos(landscape_draws, "landscape_draws");
    pos(latents, "latents");
    pos(align_draws, "align_draws");
    pos(track_every, "track_every");
    pos(prior_time_group, "prior_time_group");
    pos(align_time_group, "align_time_group");
    if (align_steps < 0)
      raise_config(w, "align_steps must be >= 0, got " + std::to_string(align_steps));
    if (grid < 2) raise_config(w, "grid must be >= 2, got " + std::to_string(grid));
    if (kde_samples < kMinKdeSamples)
      raise_config(w, "kde_samples must be >= " + std::to_string(kMinKdeSamples) +
                          " (the landscape's data range and the KDE are taken from them), got " +
                          std::to_string(kde_samples));
    if (checkpoint_every < 0)
      raise_config(w, "checkpoint_every must be >= 0 (0: only at the start and the end), got " +
                          std::to_string(checkpoint_every));
    if (prior_warmup < -1 || (prior_cosine && prior_warmup >= prior_steps))
      raise_config(w, "prior_warmup must be -1 (automatic) or lie in [0, prior_steps), got " +
                          std::to_string(prior_warmup));
    // Reals: finite (NaN fails every comparison) and in range.
    auto real = [&](double v, const char* name, bool ok, const char* range) {
      if (!(ok && std::isfinite(v)))
        raise_config(w, std::string(name) + " must be finite and lie in " + range + ", got " +
                            short_number(v));
    };
    real(prior_lr, "prior_lr", prior_lr > 0 && prior_lr <= kMaxLearningRate, "(0, 1e3]");
    real(align_lr, "align_lr", align_lr > 0 && align_lr <= kMaxLearningRate, "(0, 1e3]");
    real(ema_decay, "ema_decay", ema_decay >= 0 && ema_decay < 1, "[0, 1)");
    real(ode_tol, "ode_tol", ode_tol >= 1e-14 && ode_tol < 1, "[1e-14, 1)");
    real(kde_bandwidth, "kde_bandwidth", kde_bandwidth > 0 && kde_bandwidth <= 10, "(0, 10]");
    real(pad, "pad", pad >= 0 && pad <= 10, "[0, 10] (a fraction of the data extent)");
    if (!(divergence_factor > 1))
      raise_config(w, "divergence_factor must be > 1 (+inf: stop on non-finite losses only), got " +
                          short_number(divergence_factor));
    const Index P = ranks();
    if (batch % P != 0 || latents % P != 0)
      raise_config(w, "batch (" + std::to_string(batch) + ") and latents (" +
                          std::to_string(latents) + ") must be multiples of the " +
                          std::to_string(P) + " ranks (each rank takes an equal slice)");
    validate_sizes();
  }

  /// The number of ranks: comm->size(), or 1 without a communicator.
  int ranks() const { return comm != nullptr ? comm->size() : 1; }

 private:
  /// The memory check of validate(): a lower bound of the bytes each stage holds, in double.
  void validate_sizes() const {
    const char* w = "Toy2dConfig";
    const double limit = double(physical_memory_bytes());
    auto fits = [&](double bytes, const std::string& what) {
      if (!(bytes <= limit))
        raise_config(w, what + " need at least " + gib_string(bytes) +
                            ", more than this machine's memory (" + gib_string(limit) + ")");
    };
    auto n = [](Index v) { return std::to_string(v); };
    const double S = single_precision ? 4.0 : 8.0;  // bytes per trained value
    const double W = double(width), D = double(depth);
    // (a) AdaLN parameters: >= W^2 (5 per block + 3); training holds the weights, gradients,
    // Adam's two moments and the EMA, and the evaluation a double copy.
    const double params = W * W * (5 * D + 3);
    fits(params * (5 * S + 8), "width = " + n(width) + ", depth = " + n(depth) + ": about " +
                                   short_number(params) +
                                   " parameters (weights, gradients, Adam moments, EMA)");
    // Every column of a forward pass holds at least one hidden vector per block.
    const double prior_cols = double(batch) * double(prior_draws);
    fits(prior_cols * (3 * 8 + W * (D + 1) * S),
         "batch x prior_draws = " + n(batch) + " x " + n(prior_draws) +
             " flow-matching draws per step (width " + n(width) + ", depth " + n(depth) + ")");
    // (b) held-out points (x, log p) and the prior's samples go through the double prior in one
    // forward pass each; the KDE's reference sample.
    const double eval_col = W * (D + 1) * 8;
    fits(double(eval_points) * (24 + eval_col), "eval_points = " + n(eval_points) +
                                                    " held-out points (width " + n(width) +
                                                    ", depth " + n(depth) + ")");
    fits(double(prior_samples) * (32 + eval_col), "prior_samples = " + n(prior_samples) +
                                                      " samples (width " + n(width) + ", depth " +
                                                      n(depth) + ")");
    fits(double(kde_samples) * 32, "kde_samples = " + n(kde_samples) + " target samples");
    // (c) grid^2 points, their values, and landscape_draws (t, eps) draws per point.
    const double points = double(grid) * double(grid);
    fits(points * (6 * 8 + double(landscape_draws) * 3 * 8),
         "grid x grid x landscape_draws = " + n(grid) + " x " + n(grid) + " x " +
             n(landscape_draws) + " landscape draws");
    // (d, e) latents (start, trained, exact) and latents x align_draws draws per step.
    const double align_cols = double(latents) * double(align_draws);
    fits(double(latents) * 48 + align_cols * (3 * 8 + W * (D + 1) * S),
         "latents x align_draws = " + n(latents) + " x " + n(align_draws) +
             " alignment draws per step (width " + n(width) + ", depth " + n(depth) + ")");
    const double tracked = double(align_steps) / double(track_every) + 2;
    fits(tracked * 5 * 8, "align_steps / track_every = " + n(align_steps) + " / " + n(track_every) +
                              " tracked points of the alignment curves");
  }
};

/// The prior's network configuration (an unconditioned AdaLN field in dim 2).
inline nn::AdaLNMlpConfig toy2d_net_config(const Toy2dConfig& cfg) {
  nn::AdaLNMlpConfig nc;
  nc.dim = 2;
  nc.width = cfg.width;
  nc.depth = cfg.depth;
  return nc;
}

/// The prior's trainer configuration (batch, draws, EMA, time groups, warmup + cosine or
/// constant schedule). load_checkpoint needs a trainer built from it. Its batch is a rank's:
/// cfg.batch / cfg.ranks() (the checkpoint stores the global batch, the trainer's times its
/// ranks, so a run resumes on any number of ranks that divides cfg.batch).
inline train::TrainerConfig toy2d_trainer_config(const Toy2dConfig& cfg) {
  train::TrainerConfig tc;
  tc.batch = cfg.batch / cfg.ranks();
  tc.K = cfg.prior_draws;
  tc.ema_decay = cfg.ema_decay;
  tc.time_group = cfg.prior_time_group;
  if (tc.time_group > 1) tc.sampler = loss::TimeSampler::stratified();  // adaln.md "Time groups"
  const Index warmup =
      cfg.prior_warmup >= 0 ? cfg.prior_warmup : std::min<Index>(200, cfg.prior_steps / 10);
  tc.schedule = cfg.prior_cosine ? optim::LrSchedule::cosine(cfg.prior_lr, warmup, cfg.prior_steps,
                                                             cfg.prior_lr * 0.01)
                                 : optim::LrSchedule::constant(cfg.prior_lr, warmup);
  return tc;
}

/// Every option that changes a run's results, by its field name, in exact decimal form: stored
/// in the checkpoint (as user.<name>) and compared on resume. (progress, checkpoint_every,
/// divergence_factor, resume and on_prior_step do not change the results of a completed run;
/// nor does comm, beyond the rounding of docs/math/data_parallel.md "Tolerance".)
inline std::map<std::string, std::string> toy2d_options(const Toy2dConfig& cfg) {
  auto n = [](Index v) { return std::to_string(v); };
  auto x = [](double v) { return detail::toy2d_exact(v); };
  return {{"target", data::to_string(cfg.target)},
          {"seed", std::to_string(cfg.seed)},
          {"convention", to_string(cfg.convention)},
          {"width", n(cfg.width)},
          {"depth", n(cfg.depth)},
          {"prior_steps", n(cfg.prior_steps)},
          {"batch", n(cfg.batch)},
          {"prior_draws", n(cfg.prior_draws)},
          {"prior_lr", x(cfg.prior_lr)},
          {"prior_schedule", cfg.prior_cosine ? "cosine" : "constant"},
          {"prior_warmup", n(cfg.prior_warmup)},
          {"ema_decay", x(cfg.ema_decay)},
          {"precision", cfg.single_precision ? "float32" : "float64"},
          {"prior_time_group", n(cfg.prior_time_group)},
          {"eval_points", n(cfg.eval_points)},
          {"prior_samples", n(cfg.prior_samples)},
          {"ode_tol", x(cfg.ode_tol)},
          {"kde_samples", n(cfg.kde_samples)},
          {"kde_bandwidth", x(cfg.kde_bandwidth)},
          {"grid", n(cfg.grid)},
          {"pad", x(cfg.pad)},
          {"landscape_draws", n(cfg.landscape_draws)},
          {"latents", n(cfg.latents)},
          {"align_steps", n(cfg.align_steps)},
          {"align_draws", n(cfg.align_draws)},
          {"align_lr", x(cfg.align_lr)},
          {"align_time_group", n(cfg.align_time_group)},
          {"track_every", n(cfg.track_every)},
          {"flowprior_version", FLOWPRIOR_VERSION_STRING}};
}

/// The run's identity: 16 hex digits (FNV-1a, 64 bits) of toy2d_options. Written into the
/// checkpoint (user.run_id), the prior (run_id) and metrics.json (config.run_id), so that files
/// of different runs in one folder can be told apart.
inline std::string toy2d_run_id(const Toy2dConfig& cfg) {
  std::uint64_t h = 1469598103934665603ull;
  for (const auto& kv : toy2d_options(cfg))
    for (const std::string* part : {&kv.first, &kv.second}) {
      for (unsigned char c : *part) h = (h ^ c) * 1099511628211ull;
      h = (h ^ 0xffu) * 1099511628211ull;  // separator
    }
  char b[20];
  std::snprintf(b, sizeof b, "%016llx", static_cast<unsigned long long>(h));
  return b;
}

/// Everything run_toy2d measured (NaN where a quantity does not apply, e.g. the exact field of a
/// non-mixture target).
struct Toy2dResult {
  std::string target;
  bool exact_density = false;
  Index prior_params = 0;
  std::string checkpoint_path, prior_path;
  std::string run_id;       ///< toy2d_run_id of the options
  Index resumed_from = -1;  ///< the checkpoint's step when resumed, -1 for a fresh run
  int ranks = 1;            ///< the ranks the run was data-parallel on (Toy2dConfig::comm)
  // (a)
  std::vector<double> train_step, train_loss;  ///< running mean of the batch loss
  double train_seconds = 0;
  // (b)
  double heldout_nll_ode = 0, heldout_nll_ref = 0;  ///< prior (ODE) and target (exact or KDE)
  double entropy = std::numeric_limits<double>::quiet_NaN();  ///< exact-density MC (mixtures)
  double entropy_se = std::numeric_limits<double>::quiet_NaN();
  Index ode_nfe = 0;
  double eval_seconds = 0;
  Eigen::MatrixXd target_samples, prior_samples;
  double prior_samples_nll = 0;  ///< mean target NLL of the prior's samples
  // (c)
  double x0 = 0, x1 = 0, y0 = 0, y1 = 0;
  Index grid = 0;
  std::vector<double> grid_nll, grid_align_trained, grid_align_exact;  ///< value[i + j * grid]
  double pearson_trained = 0, spearman_trained = 0;
  double pearson_exact = std::numeric_limits<double>::quiet_NaN();
  double spearman_exact = std::numeric_limits<double>::quiet_NaN();
  double pearson_trained_vs_exact = std::numeric_limits<double>::quiet_NaN();
  // (d), (e)
  Eigen::MatrixXd latents_start, latents_trained, latents_exact;
  std::vector<double> track_step, track_loss_trained, track_nll_trained, track_loss_exact,
      track_nll_exact;
  std::vector<Index> occupancy_trained, occupancy_exact;  ///< per mode (nearest-mode counts)
  std::vector<Index> near_trained, near_exact;            ///< within 3 component stds of a mode
  double nn_distance_trained = 0, nn_distance_exact = std::numeric_limits<double>::quiet_NaN();
  double align_seconds = 0;
  double total_seconds = 0;
};

namespace detail {

/// -log p_target(x) per column, exact for mixtures and a KDE otherwise.
class TargetNll {
 public:
  TargetNll(const data::ToyTarget& t, const Eigen::MatrixXd& kde_samples, double bandwidth)
      : target_(t) {
    if (!t.has_exact_density()) kde_.reset(new eval::Kde2D(kde_samples, bandwidth));
  }
  double operator()(const double* x) const {
    return target_.has_exact_density() ? -target_.log_density(x) : -kde_->log_density(x);
  }
  double mean(const Eigen::MatrixXd& x) const {
    double s = 0;
    for (Index b = 0; b < x.cols(); ++b) s += (*this)(x.col(b).data());
    return s / double(x.cols());
  }

 private:
  data::ToyTarget target_;
  std::shared_ptr<eval::Kde2D> kde_;
};

inline double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

/// "trained" or "exact" from a progress label ("align  ", "exact  ").
inline std::string label_name(const std::string& label) {
  return label.rfind("exact", 0) == 0 ? "exact-field" : "trained-prior";
}

/// The latents of every rank in `y` (2, N P): this rank's `mine` (2, N) placed at columns
/// [r N, (r + 1) N) of zeros, summed over the ranks (one all-reduce; each element is nonzero on
/// one rank only, so the sum is exact). One process: y = mine.
template <class S>
void gather_latents(train::Communicator& comm,
                    const Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic>& mine,
                    Eigen::MatrixXd& y) {
  if (comm.size() == 1) {
    y = mine.template cast<double>();
    return;
  }
  const Index n = mine.cols();
  y.setZero(mine.rows(), n * comm.size());
  y.middleCols(n * comm.rank(), n) = mine.template cast<double>();
  comm.allreduce_sum(y.data(), y.size(), "run_toy2d: gathering the latents");
}

/// Aligns the latents `start` (2, N P) with Adam on the alignment loss of `prior`; this rank
/// moves columns [r N, (r + 1) N) (N = latents / P) and the tracked NLL and the final `y` are
/// those of all latents (gather_latents at every tracked step). Collective with P > 1 ranks.
template <class Field>
void align_run(const Prior<Field>& prior, Convention conv, const Toy2dConfig& cfg,
               train::Communicator& comm, const TargetNll& nll, const Eigen::MatrixXd& start,
               std::uint64_t seed, const std::string& label, Eigen::MatrixXd& y,
               std::vector<double>& steps, std::vector<double>& losses, std::vector<double>& nlls) {
  using S = typename Field::Scalar;
  train::AlignConfig ac;
  ac.K = cfg.align_draws;
  ac.adam.lr = cfg.align_lr;
  ac.time_group = cfg.align_time_group;
  if (ac.time_group > 1) ac.sampler = loss::TimeSampler::stratified();  // adaln.md "Time groups"
  const Index mine = start.cols() / comm.size();  // validate(): a multiple of the ranks
  train::LatentAligner<Field> aligner(prior, conv, mine, ac);
  if (comm.size() > 1) aligner.set_communicator(&comm);
  Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic> ys =
      start.middleCols(mine * comm.rank(), mine).template cast<S>();
  y = start;
  Rng rng(seed);
  util::Progress bar(label, cfg.align_steps, cfg.progress);
  steps.clear();
  losses.clear();
  nlls.clear();
  // Stops on a non-finite loss (the aligner refuses the step) or an exploding running loss.
  train::DivergenceGuard guard(label_name(label) + " alignment", cfg.divergence_factor, 0.95);
  double running = 0;
  for (Index s = 0; s <= cfg.align_steps; ++s) {
    const bool track = s % cfg.track_every == 0 || s == cfg.align_steps;
    if (track) gather_latents<S>(comm, ys, y);
    const double n = track ? nll.mean(y) : 0.0;
    if (s == cfg.align_steps) {  // the final state: NLL only (no step taken)
      steps.push_back(double(s));
      losses.push_back(losses.empty() ? std::numeric_limits<double>::quiet_NaN() : losses.back());
      nlls.push_back(n);
      break;
    }
    const double l = aligner.step(MatrixView<S>(ys.data(), 2, ys.cols()), rng);
    guard.observe(s + 1, l);  // steps numbered from 1
    running = guard.running();
    if (track) {
      steps.push_back(double(s));
      losses.push_back(l);
      nlls.push_back(n);
    }
    char st[64];
    std::snprintf(st, sizeof st, "loss %.4f", running);
    bar.update(s + 1, st);
  }
  bar.finish();
}

/// Per-point alignment loss of many points (the landscape), in chunks of at most 8192 draws so
/// that the field's caches stay small whatever the grid and the number of draws: the same draws
/// and values as one call over all points.
template <class Field>
void chunked_alignment_loss(const Prior<Field>& prior, Convention conv, const Eigen::MatrixXd& pts,
                            const loss::FlowDraws<double>& draws, const loss::AlignmentOptions& ao,
                            loss::LossWorkspace<Field>& ws, Eigen::VectorXd& per) {
  const char* w = "chunked_alignment_loss";
  draws.validate(w);  // the slices below are read from the draws' buffers directly
  check_shape(w, "pts", ConstMatrixView<double>(pts), draws.dim, draws.rows);
  check_size(w, "per", VectorView<double>(per), draws.rows);
  const Index P = pts.cols(), K = draws.K, d = draws.dim;
  const Index chunk = std::max<Index>(1, 8192 / K);
  loss::FlowDraws<double> part;
  for (Index b0 = 0; b0 < P; b0 += chunk) {
    const Index n = std::min(chunk, P - b0);
    part.assign(draws.convention, n, d, K, ConstVectorView<double>(draws.t.data() + b0 * K, n * K),
                ConstMatrixView<double>(draws.eps.data() + b0 * K * d, d, n * K));
    loss::alignment_loss(prior, conv, ConstMatrixView<double>(pts.data() + b0 * d, d, n, d), part,
                         ao, ws, VectorView<double>(per.data() + b0, n));
  }
}

/// The checkpoint's state of the pipeline's own loop (curve, running mean, guard, seconds).
inline std::string toy2d_join(const std::vector<double>& v) {
  std::string out;
  for (std::size_t i = 0; i < v.size(); ++i) out += (i ? "," : "") + toy2d_exact(v[i]);
  return out;
}

inline std::vector<double> toy2d_split(const std::string& path, const std::string& key,
                                       const std::string& text) {
  std::vector<double> out;
  const char* p = text.c_str();
  while (*p) {
    char* end = nullptr;
    out.push_back(std::strtod(p, &end));
    if (end == p || (*end != ',' && *end != '\0'))
      io::fail(path, "checkpoint metadata '" + key + "' is not a list of numbers");
    p = *end == ',' ? end + 1 : end;
  }
  return out;
}

inline const std::string& toy2d_meta(const std::map<std::string, std::string>& meta,
                                     const std::string& path, const std::string& key) {
  const auto it = meta.find(key);
  if (it == meta.end())
    io::fail(path, "checkpoint metadata lacks '" + key + "' (not written by the 2-D pipeline?)");
  return it->second;
}

/// Resume: the checkpoint's options must equal this run's (config_error listing every option
/// that differs, with both values).
inline void toy2d_check_resume_options(const Toy2dConfig& cfg, const std::string& path,
                                       const std::map<std::string, std::string>& meta) {
  std::string diff;
  for (const auto& kv : toy2d_options(cfg)) {
    const std::string& saved = toy2d_meta(meta, path, "user." + kv.first);
    if (saved != kv.second)
      diff += std::string(diff.empty() ? "" : "; ") + kv.first + " = " + saved +
              " in the checkpoint, " + kv.second + " now";
  }
  if (!diff.empty())
    raise_config("run_toy2d (resume)",
                 "the checkpoint " + path + " was written with other options: " + diff +
                     " (resume with the checkpoint's options, or start a new run in another "
                     "folder)");
}

/// Stage (a): trains an AdaLN prior in scalar S by flow matching on `target`, saving the
/// training checkpoint at step 0, every cfg.checkpoint_every steps and at the end (or resuming
/// from it), and copies the EMA weights into `prior` (double). A checkpoint is written only
/// after a step that passed the divergence guard and only with finite parameters: on divergence
/// the file on disk is the last good state.
///
/// On P > 1 ranks (`comm`): each rank trains on its batch / P rows of the global batch (the
/// trainer's all-reduce averages the gradients, so the ranks hold the same weights, EMA and
/// generator: the divergence guard and the finiteness check decide alike on every rank); rank 0
/// writes the checkpoint (collective save_checkpoint); every rank reads it on resume, and the
/// ranks agree on the outcome of the read and of its checks. The checkpoint is the same file
/// whatever the number of ranks (global batch, draws and generator are global), so a run stopped
/// on P ranks continues on any other number (within docs/math/data_parallel.md "Tolerance").
template <class S>
void train_prior(const Toy2dConfig& cfg, train::Communicator& comm, const data::ToyTarget& target,
                 const nn::AdaLNMlpConfig& nc, const std::string& out_dir, Toy2dResult& r,
                 nn::AdaLNMlp<double>& prior) {
  using Net = nn::AdaLNMlp<S>;
  Net net(nc);
  Rng rng(cfg.seed);
  net.init(rng);
  r.prior_params = net.num_params();
  train::FlowMatchingTrainer<Net> trainer(net, cfg.convention, toy2d_trainer_config(cfg));
  if (comm.size() > 1) trainer.set_communicator(&comm);  // collective: rank 0's state
  train::DivergenceGuard guard("prior training", cfg.divergence_factor, 0.98);
  const std::string ckpt = out_dir + "/prior.ckpt.safetensors";
  r.checkpoint_path = ckpt;
  std::map<std::string, std::string> identity = toy2d_options(cfg);
  identity["run_id"] = r.run_id;
  double seconds_before = 0;  // of the run this one resumes
  Index last_saved = -1;      // the step of the checkpoint on disk
  auto t0 = std::chrono::steady_clock::now();
  auto save = [&] {
    const auto p = net.parameters();
    const auto e = trainer.ema().weights();  // a host copy
    for (Index i = 0; i < p.size; ++i)
      if (!std::isfinite(double(p[i])) || !std::isfinite(double(e[std::size_t(i)])))
        flowprior::detail::raise<numeric_error>(
            "[flowprior.numeric] prior training diverged at step " +
            std::to_string(trainer.steps()) + ": parameter " + std::to_string(i) +
            " is not finite; the checkpoint " + ckpt + " was not overwritten");
    auto meta = identity;
    meta["train_guard"] =
        guard.started() ? toy2d_exact(guard.initial()) + "," + toy2d_exact(guard.running()) : "";
    meta["train_curve_step"] = toy2d_join(r.train_step);
    meta["train_curve_loss"] = toy2d_join(r.train_loss);
    meta["train_seconds"] = toy2d_exact(seconds_before + seconds_since(t0));
    train::save_checkpoint(ckpt, trainer, net, rng, meta);
    last_saved = trainer.steps();
  };
  if (cfg.resume) {
    std::unique_ptr<io::Safetensors> st;  // read once: metadata and state
    std::vector<double> g, steps, losses, secs;
    // Every rank reads and checks the file; the ranks agree on the outcome (one process: the
    // errors propagate as they are).
    train::agree_on(comm, "run_toy2d: reading the checkpoint", [&] {
      if (!std::filesystem::exists(ckpt))
        io::fail(ckpt,
                 "cannot resume: no checkpoint in the output folder (run without resume "
                 "first)");
      st.reset(new io::Safetensors(io::Safetensors::read(ckpt)));
      const auto& meta = st->metadata();
      toy2d_check_resume_options(cfg, ckpt, meta);
      g = toy2d_split(ckpt, "user.train_guard", toy2d_meta(meta, ckpt, "user.train_guard"));
      steps = toy2d_split(ckpt, "user.train_curve_step",
                          toy2d_meta(meta, ckpt, "user.train_curve_step"));
      losses = toy2d_split(ckpt, "user.train_curve_loss",
                           toy2d_meta(meta, ckpt, "user.train_curve_loss"));
      secs = toy2d_split(ckpt, "user.train_seconds", toy2d_meta(meta, ckpt, "user.train_seconds"));
      if ((g.size() != 0 && g.size() != 2) || steps.size() != losses.size() || secs.size() != 1)
        io::fail(ckpt, "checkpoint metadata of the 2-D pipeline is inconsistent");
    });
    train::load_checkpoint(*st, trainer, net, rng);  // checks it all; modifies only on success
    if (trainer.steps() > cfg.prior_steps || (g.empty() != (trainer.steps() == 0)))
      io::fail(ckpt,
               "checkpoint step " + std::to_string(trainer.steps()) + " does not fit its metadata");
    if (!g.empty()) guard.set_state(g[0], g[1]);
    r.train_step = steps;
    r.train_loss = losses;
    seconds_before = secs[0];
    r.resumed_from = last_saved = trainer.steps();
  } else {
    save();  // step 0: a loadable checkpoint exists however early the run stops
  }
  util::Progress bar("prior  ", cfg.prior_steps, cfg.progress);
  const Index every = std::max<Index>(1, cfg.prior_steps / 200);
  const Index first = trainer.steps();
  for (Index s = first; s < cfg.prior_steps; ++s) {
    // Steps are numbered from 1 in messages (step N: the N-th optimiser step).
    const std::string kept = " (the checkpoint " + ckpt + " keeps the last good state, step " +
                             std::to_string(last_saved) + "; lower prior_lr)";
    train::StepStats st;
    try {  // a non-finite loss or gradient: the trainer refuses the step
      st = trainer.step_with([&](MatrixView<S> b, Rng& g) { target.sample<S>(b, g); }, rng);
    } catch (const numeric_error& e) {
      flowprior::detail::raise<numeric_error>(
          "[flowprior.numeric] prior training diverged at step " + std::to_string(s + 1) + ": " +
          e.what() + kept);
    }
    try {  // an exploding running loss
      guard.observe(s + 1, st.loss);
    } catch (const numeric_error& e) {
      flowprior::detail::raise<numeric_error>(e.what() + kept);
    }
    if (s % every == 0 || s + 1 == cfg.prior_steps) {
      r.train_step.push_back(double(s));
      r.train_loss.push_back(guard.running());
    }
    char b[64];
    std::snprintf(b, sizeof b, "loss %.4f", guard.running());
    bar.update(s + 1, b);
    const Index done = s + 1;
    if (cfg.checkpoint_every > 0 && done % cfg.checkpoint_every == 0 && done < cfg.prior_steps)
      save();
    if (cfg.on_prior_step) cfg.on_prior_step(done);
  }
  if (first < cfg.prior_steps) save();
  bar.finish();
  r.train_seconds = seconds_before + seconds_since(t0);
  const auto ema = trainer.ema().weights();  // a host copy
  auto p = prior.parameters();
  for (Index i = 0; i < p.size; ++i) p[i] = static_cast<double>(ema[std::size_t(i)]);
}

/// Throws io_error unless `dir` is an existing folder in which a file can be created (probed
/// by writing and removing a small file), so that an unwritable output is found before any work.
inline void probe_output_folder(const std::string& dir) {
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec))
    io::fail(dir, "the output folder does not exist or is not a folder");
  const std::string probe = dir + "/.flowprior_write_probe";
  bool ok = false;
  errno = 0;
  {
    std::ofstream f(probe, std::ios::binary | std::ios::trunc);
    ok = bool(f) && bool(f << "probe") && bool(f.flush());
  }
  const int err = errno;
  std::filesystem::remove(probe, ec);
  if (!ok)
    io::fail(dir, std::string("cannot write into the output folder (") +
                      (err ? std::strerror(err) : "write failed") + ")");
}

}  // namespace detail

/// Runs the whole pipeline; writes `prior.ckpt.safetensors` (training checkpoint) and
/// `prior.safetensors` (the EMA prior's state dict) into out_dir (which must exist).
///
/// Order: validate() (config_error naming the option), then a write probe of out_dir (io_error),
/// then the work; nothing is allocated or trained before both pass. With cfg.resume the prior's
/// training continues from out_dir/prior.ckpt.safetensors (its options must equal cfg's:
/// config_error naming those that differ; io_error if there is none). A diverging training or
/// alignment stops with numeric_error naming the step (docs/errors.md "Divergence").
///
/// With options.comm of P > 1 ranks (docs/distributed.md "Examples") every rank calls it with the
/// same options and returns the whole result; it is collective from the probe on. Rank 0 probes
/// out_dir and writes the files (out_dir need exist on rank 0 only; on resume every rank reads
/// the checkpoint, so the folder must be shared), and draws the progress bars. Every rank runs
/// the evaluation and the landscape itself (the same numbers on every rank; no rank waits for
/// another longer than the ranks' difference in speed). A failure on one rank during a step,
/// the probe, a write or the checkpoint's read is an error on every rank (its own on the rank
/// that failed, distributed_error on the others); elsewhere (on_prior_step) the others meet the
/// communicator's deadline.
inline Toy2dResult run_toy2d(const Toy2dConfig& options, const std::string& out_dir) {
  options.validate();
  train::LocalCommunicator one;
  train::Communicator& comm = options.comm != nullptr ? *options.comm : one;
  const bool lead = comm.rank() == 0;
  train::agree_on(
      comm, "run_toy2d: probing the output folder", [&] { detail::probe_output_folder(out_dir); },
      lead);
  Toy2dConfig cfg = options;
  cfg.progress = options.progress && lead;  // one set of progress bars
  using Net = nn::AdaLNMlp<double>;
  const auto t_total = std::chrono::steady_clock::now();
  const Convention conv = cfg.convention;
  const data::ToyTarget target = data::ToyTarget::make(cfg.target);
  Toy2dResult r;
  r.target = target.name();
  r.exact_density = target.has_exact_density();
  r.run_id = toy2d_run_id(cfg);
  r.ranks = comm.size();

  Rng data_rng(cfg.seed * 7919 + 1);
  Eigen::MatrixXd reference(2, cfg.kde_samples);  // KDE, nearest distances, the data range
  target.sample<double>(MatrixView<double>(reference.data(), 2, reference.cols()), data_rng);
  const detail::TargetNll nll(target, reference, cfg.kde_bandwidth);

  // (a) Train the prior by flow matching (float or double), then evaluate its EMA in double.
  const nn::AdaLNMlpConfig nc = toy2d_net_config(cfg);
  Net prior_net(nc);
  if (cfg.single_precision)
    detail::train_prior<float>(cfg, comm, target, nc, out_dir, r, prior_net);
  else
    detail::train_prior<double>(cfg, comm, target, nc, out_dir, r, prior_net);
  r.prior_path = out_dir + "/prior.safetensors";
  train::agree_on(
      comm, "run_toy2d: writing the prior",
      [&] {
        io::save_state_dict(prior_net, r.prior_path, io::Dtype::F32,
                            {{"convention", to_string(conv)},
                             {"target", r.target},
                             {"seed", std::to_string(cfg.seed)},
                             {"run_id", r.run_id}});
      },
      lead);
  const Prior<Net> prior(prior_net, conv);

  // (b) Held-out NLL by the ODE, and samples from the prior.
  {
    const auto t0 = std::chrono::steady_clock::now();
    Rng er(cfg.seed * 7919 + 2);
    Eigen::MatrixXd held(2, cfg.eval_points);
    target.sample<double>(MatrixView<double>(held.data(), 2, held.cols()), er);
    ode::LikelihoodOptions lo;
    lo.solver.atol = lo.solver.rtol = cfg.ode_tol;
    ode::OdeWorkspace<Net> ows;
    Eigen::VectorXd logp(held.cols());
    util::Progress bar("eval   ", 2, cfg.progress);
    r.ode_nfe = ode::log_likelihood(prior, conv, held, logp, lo, ows).nfe;
    bar.update(1, "likelihood done");
    r.heldout_nll_ode = -logp.mean();
    r.heldout_nll_ref = nll.mean(held);
    if (target.has_exact_density()) {
      const auto mc = eval::mixture_entropy_mc(*target.mixture(), 200000, er);
      r.entropy = mc.value;
      r.entropy_se = mc.std_error;
    }
    r.prior_samples.resize(2, cfg.prior_samples);
    ode::draw_noise<double>(MatrixView<double>(r.prior_samples.data(), 2, cfg.prior_samples), er);
    ode::SolverOptions so;
    so.atol = so.rtol = cfg.ode_tol;
    ode::sample(prior, conv, MatrixView<double>(r.prior_samples.data(), 2, cfg.prior_samples), so,
                ows);
    bar.finish("sampling done");
    r.prior_samples_nll = nll.mean(r.prior_samples);
    r.target_samples = reference.leftCols(std::min<Index>(cfg.prior_samples, reference.cols()));
    r.eval_seconds = detail::seconds_since(t0);
  }

  // (c) The landscape on the padded data range, the same draws for both fields.
  using Exact = analytic::GaussianMixtureField<double>;
  std::unique_ptr<Exact> exact;
  if (target.has_exact_density()) exact.reset(new Exact(*target.mixture()));
  {
    const double lo_x = reference.row(0).minCoeff(), hi_x = reference.row(0).maxCoeff();
    const double lo_y = reference.row(1).minCoeff(), hi_y = reference.row(1).maxCoeff();
    r.x0 = lo_x - cfg.pad * (hi_x - lo_x);
    r.x1 = hi_x + cfg.pad * (hi_x - lo_x);
    r.y0 = lo_y - cfg.pad * (hi_y - lo_y);
    r.y1 = hi_y + cfg.pad * (hi_y - lo_y);
    r.grid = cfg.grid;
    const Index G = cfg.grid, P = G * G;
    Eigen::MatrixXd pts(2, P);
    for (Index j = 0; j < G; ++j)
      for (Index i = 0; i < G; ++i)
        pts.col(i + j * G) << r.x0 + (r.x1 - r.x0) * double(i) / double(G - 1),
            r.y0 + (r.y1 - r.y0) * double(j) / double(G - 1);
    Rng lr(cfg.seed * 7919 + 3);
    loss::FlowDraws<double> draws;
    loss::draw(draws, conv, P, 2, cfg.landscape_draws, loss::TimeSampler::stratified(), lr);
    const loss::AlignmentOptions ao{loss::Reduction::SumChannels, 1.0, false};
    Eigen::VectorXd per(P);
    loss::LossWorkspace<Net> lws;
    detail::chunked_alignment_loss(prior, conv, pts, draws, ao, lws, per);
    r.grid_align_trained.assign(per.data(), per.data() + P);
    r.grid_nll.resize(std::size_t(P));
    for (Index p = 0; p < P; ++p) r.grid_nll[std::size_t(p)] = nll(pts.col(p).data());
    r.pearson_trained = eval::pearson(r.grid_align_trained.data(), r.grid_nll.data(), P);
    r.spearman_trained = eval::spearman(r.grid_align_trained.data(), r.grid_nll.data(), P);
    if (exact) {
      loss::LossWorkspace<Exact> ews;
      const auto eprior = Prior<Exact>(*exact, Convention::Paper).as(conv);
      detail::chunked_alignment_loss(eprior, conv, pts, draws, ao, ews, per);
      r.grid_align_exact.assign(per.data(), per.data() + P);
      r.pearson_exact = eval::pearson(r.grid_align_exact.data(), r.grid_nll.data(), P);
      r.spearman_exact = eval::spearman(r.grid_align_exact.data(), r.grid_nll.data(), P);
      r.pearson_trained_vs_exact =
          eval::pearson(r.grid_align_trained.data(), r.grid_align_exact.data(), P);
    }
  }

  // (d, e) Free latents from N(0, I), aligned by the trained and by the exact field.
  {
    const auto t0 = std::chrono::steady_clock::now();
    Rng yr(cfg.seed * 7919 + 4);
    r.latents_start.resize(2, cfg.latents);
    for (Index b = 0; b < cfg.latents; ++b) r.latents_start.col(b) << normal01(yr), normal01(yr);
    if (cfg.single_precision) {  // the EMA prior in float, as it was trained
      nn::AdaLNMlp<float> prior_f(prior_net.config());
      auto pf = prior_f.parameters();
      const auto pd = prior_net.parameters();
      for (Index i = 0; i < pf.size; ++i) pf[i] = static_cast<float>(pd[i]);
      detail::align_run(Prior<nn::AdaLNMlp<float>>(prior_f, conv), conv, cfg, comm, nll,
                        r.latents_start, cfg.seed * 7919 + 5, "align  ", r.latents_trained,
                        r.track_step, r.track_loss_trained, r.track_nll_trained);
    } else {
      detail::align_run(prior, conv, cfg, comm, nll, r.latents_start, cfg.seed * 7919 + 5,
                        "align  ", r.latents_trained, r.track_step, r.track_loss_trained,
                        r.track_nll_trained);
    }
    if (exact) {
      std::vector<double> steps;
      detail::align_run(Prior<Exact>(*exact, Convention::Paper).as(conv), conv, cfg, comm, nll,
                        r.latents_start, cfg.seed * 7919 + 5, "exact  ", r.latents_exact, steps,
                        r.track_loss_exact, r.track_nll_exact);
    }
    const eval::NearestNeighbor2D nn(reference);
    auto mean_nn = [&](const Eigen::MatrixXd& y) {
      double s = 0;
      for (Index b = 0; b < y.cols(); ++b) s += nn.distance(y.col(b).data());
      return s / double(y.cols());
    };
    r.nn_distance_trained = mean_nn(r.latents_trained);
    if (exact) r.nn_distance_exact = mean_nn(r.latents_exact);
    if (target.has_exact_density()) {
      const auto modes = target.modes();
      const double near = 3 * target.mixture()->stddev(0);
      r.occupancy_trained = eval::mode_occupancy(r.latents_trained, modes, -1);
      r.near_trained = eval::mode_occupancy(r.latents_trained, modes, near);
      r.occupancy_exact = eval::mode_occupancy(r.latents_exact, modes, -1);
      r.near_exact = eval::mode_occupancy(r.latents_exact, modes, near);
    }
    r.align_seconds = detail::seconds_since(t0);
  }
  r.total_seconds = detail::seconds_since(t_total);
  return r;
}

/// Every number of a run, for metrics.json: an nlohmann::ordered_json object whose keys keep the
/// order they are set in. NaN and infinities (JSON has neither) are written as null by dump().
inline nlohmann::ordered_json toy2d_metrics(const Toy2dConfig& cfg, const Toy2dResult& r) {
  using Out = nlohmann::ordered_json;
  auto idx = [](const std::vector<Index>& v) {
    Out a = Out::array();
    for (Index x : v) a.push_back(std::int64_t(x));
    return a;
  };
  auto vec = [](const std::vector<double>& v) {
    Out a = Out::array();
    for (double x : v) a.push_back(x);
    return a;
  };
  Out config = Out::object();
  config["target"] = r.target;
  config["run_id"] = r.run_id;
  config["seed"] = std::uint64_t(cfg.seed);
  // Also as a string: readers that hold every JSON number as a double lose seeds above 2^53.
  config["seed_string"] = std::to_string(cfg.seed);
  config["convention"] = to_string(cfg.convention);
  config["width"] = cfg.width;
  config["depth"] = cfg.depth;
  config["prior_params"] = r.prior_params;
  config["prior_steps"] = cfg.prior_steps;
  config["batch"] = cfg.batch;
  config["prior_draws"] = cfg.prior_draws;
  config["prior_lr"] = cfg.prior_lr;
  config["prior_schedule"] = cfg.prior_cosine ? "cosine" : "constant";
  config["ema_decay"] = cfg.ema_decay;
  config["precision"] = cfg.single_precision ? "float32" : "float64";
  config["prior_time_group"] = cfg.prior_time_group;
  config["align_time_group"] = cfg.align_time_group;
  config["latents"] = cfg.latents;
  config["align_steps"] = cfg.align_steps;
  config["align_draws"] = cfg.align_draws;
  config["align_lr"] = cfg.align_lr;
  config["grid"] = cfg.grid;
  config["landscape_draws"] = cfg.landscape_draws;
  config["pad"] = cfg.pad;
  config["ode_tol"] = cfg.ode_tol;
  config["eval_points"] = cfg.eval_points;
  config["prior_samples"] = cfg.prior_samples;
  config["kde_samples"] = cfg.kde_samples;
  config["kde_bandwidth"] = cfg.kde_bandwidth;
  config["prior_warmup"] = cfg.prior_warmup;
  config["track_every"] = cfg.track_every;
  config["divergence_factor"] = cfg.divergence_factor;
  config["checkpoint_every"] = cfg.checkpoint_every;
  config["resumed_from_step"] = r.resumed_from;
  config["ranks"] = r.ranks;
  Out prior = Out::object();
  prior["train_seconds"] = r.train_seconds;
  prior["final_train_loss"] = r.train_loss.empty() ? 0.0 : r.train_loss.back();
  prior["heldout_nll_ode"] = r.heldout_nll_ode;
  prior["heldout_nll_target"] = r.heldout_nll_ref;
  prior["heldout_nll_target_kind"] = r.exact_density ? "exact" : "kde";
  prior["entropy_mc"] = r.entropy;
  prior["entropy_mc_se"] = r.entropy_se;
  prior["nll_gap_to_entropy"] =
      r.exact_density ? r.heldout_nll_ode - r.entropy : r.heldout_nll_ode - r.heldout_nll_ref;
  prior["ode_nfe"] = r.ode_nfe;
  prior["eval_seconds"] = r.eval_seconds;
  prior["prior_samples_target_nll"] = r.prior_samples_nll;
  prior["checkpoint"] = r.checkpoint_path;
  prior["state_dict"] = r.prior_path;
  prior["train_curve_step"] = vec(r.train_step);
  prior["train_curve_loss"] = vec(r.train_loss);
  Out land = Out::object();
  land["range"] = Out::array({r.x0, r.x1, r.y0, r.y1});
  land["grid"] = r.grid;
  land["pearson_trained_vs_nll"] = r.pearson_trained;
  land["spearman_trained_vs_nll"] = r.spearman_trained;
  land["pearson_exact_vs_nll"] = r.pearson_exact;
  land["spearman_exact_vs_nll"] = r.spearman_exact;
  land["pearson_trained_vs_exact"] = r.pearson_trained_vs_exact;
  Out align = Out::object();
  align["start_nll"] = r.track_nll_trained.empty() ? 0.0 : r.track_nll_trained.front();
  align["final_nll_trained"] = r.track_nll_trained.empty() ? 0.0 : r.track_nll_trained.back();
  align["final_nll_exact"] = r.track_nll_exact.empty() ? std::numeric_limits<double>::quiet_NaN()
                                                       : r.track_nll_exact.back();
  align["occupancy_trained"] = idx(r.occupancy_trained);
  align["occupancy_exact"] = idx(r.occupancy_exact);
  align["near_mode_trained"] = idx(r.near_trained);
  align["near_mode_exact"] = idx(r.near_exact);
  align["mean_distance_to_nearest_target_sample_trained"] = r.nn_distance_trained;
  align["mean_distance_to_nearest_target_sample_exact"] = r.nn_distance_exact;
  align["seconds"] = r.align_seconds;
  align["curve_step"] = vec(r.track_step);
  align["curve_loss_trained"] = vec(r.track_loss_trained);
  align["curve_nll_trained"] = vec(r.track_nll_trained);
  align["curve_loss_exact"] = vec(r.track_loss_exact);
  align["curve_nll_exact"] = vec(r.track_nll_exact);
  Out doc = Out::object();
  doc["flowprior_version"] = FLOWPRIOR_VERSION_STRING;
  doc["config"] = config;
  doc["prior"] = prior;
  doc["landscape"] = land;
  doc["alignment"] = align;
  doc["total_seconds"] = r.total_seconds;
  return doc;
}

/// Writes a metrics document (toy2d_metrics) to `path` atomically, indented by two spaces. Bytes
/// in strings that are not UTF-8 (a path, say) are written as U+FFFD, so the file is always valid
/// JSON and dump() never throws.
inline void write_metrics(const std::string& path, const nlohmann::ordered_json& doc) {
  const std::string text =
      doc.dump(2, ' ', false, nlohmann::ordered_json::error_handler_t::replace) + "\n";
  io::atomic_write(path, [&](io::Writer& w) { w.write(text); });
}

/// A one-screen summary.
inline std::string toy2d_summary(const Toy2dResult& r) {
  char b[4096];
  std::string occ;
  for (Index c : r.occupancy_trained) occ += std::to_string(c) + " ";
  std::snprintf(
      b, sizeof b,
      "target %s (%s density), prior %td parameters, trained in %.1f s\n"
      "  held-out NLL: prior (ODE, %td evaluations) %.4f, target %.4f%s\n"
      "  landscape on [%.2f, %.2f] x [%.2f, %.2f] (%td x %td):\n"
      "    alignment loss vs NLL: trained Pearson %.3f Spearman %.3f | exact Pearson %.3f "
      "Spearman %.3f\n"
      "    trained vs exact alignment loss: Pearson %.3f\n"
      "  %td latents, %td steps: mean NLL %.3f -> %.3f (trained prior), %.3f (exact field)\n"
      "    mean distance to the nearest target sample %.4f (trained), %.4f (exact)\n"
      "    latents nearest each mode (trained): %s\n"
      "  total %.1f s\n",
      r.target.c_str(), r.exact_density ? "exact" : "KDE", r.prior_params, r.train_seconds,
      r.ode_nfe, r.heldout_nll_ode, r.heldout_nll_ref,
      r.exact_density ? (" (entropy " + std::to_string(r.entropy) + ")").c_str() : "", r.x0, r.x1,
      r.y0, r.y1, r.grid, r.grid, r.pearson_trained, r.spearman_trained, r.pearson_exact,
      r.spearman_exact, r.pearson_trained_vs_exact, r.latents_start.cols(),
      r.track_step.empty() ? Index(0) : Index(r.track_step.back()),
      r.track_nll_trained.empty() ? 0.0 : r.track_nll_trained.front(),
      r.track_nll_trained.empty() ? 0.0 : r.track_nll_trained.back(),
      r.track_nll_exact.empty() ? std::numeric_limits<double>::quiet_NaN()
                                : r.track_nll_exact.back(),
      r.nn_distance_trained, r.nn_distance_exact, occ.empty() ? "n/a" : occ.c_str(),
      r.total_seconds);
  return b;
}

}  // namespace pipeline
}  // namespace flowprior
