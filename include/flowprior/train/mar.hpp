/// @file
/// Training and sampling of nn::MarGenerator (MAR with a per-token flow head; docs/math/mar.md):
///
/// - draw_mar_mask: per image a random order and a mask ratio from MAR's truncated normal,
///   masking the first ceil(T r) tokens of the order                     mar.md (7)
/// - mar_loss: the flow-matching loss of the head on the masked tokens only, K draws per masked
///   token, in a stated Convention, and its gradient into every parameter (backbone and head)
///                                                                       mar.md (8)-(11)
/// - MarTrainer: a step (mask, draws, loss, backward, clip, AdamW on a schedule, EMA), refusing
///   a non-finite step with nothing changed (train::step_parts)
/// - mar_schedule, mar_sample: MAR's cosine schedule over S steps, each step running the
///   backbone on the current tokens and integrating the head's ODE from noise to data for the
///   tokens it reveals                                                   mar.md (12)-(13)
///
/// Every element of backend memory is touched through primitives on one context (the scratch's
/// backbone workspace's); masks, orders and column indices are built on the host and uploaded.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <exception>
#include <flowprior/backend/checks.hpp>
#include <flowprior/backend/context.hpp>
#include <flowprior/core/check.hpp>
#include <flowprior/core/convention.hpp>
#include <flowprior/core/error.hpp>
#include <flowprior/core/random.hpp>
#include <flowprior/core/size.hpp>
#include <flowprior/core/types.hpp>
#include <flowprior/loss/draws.hpp>
#include <flowprior/nn/mar.hpp>
#include <flowprior/ode/integrate.hpp>
#include <flowprior/optim/optimizer.hpp>
#include <flowprior/train/communicator.hpp>
#include <flowprior/train/trainer.hpp>
#include <string>
#include <vector>

namespace flowprior {
namespace train {

/// Helpers of this header (not a namespace named detail: inside train it would hide
/// flowprior::detail).
namespace mar_parts {
/// T in a non-deduced context, so that Eigen matrices convert to the views of the model's S.
template <class T>
struct same {
  using type = T;
};
template <class S>
using CView = typename same<ConstMatrixView<S>>::type;
template <class S>
using View = typename same<MatrixView<S>>::type;
template <class S>
using Vec = typename same<VectorView<S>>::type;
}  // namespace mar_parts

/// MAR's mask ratio r ~ N(mean, std^2) truncated to [min, 1] (MAR: scipy truncnorm with
/// mask_ratio_min 0.7, mean 1.0, std 0.25).                              mar.md (7)
struct MarMaskOptions {
  double mask_ratio_min = 0.7;  ///< lower end of the truncation, in (0, 1]
  double mean = 1.0;            ///< location of the normal
  double std = 0.25;            ///< scale of the normal, > 0

  /// Throws config_error naming the field; also when the truncation interval holds less than
  /// 1e-3 of the normal's mass (the rejection sampler would be slow).
  void validate() const {
    const char* w = "MarMaskOptions";
    if (!(mask_ratio_min > 0 && mask_ratio_min <= 1))
      raise_config(w, "mask_ratio_min must lie in (0, 1], got " + short_number(mask_ratio_min));
    if (!std::isfinite(mean)) raise_config(w, "mean must be finite, got " + short_number(mean));
    if (!(std > 0) || !std::isfinite(std))
      raise_config(w, "std must be finite and > 0, got " + short_number(std));
    const double lo = (mask_ratio_min - mean) / std, hi = (1.0 - mean) / std;
    const double mass = 0.5 * (std::erfc(-hi / std::sqrt(2.0)) - std::erfc(-lo / std::sqrt(2.0)));
    if (mask_ratio_min < 1 && !(mass >= 1e-3))
      raise_config(w, "the interval [mask_ratio_min, 1] holds " + short_number(mass) +
                          " of the normal's mass (mean " + short_number(mean) + ", std " +
                          short_number(std) + "): at least 1e-3 is required");
  }

