/// @file
/// ReconstructionTrainer: one training step of an autoencoder (the tokenizer of the image
/// pipeline, nn::TokenizerAE) on flat parameter vectors: forward, the mean-squared
/// reconstruction error and its gradient, an optional loss on the latents (where the alignment
/// loss enters: its dL/dy is added to the decoder's), the backward pass through both halves, a
/// global gradient-norm clip, an AdamW step at the scheduled learning rate and an update of the
/// EMA of the weights. With a Gaussian posterior (a KL-regularised autoencoder) the step draws the
/// reparameterisation's noise from the caller's generator and adds beta KL. Equations:
/// docs/math/tokenizer.md "Reconstruction training" and "Gaussian posterior"; the optimizer
/// parts: docs/math/optim.md. Time conventions do not enter: nothing here is a flow.
///
/// Every element of backend memory is touched through primitives on one context (the model
/// workspace's, or the caller's: set_context), so the step runs unchanged on any backend; a
/// warmed-up step (a batch size seen before) allocates nothing.
#pragma once

#include <cmath>
#include <flowprior/backend/checks.hpp>
#include <flowprior/backend/context.hpp>
#include <flowprior/core/check.hpp>
#include <flowprior/core/error.hpp>
#include <flowprior/core/random.hpp>
#include <flowprior/core/size.hpp>
#include <flowprior/core/types.hpp>
#include <flowprior/optim/optimizer.hpp>
#include <flowprior/train/communicator.hpp>
#include <flowprior/train/trainer.hpp>
#include <functional>
#include <limits>
#include <string>
#include <type_traits>
#include <utility>

namespace flowprior {
namespace train {

/// Options of ReconstructionTrainer. The defaults: AdamW with betas (0.9, 0.95) and weight decay
/// 1e-4 on every parameter, a constant rate of 1e-4 (set a warmup + cosine schedule with
/// optim::LrSchedule::cosine), clip 1.0 and EMA 0.999 (docs/math/tokenizer.md "Reconstruction
/// training").
struct ReconstructionConfig {
  /// Adam(W) betas, eps, weight decay and mode. Its `lr` is not used: the schedule sets every
  /// step's learning rate.
  optim::AdamConfig adam = {1e-4, 0.9, 0.95, 1e-8, 1e-4, true};
  optim::LrSchedule schedule = optim::LrSchedule::constant(1e-4);  ///< learning rate per step
  double clip_norm = 1.0;                                          ///< +inf disables clipping
  double ema_decay = 0.999;                                        ///< EMA of the weights
  /// beta of the KL term (Gaussian posterior): loss = MSE + kl_beta KL (+ the latent loss), KL
  /// the mean over every latent element (docs/math/tokenizer.md (11)). >= 0; must be 0 for a
  /// deterministic model; 0 with a Gaussian model samples without the KL term.
  double kl_beta = 0.0;

  /// Throws config_error naming the first invalid field.
  void validate() const {
    const char* w = "ReconstructionConfig";
    if (!(clip_norm > 0)) raise_config(w, "clip_norm must be > 0 (use +inf to disable)");
    adam.validate();
    schedule.validate();
    if (!(schedule.base_lr <= optim::AdamConfig::max_lr))
      raise_config(w, "schedule.base_lr must be <= AdamConfig::max_lr = " +
                          short_number(optim::AdamConfig::max_lr) + ", got " +
                          short_number(schedule.base_lr));
    if (!(ema_decay >= 0 && ema_decay < 1))
      raise_config(w, "ema_decay must lie in [0, 1), got " + short_number(ema_decay));
    if (!(kl_beta >= 0 && kl_beta < std::numeric_limits<double>::infinity()))
      raise_config(w, "kl_beta must be finite and >= 0, got " + short_number(kl_beta));
  }
};

/// What one reconstruction step did.
struct ReconstructionStats {
  Index step = 0;          ///< steps taken so far (after this one)
  double loss = 0;         ///< mse + kl_beta kl + latent_loss, before the update
  double mse = 0;          ///< mean over every pixel of every image of (recon - x)^2
  double latent_loss = 0;  ///< the value the latent loss returned (0 without one)
  double kl = 0;  ///< Gaussian posterior: mean over the latent elements of the KL (unweighted)
  double grad_norm = 0;  ///< gradient norm before clipping
  double lr = 0;         ///< learning rate used
  double psnr(double peak_to_peak = 2.0) const { return psnr_of(mse, peak_to_peak); }

