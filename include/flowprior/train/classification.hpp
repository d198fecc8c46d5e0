/// @file
/// ClassifierTrainer: one training step of a classifier (nn::MlpClassifier) on flat parameter
/// vectors: forward, the softmax cross-entropy of the logits against the labels and its gradient,
/// the backward pass, a global gradient-norm clip, an AdamW step at the scheduled learning rate
/// and, optionally, an update of the EMA of the weights; and evaluate(), the mean loss and the
/// accuracy of a model over a data set in batches. Equations: docs/math/classifier.md
/// "Training"; the optimizer parts: docs/math/optim.md. Time conventions do not enter.
///
/// Every element of backend memory is touched through primitives on one context (the model
/// workspace's, or the caller's: set_context); a warmed-up step (a batch size seen before)
/// allocates nothing.
#pragma once

#include <cmath>
#include <exception>
#include <flowprior/backend/checks.hpp>
#include <flowprior/backend/context.hpp>
#include <flowprior/core/check.hpp>
#include <flowprior/core/error.hpp>
#include <flowprior/core/size.hpp>
#include <flowprior/core/types.hpp>
#include <flowprior/nn/classifier.hpp>
#include <flowprior/optim/optimizer.hpp>
#include <flowprior/train/communicator.hpp>
#include <flowprior/train/trainer.hpp>
#include <string>

namespace flowprior {
namespace train {

/// Options of ClassifierTrainer. The defaults: AdamW with betas (0.9, 0.999) and weight decay
/// 1e-4, a constant rate of 1e-3 (set a warmup + cosine schedule with
/// optim::LrSchedule::cosine), clip 1.0, no EMA.
struct ClassifierTrainerConfig {
  /// Adam(W) betas, eps, weight decay and mode. Its `lr` is not used: the schedule sets every
  /// step's learning rate.
  optim::AdamConfig adam = {1e-3, 0.9, 0.999, 1e-8, 1e-4, true};
  optim::LrSchedule schedule = optim::LrSchedule::constant(1e-3);  ///< learning rate per step
  double clip_norm = 1.0;  ///< global gradient-norm clip; +inf disables clipping
  bool use_ema = false;    ///< keep an EMA of the weights (copy_ema_to)
  double ema_decay = 0.999;

  /// Throws config_error naming the first invalid field.
  void validate() const {
    const char* w = "ClassifierTrainerConfig";
    if (!(clip_norm > 0)) raise_config(w, "clip_norm must be > 0 (use +inf to disable)");
    adam.validate();
    schedule.validate();
    if (!(schedule.base_lr <= optim::AdamConfig::max_lr))
      raise_config(w, "schedule.base_lr must be <= AdamConfig::max_lr = " +
                          short_number(optim::AdamConfig::max_lr) + ", got " +
                          short_number(schedule.base_lr));
    if (!(ema_decay >= 0 && ema_decay < 1))
      raise_config(w, "ema_decay must lie in [0, 1), got " + short_number(ema_decay));
  }
};

/// What one classifier step did.
struct ClassifierStats {
  Index step = 0;        ///< steps taken so far (after this one)
  double loss = 0;       ///< mean cross-entropy of the batch, before the update
  double accuracy = 0;   ///< fraction of the batch classified correctly, before the update
  double grad_norm = 0;  ///< gradient norm before clipping
  double lr = 0;         ///< learning rate used
};

/// Trains a classifier `Model` in place (its parameters() are updated). Model is
/// nn::MlpClassifier<S, Backend>, or any type with the same members: Scalar, BackendType,
/// Workspace (with context() and set_context()), input_dim(), classes(), num_params(),
/// parameters(), forward(x, logits, ws) and backward(ws, d_logits, d_params).
///
/// Loss of a batch x (input_dim, B) with labels y: L = (1/B) sum_b -log softmax(z_b)[y_b],
/// dL/dz = (softmax(z) - onehot(y)) / B (docs/math/classifier.md (5)-(6)).
///
/// Data-parallel training (docs/distributed.md): with set_communicator, each rank passes its
/// slice of the global batch (the same number of images on every rank, rank r holding images
/// [r B, (r + 1) B) with their labels); the gradient, the loss and the accuracy are averaged over
/// the ranks with one all-reduce (docs/math/data_parallel.md (3): the loss is a mean over rows),
/// then every rank clips and takes the update one process would take with the global batch (up
/// to the order of the sums). Nothing is drawn: the step takes no generator.
template <class Model>
class ClassifierTrainer {
 public:
  using S = typename Model::Scalar;
  using Backend = typename Model::BackendType;
  using Context = typename Backend::Context;
  using Config = ClassifierTrainerConfig;