  /// One ratio: normal draws until one lies in [mask_ratio_min, 1] (exactly MAR's law).
  double draw(Rng& rng) const {
    if (mask_ratio_min >= 1) return 1.0;
    for (;;) {
      const double r = mean + std * normal01(rng);
      if (r >= mask_ratio_min && r <= 1.0) return r;
    }
  }
};

/// Masked tokens of an image of T tokens at ratio r: ceil(T r) as MAR's
/// int(np.ceil(seq_len * mask_rate)), kept in [1, T].                    mar.md (7)
inline Index mar_masked_count(Index T, double r) {
  const double n = std::ceil(double(T) * r);
  return std::max<Index>(1, std::min<Index>(T, n >= double(T) ? T : Index(n)));
}

/// A random order of 0 .. T-1 (Fisher-Yates on flowprior's portable uniform01) into order.
inline void draw_mar_order(Index T, Rng& rng, Index* order) {
  for (Index i = 0; i < T; ++i) order[i] = i;
  for (Index i = T - 1; i > 0; --i) {
    const Index j = std::min<Index>(i, Index(uniform01(rng) * double(i + 1)));
    std::swap(order[i], order[j]);
  }
}

/// The training mask of B images of T tokens (mar.md (7)): per image, in image order, a random
/// order (draw_mar_order), then a ratio (MarMaskOptions::draw); the first mar_masked_count(T, r)
/// tokens of the order are masked. mask (host, resized to B T, 1 = masked, column b T + j);
/// order: host scratch (resized to T). Returns the number of masked tokens of all images.
inline Index draw_mar_mask(Index B, Index T, const MarMaskOptions& opt, Rng& rng,
                           std::vector<std::uint8_t>& mask, std::vector<Index>& order) {
  opt.validate();
  if (B < 1 || T < 1)
    raise_config("draw_mar_mask",
                 "B and T must be >= 1, got B " + std::to_string(B) + ", T " + std::to_string(T));
  const Index BT = checked_mul("draw_mar_mask", "B x T", B, T);
  mask.assign(static_cast<std::size_t>(BT), 0);
  order.resize(static_cast<std::size_t>(T));
  Index total = 0;
  for (Index b = 0; b < B; ++b) {
    draw_mar_order(T, rng, order.data());
    const Index n = mar_masked_count(T, opt.draw(rng));
    for (Index i = 0; i < n; ++i) mask[std::size_t(b * T + order[std::size_t(i)])] = 1;
    total += n;
  }
  return total;
}

/// MAR's cosine schedule of S sampling steps over T tokens: entry s is the number of tokens
/// of an image still masked after step s,
///   n_s = min(n_{s-1} - 1, max(1, floor(T cos(pi/2 (s+1)/S))))  for s < S - 1,  n_{S-1} = 0,
/// n_{-1} = T (MAR's mask_len with its max(1, .) and min(., masked - 1)). Every step reveals at
/// least one token. Throws config_error unless 1 <= S <= T.             mar.md (12)
inline std::vector<Index> mar_schedule(Index T, Index S) {
  if (T < 1 || S < 1 || S > T)
    raise_config("mar_schedule", "steps must lie in [1, tokens = " + std::to_string(T) + "], got " +
                                     std::to_string(S));
  std::vector<Index> n(static_cast<std::size_t>(S), 0);
  Index prev = T;
  const double half_pi = 1.5707963267948966;
  for (Index s = 0; s + 1 < S; ++s) {
    const Index f = Index(std::floor(double(T) * std::cos(half_pi * double(s + 1) / double(S))));
    prev = std::min(prev - 1, std::max<Index>(1, f));
    n[std::size_t(s)] = prev;
  }
  return n;
}

/// Memory reused across calls of mar_loss and mar_sample (one per thread): the backbone's and
/// the head's workspaces, the batch buffers (grown to the largest batch seen, never shrunk: a
/// batch size seen before allocates nothing), the column indices (host staging and backend
/// memory) and the ODE stages. Everything runs on the backbone workspace's context (lent to
/// the head's at each call). Copying gives an empty scratch.
template <class S, class Backend = CpuBackend>
struct MarScratch {
  using Model = nn::MarGenerator<S, Backend>;
  using Context = typename Backend::Context;
  template <class T>
  using Buffer = typename Backend::template Buffer<T>;

  MarScratch() = default;
  MarScratch(const MarScratch&) {}
  MarScratch& operator=(const MarScratch&) {
    *this = MarScratch();
    return *this;
  }
  MarScratch(MarScratch&&) = default;
  MarScratch& operator=(MarScratch&&) = default;

  typename Model::Workspace model;       ///< the backbone's
  typename Model::Head::Workspace head;  ///< the head's

  /// The context everything runs on (the backbone workspace's).
  Context& context() { return model.context(); }
  /// Runs on `ctx` from now on (not owned); nullptr returns to the scratch's own context.
  void set_context(Context* ctx) { model.set_context(ctx); }
  /// From now on mar_loss's gradient tells `ready` (not owned; nullptr: nobody) where the flat
  /// gradient is final (nn/gradient_ready.hpp): the head's reports, shifted to its slice at the
  /// end of the layout, then the backbone's.
  void set_gradient_ready(nn::GradientReady* ready) {
    head_ready.to = ready;
    head.set_gradient_ready(ready ? &head_ready : nullptr);
    model.set_gradient_ready(ready);
  }

  /// The head's reports shifted by its offset in the flat vector (set by mar_loss).
  struct Shifted final : nn::GradientReady {
    nn::GradientReady* to = nullptr;
    Index offset = 0;
    void ready(Index lo) override { to->ready(offset + lo); }
  } head_ready;

