/// @file
/// FlowMatchingTrainer: one training step of a flow prior (stage 1) on flat parameter vectors:
/// draw a batch of targets, draw (t, eps), evaluate the flow-matching loss and its parameter
/// gradients, clip the gradient norm, take an Adam/AdamW step at the scheduled learning rate, and
/// update the EMA of the weights (the EMA is the prior one freezes afterwards). The recipe of
/// the released prior is in docs/math/optim.md; the loss in docs/math/flow_matching.md.
#pragma once

#include <algorithm>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include <flowprior/core/check.hpp>
#include <flowprior/core/convention.hpp>
#include <flowprior/core/random.hpp>
#include <flowprior/loss/draws.hpp>
#include <flowprior/loss/flow_loss.hpp>
#include <flowprior/optim/optimizer.hpp>
#include <flowprior/prior.hpp>

namespace flowprior {
namespace train {

/// Options of FlowMatchingTrainer. Defaults follow the released prior where it makes sense on a
/// CPU (batch 256, K = 4, mean reduction, clip 1.0, EMA 0.9999, betas (0.9, 0.95)).
struct TrainerConfig {
  Index batch = 256;                                    ///< target rows per step
  Index K = 4;                                          ///< draws per row ("flow_mul")
  loss::Reduction reduction = loss::Reduction::Mean;    ///< released: mean over rows and channels
  loss::TimeSampler sampler = loss::TimeSampler::uniform();
  bool antithetic = false;                              ///< antithetic eps pairs (K even)
  Index time_group = 1;  ///< consecutive draws sharing t (time groups; 1 = one t per draw)
  /// Adam(W) betas, eps and weight decay. Its `lr` is not used: the schedule sets every step's
  /// learning rate.
  optim::AdamConfig adam = {1e-4, 0.9, 0.95, 1e-8, 0.0, true};
  optim::LrSchedule schedule = optim::LrSchedule::constant(1e-4);  ///< learning rate per step
  double clip_norm = 1.0;     ///< global gradient-norm clip; +inf disables clipping
  double ema_decay = 0.9999;  ///< EMA of the weights

  void validate() const {
    const char* w = "TrainerConfig";
    if (batch <= 0) raise_config(w, "batch must be positive, got " + std::to_string(batch));
    if (K <= 0) raise_config(w, "K must be positive, got " + std::to_string(K));
    if (antithetic && K % 2) raise_config(w, "antithetic draws need an even K");
    if (time_group <= 0) raise_config(w, "time_group must be >= 1");
    if (!(clip_norm > 0)) raise_config(w, "clip_norm must be > 0 (use +inf to disable)");
    sampler.validate();
    adam.validate();
    schedule.validate();
    if (!(ema_decay >= 0 && ema_decay < 1)) raise_config(w, "ema_decay must lie in [0, 1)");
  }
};

/// What one step did.
struct StepStats {
  Index step = 0;          ///< steps taken so far (after this one)
  double loss = 0;         ///< flow-matching loss of this batch (before the update)
  double grad_norm = 0;    ///< gradient norm before clipping
  double lr = 0;           ///< learning rate used
};

/// Trains `field` in place (its parameters() are updated) in convention `conv`.
template <class Field>
class FlowMatchingTrainer {
 public:
  using S = typename Field::Scalar;
  /// Fills a (dim, batch) matrix with target samples.
  using BatchSampler = std::function<void(MatrixView<S>, Rng&)>;

  FlowMatchingTrainer(Field& field, Convention conv, const TrainerConfig& cfg)
      : field_(field),
        conv_(conv),
        cfg_((cfg.validate(), cfg)),
        adam_(field.num_params(), cfg.adam),
        ema_(field.parameters(), cfg.ema_decay),
        grads_(static_cast<std::size_t>(field.num_params())),
        batch_(static_cast<std::size_t>(field.dim() * cfg.batch)) {}

  /// One step on a batch drawn uniformly with replacement from the columns of `targets`.
  StepStats step(ConstMatrixView<S> targets, Rng& rng) {
    const char* w = "FlowMatchingTrainer::step";
    check_shape(w, "targets", targets, field_.dim(), targets.cols);
    if (targets.cols == 0) raise_config(w, "targets must hold at least one sample");
    MatrixView<S> b = batch_view();
    for (Index j = 0; j < cfg_.batch; ++j) {
      const Index src = std::min<Index>(targets.cols - 1,
                                        Index(uniform01(rng) * double(targets.cols)));
      for (Index i = 0; i < field_.dim(); ++i) b(i, j) = targets(i, src);
    }
    return step_on(b, rng);
  }

  /// One step on a batch produced by `sample` (e.g. an analytic target or a data loader).
  StepStats step_with(const BatchSampler& sample, Rng& rng) {
    MatrixView<S> b = batch_view();
    sample(b, rng);
    return step_on(b, rng);
  }

  /// One step on the given batch (dim, any number of rows).
  StepStats step_on(ConstMatrixView<S> batch, Rng& rng) {
    const char* w = "FlowMatchingTrainer::step";
    check_shape(w, "batch", batch, field_.dim(), batch.cols);
    loss::draw(draws_, conv_, batch.cols, field_.dim(), cfg_.K, cfg_.sampler, rng,
               cfg_.antithetic, cfg_.time_group);
    std::fill(grads_.begin(), grads_.end(), S(0));
    VectorView<S> g(grads_.data(), Index(grads_.size()));
    const Prior<Field> prior(field_, conv_);
    StepStats st;
    st.loss = loss::flow_matching_loss(prior, conv_, batch, draws_, cfg_.reduction, ws_, g);
    st.grad_norm = std::isfinite(cfg_.clip_norm) ? optim::clip_grad_norm(g, cfg_.clip_norm)
                                                 : optim::grad_norm<S>(g);
    st.lr = cfg_.schedule.at(adam_.steps());
    adam_.step(field_.parameters(), g, st.lr);
    ema_.update(field_.parameters());
    st.step = adam_.steps();
    return st;
  }

  Index steps() const { return adam_.steps(); }
  const TrainerConfig& config() const { return cfg_; }
  Convention convention() const { return conv_; }
  optim::Adam<S>& optimizer() { return adam_; }
  const optim::Adam<S>& optimizer() const { return adam_; }
  optim::Ema<S>& ema() { return ema_; }
  const optim::Ema<S>& ema() const { return ema_; }

  /// Copies the EMA weights into `target` (a field of the same configuration): the prior.
  void copy_ema_to(Field& target) const {
    check_size("FlowMatchingTrainer::copy_ema_to", "target parameters", target.parameters(),
               Index(ema_.weights().size()));
    auto p = target.parameters();
    for (Index i = 0; i < p.size; ++i) p[i] = ema_.weights()[std::size_t(i)];
  }

 private:
  MatrixView<S> batch_view() { return {batch_.data(), field_.dim(), cfg_.batch}; }

  Field& field_;
  Convention conv_;
  TrainerConfig cfg_;
  optim::Adam<S> adam_;
  optim::Ema<S> ema_;
  std::vector<S> grads_;
  std::vector<S> batch_;
  loss::FlowDraws<S> draws_;
  loss::LossWorkspace<Field> ws_;
};

}  // namespace train
}  // namespace flowprior