  /// PSNR in dB of a mean squared error for pixels spanning `peak_to_peak` (2 for [-1, 1]):
  /// 10 log10(peak_to_peak^2 / mse); +inf for mse 0.
  static double psnr_of(double mse, double peak_to_peak = 2.0) {
    return 10.0 * std::log10(peak_to_peak * peak_to_peak / mse);
  }
};

namespace detail {
/// Whether a model has a Gaussian posterior: Model::config().gaussian() where it exists (a model
/// without it is deterministic).
template <class Model, class = void>
struct has_posterior : std::false_type {};
template <class Model>
struct has_posterior<Model, std::void_t<decltype(std::declval<const Model&>().config().gaussian())>>
    : std::true_type {};
template <class Model>
bool gaussian_posterior(const Model& m) {
  if constexpr (has_posterior<Model>::value)
    return m.config().gaussian();
  else
    return false;
}
}  // namespace detail

/// Trains an autoencoder `Model` in place (its parameters() are updated). Model is
/// nn::TokenizerAE<S, Backend>, or any type with the same members: Scalar, BackendType,
/// Workspace (with context() and set_context()), config().latent_dim and .latent_tokens,
/// image_dim(), num_params(), parameters(), layout(), forward(x, y, recon, ws) and
/// backward(ws, d_recon, d_y_extra, d_params, d_x); a model whose config().gaussian() is true
/// also needs forward(x, eps, z, recon, ws), kl_divergence(ws) and
/// backward(ws, d_recon, d_y_extra, kl_weight, d_params, d_x).
///
/// Loss of a batch x (C H W, B) with reconstructions r and latents y (d, B T):
///
///   L = mean_{i,b} (r_ib - x_ib)^2 + L_y(y),     dL/dr = 2 (r - x) / (C H W B)
///
/// where L_y is the optional latent loss of step(): a callable that writes dL_y/dy and returns
/// L_y (the alignment loss of the image pipeline, with its weight folded in). With a Gaussian
/// posterior y is the sample z = mu + exp(logvar / 2) eps that the decoder reads (eps drawn from
/// the generator given to step), and L gains beta KL, KL = mean over the B T d latent elements of
/// (mu^2 + exp(logvar) - 1 - logvar) / 2 (docs/math/tokenizer.md (11)).
///
/// Data-parallel training (docs/distributed.md): with set_communicator, each rank passes its
/// slice of the global batch (the same number of images on every rank, rank r holding images
/// [r B, (r + 1) B)); the gradient and the losses are averaged over the ranks with one
/// all-reduce, the posterior's noise is the slice of the global batch's, and every rank takes
/// the update one process would take with the global batch (up to the order of the sums).
template <class Model>
class ReconstructionTrainer {
 public:
  using S = typename Model::Scalar;
  using Backend = typename Model::BackendType;
  using Context = typename Backend::Context;
  using Config = ReconstructionConfig;
  /// A loss on the latents: given y (d, B T; backend memory) and d_y (the same shape, zeroed),
  /// it accumulates dL_y/dy into d_y and returns L_y, running its primitives on ctx. Throwing
  /// numeric_error refuses the step like a non-finite loss.
  using LatentLoss = std::function<double(ConstMatrixView<S> y, MatrixView<S> d_y, Context& ctx)>;

  ReconstructionTrainer(Model& model, const Config& cfg)
      : model_(model),
        cfg_((cfg.validate(), cfg)),
        adam_(model.num_params(), cfg.adam),
        ema_(model.parameters(), cfg.ema_decay),
        gaussian_(detail::gaussian_posterior(model)) {
    if (!gaussian_ && cfg_.kl_beta != 0)
      raise_config("ReconstructionConfig",
                   "kl_beta must be 0 for a model with a deterministic posterior, got " +
                       short_number(cfg_.kl_beta));
    Backend::resize(grads_, checked_add("ReconstructionTrainer", "parameters + slots",
                                        model.num_params(), Exchange::slots()));
  }