  // Backend buffers and host staging (internal).
  Buffer<S> c, xm, cond, xt, v, d_cond, d_cm, d_c, tv, z, src, tmp, stages;
  Buffer<Index> list, cond_idx, dc_idx, w_idx;
  std::vector<Index> list_h, cond_idx_h, dc_idx_h, w_idx_h, order_h;
  std::vector<std::uint8_t> mask_h;
  std::vector<double> rows_h;

  /// A (rows, cols) view of buf, grown first to hold at least (rows, cap_cols) (checked against
  /// memory: config_error), so that sizes varying below cap_cols allocate once.
  template <class T>
  static MatrixView<T> view(Buffer<T>& buf, Index rows, Index cols, Index cap_cols = 0) {
    const Index n = checked_mul("MarScratch", "buffer size", rows, std::max(cols, cap_cols));
    if (Index(buf.size()) < n) {
      check_allocation("MarScratch", "a batch buffer", n, sizeof(T));
      Backend::resize(buf, n);
    }
    return MatrixView<T>(buf.data(), rows, cols, rows > 0 ? rows : 1);
  }
  /// Uploads n host indices into buf (grown first).
  static const Index* upload(Buffer<Index>& buf, const std::vector<Index>& host, Index n) {
    view(buf, 1, n > 0 ? n : 1);
    if (n > 0) Backend::copy_from_host(host.data(), n, buf.data());
    return buf.data();
  }
};

/// The MAR training loss of a batch (mar.md (8)-(11)) and, when d_params is non-empty, its
/// gradient: d_params (model.num_params()) += dL/dparams, backbone and head.
///
///   c = backbone(x, mask);  for masked token m (the m-th masked column j_m in column order) and
///   draw k (column m K + k of the draws): x_t = a(t) x_m + b(t) eps, u = c_ x_m + e eps,
///   L = 1/(M K d) sum_{m,k} || v(x_t, t, c[:, j_m]) - u ||^2
///
/// in convention conv (core/convention.hpp; the same formulas and primitives as
/// loss/flow_loss.hpp, Reduction::Mean). x (d, B T) backend memory; mask B T host bytes (1 =
/// masked) with M >= 1 masked tokens; draws: M rows, dim d, K draws each, in conv. Returns L.
/// grad_weight scales the gradient (not the returned L): d_params += grad_weight dL/dparams,
/// applied to the backward's seed (a data-parallel rank's weight, data_parallel.md (5)).
/// Throws shape_error (x, mask, draws' rows or dim, d_params), value_error (no masked token, a
/// time outside [0, 1]), convention_error (draws in the other convention).
template <class S, class Backend>
double mar_loss(const nn::MarGenerator<S, Backend>& model, Convention conv, mar_parts::CView<S> x,
                ConstVectorView<std::uint8_t> mask, const loss::FlowDraws<S, Backend>& draws,
                MarScratch<S, Backend>& ws, mar_parts::Vec<S> d_params = {},
                double grad_weight = 1.0) {
  const char* w = "train::mar_loss";
  using Scratch = MarScratch<S, Backend>;
  const nn::MarConfig& cfg = model.config();
  const Index T = cfg.tokens, d = cfg.token_dim, W = cfg.width;
  if (conv != Convention::Paper && conv != Convention::Code)
    raise_config(w, "argument 'conv' is not Convention::Paper or Convention::Code");
  if (x.rows != d || x.cols < T || x.cols % T != 0)
    flowprior::detail::raise<shape_error>(
        std::string("[flowprior.shape] ") + w + ": argument 'x' has shape " +
        flowprior::detail::shape_str(x.rows, x.cols) + ", expected (" + std::to_string(d) +
        ", B x " + std::to_string(T) + ") for B >= 1 images");
  const Index BT = x.cols;
  check_size(w, "mask", mask, BT);
  check_convention(w, "the draws", draws.convention, conv);
  draws.validate(w);
  const bool grad = d_params.size != 0;
  if (grad) check_size(w, "d_params", d_params, model.num_params());
  // The masked columns in order, and the gather indices of the conditioning and of d_c.
  ws.list_h.resize(static_cast<std::size_t>(BT));
  ws.dc_idx_h.resize(static_cast<std::size_t>(BT));
  Index M = 0;
  for (Index j = 0; j < BT; ++j)
    if (mask[j] != 0) ws.list_h[std::size_t(M++)] = j;
  if (M == 0)
    flowprior::detail::raise<value_error>(std::string("[flowprior.value] ") + w +
                                          ": argument 'mask' masks no token (the loss is a mean "
                                          "over the masked tokens)");
  if (draws.rows != M)
    flowprior::detail::raise<shape_error>(std::string("[flowprior.shape] ") + w +
                                          ": argument 'draws' has " + std::to_string(draws.rows) +
                                          " rows, expected " + std::to_string(M) +
                                          " (one per masked token)");
  if (draws.dim != d)
    flowprior::detail::raise<shape_error>(
        std::string("[flowprior.shape] ") + w + ": argument 'draws' has dim " +
        std::to_string(draws.dim) + ", expected " + std::to_string(d) + " (the token dim)");
  const Index K = draws.K;
  const Index MK = checked_mul(w, "masked x K", M, K);
  const Index cap = checked_mul(w, "tokens x K", BT, K);  // the most columns any mask needs
  for (Index j = 0, m = 0; j < BT; ++j) ws.dc_idx_h[std::size_t(j)] = mask[j] != 0 ? m++ : M;
  ws.cond_idx_h.reserve(static_cast<std::size_t>(cap));
  ws.cond_idx_h.resize(static_cast<std::size_t>(MK));
  for (Index m = 0; m < M; ++m)
    for (Index k = 0; k < K; ++k) ws.cond_idx_h[std::size_t(m * K + k)] = ws.list_h[std::size_t(m)];

  typename Backend::Context& ctx = ws.context();
  ws.head.set_context(&ctx);
  const MatrixView<S> c = Scratch::view(ws.c, W, BT);
  model.forward(x, mask, c, ws.model);
  // Masked tokens x_m (d, M) and their conditioning, repeated K times (W, M K).
  const MatrixView<S> xm = Scratch::view(ws.xm, d, M, BT);
  const MatrixView<S> cond = Scratch::view(ws.cond, W, MK, cap);
  Scratch::view(ws.list, 1, M, BT);
  Scratch::view(ws.cond_idx, 1, MK, cap);
  Backend::gather_cols(ctx, x, Scratch::upload(ws.list, ws.list_h, M), xm);
  Backend::gather_cols(ctx, ConstMatrixView<S>(c), Scratch::upload(ws.cond_idx, ws.cond_idx_h, MK),
                       cond);
  // x_t and the head's velocity.                                         mar.md (8)-(9)
  const MatrixView<S> xt = Scratch::view(ws.xt, d, MK, cap);
  const MatrixView<S> v = Scratch::view(ws.v, d, MK, cap);
  if (Backend::path_mix(ctx, conv, draws.times(), ConstMatrixView<S>(xm), draws.noise(), xt, K) !=
      0)
    check_unit_interval_on<Backend>(ctx, w, "draws.t", draws.times());
  const typename nn::MarGenerator<S, Backend>::Head& head = model.head();
  head.forward(ConstMatrixView<S>(xt), draws.times(), v, ws.head, ConstMatrixView<S>(cond));
  // r = v - u in place, L = sum r^2 / (M K d).                           mar.md (10)
  if (Index(ws.rows_h.size()) < BT) ws.rows_h.resize(static_cast<std::size_t>(BT));
  const double scale = 1.0 / (double(M) * double(K) * double(d));
  const double loss =
      Backend::path_residuals(ctx, conv, S(1), draws.times(), ConstMatrixView<S>(xm), draws.noise(),
                              v, K, scale, ws.rows_h.data(), VectorView<S>());
  if (!grad) return loss;
  // Backward: d_v = 2 r / (M K d); the head; d_cond summed over the K draws; scattered to d_c
  // (zero at unmasked columns); the backbone.                           mar.md (11)
  Backend::scale(ctx, v, static_cast<S>(2.0 * scale * grad_weight));
  const MatrixView<S> d_cond = Scratch::view(ws.d_cond, W, MK, cap);
  Backend::fill(ctx, d_cond, S(0));
  ws.head_ready.offset = model.head_offset();
  head.backward(ws.head, ConstMatrixView<S>(v), MatrixView<S>(),
                VectorView<S>(d_params.data + model.head_offset(), head.num_params()), d_cond);
  const MatrixView<S> d_cm = Scratch::view(ws.d_cm, W, M + 1, BT + 1);
  Backend::fill(ctx, d_cm, S(0));
  for (Index k = 0; k < K; ++k)
    Backend::axpy(ctx, S(1), ConstMatrixView<S>(d_cond.data + k * W, W, M, K * W),
                  d_cm.col_block(0, M));
  const MatrixView<S> d_c = Scratch::view(ws.d_c, W, BT);
  Backend::gather_cols(ctx, ConstMatrixView<S>(d_cm), Scratch::upload(ws.dc_idx, ws.dc_idx_h, BT),
                       d_c);
  model.backward(ws.model, ConstMatrixView<S>(d_c), d_params);
  return loss;
}

/// Options of MarTrainer. Defaults follow MAR's recipe where it makes sense on a CPU: K = 4
/// (diffusion_batch_mul), uniform t, AdamW with betas (0.9, 0.95) and weight decay 0.02, a
/// constant rate of 1e-4 (set warmup + cosine with optim::LrSchedule::cosine), clip 3.0, EMA
/// 0.9999.
struct MarTrainerConfig {
  MarMaskOptions mask;                                       ///< the mask ratio's law
  Index K = 4;                                               ///< draws per masked token
  loss::TimeSampler sampler = loss::TimeSampler::uniform();  ///< the head's times
  /// Adam(W) betas, eps, weight decay and mode. Its `lr` is not used: the schedule sets every
  /// step's learning rate.
  optim::AdamConfig adam = {1e-4, 0.9, 0.95, 1e-8, 0.02, true};
  optim::LrSchedule schedule = optim::LrSchedule::constant(1e-4);  ///< learning rate per step
  double clip_norm = 3.0;                                          ///< +inf disables clipping
  double ema_decay = 0.9999;                                       ///< EMA of the weights

