/// @file
/// LatentAligner: stage 2 on free latents. Moves latents y (dim, N) with Adam on the alignment
/// loss alone under a frozen prior (docs/math/alignment.md). This is the paper's 2-D proof of
/// concept; inside an autoencoder the same loss is one term of the encoder's objective and its
/// gradient (alignment_loss's d_y) is added to the reconstruction gradient instead.
///
/// Minimised alone the loss is mode-seeking: latents collapse onto modes of the prior rather
/// than spreading like it (docs/math/alignment.md "Mode seeking").
#pragma once

#include <cmath>
#include <exception>
#include <flowprior/backend/checks.hpp>
#include <flowprior/backend/context.hpp>
#include <flowprior/core/check.hpp>
#include <flowprior/core/convention.hpp>
#include <flowprior/core/size.hpp>
#include <flowprior/loss/draws.hpp>
#include <flowprior/loss/flow_loss.hpp>
#include <flowprior/optim/optimizer.hpp>
#include <flowprior/prior.hpp>
#include <flowprior/train/communicator.hpp>
#include <functional>
#include <string>
#include <vector>

namespace flowprior {
namespace train {

struct AlignConfig {
  Index K = 4;  ///< draws per latent and step
  loss::TimeSampler sampler = loss::TimeSampler::uniform();
  /// The paper's L_align (sum over channels); each latent's gradient is that of its own loss
  /// (the 1/N of the mean over latents is undone), as if every latent were optimised alone.
  loss::Reduction reduction = loss::Reduction::SumChannels;
  bool detach_pred_v = false;
  Index time_group = 1;  ///< consecutive draws sharing t (time groups; 1 = one t per draw)
  optim::AdamConfig adam = {1e-2, 0.9, 0.999, 1e-8, 0.0, true};  ///< the paper's: Adam, lr 1e-2

  void validate() const {
    if (K <= 0) raise_config("AlignConfig", "K must be positive, got " + std::to_string(K));
    if (time_group <= 0) raise_config("AlignConfig", "time_group must be >= 1");
    sampler.validate();
    adam.validate();
  }
};

/// Moves latents with Adam on the alignment loss. One context runs the step (docs/backends.md
/// "Context"): the loss workspace's (its field workspace's), to which the aligner also hands the
/// finiteness check of the latents, the gradient zeroing and the Adam step; set_context lends the
/// caller's instead. The latents y are backend memory: the aligner reads their elements only
/// through backend primitives.
///
/// Data-parallel (docs/distributed.md): with set_communicator, each rank moves its own shard of
/// the latents, N on every rank, rank r's being latents [r N, (r + 1) N) of the N x size()
/// latents one process would move. Each latent's gradient is that of its own loss and Adam is
/// elementwise, so no gradient is exchanged: the step all-reduces the loss and a failure flag
/// (three values), and the draws of rank r are the slice of the global draws.
template <class Field>
class LatentAligner {
  static_assert(nn::check_velocity_field<Field>(),
                "LatentAligner<Field>: Field is not a velocity field (docs/fields.md)");

 public:
  using S = typename Field::Scalar;
  /// The backend of the field, on which the loss and the optimizer run.
  using Backend = typename loss::LossWorkspace<Field>::Backend;
  using Context = typename Backend::Context;

  /// @param prior  frozen prior, in convention `conv`
  /// @param n      number of latents the aligner will move
  LatentAligner(const Prior<Field>& prior, Convention conv, Index n, const AlignConfig& cfg)
      : prior_(prior),
        conv_(conv),
        cfg_((cfg.validate(), cfg)),
        n_(n),
        adam_(checked_mul("LatentAligner", "dim x latents", prior.dim(), n), cfg.adam) {
    check_convention("LatentAligner", "the prior", prior.convention(), conv);
    Backend::resize(grad_, prior.dim() * n);
  }

  /// One Adam step on y (dim, N) in place; returns the mean alignment loss per latent before
  /// the step (reduction of AlignConfig, weight 1).
  ///
  /// A step whose loss or gradient is not finite is refused: numeric_error "... diverged at step
  /// N ...: the step was not applied", with y and the optimizer unchanged (the generator has
  /// advanced by the step's draws). Non-finite latents on entry are a numeric_error too.
  double step(MatrixView<S> y, Rng& rng) {
    const char* w = "LatentAligner::step";
    if (comm().size() > 1) return distributed_step(y, rng);
    check_shape(w, "y", y, prior_.dim(), n_);
    if (!y.contiguous()) raise_config(w, "y must be a contiguous matrix");
    Context& ctx = ws_.context();
    check_finite_on<Backend, S>(ctx, w, "y", y);
    {
      const LentContext<loss::FlowDraws<S, Backend>, Context> lend_draws(draws_, ctx);
      loss::draw(draws_, conv_, n_, prior_.dim(), cfg_.K, cfg_.sampler, rng, false,
                 cfg_.time_group);
    }
    MatrixView<S> g(grad_.data(), prior_.dim(), n_);
    Backend::fill(ctx, g, S(0));
    const loss::AlignmentOptions opt{cfg_.reduction, double(n_), cfg_.detach_pred_v};
    double l = 0;
    try {
      // Both throw before modifying anything: the loss on a non-finite value, Adam on a
      // non-finite gradient.
      l = loss::alignment_loss(prior_, conv_, y, draws_, opt, ws_, {}, g);
      if (!std::isfinite(l))
        flowprior::detail::raise<numeric_error>("[flowprior.numeric] the loss is not finite");
      const LentContext<optim::Adam<S, Backend>, Context> lend(adam_, ctx);
      adam_.step(VectorView<S>(y.data, prior_.dim() * n_),
                 ConstVectorView<S>(grad_.data(), prior_.dim() * n_));
    } catch (const numeric_error& e) {
      flowprior::detail::raise<numeric_error>(
          std::string("[flowprior.numeric] ") + w + ": the alignment diverged at step " +
          std::to_string(adam_.steps() + 1) +
          " (the step was not applied; the latents and the optimizer are unchanged): " + e.what());
    }
    return l / double(n_);
  }

