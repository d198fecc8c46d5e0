// The options of the image latent-alignment pipeline (examples/30_image_pipeline.cpp), its
// presets, and the identity of each stage: the options a stage's output depends on, recorded
// with the output so that a later run skips the stage when they are equal and refuses to mix
// outputs of other options (docs/image_pipeline.md "Stages and resuming").
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <flowprior/core/check.hpp>
#include <flowprior/core/error.hpp>
#include <flowprior/core/types.hpp>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace flowprior {
namespace image_pipeline {

/// Exact text of a double (shortest of 15..17 significant digits that reads back equal).
inline std::string exact_text(double x) {
  char b[40];
  for (int digits = 15; digits <= 17; ++digits) {
    std::snprintf(b, sizeof b, "%.*g", digits, x);
    if (std::strtod(b, nullptr) == x) break;
  }
  return b;
}

/// The pipeline's options. Stage by stage:
///   classifier: an MLP on the pixels (semantic target, feature space of the Frechet distances)
///   target-*:   target samples (gaussian | pca | classifier | features:FILE) and a flow prior
///   ae-*:       autoencoders: plain (lambda 0), kl (Gaussian posterior), align-<target>-<lambda>
///   gen-*:      a MAR generator with a per-token flow head on each autoencoder's latents
struct PipelineConfig {
  // ---- data
  std::string data;           ///< MNIST-family folder (the default data set)
  std::string imagenet;       ///< ImageNet-style root (train/<class>/..., val/<class>/...); wins
  Index image_size = 28;      ///< ImageNet-style: the side after resize + crop
  Index eval_images = 2000;   ///< held-out images for PSNR, rFID-like, probe test, gFID-like
  Index probe_images = 5000;  ///< training images whose latents fit the linear probe
  Index latent_pool = 10000;  ///< training images encoded for the generator's training set
  int loader_threads = 1;
  std::uint64_t seed = 0;

  // ---- classifier (MLP on pixels)
  std::vector<Index> cls_hidden = {256, 128};
  Index cls_steps = 1500, cls_batch = 128;
  double cls_lr = 2e-3;

  // ---- targets and priors
  std::vector<std::string> targets = {"classifier"};  ///< one aligned autoencoder per target
  Index target_samples = 20000;  ///< samples drawn/made per target (10% held out for the NLL)
  Index pca_images = 2000;       ///< images whose patches fit the PCA target
  Index prior_width = 128, prior_depth = 2, prior_steps = 1500, prior_batch = 256;
  double prior_lr = 1e-3;
  Index nll_points = 1000;  ///< held-out target points (and latents) scored by the ODE

  // ---- autoencoders
  Index patch = 4, width = 96, depth = 2, heads = 4, latent_tokens = 16, latent_dim = 8;
  Index ae_steps = 600, ae_batch = 64, ae_warmup = 60;
  double ae_lr = 2e-3, ae_ema = 0.99;
  std::vector<double> lambdas = {0.01};  ///< alignment weights (the paper's 2b sweep: 4 values)
  Index align_draws = 4;                 ///< K (t, eps) draws per latent token
  bool plain = true, kl = true;          ///< the two baselines
  double kl_beta = 1e-3;                 ///< weight of the mean KL per latent element
  Index log_every = 25;                  ///< steps between logged points (and kNN probes)
  Index knn_latents = 256;               ///< latents per kNN probe (Fig. 4)

  // ---- generator (MAR with a per-token flow head)
  Index gen_width = 128, gen_depth = 2, gen_heads = 4, gen_head_width = 128, gen_head_depth = 2;
  Index gen_steps = 1000, gen_batch = 64;
  double gen_lr = 1e-3;
  Index gen_samples = 1000;  ///< images generated for the gFID-like distance
  Index sample_iters = 8;    ///< masked autoregressive steps
  Index ode_steps = 20;      ///< Heun steps per sampled token

  // ---- run
  std::string out = "image_pipeline_out";
  std::vector<std::string> stages = {"classifier", "target", "ae", "gen"};
  std::vector<std::string> redo;  ///< stages recomputed even when their output exists
  Index grid = 10;
  Index stop_at = 0;  ///< stop each training stage when it reaches this step (0: never)
  bool quiet = false;
  std::string preset = "default";

  bool use_imagenet() const { return !imagenet.empty(); }

  /// The 2-core default, the smoke preset (seconds, for the tests) and the paper's sizes.
  static PipelineConfig preset_named(const std::string& name);

