/// @file
/// FlowMatchingTrainer: one training step of a flow prior (stage 1) on flat parameter vectors:
/// draw a batch of targets, draw (t, eps), evaluate the flow-matching loss and its parameter
/// gradients, clip the gradient norm, take an Adam/AdamW step at the scheduled learning rate, and
/// update the EMA of the weights (the EMA is the prior one freezes afterwards). The recipe of
/// the released prior is in docs/math/optim.md; the loss in docs/math/flow_matching.md.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <exception>
#include <flowprior/backend/checks.hpp>
#include <flowprior/backend/context.hpp>
#include <flowprior/core/check.hpp>
#include <flowprior/core/convention.hpp>
#include <flowprior/core/random.hpp>
#include <flowprior/core/size.hpp>
#include <flowprior/loss/draws.hpp>
#include <flowprior/loss/flow_loss.hpp>
#include <flowprior/optim/optimizer.hpp>
#include <flowprior/prior.hpp>
#include <flowprior/train/communicator.hpp>
#include <functional>
#include <limits>
#include <string>
#include <utility>
#include <vector>

namespace flowprior {
namespace train {

/// The parts of a training step that FlowMatchingTrainer and ReconstructionTrainer share (not a
/// namespace named detail: inside train it would hide flowprior::detail).
namespace step_parts {

/// Throws numeric_error "<where>: the training diverged at step <step> (the step was not applied;
/// ...): <cause>": the refusal of a step whose loss or gradient is not finite.
[[noreturn]] inline FLOWPRIOR_COLD void raise_diverged(const char* where, Index step,
                                                       const std::exception& cause) {
  flowprior::detail::raise<numeric_error>(
      std::string("[flowprior.numeric] ") + where + ": the training diverged at step " +
      std::to_string(step) +
      " (the step was not applied; parameters, optimizer and EMA are unchanged): " + cause.what());
}

/// The gradient norm before clipping: clip_grad_norm to `clip` (a finite clip) or grad_norm
/// (+inf: no clipping), on ctx. Throws numeric_error when it is not finite.
template <class S, class Backend>
double clipped_norm(typename Backend::Context& ctx, VectorView<S> g, double clip) {
  const double norm = std::isfinite(clip)
                          ? optim::clip_grad_norm<S, Backend>(ctx, g, clip)
                          : optim::grad_norm<S, Backend>(ctx, ConstVectorView<S>(g));
  if (!std::isfinite(norm))  // +inf clip: grad_norm does not throw
    flowprior::detail::raise<numeric_error>(
        "[flowprior.numeric] the gradient norm is not finite (" + short_number(norm) + ")");
  return norm;
}

/// The end of a data-parallel step (P > 1 ranks), after this rank's part, which threw `err` or
/// nothing: the exchange (GradientExchange::run: the gradient buf[0, n), the loss, `rows`, the
/// extra statistics), then this rank's own error rethrown, distributed_error when other ranks
/// failed ("... at step <step> ...; the step was applied on no rank"), and the clipping of the
/// averaged gradient, the same on every rank (so all clip, or all refuse with raise_diverged).
/// Returns the gradient norm before clipping.
template <class S, class Backend>
double exchange_and_clip(GradientExchange<S, Backend>& exchange, Communicator& comm,
                         typename Backend::Context& ctx, S* buf, Index n, double& loss,
                         const std::exception_ptr& err, Index rows, const char* what, Index step,
                         double clip, double* extra = nullptr, int n_extra = 0) {
  const int failed = exchange.run(comm, ctx, buf, loss, err != nullptr, rows, what, extra, n_extra);
  if (err) std::rethrow_exception(err);
  if (failed > 0)
    raise_distributed(what, comm.rank(),
                      std::to_string(failed) + " other rank(s) failed at step " +
                          std::to_string(step) +
                          " (their own error says why); the step was applied on no rank");
  try {
    return clipped_norm<S, Backend>(ctx, VectorView<S>(buf, n), clip);
  } catch (const numeric_error& e) {
    raise_diverged(what, step, e);
  }
}

/// The update of a step on context ctx: Adam(W) at rate lr on params with gradient g, then the
/// EMA of the new parameters.
template <class S, class Backend>
void apply_update(typename Backend::Context& ctx, optim::Adam<S, Backend>& adam,
                  optim::Ema<S, Backend>& ema, VectorView<S> params, ConstVectorView<S> g,
                  double lr) {
  using Context = typename Backend::Context;
  const LentContext<optim::Adam<S, Backend>, Context> lend_adam(adam, ctx);
  const LentContext<optim::Ema<S, Backend>, Context> lend_ema(ema, ctx);
  adam.step(params, g, lr);
  ema.update(params);
}

/// target <- the EMA weights (Backend::copy on ctx); shape_error naming `where` when the sizes
/// differ.
template <class S, class Backend>
void copy_ema(typename Backend::Context& ctx, const optim::Ema<S, Backend>& ema,
              VectorView<S> target, const char* where) {
  check_size(where, "target parameters", target, ema.size());
  Backend::copy(ctx, ConstMatrixView<S>(ema.weights_view().data, target.size, 1),
                MatrixView<S>(target.data, target.size, 1));
}

}  // namespace step_parts

/// Options of FlowMatchingTrainer. Defaults follow the released prior where it makes sense on a
/// CPU (batch 256, K = 4, mean reduction, clip 1.0, EMA 0.9999, betas (0.9, 0.95)).
struct TrainerConfig {
  Index batch = 256;                                  ///< target rows per step
  Index K = 4;                                        ///< draws per row ("flow_mul")
  loss::Reduction reduction = loss::Reduction::Mean;  ///< released: mean over rows and channels
  loss::TimeSampler sampler = loss::TimeSampler::uniform();
  bool antithetic = false;  ///< antithetic eps pairs (K even)
  Index time_group = 1;     ///< consecutive draws sharing t (time groups; 1 = one t per draw)
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
    if (!(schedule.base_lr <= optim::AdamConfig::max_lr))  // Adam::step would refuse it later
      raise_config(w, "schedule.base_lr must be <= AdamConfig::max_lr = " +
                          std::to_string(int(optim::AdamConfig::max_lr)) + ", got " +
                          short_number(schedule.base_lr));
    if (!(ema_decay >= 0 && ema_decay < 1)) raise_config(w, "ema_decay must lie in [0, 1)");
  }
};

/// Stops a training loop whose loss diverges (docs/errors.md "Divergence"). Feed it every step's
/// loss, in order; it keeps a running mean
///
///   running = loss_0 at the first step, then
///   running <- smoothing * running + (1 - smoothing) * loss
///
/// and observe() throws numeric_error "<what> diverged at step <s>: ..." naming the step, the loss
/// and the running mean when
///
///   - a loss is NaN or +-Inf, or
///   - running > factor * loss_0 (the first loss observed; only when loss_0 > 0).
///
/// factor = +inf keeps only the first rule. The state (loss_0, running) can be saved and
/// restored with set_state so that a resumed run applies exactly the same rule.
class DivergenceGuard {
 public:
  /// @param what       names the loop in messages ("prior training", "alignment")
  /// @param factor     > 1 (+inf: only non-finite losses stop the loop)
  /// @param smoothing  weight of the past in the running mean, in [0, 1)
  DivergenceGuard(std::string what, double factor, double smoothing)
      : what_(std::move(what)), factor_(factor), smoothing_(smoothing) {
    if (!(factor > 1))
      raise_config(
          "DivergenceGuard",
          "factor must be > 1 (+inf: stop on non-finite losses only), got " + short_number(factor));
    if (!(smoothing >= 0 && smoothing < 1))
      raise_config("DivergenceGuard",
                   "smoothing must lie in [0, 1), got " + short_number(smoothing));
  }