  /// Throws config_error from cfg.validate().
  ClassifierTrainer(Model& model, const Config& cfg)
      : model_(model),
        cfg_((cfg.validate(), cfg)),
        adam_(model.num_params(), cfg.adam),
        ema_(model.parameters(), cfg.ema_decay) {
    Backend::resize(grads_, checked_add("ClassifierTrainer", "parameters + slots",
                                        model.num_params(), Exchange::slots()));
  }

  /// One step on the batch x (input_dim, B >= 1; backend memory) with labels (B values in
  /// [0, classes); host memory). Throws shape_error for a wrong x or label count, value_error
  /// for a label out of range, numeric_error for a non-finite x (bad data; nothing changes). A
  /// step whose logits, loss or gradient is not finite is refused: numeric_error "... diverged
  /// at step N ... the step was not applied", with the parameters, the optimizer and the EMA
  /// unchanged.
  ///
  /// With a communicator of P ranks, x and labels are this rank's slice of a global batch of
  /// x.cols P images and the step is collective: a rank whose part fails rethrows its error
  /// after the all-reduce, the others throw distributed_error; no rank applies the step. The
  /// stats are those of the global batch (loss and accuracy averaged over the ranks).
  ClassifierStats step(ConstMatrixView<S> x, nn::LabelView labels) {
    const char* w = "ClassifierTrainer::step";
    const int P = comm().size();
    Context& ctx = ws_.context();
    const VectorView<S> g(grads_.data(), model_.num_params());
    ClassifierStats st;
    std::exception_ptr err;
    try {
      local_part(x, labels, st);
    } catch (...) {
      if (P == 1) throw;
      err = std::current_exception();
    }
    if (P > 1)
      st.grad_norm = step_parts::exchange_and_clip(
          exchange_, comm(), ctx, grads_.data(), model_.num_params(), st.loss, err, x.cols, w,
          adam_.steps() + 1, cfg_.clip_norm, &st.accuracy, 1);
    st.lr = cfg_.schedule.at(adam_.steps());
    if (cfg_.use_ema) {
      step_parts::apply_update(ctx, adam_, ema_, model_.parameters(), ConstVectorView<S>(g), st.lr);
    } else {
      const LentContext<optim::Adam<S, Backend>, Context> lend(adam_, ctx);
      adam_.step(model_.parameters(), ConstVectorView<S>(g), st.lr);
    }
    st.step = adam_.steps();
    return st;
  }

  /// The logits (classes, B) of the last step's batch (before its update), in backend memory:
  /// valid until the next step.
  ConstMatrixView<S> logits() const { return logits_last_; }
  /// The gradient of the last step's loss (num_params(); after clipping), in backend memory.
  ConstVectorView<S> gradient() const { return {grads_.data(), model_.num_params()}; }

  Index steps() const { return adam_.steps(); }
  const Config& config() const { return cfg_; }
  Model& model() { return model_; }
  const Model& model() const { return model_; }
  optim::Adam<S, Backend>& optimizer() { return adam_; }
  const optim::Adam<S, Backend>& optimizer() const { return adam_; }
  /// The EMA of the weights (only updated with use_ema; otherwise the initial weights).
  optim::Ema<S, Backend>& ema() { return ema_; }
  const optim::Ema<S, Backend>& ema() const { return ema_; }