  bool runs(const std::string& stage) const {
    for (const auto& s : stages)
      if (s == stage) return true;
    return false;
  }
  /// The last stage --stages names, in pipeline order (0 classifier, 1 target, 2 ae, 3 gen):
  /// later ones are not run; earlier ones it does not name must be done already.
  int last_stage() const {
    int last = -1;
    const char* order[] = {"classifier", "target", "ae", "gen"};
    for (int i = 0; i < 4; ++i)
      if (runs(order[i])) last = i;
    return last;
  }
  bool redoes(const std::string& stage) const {
    for (const auto& s : redo)
      if (s == stage || s == "all") return true;
    return false;
  }

  /// Every check that needs no data (config_error naming the option).
  void validate() const;
};

inline PipelineConfig PipelineConfig::preset_named(const std::string& name) {
  PipelineConfig c;
  c.preset = name;
  if (name == "default") return c;
  if (name == "smoke") {
    c.eval_images = 64;
    c.probe_images = 64;
    c.latent_pool = 128;
    c.cls_hidden = {32};
    c.cls_steps = 20;
    c.cls_batch = 32;
    c.target_samples = 400;
    c.pca_images = 50;
    c.prior_width = 16;
    c.prior_depth = 1;
    c.prior_steps = 20;
    c.prior_batch = 32;
    c.nll_points = 16;
    c.width = 16;
    c.depth = 1;
    c.heads = 2;
    c.latent_tokens = 4;
    c.latent_dim = 4;
    c.ae_steps = 8;
    c.ae_batch = 8;
    c.ae_warmup = 2;
    c.log_every = 2;
    c.knn_latents = 16;
    c.gen_width = 16;
    c.gen_depth = 1;
    c.gen_heads = 2;
    c.gen_head_width = 16;
    c.gen_head_depth = 1;
    c.gen_steps = 8;
    c.gen_batch = 8;
    c.gen_samples = 32;
    c.sample_iters = 2;
    c.ode_steps = 4;
    c.grid = 4;
    return c;
  }
  if (name == "paper") {
    // ImageNet at 256 x 256 with the paper's sizes and schedules (docs/image_pipeline.md "The
    // paper preset"): ViT-L autoencoders (patch 16, 64 tokens x 32 dims) for 50 epochs at batch
    // 256; the flow prior (width 1024, depth 6) for 1M steps at batch 256, lr 1e-4; a MAR-B-sized
    // generator (width 768, 24 blocks, head 1024 x 6) for 400 epochs at batch 2048, lr 8e-4.
    c.image_size = 256;
    c.eval_images = 10000;
    c.probe_images = 10000;
    c.latent_pool = 100000;
    c.cls_hidden = {1024, 512};
    c.cls_steps = 20000;
    c.cls_batch = 256;
    c.target_samples = 1000000;
    c.pca_images = 1000;
    c.prior_width = 1024;
    c.prior_depth = 6;
    c.prior_steps = 1000000;
    c.prior_batch = 256;
    c.prior_lr = 1e-4;
    c.nll_points = 2000;
    c.patch = 16;
    c.width = 1024;
    c.depth = 24;
    c.heads = 16;
    c.latent_tokens = 64;
    c.latent_dim = 32;
    c.ae_steps = 250000;
    c.ae_batch = 256;
    c.ae_warmup = 5000;
    c.ae_lr = 1e-4;
    c.ae_ema = 0.9999;
    c.log_every = 1000;
    c.knn_latents = 4096;
    c.gen_width = 768;
    c.gen_depth = 24;
    c.gen_heads = 12;
    c.gen_head_width = 1024;
    c.gen_head_depth = 6;
    c.gen_steps = 250000;
    c.gen_batch = 2048;
    c.gen_lr = 8e-4;
    c.gen_samples = 10000;
    c.sample_iters = 64;
    c.ode_steps = 50;
    return c;
  }
  raise_config("image pipeline", "--preset must be default, smoke or paper, got '" + name + "'");
}

inline void PipelineConfig::validate() const {
  const char* w = "image pipeline";
  auto at_least = [&](const char* opt, Index v, Index lo) {
    if (v < lo) raise_config(w, std::string(opt) + " must be >= " + std::to_string(lo));
  };
  auto positive_real = [&](const char* opt, double v) {
    if (!(v > 0) || !std::isfinite(v)) raise_config(w, std::string(opt) + " must be > 0");
  };
  at_least("--eval-images", eval_images, 2);
  at_least("--probe-images", probe_images, 2);
  at_least("--latent-pool", latent_pool, 2);
  at_least("--cls-steps", cls_steps, 1);
  at_least("--cls-batch", cls_batch, 1);
  if (cls_hidden.empty()) raise_config(w, "--cls-hidden needs at least one width");
  for (Index h : cls_hidden) at_least("--cls-hidden", h, 1);
  positive_real("--cls-lr", cls_lr);
  at_least("--target-samples", target_samples, 20);
  at_least("--pca-images", pca_images, 2);
  at_least("--prior-width", prior_width, 1);
  at_least("--prior-depth", prior_depth, 1);
  at_least("--prior-steps", prior_steps, 1);
  at_least("--prior-batch", prior_batch, 1);
  positive_real("--prior-lr", prior_lr);
  at_least("--nll-points", nll_points, 1);
  at_least("--ae-steps", ae_steps, 1);
  at_least("--ae-batch", ae_batch, 1);
  if (ae_warmup < 0 || ae_warmup >= ae_steps)
    raise_config(w, "--ae-warmup must lie in [0, --ae-steps)");
  positive_real("--ae-lr", ae_lr);
  if (!(ae_ema >= 0 && ae_ema < 1)) raise_config(w, "--ae-ema must lie in [0, 1)");
  at_least("--align-draws", align_draws, 1);
  if (!(kl_beta >= 0) || !std::isfinite(kl_beta)) raise_config(w, "--kl-beta must be >= 0");
  for (double l : lambdas)
    if (!(l > 0) || !std::isfinite(l))
      raise_config(w, "--lambdas must be > 0 (the plain autoencoder is lambda 0)");
  if (lambdas.empty() && !targets.empty())
    raise_config(w, "--lambdas needs at least one value when --targets names a target");
  at_least("--log-every", log_every, 1);
  at_least("--knn-latents", knn_latents, 1);
  at_least("--gen-steps", gen_steps, 1);
  at_least("--gen-batch", gen_batch, 1);
  positive_real("--gen-lr", gen_lr);
  at_least("--gen-samples", gen_samples, 2);
  at_least("--sample-iters", sample_iters, 1);
  at_least("--ode-steps", ode_steps, 1);
  at_least("--grid", grid, 1);
  if (grid > 64) raise_config(w, "--grid must be <= 64");
  if (sample_iters > latent_tokens)
    raise_config(w, "--sample-iters must be <= --latent-tokens (one token at least per step)");
  if (stop_at < 0) raise_config(w, "--stop-at must be >= 0 (0: run to the end)");
  if (loader_threads < 0) raise_config(w, "--loader-threads must be >= 0");
  if (use_imagenet() && (image_size < 8 || image_size > 1024))
    raise_config(w, "--image-size must lie in [8, 1024]");
  for (const auto& t : targets) {
    if (t == "gaussian" || t == "pca" || t == "classifier") continue;
    if (t.rfind("features:", 0) == 0 && t.size() > 9) continue;
    raise_config(
        w, "--targets: unknown target '" + t +
               "' (gaussian, pca, classifier, features:FILE.npy, features:FILE.safetensors or "
               "features:FILE.safetensors:TENSOR)");
  }
  for (const auto& s : stages)
    if (s != "classifier" && s != "target" && s != "ae" && s != "gen")
      raise_config(w, "--stages: unknown stage '" + s + "' (classifier, target, ae, gen)");
  for (const auto& s : redo)
    if (s != "classifier" && s != "target" && s != "ae" && s != "gen" && s != "all")
      raise_config(w, "--redo: unknown stage '" + s + "' (classifier, target, ae, gen, all)");
  if (targets.empty() && !plain && !kl) raise_config(w, "no autoencoder to train");
}

/// Thrown when --stop-at stops a training stage (its checkpoint saved): the run ends there,
/// and the same command continues it.
struct Stopped {
  std::string stage;
  Index step;
};

/// The file and the tensor name of a "features:FILE" or "features:FILE.safetensors:TENSOR"
/// target (the tensor is empty when not given: a .npy file, or a safetensors file of one tensor).
inline std::pair<std::string, std::string> features_source(const std::string& t) {
  const std::string rest = t.substr(9);
  const std::string ext = ".safetensors:";
  const auto at = rest.rfind(ext);
  if (at == std::string::npos) return {rest, ""};
  return {rest.substr(0, at + ext.size() - 1), rest.substr(at + ext.size())};
}

/// A target's folder-safe name: "features:/a/b.npy" -> "features-b",
/// "features:/a/b.safetensors:x" -> "features-b-x".
inline std::string target_slug(const std::string& t) {
  if (t.rfind("features:", 0) != 0) return t;
  const auto src = features_source(t);
  std::string file = src.first;
  const auto slash = file.find_last_of('/');
  if (slash != std::string::npos) file = file.substr(slash + 1);
  const auto dot = file.find_last_of('.');
  if (dot != std::string::npos) file = file.substr(0, dot);
  if (!src.second.empty()) file += "-" + src.second;
  std::string s = "features-";
  for (char c : file) s += (std::isalnum(static_cast<unsigned char>(c)) || c == '-') ? c : '_';
  return s;
}

}  // namespace image_pipeline
}  // namespace flowprior