  /// One step on the batch x (C H W, B >= 1 images; backend memory), with an optional loss on
  /// the latents. Throws shape_error for a wrong x, numeric_error for a non-finite x (bad data,
  /// nothing changes). A step whose loss or gradient is not finite is refused: numeric_error
  /// "... diverged at step N ... the step was not applied", with the parameters, the optimizer
  /// and the EMA unchanged (a checkpoint saved afterwards is the last good state). A model with
  /// a Gaussian posterior needs the overload with a generator: config_error here.
  ReconstructionStats step(ConstMatrixView<S> x, const LatentLoss& latent_loss = nullptr) {
    if (gaussian_)
      raise_config("ReconstructionTrainer::step",
                   "the model has a Gaussian posterior: call step(x, rng, latent_loss) so that "
                   "the trainer can draw the noise eps");
    return run(x, nullptr, latent_loss);
  }

  /// step(x, latent_loss) drawing, for a Gaussian posterior, the noise eps (d, B T) of the
  /// reparameterisation from `rng`: one value of it keys Backend::gaussian_noise (stream 0), as
  /// loss/draws.hpp; the checkpoint keeps the generator, so a resumed run draws the same eps. A
  /// deterministic model draws nothing (rng is untouched: the same step as step(x, latent_loss)).
  ReconstructionStats step(ConstMatrixView<S> x, Rng& rng,
                           const LatentLoss& latent_loss = nullptr) {
    return run(x, gaussian_ ? &rng : nullptr, latent_loss);
  }

  /// The latents y (d, B T) and reconstructions (C H W, B) of the last step's batch (before its
  /// update), in backend memory: valid until the next step. With a Gaussian posterior the latents
  /// are the sample z the decoder read (the latent loss's argument).
  ConstMatrixView<S> latents() const { return y_last_; }
  ConstMatrixView<S> reconstructions() const { return recon_last_; }

  /// Whether the model has a Gaussian posterior (the steps then sample and add beta KL).
  bool gaussian() const { return gaussian_; }

 private:
  ReconstructionStats run(ConstMatrixView<S> x, Rng* rng, const LatentLoss& latent_loss) {
    const char* w = "ReconstructionTrainer::step";
    const int P = comm().size();
    const Index n = model_.num_params();
    const VectorView<S> g(grads_.data(), n);
    Context& ctx = ws_.context();
    ReconstructionStats st;
    std::exception_ptr err;
    try {
      local_part(x, rng, latent_loss, st);
    } catch (...) {
      if (P == 1) throw;
      err = std::current_exception();
    }
    if (P > 1) {
      double partial[3] = {st.mse, st.kl, st.latent_loss};
      st.grad_norm =
          step_parts::exchange_and_clip(exchange_, comm(), ctx, grads_.data(), n, st.loss, err,
                                        x.cols, w, adam_.steps() + 1, cfg_.clip_norm, partial, 3);
      st.mse = partial[0];
      st.kl = partial[1];
      st.latent_loss = partial[2];
    } else {
      try {
        st.grad_norm = step_parts::clipped_norm<S, Backend>(ctx, g, cfg_.clip_norm);
      } catch (const numeric_error& e) {
        step_parts::raise_diverged(w, adam_.steps() + 1, e);
      }
    }
    st.lr = cfg_.schedule.at(adam_.steps());
    step_parts::apply_update(ctx, adam_, ema_, model_.parameters(), ConstVectorView<S>(g), st.lr);
    st.step = adam_.steps();
    return st;
  }