  /// The context the steps run on (the model workspace's).
  Context& context() { return ws_.context(); }
  /// Runs the steps on `ctx` from now on (not owned); nullptr returns to the workspace's own.
  void set_context(Context* ctx) { ws_.set_context(ctx); }

  /// The communicator the steps run on (a LocalCommunicator unless set_communicator was called).
  Communicator& communicator() const { return comm(); }
  /// Runs the steps on the ranks of `ranks` from now on (not owned: the caller keeps it alive
  /// while the trainer uses it); nullptr returns to one process. Collective: every rank calls it;
  /// rank 0's parameters, optimizer state and EMA are broadcast to the others (so the ranks
  /// start equal whatever their initialisation). `opt`: the gradient sum in buckets during the
  /// backward (docs/distributed.md "Overlap"), where the model's workspace reports
  /// (MlpClassifier's does); config_error for a negative bucket.
  void set_communicator(Communicator* ranks, const ExchangeOptions& opt = {}) {
    const char* w = "ClassifierTrainer::set_communicator";
    opt.validate();
    exchange_.prepare(
        model_.num_params(),
        nn::reports_gradient_ready<typename Model::Workspace>::value ? opt.bucket : 0);
    comm_ = ranks;
    step_parts::broadcast_state<S, Backend>(comm(), model_.parameters(), &adam_, &ema_, w);
  }

  /// Copies the EMA weights into `target` (a model of the same configuration). Throws
  /// config_error without use_ema, shape_error if the parameter counts differ.
  void copy_ema_to(Model& target) {
    if (!cfg_.use_ema)
      raise_config("ClassifierTrainer::copy_ema_to", "the trainer keeps no EMA (use_ema = false)");
    step_parts::copy_ema(ws_.context(), ema_, target.parameters(),
                         "ClassifierTrainer::copy_ema_to");
  }

 private:
  using Exchange = step_parts::GradientExchange<S, Backend>;
  Communicator& comm() const { return comm_ ? *comm_ : local_; }

  /// This rank's part of a step: the checks, forward, loss and backward into the gradient (and,
  /// on one process, the clip: the order of the steps before data-parallel training existed).
  void local_part(ConstMatrixView<S> x, nn::LabelView labels, ClassifierStats& st) {
    const char* w = "ClassifierTrainer::step";
    const Index D = model_.input_dim();
    if (x.rows != D || x.cols < 1)
      flowprior::detail::raise_shape(w, "x", x.rows, x.cols, D, x.cols < 1 ? 1 : x.cols);
    const Index B = x.cols;
    check_size(w, "labels", labels, B);
    nn::check_labels(w, "labels", labels, model_.classes());
    Context& ctx = ws_.context();
    check_finite_on<Backend, S>(ctx, w, "x", x);
    prepare(B);
    const MatrixView<S> logits = logits_view(B), d_logits = d_logits_view(B);
    const Index n = model_.num_params();
    const VectorView<S> g(grads_.data(), n);
    try {
      model_.forward(x, logits, ws_);
      const nn::CrossEntropyStats ce = xent_(ctx, ConstMatrixView<S>(logits), labels, d_logits);
      st.loss = ce.loss;
      st.accuracy = ce.accuracy();
      Backend::fill(ctx, MatrixView<S>(grads_.data(), n, 1), S(0));
      {
        const step_parts::OverlapScope<typename Model::Workspace, S, Backend> overlap(
            ws_, exchange_, comm(), grads_.data());
        model_.backward(ws_, ConstMatrixView<S>(d_logits), g);
      }
      if (comm().size() == 1)
        st.grad_norm = step_parts::clipped_norm<S, Backend>(ctx, g, cfg_.clip_norm);
    } catch (const numeric_error& e) {
      step_parts::raise_diverged(w, adam_.steps() + 1, e);
    }
  }