  /// Records the loss of step `step` (for the message only); throws numeric_error if the rule
  /// above says the loop diverged (the state is unchanged then).
  void observe(Index step, double loss) {
    if (!std::isfinite(loss)) fail(step, "the loss is " + short_number(loss));
    const double running = started_ ? smoothing_ * running_ + (1 - smoothing_) * loss : loss;
    const double initial = started_ ? initial_ : loss;
    if (!std::isfinite(running))
      fail(step, "the running mean of the loss overflowed (loss " + short_number(loss) + ")");
    if (initial > 0 && running > factor_ * initial)
      fail(step, "loss " + short_number(loss) + ", running mean " + short_number(running) + " > " +
                     short_number(factor_) + " x the first loss " + short_number(initial) +
                     " (divergence factor)");
    running_ = running;
    initial_ = initial;
    started_ = true;
  }

  /// The running mean (the first loss before any other; 0 before any observe).
  double running() const { return running_; }
  /// The first loss observed (0 before any observe).
  double initial() const { return initial_; }
  bool started() const { return started_; }
  double factor() const { return factor_; }

  /// Restores a saved state: the first loss and the running mean.
  void set_state(double initial, double running) {
    initial_ = initial;
    running_ = running;
    started_ = true;
  }

 private:
  [[noreturn]] FLOWPRIOR_COLD void fail(Index step, const std::string& why) const {
    flowprior::detail::raise<numeric_error>("[flowprior.numeric] " + what_ + " diverged at step " +
                                            std::to_string(step) + ": " + why);
  }

