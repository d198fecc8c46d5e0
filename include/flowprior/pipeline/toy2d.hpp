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
/// The example examples/10_toy2d.cpp wires command-line options to run_toy2d and writes the
/// metrics (toy2d_metrics) and figures (pipeline/toy2d_figures.hpp).
#pragma once

#include <chrono>
#include <cmath>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include <Eigen/Core>

#include <flowprior/analytic/gaussian_mixture.hpp>
#include <flowprior/core/convention.hpp>
#include <flowprior/data/toy2d.hpp>
#include <flowprior/eval/stats.hpp>
#include <flowprior/io/checkpoint.hpp>
#include <flowprior/io/json.hpp>
#include <flowprior/io/state_dict.hpp>
#include <flowprior/loss/flow_loss.hpp>
#include <flowprior/nn/adaln_mlp.hpp>
#include <flowprior/ode/flow_ode.hpp>
#include <flowprior/train/align.hpp>
#include <flowprior/train/trainer.hpp>
#include <flowprior/util/progress.hpp>

namespace flowprior {
namespace pipeline {

/// Every option of the 2-D pipeline. The defaults finish on the ring in a few minutes on two
/// cores; Toy2dConfig::paper() holds the paper's settings.
struct Toy2dConfig {
  data::Toy2D target = data::Toy2D::Ring5;
  std::uint64_t seed = 0;
  Convention convention = Convention::Code;  ///< the released code's convention
  // (a) the prior
  Index width = 128;
  Index depth = 3;
  Index prior_steps = 4000;
  Index batch = 256;
  Index prior_draws = 1;       ///< K of flow matching (released: 4)
  double prior_lr = 2e-3;      ///< peak learning rate
  bool prior_cosine = true;    ///< cosine decay after a linear warmup (else constant)
  Index prior_warmup = -1;     ///< linear warmup steps; -1: min(200, prior_steps / 10)
  double ema_decay = 0.999;
  /// Train the prior and align the latents in float32 (as the PyTorch reference does); the
  /// evaluation (ODE likelihood, sampling, landscape) always runs in double on the EMA weights.
  bool single_precision = false;
  /// Consecutive flow-matching draws sharing t (time groups, stratified t; 1: one t per draw).
  Index prior_time_group = 1;
  // (b) evaluation
  Index eval_points = 2000;    ///< held-out target samples for the ODE NLL
  Index prior_samples = 2000;  ///< samples drawn from the prior by the ODE
  double ode_tol = 1e-5;       ///< Dopri5 atol = rtol
  Index kde_samples = 20000;   ///< KDE of non-mixture targets and nearest-sample distances
  double kde_bandwidth = 0.05; ///< in normalised units (docs/toy_targets.md)
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
  bool progress = true;        ///< progress bars on stderr

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