  MatrixView<S> logits_view(Index B) { return {logits_.data(), model_.classes(), B}; }
  MatrixView<S> d_logits_view(Index B) { return {d_logits_.data(), model_.classes(), B}; }

  // Buffers for a batch of B (grown, never shrunk: a batch size seen before allocates nothing).
  void prepare(Index B) {
    if (B > capacity_) {
      const Index nz = checked_mul("ClassifierTrainer", "logits size", model_.classes(), B);
      check_allocation("ClassifierTrainer", "the logits of " + std::to_string(B) + " samples",
                       checked_mul("ClassifierTrainer", "buffers", 2, nz), sizeof(S));
      Backend::resize(logits_, nz);
      Backend::resize(d_logits_, nz);
      capacity_ = B;
    }
    logits_last_ = logits_view(B);
  }

  Model& model_;
  Config cfg_;
  optim::Adam<S, Backend> adam_;
  optim::Ema<S, Backend> ema_;
  typename Model::Workspace ws_;
  nn::SoftmaxCrossEntropy<S, Backend> xent_;
  typename Backend::template Buffer<S> grads_, logits_, d_logits_;
  Index capacity_ = 0;
  ConstMatrixView<S> logits_last_;
  mutable LocalCommunicator local_;
  Communicator* comm_ = nullptr;  ///< not owned; nullptr: local_
  Exchange exchange_;
};

/// Mean loss and accuracy of a model over a data set.
struct EvalStats {
  double loss = 0;      ///< mean cross-entropy over every sample
  double accuracy = 0;  ///< fraction classified correctly
  Index count = 0;      ///< samples
};

/// Evaluates `model` on x (input_dim, N >= 1; backend memory) with labels (N values; host
/// memory), `batch` columns at a time (the last batch may be shorter): the mean cross-entropy
/// and the accuracy over all N samples (classifier.md (5), (7)). Allocates a workspace and a
/// logits buffer per call. Throws config_error for batch < 1, shape_error / value_error /
/// numeric_error as ClassifierTrainer::step (non-finite logits included).
template <class Model>
EvalStats evaluate(const Model& model, ConstMatrixView<typename Model::Scalar> x,
                   nn::LabelView labels, Index batch) {
  using S = typename Model::Scalar;
  using Backend = typename Model::BackendType;
  const char* w = "train::evaluate";
  if (batch < 1) raise_config(w, "batch must be >= 1, got " + std::to_string(batch));
  const Index D = model.input_dim();
  if (x.rows != D || x.cols < 1)
    flowprior::detail::raise_shape(w, "x", x.rows, x.cols, D, x.cols < 1 ? 1 : x.cols);
  const Index N = x.cols;
  check_size(w, "labels", labels, N);
  nn::check_labels(w, "labels", labels, model.classes());
  const Index bs = batch < N ? batch : N;
  typename Model::Workspace ws;
  nn::SoftmaxCrossEntropy<S, Backend> xent;
  typename Backend::template Buffer<S> z;
  Backend::resize(z, checked_mul(w, "logits size", model.classes(), bs));
  double loss_sum = 0;
  Index correct = 0;
  for (Index j = 0; j < N; j += bs) {
    const Index n = N - j < bs ? N - j : bs;
    const MatrixView<S> zb(z.data(), model.classes(), n);
    model.forward(x.col_block(j, n), zb, ws);
    const nn::CrossEntropyStats ce =
        xent(ws.context(), ConstMatrixView<S>(zb), labels.slice(j, n), MatrixView<S>());
    loss_sum += ce.loss * double(n);
    correct += ce.correct;
  }
  EvalStats st;
  st.count = N;
  st.loss = loss_sum / double(N);
  st.accuracy = double(correct) / double(N);
  return st;
}

}  // namespace train
}  // namespace flowprior