  std::string what_;
  double factor_, smoothing_;
  double initial_ = 0, running_ = 0;
  bool started_ = false;
};

/// What one step did.
struct StepStats {
  Index step = 0;        ///< steps taken so far (after this one)
  double loss = 0;       ///< flow-matching loss of this batch (before the update)
  double grad_norm = 0;  ///< gradient norm before clipping
  double lr = 0;         ///< learning rate used
};

/// Trains `field` in place (its parameters() are updated) in convention `conv`.
///
/// One context runs the step (docs/backends.md "Context"): the loss workspace's (its field
/// workspace's), to which the trainer also hands the batch gather and check, the gradient
/// zeroing, the clipping, the Adam step and the EMA update. set_context lends the caller's
/// instead. Matrices passed to the steps (targets, batches) are backend memory, as the field's
/// parameters are: the trainer reads their elements only through backend primitives.
///
/// Data-parallel training (docs/distributed.md): set_communicator makes the steps collective.
/// Every rank holds the same generator; each step's draws are those of the global batch of
/// batch x size() rows, of which rank r takes rows [r batch, (r + 1) batch); the gradients and
/// losses are averaged over the ranks with one all-reduce, so every rank takes the same update,
/// the one a single process would take with the global batch (up to the order of the sums).
template <class Field>
class FlowMatchingTrainer {
  static_assert(nn::check_trainable_field<Field>(),
                "FlowMatchingTrainer<Field>: Field is not a trainable velocity field "
                "(docs/fields.md)");

 public:
  using S = typename Field::Scalar;
  /// The backend of the field, on which the loss, the optimizer and the EMA run.
  using Backend = typename loss::LossWorkspace<Field>::Backend;
  using Context = typename Backend::Context;
  /// Fills a (dim, batch) matrix with target samples.
  using BatchSampler = std::function<void(MatrixView<S>, Rng&)>;

  FlowMatchingTrainer(Field& field, Convention conv, const TrainerConfig& cfg)
      : field_(field),
        conv_(conv),
        cfg_((cfg.validate(), cfg)),
        adam_(field.num_params(), cfg.adam),
        ema_(field.parameters(), cfg.ema_decay),
        batch_index_host_(static_cast<std::size_t>(cfg.batch)) {
    Backend::resize(grads_, checked_add("FlowMatchingTrainer", "parameters + slots",
                                        field.num_params(), Exchange::slots()));
    Backend::resize(batch_,
                    checked_mul("FlowMatchingTrainer", "dim x batch", field.dim(), cfg.batch));
    Backend::resize(batch_index_, cfg.batch);
  }

  /// One step on a batch drawn uniformly with replacement from the columns of `targets`: the
  /// column indices are drawn on the host from rng (one uniform01 per row of the batch), uploaded
  /// (Backend::copy_from_host) and gathered by Backend::gather_cols; no allocation once warmed.
  ///
  /// With a communicator of P ranks, every rank draws the batch x P indices of the global batch
  /// (the generator advances as for one process with batch x P) and gathers its slice.
  StepStats step(ConstMatrixView<S> targets, Rng& rng) {
    return step_impl(rng, [&]() -> ConstMatrixView<S> {
      const char* w = "FlowMatchingTrainer::step";
      check_shape(w, "targets", targets, field_.dim(), targets.cols);
      if (targets.cols == 0) raise_config(w, "targets must hold at least one sample");
      const Index global = cfg_.batch * comm().size();  // checked by set_communicator
      for (Index j = 0; j < global; ++j)                // host data: the indices, not the targets
        batch_index_host_[static_cast<std::size_t>(j)] =
            std::min<Index>(targets.cols - 1, Index(uniform01(rng) * double(targets.cols)));
      Backend::copy_from_host(batch_index_host_.data() + cfg_.batch * comm().rank(), cfg_.batch,
                              batch_index_);
      MatrixView<S> b = batch_view();
      Backend::gather_cols(ws_.context(), targets, batch_index_.data(), b);
      return b;
    });
  }