  Index steps() const { return adam_.steps(); }
  const optim::Adam<S, Backend>& optimizer() const { return adam_; }

  /// The context the steps run on (the loss workspace's).
  Context& context() { return ws_.context(); }
  /// Runs the steps on `ctx` from now on (not owned: the caller keeps it alive while the
  /// aligner uses it); nullptr returns to the loss workspace's own.
  void set_context(Context* ctx) { ws_.set_context(ctx); }

  /// The communicator the steps run on (a LocalCommunicator unless set_communicator was called).
  Communicator& communicator() const { return comm(); }
  /// Runs the steps on the ranks of `ranks` from now on (not owned); nullptr returns to one
  /// process. Each rank then moves its own N latents (see the class comment); nothing is
  /// broadcast: each rank's latents are its own.
  void set_communicator(Communicator* ranks) { comm_ = ranks; }

 private:
  Communicator& comm() const { return comm_ ? *comm_ : local_; }

  /// step() on P > 1 ranks: every failure before the exchange becomes this rank's flag; the
  /// latents move on every rank or on none.
  double distributed_step(MatrixView<S> y, Rng& rng) {
    const char* w = "LatentAligner::step";
    Communicator& c = comm();
    Context& ctx = ws_.context();
    const Index n = prior_.dim() * n_;
    double l = 0;
    std::exception_ptr err;
    try {
      check_shape(w, "y", y, prior_.dim(), n_);
      if (!y.contiguous()) raise_config(w, "y must be a contiguous matrix");
      check_finite_on<Backend, S>(ctx, w, "y", y);
      {
        const LentContext<loss::FlowDraws<S, Backend>, Context> lend_draws(draws_, ctx);
        const loss::DrawShard shard{n_ * c.rank(), n_ * c.size()};
        loss::draw(draws_, conv_, n_, prior_.dim(), cfg_.K, cfg_.sampler, rng, false,
                   cfg_.time_group, shard);
      }
      MatrixView<S> g(grad_.data(), prior_.dim(), n_);
      Backend::fill(ctx, g, S(0));
      const loss::AlignmentOptions opt{cfg_.reduction, double(n_), cfg_.detach_pred_v};
      try {
        l = loss::alignment_loss(prior_, conv_, y, draws_, opt, ws_, {}, g);
        if (!std::isfinite(l))
          flowprior::detail::raise<numeric_error>("[flowprior.numeric] the loss is not finite");
        check_finite_on<Backend, S>(ctx, w, "the gradient", ConstMatrixView<S>(g));
      } catch (const numeric_error& e) {
        flowprior::detail::raise<numeric_error>(
            std::string("[flowprior.numeric] ") + w + ": the alignment diverged at step " +
            std::to_string(adam_.steps() + 1) +
            " (the step was not applied; the latents and the optimizer are unchanged): " +
            e.what());
      }
    } catch (...) {
      err = std::current_exception();
    }
    double buf[3] = {err ? 0.0 : l / double(n_), err ? 1.0 : 0.0, double(n_)};
    c.allreduce_sum(buf, 3, w);
    if (err) std::rethrow_exception(err);
    if (buf[1] > 0.5)
      raise_distributed(w, c.rank(),
                        short_number(buf[1]) + " other rank(s) failed at step " +
                            std::to_string(adam_.steps() + 1) +
                            " (their own error says why); the latents moved on no rank");
    if (buf[2] != double(n_) * c.size())
      raise_distributed(w, c.rank(), "the ranks hold different numbers of latents");
    const LentContext<optim::Adam<S, Backend>, Context> lend(adam_, ctx);
    adam_.step(VectorView<S>(y.data, n), ConstVectorView<S>(grad_.data(), n));
    return buf[0] / c.size();
  }

  Prior<Field> prior_;
  Convention conv_;
  AlignConfig cfg_;
  Index n_;
  optim::Adam<S, Backend> adam_;
  typename Backend::template Buffer<S> grad_;
  loss::FlowDraws<S, Backend> draws_;
  loss::LossWorkspace<Field> ws_;
  mutable LocalCommunicator local_;
  Communicator* comm_ = nullptr;  ///< not owned; nullptr: local_
};

}  // namespace train
}  // namespace flowprior
