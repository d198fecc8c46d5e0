/// @file
/// LatentAlignmentLoss: the alignment loss as a term of an autoencoder's objective (stage 2 of
/// the method inside the image pipeline): lambda L_align(y) on every latent token y of a batch,
/// under a frozen flow prior, with fresh (t, eps) draws each call. It is the latent loss that
/// train::ReconstructionTrainer::step takes: it accumulates lambda dL_align/dy into the trainer's
/// d_y, which the tokenizer's backward adds to the decoder's gradient (docs/math/tokenizer.md
/// "Reconstruction training", docs/math/alignment.md).
///
/// Time convention: the caller's `conv` (the convention of the draws and the loss); the prior
/// carries the convention it was trained in and is reversed when they differ (prior.hpp). Both
/// are explicit in the constructor.
///
/// Randomness: the draws come from the caller's generator (held by reference), so a checkpoint
/// that saves that generator (train::save_checkpoint's `rng`) resumes with the same draws.
#pragma once

#include <cmath>
#include <flowprior/backend/context.hpp>
#include <flowprior/core/check.hpp>
#include <flowprior/core/convention.hpp>
#include <flowprior/core/random.hpp>
#include <flowprior/loss/draws.hpp>
#include <flowprior/loss/flow_loss.hpp>
#include <flowprior/prior.hpp>
#include <flowprior/train/communicator.hpp>
#include <string>

namespace flowprior {
namespace train {

/// Options of LatentAlignmentLoss. Defaults: the released code's (lambda 0.01, K 4, mean over
/// rows and channels, uniform t, the full gradient).
struct LatentAlignmentConfig {
  double weight = 0.01;  ///< lambda >= 0 (0: the term is skipped, nothing drawn)
  Index K = 4;           ///< (t, eps) draws per latent token and call
  loss::TimeSampler sampler = loss::TimeSampler::uniform();
  loss::Reduction reduction = loss::Reduction::Mean;  ///< released: mean over rows and channels
  bool detach_pred_v = false;  ///< drop the J^T r term (released `detach_pred_v`)
  Index time_group = 1;        ///< consecutive draws sharing t (1 = one t per draw)

  /// Throws config_error naming the field.
  void validate() const {
    const char* w = "LatentAlignmentConfig";
    if (!(std::isfinite(weight) && weight >= 0))
      raise_config(w, "weight must be finite and >= 0, got " + short_number(weight));
    if (K <= 0) raise_config(w, "K must be positive, got " + std::to_string(K));
    if (time_group <= 0) raise_config(w, "time_group must be >= 1");
    sampler.validate();
  }
};

/// lambda L_align on latents, as a callable for ReconstructionTrainer::step (its LatentLoss):
/// @code
///   train::LatentAlignmentLoss<nn::AdaLNMlp<float>> align(prior, Convention::Paper, cfg, rng);
///   trainer.step(x, std::ref(align));      // or [&](auto y, auto d_y, auto& c) { ... }
/// @endcode
/// The prior's field must outlive this object and must not change while it is used (it is
/// frozen: nothing here updates it). One context runs each call: the one the caller passes (the
/// trainer's), lent to the draws and the loss workspace for the call.
template <class Field>
class LatentAlignmentLoss {
 public:
  using S = typename Field::Scalar;
  using Backend = typename loss::LossWorkspace<Field>::Backend;
  using Context = typename Backend::Context;

  /// @param prior  the frozen prior (e.g. the EMA weights of a trained field), in the convention
  ///               it was trained in; viewed in `conv` (Prior::as) for the loss
  /// @param conv   the convention of the draws and the loss
  /// @param rng    the generator of the draws (held by reference)
  /// Throws config_error from cfg.validate().
  LatentAlignmentLoss(const Prior<Field>& prior, Convention conv, const LatentAlignmentConfig& cfg,
                      Rng& rng)
      : prior_(prior.as(conv)), conv_(conv), cfg_((cfg.validate(), cfg)), rng_(rng) {
    opt_.reduction = cfg_.reduction;
    opt_.weight = cfg_.weight;
    opt_.detach_pred_v = cfg_.detach_pred_v;
  }

  /// Draws K (t, eps) per column of y (dim, N: every latent token a column), and returns
  /// lambda L_align(y), accumulating lambda dL_align/dy into d_y (dim, N). With weight 0 it
  /// returns 0 and draws nothing. Throws what alignment_loss throws: shape_error (y or d_y not
  /// (prior.dim(), N)), numeric_error (non-finite y or loss).
  double operator()(ConstMatrixView<S> y, MatrixView<S> d_y, Context& ctx) {
    last_ = 0;
    if (cfg_.weight == 0) return 0;
    const LentContext<loss::FlowDraws<S, Backend>, Context> lend_draws(draws_, ctx);
    const LentContext<loss::LossWorkspace<Field>, Context> lend_ws(ws_, ctx);
    check_shape("LatentAlignmentLoss", "y", y, prior_.dim(), y.cols);
    const int P = comm_ ? comm_->size() : 1, r = comm_ ? comm_->rank() : 0;
    const loss::DrawShard shard{y.cols * r, y.cols * P};
    loss::draw(draws_, conv_, y.cols, prior_.dim(), cfg_.K, cfg_.sampler, rng_, false,
               cfg_.time_group, shard);
    const double total =
        loss::alignment_loss(prior_, conv_, y, draws_, opt_, ws_, VectorView<S>(), d_y);
    last_ = total / cfg_.weight;
    return total;
  }

  /// Data-parallel training (docs/distributed.md): with the trainer's communicator, the draws of
  /// rank r are the slice [r N, (r + 1) N) of the draws for the N x size() latent columns of
  /// the global batch (every rank's y has the same N). Only rank() and size() are read: the loss
  /// communicates nothing (the trainer averages the gradient). nullptr: one process.
  void set_communicator(const Communicator* ranks) { comm_ = ranks; }

  /// L_align of the last call without the weight (0 before the first, or with weight 0).
  double last_unweighted() const { return last_; }
  const LatentAlignmentConfig& config() const { return cfg_; }
  Convention convention() const { return conv_; }
  /// The prior as the loss sees it: in convention(), reversed if it was trained in the other.
  const Prior<Field>& prior() const { return prior_; }

 private:
  Prior<Field> prior_;
  Convention conv_;
  LatentAlignmentConfig cfg_;
  Rng& rng_;
  loss::AlignmentOptions opt_;
  loss::FlowDraws<S, Backend> draws_;
  loss::LossWorkspace<Field> ws_;
  double last_ = 0;
  const Communicator* comm_ = nullptr;  ///< not owned; nullptr: one process
};

}  // namespace train
}  // namespace flowprior