  /// One step on a batch produced by `sample` (e.g. an analytic target or a data loader). With a
  /// communicator of P ranks, `sample` fills the global batch (dim, batch x P) on every rank
  /// and the rank keeps its slice of columns.
  StepStats step_with(const BatchSampler& sample, Rng& rng) {
    return step_impl(rng, [&]() -> ConstMatrixView<S> {
      const MatrixView<S> all(batch_.data(), field_.dim(), cfg_.batch * comm().size());
      sample(all, rng);
      return ConstMatrixView<S>(batch_.data() + field_.dim() * cfg_.batch * comm().rank(),
                                field_.dim(), cfg_.batch);
    });
  }

  /// One step on the given batch (dim, any number of rows).
  ///
  /// A step whose loss or gradient is not finite is refused: numeric_error "... diverged at step
  /// N ...: the step was not applied", and the parameters, the optimizer and the EMA keep their
  /// values (the generator has advanced by the step's draws). The state is then still the last
  /// good one, and a checkpoint saved from it is loadable (docs/errors.md "Divergence").
  ///
  /// With a communicator of P ranks, `batch` is this rank's slice of a global batch of
  /// batch.cols x P rows (every rank passes the same number of rows) and the step is collective
  /// (docs/distributed.md): a rank whose part fails (bad batch, non-finite loss) rethrows its
  /// error after the all-reduce, the others throw distributed_error; no rank applies the step.
  StepStats step_on(ConstMatrixView<S> batch, Rng& rng) {
    return step_impl(rng, [&] { return batch; });
  }

  Index steps() const { return adam_.steps(); }
  /// The communicator the steps run on (a LocalCommunicator unless set_communicator was called).
  Communicator& communicator() const { return comm(); }

  /// Runs the steps on the ranks of `ranks` from now on (not owned: the caller keeps it alive
  /// while the trainer uses it); nullptr returns to one process. Collective: every rank calls it;
  /// rank 0's parameters, optimizer state and EMA are broadcast to the others (so the ranks
  /// start equal whatever their initialisation). Sizes the buffers for the global batch (batch
  /// x size()); config_error when that overflows or cannot fit. `opt`: the gradient sum in
  /// buckets during the backward (docs/distributed.md "Overlap"), where the field reports
  /// (both network fields do); config_error for a negative bucket.
  void set_communicator(Communicator* ranks, const ExchangeOptions& opt = {}) {
    const char* w = "FlowMatchingTrainer::set_communicator";
    opt.validate();
    Communicator* c = ranks ? ranks : &local_;
    const Index global = checked_mul(w, "batch x ranks", cfg_.batch, Index(c->size()));
    checked_resize(w, "the batch indices", batch_index_host_, global);
    Backend::resize(batch_, checked_mul(w, "dim x batch x ranks", field_.dim(), global));
    // Buckets only where the field reports its layers (else they would all start after it).
    exchange_.prepare(field_.num_params(), kReports ? opt.bucket : 0);
    comm_ = ranks;
    step_parts::broadcast_state<S, Backend>(*c, field_.parameters(), &adam_, &ema_, w);
  }
  const TrainerConfig& config() const { return cfg_; }
  Convention convention() const { return conv_; }
  optim::Adam<S, Backend>& optimizer() { return adam_; }
  const optim::Adam<S, Backend>& optimizer() const { return adam_; }
  optim::Ema<S, Backend>& ema() { return ema_; }
  const optim::Ema<S, Backend>& ema() const { return ema_; }

  /// The context the steps run on (the loss workspace's).
  Context& context() { return ws_.context(); }
  /// Runs the steps on `ctx` from now on (not owned: the caller keeps it alive while the trainer
  /// uses it); nullptr returns to the loss workspace's own.
  void set_context(Context* ctx) { ws_.set_context(ctx); }