  /// This rank's part of a step: the checks, forward, loss and backward into the gradient.
  void local_part(ConstMatrixView<S> x, Rng* rng, const LatentLoss& latent_loss,
                  ReconstructionStats& st) {
    const char* w = "ReconstructionTrainer::step";
    const Index D = model_.image_dim();
    if (x.rows != D || x.cols < 1)
      flowprior::detail::raise_shape(w, "x", x.rows, x.cols, D, x.cols < 1 ? 1 : x.cols);
    Context& ctx = ws_.context();
    check_finite_on<Backend, S>(ctx, w, "x", x);
    const Index B = x.cols;
    prepare(B);
    const MatrixView<S> y = y_view(B), recon = recon_view(B), d_recon = d_recon_view(B);
    const MatrixView<S> eps = eps_view(B);
    std::uint64_t key = 0;
    if (gaussian_) key = (*rng)();  // drawn before anything can fail: one value per step
    const Index n = model_.num_params();
    const VectorView<S> g(grads_.data(), n);
    try {
      double kl_weight = 0;
      if (gaussian_) {
        // Rank r's images are columns [r B T, (r + 1) B T) of the global batch's latents.
        Backend::gaussian_noise(ctx, key, 0, eps, 0, eps.cols * comm().rank());
        model_.forward(x, ConstMatrixView<S>(eps), y, recon, ws_);
        const double n_lat = double(y.rows) * double(y.cols);
        st.kl = model_.kl_divergence(ws_) / n_lat;
        kl_weight = cfg_.kl_beta / n_lat;
      } else {
        model_.forward(x, y, recon, ws_);
      }
      // d_recon = r - x, then mse = |d_recon|^2 / numel and d_recon *= 2 / numel.
      Backend::copy(ctx, ConstMatrixView<S>(recon), d_recon);
      Backend::axpy(ctx, S(-1), x, d_recon);
      const double numel = double(D) * double(B);
      const VectorView<S> dr(d_recon.data, D * B);
      st.mse = Backend::sum_squares(ctx, ConstVectorView<S>(dr)) / numel;
      Backend::scale_vec(ctx, dr, 2.0 / numel);
      ConstMatrixView<S> d_y_extra;
      if (latent_loss) {
        const MatrixView<S> d_y = d_y_view(B);
        Backend::fill(ctx, d_y, S(0));
        st.latent_loss = latent_loss(ConstMatrixView<S>(y), d_y, ctx);
        d_y_extra = d_y;
      }
      st.loss =
          gaussian_ ? st.mse + cfg_.kl_beta * st.kl + st.latent_loss : st.mse + st.latent_loss;
      if (!std::isfinite(st.loss))
        flowprior::detail::raise<numeric_error>(
            "[flowprior.numeric] the loss is not finite (mse " + short_number(st.mse) +
            (gaussian_ ? ", kl " + short_number(st.kl) : std::string()) + ", latent loss " +
            short_number(st.latent_loss) + ")");
      Backend::fill(ctx, MatrixView<S>(grads_.data(), n, 1), S(0));
      const step_parts::OverlapScope<typename Model::Workspace, S, Backend> overlap(
          ws_, exchange_, comm(), grads_.data());
      if (gaussian_)
        model_.backward(ws_, ConstMatrixView<S>(d_recon), d_y_extra, kl_weight, g, MatrixView<S>());
      else
        model_.backward(ws_, ConstMatrixView<S>(d_recon), d_y_extra, g, MatrixView<S>());
    } catch (const numeric_error& e) {
      step_parts::raise_diverged(w, adam_.steps() + 1, e);
    }
  }

 public:
  /// The gradient of the last step's loss (num_params(); after clipping), in backend memory:
  /// valid until the next step.
  ConstVectorView<S> gradient() const { return {grads_.data(), model_.num_params()}; }

  Index steps() const { return adam_.steps(); }
  const Config& config() const { return cfg_; }
  Model& model() { return model_; }
  const Model& model() const { return model_; }
  optim::Adam<S, Backend>& optimizer() { return adam_; }
  const optim::Adam<S, Backend>& optimizer() const { return adam_; }
  optim::Ema<S, Backend>& ema() { return ema_; }
  const optim::Ema<S, Backend>& ema() const { return ema_; }