  /// Throws config_error naming the first invalid field.
  void validate() const {
    const char* w = "MarTrainerConfig";
    mask.validate();
    if (K < 1) raise_config(w, "K must be >= 1, got " + std::to_string(K));
    sampler.validate();
    if (sampler.kind == loss::TimeSampler::Kind::Grid)
      raise_config(w, "the grid time sampler is for landscapes, not training");
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

/// What one MAR step did.
struct MarStats {
  Index step = 0;        ///< steps taken so far (after this one)
  double loss = 0;       ///< mar_loss before the update
  double grad_norm = 0;  ///< gradient norm before clipping
  double lr = 0;         ///< learning rate used
  Index masked = 0;      ///< masked tokens of the batch (all images; of all ranks)
};

/// Trains a MarGenerator in place in convention conv (mar.md "Training").
///
/// Data-parallel training (docs/distributed.md, docs/math/data_parallel.md "MAR"): with
/// set_communicator, each rank passes its slice of the global batch (B images on every rank,
/// rank r holding images [r B, (r + 1) B)). Every rank draws the global batch's masks (the
/// generator advancing as for one process) and keeps its images' masks; the draws of its masked
/// tokens are the global draws' rows of those tokens (loss::DrawShard). The loss is a mean over
/// the masked tokens, whose number differs between the ranks: rank r's loss and gradient are
/// weighted by P M_r / M (M_r its masked tokens, M the global batch's) before the all-reduce's
/// mean, which is then the mean over all M masked tokens, as one process computes it.
template <class S, class Backend = CpuBackend>
class MarTrainer {
 public:
  using Model = nn::MarGenerator<S, Backend>;
  using Context = typename Backend::Context;
  using Config = MarTrainerConfig;

  /// Throws config_error from cfg.validate() or for a conv that is neither Paper nor Code.
  MarTrainer(Model& model, Convention conv, const Config& cfg)
      : model_(model),
        conv_(conv),
        cfg_((cfg.validate(), cfg)),
        adam_(model.num_params(), cfg.adam),
        ema_(model.parameters(), cfg.ema_decay) {
    if (conv != Convention::Paper && conv != Convention::Code)
      raise_config("MarTrainer", "argument 'conv' is not Convention::Paper or Convention::Code");
    Backend::resize(grads_, checked_add("MarTrainer", "parameters + slots", model.num_params(),
                                        Exchange::slots()));
  }

  /// One step on the tokens x (d, B T; B >= 1 images; backend memory): the mask (mar.md (7)),
  /// K draws per masked token (loss::draw with the configured sampler), mar_loss and its
  /// gradient, clip, AdamW at the scheduled rate, EMA. Randomness from rng in that order.
  /// Throws shape_error for a wrong x and numeric_error for a non-finite x (nothing changes). A
  /// step whose loss or gradient is not finite is refused: numeric_error "... diverged at step
  /// N ... the step was not applied" with parameters, optimizer and EMA unchanged.
  ///
  /// With a communicator of P ranks, x is this rank's slice of a global batch of P B images and
  /// the step is collective: the masks and draws are those of the global batch (the generator
  /// advances alike on every rank), a rank whose part fails rethrows its error after the
  /// all-reduce, the others throw distributed_error; no rank applies the step. The stats are
  /// the global batch's.
  MarStats step(ConstMatrixView<S> x, Rng& rng) {
    const char* w = "MarTrainer::step";
    const int P = comm().size();
    Context& ctx = ws_.context();
    const VectorView<S> g(grads_.data(), model_.num_params());
    MarStats st;
    std::exception_ptr err;
    Index rows = 0;
    try {
      rows = local_part(x, rng, st);
    } catch (...) {
      if (P == 1) throw;
      err = std::current_exception();
    }
    if (P > 1)
      st.grad_norm =
          step_parts::exchange_and_clip(exchange_, comm(), ctx, grads_.data(), model_.num_params(),
                                        st.loss, err, rows, w, adam_.steps() + 1, cfg_.clip_norm);
    st.lr = cfg_.schedule.at(adam_.steps());
    step_parts::apply_update(ctx, adam_, ema_, model_.parameters(), ConstVectorView<S>(g), st.lr);
    st.step = adam_.steps();
    return st;
  }

  /// The mask of the last step (B T host bytes, 1 = masked).
  const std::vector<std::uint8_t>& last_mask() const { return mask_; }
  /// The gradient of the last step (after clipping), backend memory, valid until the next step.
  ConstVectorView<S> gradient() const { return {grads_.data(), model_.num_params()}; }

  Index steps() const { return adam_.steps(); }
  Convention convention() const { return conv_; }
  const Config& config() const { return cfg_; }
  Model& model() { return model_; }
  const Model& model() const { return model_; }
  optim::Adam<S, Backend>& optimizer() { return adam_; }
  const optim::Adam<S, Backend>& optimizer() const { return adam_; }
  optim::Ema<S, Backend>& ema() { return ema_; }
  const optim::Ema<S, Backend>& ema() const { return ema_; }
  /// The scratch the steps use (its context is the steps' context).
  MarScratch<S, Backend>& scratch() { return ws_; }

  /// Copies the EMA weights into `target` (a model of the same configuration; sample from it
  /// with mar_sample). Throws shape_error if the parameter counts differ.
  void copy_ema_to(Model& target) {
    step_parts::copy_ema(ws_.context(), ema_, target.parameters(), "MarTrainer::copy_ema_to");
  }

  /// The communicator the steps run on (a LocalCommunicator unless set_communicator was called).
  Communicator& communicator() const { return comm(); }
  /// Runs the steps on the ranks of `ranks` from now on (not owned: the caller keeps it alive
  /// while the trainer uses it); nullptr returns to one process. Collective: every rank calls it;
  /// rank 0's parameters, optimizer state and EMA are broadcast to the others.
  /// `opt`: the gradient sum in buckets during the backward (docs/distributed.md "Overlap": the
  /// head's layers, then the backbone's); config_error for a negative bucket.
  void set_communicator(Communicator* ranks, const ExchangeOptions& opt = {}) {
    const char* w = "MarTrainer::set_communicator";
    opt.validate();
    exchange_.prepare(model_.num_params(), opt.bucket);
    comm_ = ranks;
    step_parts::broadcast_state<S, Backend>(comm(), model_.parameters(), &adam_, &ema_, w);
  }

 private:
  using Exchange = step_parts::GradientExchange<S, Backend>;
  Communicator& comm() const { return comm_ ? *comm_ : local_; }

  /// This rank's part of a step: the checks, the global batch's mask (this rank's images kept),
  /// the draws of this rank's masked tokens, the loss and its gradient, weighted on P ranks by
  /// P M_r / M (data_parallel.md (5)); on one process also the clip (the order of the steps
  /// before data-parallel training existed). Sets st.loss, st.masked (M) and, on one process,
  /// st.grad_norm; returns this rank's images B.
  Index local_part(ConstMatrixView<S> x, Rng& rng, MarStats& st) {
    const char* w = "MarTrainer::step";
    const Index T = model_.config().tokens, d = model_.config().token_dim;
    if (x.rows != d || x.cols < T || x.cols % T != 0)
      flowprior::detail::raise<shape_error>(
          std::string("[flowprior.shape] ") + w + ": argument 'x' has shape " +
          flowprior::detail::shape_str(x.rows, x.cols) + ", expected (" + std::to_string(d) +
          ", B x " + std::to_string(T) + ") for B >= 1 images");
    Context& ctx = ws_.context();
    check_finite_on<Backend, S>(ctx, w, "x", x);
    const Index B = x.cols / T, BT = x.cols;
    const int P = comm().size(), r = comm().rank();
    Index first_row = 0, mine = 0;  // this rank's masked tokens: rows [first_row, + mine)
    if (P == 1) {
      st.masked = mine = draw_mar_mask(B, T, cfg_.mask, rng, mask_, ws_.order_h);
    } else {
      // The global batch's masks, image by image as one process draws them; this rank's slice.
      st.masked = draw_mar_mask(checked_mul(w, "B x ranks", B, Index(P)), T, cfg_.mask, rng,
                                mask_all_, ws_.order_h);
      const std::size_t c0 = std::size_t(BT) * std::size_t(r);
      mask_.assign(mask_all_.begin() + std::ptrdiff_t(c0),
                   mask_all_.begin() + std::ptrdiff_t(c0 + std::size_t(BT)));
      for (std::size_t j = 0; j < c0; ++j) first_row += mask_all_[j];
      for (std::size_t j = 0; j < mask_.size(); ++j) mine += mask_[j];
    }
    draws_.set_context(&ctx);
    if (B > capacity_) {  // the largest mask of this batch size: later draws reuse the memory
      draws_.resize(conv_, BT, d, cfg_.K);
      capacity_ = B;
    }
    loss::draw(draws_, conv_, mine, d, cfg_.K, cfg_.sampler, rng, false, 1,
               loss::DrawShard{first_row, st.masked});
    const Index n = model_.num_params();
    const VectorView<S> g(grads_.data(), n);
    // P ranks: the mean over this rank's M_r tokens, weighted so that the ranks' mean is the
    // mean over the M tokens of the global batch (data_parallel.md (5)); the gradient's weight
    // enters at the backward's seed, so that the buckets the backward reports are final.
    const double weight = P == 1 ? 1.0 : double(P) * double(mine) / double(st.masked);
    try {
      Backend::fill(ctx, MatrixView<S>(grads_.data(), n, 1), S(0));
      {
        const step_parts::OverlapScope<MarScratch<S, Backend>, S, Backend> overlap(
            ws_, exchange_, comm(), grads_.data());
        st.loss = mar_loss(model_, conv_, x, ConstVectorView<std::uint8_t>(mask_.data(), BT),
                           draws_, ws_, g, weight);
      }
      if (!std::isfinite(st.loss))
        flowprior::detail::raise<numeric_error>("[flowprior.numeric] the loss is not finite (" +
                                                short_number(st.loss) + ")");
      if (P == 1)
        st.grad_norm = step_parts::clipped_norm<S, Backend>(ctx, g, cfg_.clip_norm);
      else
        st.loss *= weight;
    } catch (const numeric_error& e) {
      step_parts::raise_diverged(w, adam_.steps() + 1, e);
    }
    return B;
  }

  Model& model_;
  Convention conv_;
  Config cfg_;
  optim::Adam<S, Backend> adam_;
  optim::Ema<S, Backend> ema_;
  MarScratch<S, Backend> ws_;
  loss::FlowDraws<S, Backend> draws_;
  typename Backend::template Buffer<S> grads_;
  std::vector<std::uint8_t> mask_;
  std::vector<std::uint8_t> mask_all_;  ///< the global batch's masks (several ranks)
  Index capacity_ = 0;
  mutable LocalCommunicator local_;
  Communicator* comm_ = nullptr;  ///< not owned; nullptr: local_
  Exchange exchange_;
};

/// Options of mar_sample (MAR's num_iter 64; the head's ODE with a fixed-step method).
struct MarSampleOptions {
  Index steps = 64;                        ///< S: masked-autoregressive steps, 1 <= S <= T
  ode::Method method = ode::Method::Heun;  ///< Euler, Heun or RK4 for each token's ODE
  Index ode_steps = 50;                    ///< N: steps of each ODE solve, from noise to data
  double temperature = 1.0;                ///< scale of the initial noise, finite and >= 0

  /// Throws config_error naming the field (steps against the model's T).
  void validate(Index T) const {
    const char* w = "MarSampleOptions";
    if (steps < 1 || steps > T)
      raise_config(w, "steps must lie in [1, tokens = " + std::to_string(T) + "], got " +
                          std::to_string(steps));
    if (method == ode::Method::Dopri5)
      raise_config(w, "method must be a fixed-step method (Euler, Heun or RK4)");
    if (ode_steps < 1) raise_config(w, "ode_steps must be >= 1, got " + std::to_string(ode_steps));
    if (!(temperature >= 0) || !std::isfinite(temperature))
      raise_config(w, "temperature must be finite and >= 0, got " + short_number(temperature));
  }
};

/// Generates B images of T tokens into out (d, B T; backend memory) with the model as it is
/// (pass a model holding the EMA weights to sample those: MarTrainer::copy_ema_to), in
/// convention conv (the one the model was trained in): mar.md (12)-(13).
///
/// Every token starts masked (its value 0). Each image draws a random order (draw_mar_order, in
/// image order). At step s the backbone runs on the current tokens and mask; the tokens of order
/// positions [n_s, n_{s-1}) of every image (mar_schedule) start from temperature * N(0, I)
/// (Backend::gaussian_noise keyed by one value of rng per step) and are integrated by
/// dz/dt = v(z, t, c_token) from noise_time(conv) to data_time(conv) in opt.ode_steps steps of
/// opt.method, then written into out and unmasked. Deterministic for a seed.
/// Throws config_error (options, B < 1, a conv that is neither Paper nor Code), shape_error (out),
/// numeric_error (a state that became non-finite).
template <class S, class Backend>
void mar_sample(const nn::MarGenerator<S, Backend>& model, Convention conv, Index B,
                const MarSampleOptions& opt, Rng& rng, mar_parts::View<S> out,
                MarScratch<S, Backend>& ws) {
  const char* w = "train::mar_sample";
  using Scratch = MarScratch<S, Backend>;
  const nn::MarConfig& cfg = model.config();
  const Index T = cfg.tokens, d = cfg.token_dim, W = cfg.width;
  opt.validate(T);
  if (conv != Convention::Paper && conv != Convention::Code)
    raise_config(w, "argument 'conv' is not Convention::Paper or Convention::Code");
  if (B < 1) raise_config(w, "B must be >= 1, got " + std::to_string(B));
  const Index BT = checked_mul(w, "B x tokens", B, T);
  check_shape(w, "out", out, d, BT);
  const std::vector<Index> sched = mar_schedule(T, opt.steps);
  typename Backend::Context& ctx = ws.context();
  ws.head.set_context(&ctx);
  const typename nn::MarGenerator<S, Backend>::Head& head = model.head();
  // Orders of every image; every token masked, its value 0.
  ws.order_h.resize(static_cast<std::size_t>(BT));
  for (Index b = 0; b < B; ++b) draw_mar_order(T, rng, ws.order_h.data() + b * T);
  ws.mask_h.assign(static_cast<std::size_t>(BT), 1);
  Backend::fill(ctx, out, S(0));
  const MatrixView<S> c = Scratch::view(ws.c, W, BT);
  ode::SolverOptions so;
  so.method = opt.method;
  so.steps = opt.ode_steps;
  Index cur = T;
  for (Index s = 0; s < opt.steps; ++s) {
    const Index next = sched[std::size_t(s)];
    const Index P = B * (cur - next);
    // The backbone on the current tokens and mask.
    model.forward(ConstMatrixView<S>(out), ConstVectorView<std::uint8_t>(ws.mask_h.data(), BT), c,
                  ws.model);
    // The revealed columns: order positions [next, cur) of every image.   mar.md (12)
    ws.list_h.resize(static_cast<std::size_t>(P));
    ws.w_idx_h.resize(static_cast<std::size_t>(BT));
    for (Index j = 0; j < BT; ++j) ws.w_idx_h[std::size_t(j)] = j;
    Index p = 0;
    for (Index b = 0; b < B; ++b)
      for (Index i = next; i < cur; ++i) {
        const Index col = b * T + ws.order_h[std::size_t(b * T + i)];
        ws.list_h[std::size_t(p)] = col;
        ws.w_idx_h[std::size_t(col)] = BT + p;
        ws.mask_h[std::size_t(col)] = 0;
        ++p;
      }
    const MatrixView<S> cond = Scratch::view(ws.cond, W, P);
    Backend::gather_cols(ctx, ConstMatrixView<S>(c), Scratch::upload(ws.list, ws.list_h, P), cond);
    // Each revealed token's ODE from noise to data, conditioned on its c.  mar.md (13)
    const MatrixView<S> z = Scratch::view(ws.z, d, P);
    Backend::gaussian_noise(ctx, rng(), 0, z, 0);
    Backend::scale(ctx, z, static_cast<S>(opt.temperature));
    const MatrixView<S> tv = Scratch::view(ws.tv, 1, P);
    auto f = [&](double t, ConstMatrixView<S> zz, MatrixView<S> dz) {
      Backend::fill(ctx, tv, static_cast<S>(t));
      head.forward(zz, ConstVectorView<S>(tv.data, P), dz, ws.head, ConstMatrixView<S>(cond));
    };
    ode::integrate_on<Backend>(ctx, ws.stages, f, noise_time(conv), data_time(conv), z, so);
    // Write them into out: gather from [out | z].
    const MatrixView<S> src = Scratch::view(ws.src, d, BT + P);
    const MatrixView<S> tmp = Scratch::view(ws.tmp, d, BT);
    Backend::copy(ctx, ConstMatrixView<S>(out), src.col_block(0, BT));
    Backend::copy(ctx, ConstMatrixView<S>(z), src.col_block(BT, P));
    Backend::gather_cols(ctx, ConstMatrixView<S>(src), Scratch::upload(ws.w_idx, ws.w_idx_h, BT),
                         tmp);
    Backend::copy(ctx, ConstMatrixView<S>(tmp), out);
    cur = next;
  }
}

/// mar_sample with a scratch of its own.
template <class S, class Backend>
void mar_sample(const nn::MarGenerator<S, Backend>& model, Convention conv, Index B,
                const MarSampleOptions& opt, Rng& rng, mar_parts::View<S> out) {
  MarScratch<S, Backend> ws;
  mar_sample(model, conv, B, opt, rng, out, ws);
}

}  // namespace train
}  // namespace flowprior

#if !defined(__CUDACC__)
#include <flowprior/backend/cpu.hpp>  // the default backend of host code
#endif