  /// Copies the EMA weights into `target` (a field of the same configuration): the prior.
  /// Backend::copy on context(); throws shape_error if the parameter counts differ.
  void copy_ema_to(Field& target) {
    step_parts::copy_ema(ws_.context(), ema_, target.parameters(),
                         "FlowMatchingTrainer::copy_ema_to");
  }

 private:
  using Exchange = step_parts::GradientExchange<S, Backend>;
  static constexpr bool kReports = nn::reports_gradient_ready<typename Field::Workspace>::value;

  /// A step on the batch `prepare` returns (this rank's slice). One process: as it always was.
  /// P ranks: every failure before the all-reduce (the batch, its checks, the draws, the loss)
  /// becomes this rank's failure flag in the all-reduce, so no rank waits for a rank that threw.
  template <class Prepare>
  StepStats step_impl(Rng& rng, Prepare&& prepare) {
    const char* w = "FlowMatchingTrainer::step";
    const int P = comm().size();
    Context& ctx = ws_.context();
    const Index n = field_.num_params();
    VectorView<S> g(grads_.data(), n);
    StepStats st;
    std::exception_ptr err;
    Index rows = 0;
    try {
      const ConstMatrixView<S> batch = prepare();
      check_shape(w, "batch", batch, field_.dim(), batch.cols);
      check_finite_on<Backend, S>(ctx, w, "batch", batch);  // bad data, not a divergence
      rows = batch.cols;
      {
        const LentContext<loss::FlowDraws<S, Backend>, Context> lend_draws(draws_, ctx);
        const loss::DrawShard shard{rows * comm().rank(), rows * P};
        loss::draw(draws_, conv_, rows, field_.dim(), cfg_.K, cfg_.sampler, rng, cfg_.antithetic,
                   cfg_.time_group, shard);
      }
      Backend::fill(ctx, MatrixView<S>(grads_.data(), n, 1), S(0));
      const Prior<Field> prior(field_, conv_);
      const step_parts::OverlapScope<typename Field::Workspace, S, Backend> overlap(
          ws_.prior.field, exchange_, comm(), grads_.data());
      try {
        st.loss = loss::flow_matching_loss(prior, conv_, batch, draws_, cfg_.reduction, ws_, g);
        if (P == 1) st.grad_norm = step_parts::clipped_norm<S, Backend>(ctx, g, cfg_.clip_norm);
      } catch (const numeric_error& e) {
        // Non-finite values in the loss or the gradient: nothing has been modified yet.
        step_parts::raise_diverged(w, adam_.steps() + 1, e);
      }
    } catch (...) {
      if (P == 1) throw;
      err = std::current_exception();
    }
    if (P > 1)
      st.grad_norm =
          step_parts::exchange_and_clip(exchange_, comm(), ctx, grads_.data(), n, st.loss, err,
                                        rows, w, adam_.steps() + 1, cfg_.clip_norm);
    st.lr = cfg_.schedule.at(adam_.steps());
    step_parts::apply_update(ctx, adam_, ema_, field_.parameters(), ConstVectorView<S>(g), st.lr);
    st.step = adam_.steps();
    return st;
  }

  MatrixView<S> batch_view() { return {batch_.data(), field_.dim(), cfg_.batch}; }

  Field& field_;
  Convention conv_;
  TrainerConfig cfg_;
  optim::Adam<S, Backend> adam_;
  optim::Ema<S, Backend> ema_;
  typename Backend::template Buffer<S> grads_;
  typename Backend::template Buffer<S> batch_;            ///< the batch step() gathers
  std::vector<Index> batch_index_host_;                   ///< its column indices, drawn on the host
  typename Backend::template Buffer<Index> batch_index_;  ///< the same, uploaded
  loss::FlowDraws<S, Backend> draws_;
  loss::LossWorkspace<Field> ws_;
  mutable LocalCommunicator local_;
  Communicator* comm_ = nullptr;  ///< not owned; nullptr: local_
  Exchange exchange_;

  Communicator& comm() const { return comm_ ? *comm_ : local_; }
};

}  // namespace train
}  // namespace flowprior