  void validate() const {
    const char* w = "Toy2dConfig";
    auto pos = [&](Index v, const char* name) {
      if (v <= 0) raise_config(w, std::string(name) + " must be positive, got " + std::to_string(v));
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
    if (align_steps < 0) raise_config(w, "align_steps must be >= 0");
    if (grid < 2) raise_config(w, "grid must be >= 2");
    if (!(prior_lr > 0) || !(align_lr > 0)) raise_config(w, "learning rates must be > 0");
    if (prior_warmup < -1 || (prior_cosine && prior_warmup >= prior_steps))
      raise_config(w, "prior_warmup must be -1 (automatic) or lie in [0, prior_steps)");
    if (!(ema_decay >= 0 && ema_decay < 1)) raise_config(w, "ema_decay must lie in [0, 1)");
    if (!(ode_tol > 0)) raise_config(w, "ode_tol must be > 0");
    if (!(pad >= 0)) raise_config(w, "pad must be >= 0");
    if (!(kde_bandwidth > 0)) raise_config(w, "kde_bandwidth must be > 0");
  }
};

/// Everything run_toy2d measured (NaN where a quantity does not apply, e.g. the exact field of a
/// non-mixture target).
struct Toy2dResult {
  std::string target;
  bool exact_density = false;
  Index prior_params = 0;
  std::string checkpoint_path, prior_path;
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

template <class Field>
void align_run(const Prior<Field>& prior, Convention conv, const Toy2dConfig& cfg,
               const TargetNll& nll, const Eigen::MatrixXd& start, std::uint64_t seed,
               const std::string& label, Eigen::MatrixXd& y, std::vector<double>& steps,
               std::vector<double>& losses, std::vector<double>& nlls) {
  using S = typename Field::Scalar;
  train::AlignConfig ac;
  ac.K = cfg.align_draws;
  ac.adam.lr = cfg.align_lr;
  ac.time_group = cfg.align_time_group;
  if (ac.time_group > 1) ac.sampler = loss::TimeSampler::stratified();  // adaln.md "Time groups"
  train::LatentAligner<Field> aligner(prior, conv, start.cols(), ac);
  Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic> ys = start.template cast<S>();
  y = start;
  Rng rng(seed);
  util::Progress bar(label, cfg.align_steps, cfg.progress);
  steps.clear();
  losses.clear();
  nlls.clear();
  double running = 0;
  for (Index s = 0; s <= cfg.align_steps; ++s) {
    const bool track = s % cfg.track_every == 0 || s == cfg.align_steps;
    if (track) y = ys.template cast<double>();
    const double n = track ? nll.mean(y) : 0.0;
    if (s == cfg.align_steps) {  // the final state: NLL only (no step taken)
      steps.push_back(double(s));
      losses.push_back(losses.empty() ? std::numeric_limits<double>::quiet_NaN() : losses.back());
      nlls.push_back(n);
      break;
    }
    const double l = aligner.step(MatrixView<S>(ys.data(), 2, ys.cols()), rng);
    running = s == 0 ? l : 0.95 * running + 0.05 * l;
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
                            const loss::FlowDraws<double>& draws,
                            const loss::AlignmentOptions& ao, loss::LossWorkspace<Field>& ws,
                            Eigen::VectorXd& per) {
  const Index P = pts.cols(), K = draws.K, d = draws.dim;
  const Index chunk = std::max<Index>(1, 8192 / K);
  loss::FlowDraws<double> part;
  for (Index b0 = 0; b0 < P; b0 += chunk) {
    const Index n = std::min(chunk, P - b0);
    part.resize(draws.convention, n, d, K);
    std::copy(draws.t.begin() + b0 * K, draws.t.begin() + (b0 + n) * K, part.t.begin());
    std::copy(draws.eps.begin() + b0 * K * d, draws.eps.begin() + (b0 + n) * K * d,
              part.eps.begin());
    loss::alignment_loss(prior, conv, ConstMatrixView<double>(pts.data() + b0 * d, d, n, d),
                         part, ao, ws, VectorView<double>(per.data() + b0, n));
  }
}

/// Stage (a): trains an AdaLN prior in scalar S by flow matching on `target`, saves the training
/// checkpoint, and copies the EMA weights into `prior` (double).
template <class S>
void train_prior(const Toy2dConfig& cfg, const data::ToyTarget& target,
                 const nn::AdaLNMlpConfig& nc, const std::string& out_dir, Toy2dResult& r,
                 nn::AdaLNMlp<double>& prior) {
  using Net = nn::AdaLNMlp<S>;
  Net net(nc);
  Rng rng(cfg.seed);
  net.init(rng);
  r.prior_params = net.num_params();
  train::TrainerConfig tc;
  tc.batch = cfg.batch;
  tc.K = cfg.prior_draws;
  tc.ema_decay = cfg.ema_decay;
  tc.time_group = cfg.prior_time_group;
  if (tc.time_group > 1) tc.sampler = loss::TimeSampler::stratified();  // adaln.md "Time groups"
  const Index warmup =
      cfg.prior_warmup >= 0 ? cfg.prior_warmup : std::min<Index>(200, cfg.prior_steps / 10);
  tc.schedule = cfg.prior_cosine ? optim::LrSchedule::cosine(cfg.prior_lr, warmup,
                                                             cfg.prior_steps, cfg.prior_lr * 0.01)
                                 : optim::LrSchedule::constant(cfg.prior_lr, warmup);
  train::FlowMatchingTrainer<Net> trainer(net, cfg.convention, tc);
  const auto t0 = std::chrono::steady_clock::now();
  util::Progress bar("prior  ", cfg.prior_steps, cfg.progress);
  double running = 0;
  const Index every = std::max<Index>(1, cfg.prior_steps / 200);
  for (Index s = 0; s < cfg.prior_steps; ++s) {
    const auto st =
        trainer.step_with([&](MatrixView<S> b, Rng& g) { target.sample<S>(b, g); }, rng);
    running = s == 0 ? st.loss : 0.98 * running + 0.02 * st.loss;
    if (s % every == 0 || s + 1 == cfg.prior_steps) {
      r.train_step.push_back(double(s));
      r.train_loss.push_back(running);
    }
    char b[64];
    std::snprintf(b, sizeof b, "loss %.4f", running);
    bar.update(s + 1, b);
  }
  bar.finish();
  r.train_seconds = seconds_since(t0);
  r.checkpoint_path = out_dir + "/prior.ckpt.safetensors";
  io::save_checkpoint(r.checkpoint_path, trainer, net, rng,
                      {{"target", r.target}, {"width", std::to_string(cfg.width)},
                       {"depth", std::to_string(cfg.depth)}});
  const auto& ema = trainer.ema().weights();
  auto p = prior.parameters();
  for (Index i = 0; i < p.size; ++i) p[i] = static_cast<double>(ema[std::size_t(i)]);
}

}  // namespace detail

/// Runs the whole pipeline; writes `prior.ckpt.safetensors` (training checkpoint) and
/// `prior.safetensors` (the EMA prior's state dict) into out_dir (which must exist).
inline Toy2dResult run_toy2d(const Toy2dConfig& cfg, const std::string& out_dir) {
  cfg.validate();
  using Net = nn::AdaLNMlp<double>;
  const auto t_total = std::chrono::steady_clock::now();
  const Convention conv = cfg.convention;
  const data::ToyTarget target = data::ToyTarget::make(cfg.target);
  Toy2dResult r;
  r.target = target.name();
  r.exact_density = target.has_exact_density();

  Rng data_rng(cfg.seed * 7919 + 1);
  Eigen::MatrixXd reference(2, cfg.kde_samples);  // KDE, nearest distances, the data range
  target.sample<double>(MatrixView<double>(reference.data(), 2, reference.cols()), data_rng);
  const detail::TargetNll nll(target, reference, cfg.kde_bandwidth);

  // (a) Train the prior by flow matching (float or double), then evaluate its EMA in double.
  nn::AdaLNMlpConfig nc;
  nc.dim = 2;
  nc.width = cfg.width;
  nc.depth = cfg.depth;
  Net prior_net(nc);
  if (cfg.single_precision)
    detail::train_prior<float>(cfg, target, nc, out_dir, r, prior_net);
  else
    detail::train_prior<double>(cfg, target, nc, out_dir, r, prior_net);
  r.prior_path = out_dir + "/prior.safetensors";
  io::save_state_dict(prior_net, r.prior_path, io::Dtype::F32,
                      {{"convention", to_string(conv)}, {"target", r.target}});
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
      detail::align_run(Prior<nn::AdaLNMlp<float>>(prior_f, conv), conv, cfg, nll,
                        r.latents_start, cfg.seed * 7919 + 5, "align  ", r.latents_trained,
                        r.track_step, r.track_loss_trained, r.track_nll_trained);
    } else {
      detail::align_run(prior, conv, cfg, nll, r.latents_start, cfg.seed * 7919 + 5, "align  ",
                        r.latents_trained, r.track_step, r.track_loss_trained,
                        r.track_nll_trained);
    }
    if (exact) {
      std::vector<double> steps;
      detail::align_run(Prior<Exact>(*exact, Convention::Paper).as(conv), conv, cfg, nll,
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

/// Every number of a run, for metrics.json.
inline io::json::Out toy2d_metrics(const Toy2dConfig& cfg, const Toy2dResult& r) {
  using io::json::Out;
  auto idx = [](const std::vector<Index>& v) {
    Out a = Out::array();
    for (Index x : v) a.push(Out(x));
    return a;
  };
  auto vec = [](const std::vector<double>& v) { return Out::array(v.data(), v.size()); };
  Out config = Out::object();
  config.set("target", r.target)
      .set("seed", Out(static_cast<unsigned long>(cfg.seed)))
      .set("convention", to_string(cfg.convention))
      .set("width", cfg.width)
      .set("depth", cfg.depth)
      .set("prior_params", r.prior_params)
      .set("prior_steps", cfg.prior_steps)
      .set("batch", cfg.batch)
      .set("prior_draws", cfg.prior_draws)
      .set("prior_lr", cfg.prior_lr)
      .set("prior_schedule", cfg.prior_cosine ? "cosine" : "constant")
      .set("ema_decay", cfg.ema_decay)
      .set("precision", cfg.single_precision ? "float32" : "float64")
      .set("prior_time_group", cfg.prior_time_group)
      .set("align_time_group", cfg.align_time_group)
      .set("latents", cfg.latents)
      .set("align_steps", cfg.align_steps)
      .set("align_draws", cfg.align_draws)
      .set("align_lr", cfg.align_lr)
      .set("grid", cfg.grid)
      .set("landscape_draws", cfg.landscape_draws)
      .set("ode_tol", cfg.ode_tol);
  Out prior = Out::object();
  prior.set("train_seconds", r.train_seconds)
      .set("final_train_loss", r.train_loss.empty() ? 0.0 : r.train_loss.back())
      .set("heldout_nll_ode", r.heldout_nll_ode)
      .set("heldout_nll_target", r.heldout_nll_ref)
      .set("heldout_nll_target_kind", r.exact_density ? "exact" : "kde")
      .set("entropy_mc", r.entropy)
      .set("entropy_mc_se", r.entropy_se)
      .set("nll_gap_to_entropy", r.exact_density ? r.heldout_nll_ode - r.entropy
                                                 : r.heldout_nll_ode - r.heldout_nll_ref)
      .set("ode_nfe", r.ode_nfe)
      .set("eval_seconds", r.eval_seconds)
      .set("prior_samples_target_nll", r.prior_samples_nll)
      .set("checkpoint", r.checkpoint_path)
      .set("state_dict", r.prior_path)
      .set("train_curve_step", vec(r.train_step))
      .set("train_curve_loss", vec(r.train_loss));
  Out land = Out::object();
  land.set("range", Out::array().push(r.x0).push(r.x1).push(r.y0).push(r.y1))
      .set("grid", r.grid)
      .set("pearson_trained_vs_nll", r.pearson_trained)
      .set("spearman_trained_vs_nll", r.spearman_trained)
      .set("pearson_exact_vs_nll", r.pearson_exact)
      .set("spearman_exact_vs_nll", r.spearman_exact)
      .set("pearson_trained_vs_exact", r.pearson_trained_vs_exact);
  Out align = Out::object();
  align.set("start_nll", r.track_nll_trained.empty() ? 0.0 : r.track_nll_trained.front())
      .set("final_nll_trained", r.track_nll_trained.empty() ? 0.0 : r.track_nll_trained.back())
      .set("final_nll_exact", r.track_nll_exact.empty() ? std::numeric_limits<double>::quiet_NaN()
                                                        : r.track_nll_exact.back())
      .set("occupancy_trained", idx(r.occupancy_trained))
      .set("occupancy_exact", idx(r.occupancy_exact))
      .set("near_mode_trained", idx(r.near_trained))
      .set("near_mode_exact", idx(r.near_exact))
      .set("mean_distance_to_nearest_target_sample_trained", r.nn_distance_trained)
      .set("mean_distance_to_nearest_target_sample_exact", r.nn_distance_exact)
      .set("seconds", r.align_seconds)
      .set("curve_step", vec(r.track_step))
      .set("curve_loss_trained", vec(r.track_loss_trained))
      .set("curve_nll_trained", vec(r.track_nll_trained))
      .set("curve_loss_exact", vec(r.track_loss_exact))
      .set("curve_nll_exact", vec(r.track_nll_exact));
  Out doc = Out::object();
  doc.set("flowprior_version", FLOWPRIOR_VERSION_STRING)
      .set("config", config)
      .set("prior", prior)
      .set("landscape", land)
      .set("alignment", align)
      .set("total_seconds", r.total_seconds);
  return doc;
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
      r.exact_density ? (" (entropy " + std::to_string(r.entropy) + ")").c_str() : "", r.x0,
      r.x1, r.y0, r.y1, r.grid, r.grid, r.pearson_trained, r.spearman_trained, r.pearson_exact,
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