  /// The context the steps run on (the model workspace's).
  Context& context() { return ws_.context(); }
  /// Runs the steps on `ctx` from now on (not owned); nullptr returns to the workspace's own.
  void set_context(Context* ctx) { ws_.set_context(ctx); }

  /// The communicator the steps run on (a LocalCommunicator unless set_communicator was called).
  Communicator& communicator() const { return comm(); }
  /// Runs the steps on the ranks of `ranks` from now on (not owned); nullptr returns to one
  /// process. Collective: rank 0's parameters, optimizer state and EMA are broadcast to the
  /// others. A latent loss that draws (LatentAlignmentLoss) needs the same communicator. `opt`:
  /// the gradient sum in buckets during the backward (docs/distributed.md "Overlap"), where the
  /// model's workspace reports (TokenizerAE's does).
  void set_communicator(Communicator* ranks, const ExchangeOptions& opt = {}) {
    const char* w = "ReconstructionTrainer::set_communicator";
    opt.validate();
    exchange_.prepare(
        model_.num_params(),
        nn::reports_gradient_ready<typename Model::Workspace>::value ? opt.bucket : 0);
    comm_ = ranks;
    step_parts::broadcast_state<S, Backend>(comm(), model_.parameters(), &adam_, &ema_, w);
  }

  /// Copies the EMA weights into `target` (a model of the same configuration): Backend::copy on
  /// context(); throws shape_error if the parameter counts differ.
  void copy_ema_to(Model& target) {
    step_parts::copy_ema(ws_.context(), ema_, target.parameters(),
                         "ReconstructionTrainer::copy_ema_to");
  }

 private:
  using Exchange = step_parts::GradientExchange<S, Backend>;
  Communicator& comm() const { return comm_ ? *comm_ : local_; }

  Index latent_rows() const { return model_.config().latent_dim; }
  Index latent_cols(Index B) const {
    return checked_mul("ReconstructionTrainer", "batch x latent tokens", B,
                       Index(model_.config().latent_tokens));
  }
  MatrixView<S> y_view(Index B) { return {y_.data(), latent_rows(), latent_cols(B)}; }
  MatrixView<S> d_y_view(Index B) { return {d_y_.data(), latent_rows(), latent_cols(B)}; }
  MatrixView<S> eps_view(Index B) {
    return gaussian_ ? MatrixView<S>(eps_.data(), latent_rows(), latent_cols(B)) : MatrixView<S>();
  }
  MatrixView<S> recon_view(Index B) { return {recon_.data(), model_.image_dim(), B}; }
  MatrixView<S> d_recon_view(Index B) { return {d_recon_.data(), model_.image_dim(), B}; }

  // Buffers for a batch of B (grown, never shrunk: a batch size seen before allocates nothing).
  void prepare(Index B) {
    const char* w = "ReconstructionTrainer";
    const Index ny = checked_mul(w, "latent size", latent_rows(), latent_cols(B));
    const Index nx = checked_mul(w, "batch size", model_.image_dim(), B);
    if (B > capacity_) {
      check_allocation(w, "the batch buffers of " + std::to_string(B) + " images",
                       checked_mul(w, "buffers", 2, ny + nx) + (gaussian_ ? ny : 0), sizeof(S));
      Backend::resize(y_, ny);
      Backend::resize(d_y_, ny);
      if (gaussian_) Backend::resize(eps_, ny);
      Backend::resize(recon_, nx);
      Backend::resize(d_recon_, nx);
      capacity_ = B;
    }
    y_last_ = y_view(B);
    recon_last_ = recon_view(B);
  }

  Model& model_;
  Config cfg_;
  optim::Adam<S, Backend> adam_;
  optim::Ema<S, Backend> ema_;
  typename Model::Workspace ws_;
  bool gaussian_ = false;
  typename Backend::template Buffer<S> grads_, y_, d_y_, recon_, d_recon_, eps_;
  Index capacity_ = 0;
  ConstMatrixView<S> y_last_, recon_last_;
  mutable LocalCommunicator local_;
  Communicator* comm_ = nullptr;  ///< not owned; nullptr: local_
  Exchange exchange_;
};

}  // namespace train
}  // namespace flowprior
