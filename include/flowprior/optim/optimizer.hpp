/// @file
/// Training utilities on flat parameter vectors: Adam / AdamW with PyTorch's bias correction,
/// global gradient-norm clipping, learning-rate schedules (linear warmup, then constant or
/// cosine) and an exponential moving average of the weights. Every routine works on one
/// contiguous vector (a field's `parameters()` / gradient buffer, one flat buffer), and
/// its per-element work is a primitive of the backend (`adam_update`, `sum_squares`, `max_abs`,
/// `first_nonfinite`, `scale_vec`, `ema_update`: docs/backends.md), run on a backend context
/// (docs/backends.md "Context"): this header reads no element of backend memory (the only loops
/// check a restored state on the host, where it arrives) and includes neither Eigen nor OpenMP
/// (host code gets the default backend, CpuBackend, included at the end, as the fields do).
/// Equations: docs/math/optim.md.
///
/// Contexts: Adam and Ema own a context of their backend, or use the caller's (set_context);
/// grad_norm and clip_grad_norm take one as their first argument, or make an empty one of their
/// own (the overloads without it: meant for the CPU, whose context is empty).
///
/// Scalars: `S` is float or double. Optimizer moments and EMA weights are stored in `S`; the
/// scalar coefficients (betas, bias corrections, step size, decay) are doubles and each
/// element's update is evaluated in double before it is rounded back to `S`.
///
/// State: the moments and the averaged weights are `Backend::Buffer<S>` (device memory on a
/// device backend). They are read as views of that memory (m_view(), v_view(), weights_view():
/// for primitives) or copied to the host (copy_m_to, copy_v_to, copy_weights_to into a caller's
/// array; m(), v(), weights() into a new std::vector): the latter is how the state reaches a
/// checkpoint. set_state takes host data, checks it on the host and uploads it
/// (Backend::copy_from_host).
#pragma once

#include <cmath>
#include <cstddef>
#include <flowprior/backend/context.hpp>
#include <flowprior/backend/fwd.hpp>
#include <flowprior/backend/optim_args.hpp>
#include <flowprior/core/check.hpp>
#include <flowprior/core/error.hpp>
#include <flowprior/core/size.hpp>
#include <flowprior/core/types.hpp>
#include <sstream>
#include <string>
#include <vector>

namespace flowprior {
namespace detail {

/// "<value>" with the stream's default 6 significant digits (1e-08 stays readable).
inline std::string optim_num(double x) {
  std::ostringstream os;
  os << x;
  return os.str();
}

/// Throws numeric_error naming the argument, the value and its index in a flat vector.
[[noreturn]] inline FLOWPRIOR_COLD void optim_raise_nonfinite(const char* where, const char* name,
                                                              double value, Index i) {
  std::ostringstream os;
  os << "[flowprior.numeric] " << where << ": argument '" << name << "' has a non-finite value "
     << value << " at index " << i;
  raise<numeric_error>(os.str());
}

/// The element i of a vector in backend memory, copied to the host (one element: for the value
/// an error message names).
template <class Backend, class S>
double optim_element(ConstVectorView<S> x, Index i) {
  S value{};
  Backend::copy_to_host(x.data + i, 1, &value);
  return static_cast<double>(value);
}

/// Index of the first NaN/Inf of x, or -1. x is host memory: restored state is checked on the
/// host, before it is uploaded.
template <class S>
Index host_first_nonfinite(ConstVectorView<S> x) {
  for (Index i = 0; i < x.size; ++i)
    if (!std::isfinite(x[i])) return i;
  return -1;
}

/// Index of the first negative entry of x (host memory), or -1.
template <class S>
Index host_first_negative(ConstVectorView<S> x) {
  for (Index i = 0; i < x.size; ++i)
    if (x[i] < S(0)) return i;
  return -1;
}

}  // namespace detail

namespace optim {

// ---------------------------------------------------------------------------------------------
// Adam / AdamW
// ---------------------------------------------------------------------------------------------

/// Hyper-parameters of Adam. The defaults are torch.optim.Adam's, except `lr` (1e-4, the
/// released prior's rate; PyTorch uses 1e-3). The released prior trains with betas (0.9, 0.95)
/// and no weight decay (docs/math/optim.md "Released recipe").
struct AdamConfig {
  double lr = 1e-4;         ///< rate used by Adam::step(params, grads) (no schedule)
  double beta1 = 0.9;       ///< first-moment decay, in [0, 1)
  double beta2 = 0.999;     ///< second-moment decay, in [0, 1)
  double eps = 1e-8;        ///< added to sqrt(v_hat) (outside the root), > 0
  double weight_decay = 0;  ///< lambda >= 0
  bool decoupled = true;    ///< true: AdamW, docs/math/optim.md (3); false: L2 Adam, (4)

  /// The largest learning rate Adam accepts. Adam moves every parameter by about lr per step
  /// whatever the scale of its gradient (docs/math/optim.md (2)), so a larger rate is a unit
  /// mistake, not a setting: it is refused rather than run (docs/errors.md "Options").
  static constexpr double max_lr = 1e3;

  /// Throws config_error naming the field: lr in [0, max_lr], 0 <= beta1, beta2 < 1, eps > 0
  /// and finite, weight_decay finite and >= 0. (NaN fails every check.)
  void validate() const {
    if (!(lr >= 0 && lr <= max_lr))
      raise_config("AdamConfig", "lr must lie in [0, " + detail::optim_num(max_lr) + "], got " +
                                     detail::optim_num(lr));
    if (!(beta1 >= 0 && beta1 < 1))
      raise_config("AdamConfig", "beta1 must lie in [0, 1), got " + detail::optim_num(beta1));
    if (!(beta2 >= 0 && beta2 < 1))
      raise_config("AdamConfig", "beta2 must lie in [0, 1), got " + detail::optim_num(beta2));
    if (!(std::isfinite(eps) && eps > 0))
      raise_config("AdamConfig", "eps must be finite and > 0, got " + detail::optim_num(eps));
    if (!(std::isfinite(weight_decay) && weight_decay >= 0))
      raise_config("AdamConfig",
                   "weight_decay must be finite and >= 0, got " + detail::optim_num(weight_decay));
  }
};

/// Adam (decoupled = false) or AdamW (decoupled = true) over a flat parameter vector of size n,
/// matching torch.optim.Adam / torch.optim.AdamW (amsgrad = False, maximize = False) up to
/// rounding. State: the step count t and the moments m, v (size n, type S), all zero at
/// construction and after reset().
///
/// Typical loop, with the schedule's step counted from 0 as the optimizer's steps so far
/// (the same as torch's LambdaLR stepped after each optimizer.step()):
/// @code
///   adam.step(params, grads, schedule.at(adam.steps()));
/// @endcode
/// The update runs on the backend primitive Backend::adam_update, on context() (the optimizer's
/// own context, or the caller's: set_context). The moments are Backend::Buffer<S> (device memory
/// on a device backend): m_view() / v_view() for primitives, copy_m_to / copy_v_to (or m() /
/// v()) for a host copy, set_state to restore one.
template <class S, class Backend = CpuBackend>
class Adam {
 public:
  using Scalar = S;
  using Context = typename Backend::Context;
  using Buffer = typename Backend::template Buffer<S>;

  /// An optimizer for n parameters. @pre n >= 0 (else config_error); cfg.validate() is called.
  Adam(Index n, AdamConfig cfg) : cfg_(cfg) {
    if (n < 0) raise_config("Adam", "n must be >= 0, got " + std::to_string(n));
    cfg_.validate();
    check_allocation("Adam", "the moments of " + std::to_string(n) + " parameters",
                     checked_mul("Adam", "2 x parameters", 2, n), sizeof(S));
    n_ = n;
    Backend::resize(m_, n);
    Backend::resize(v_, n);
    zero_moments();
  }

  /// One Adam step at learning rate `lr` (this step's rate, e.g. LrSchedule::at(steps())):
  /// t += 1, then docs/math/optim.md (3) or (4) (weight decay), (1) (moments) and (2) (bias
  /// correction and update):
  ///   AdamW: p <- p (1 - lr wd);   L2 Adam: g <- g + wd p;
  ///   m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2;
  ///   p <- p - (lr / bc1) m / (sqrt(v) / sqrt(bc2) + eps),  bc_k = 1 - b_k^t.
  /// Shapes: params and grads have size n. grads is not modified.
  /// Throws, leaving params and the state unchanged: shape_error if a size differs from n,
  /// config_error if lr lies outside [0, AdamConfig::max_lr] (NaN included), numeric_error
  /// naming the index of the first NaN/Inf gradient.
  void step(VectorView<S> params, ConstVectorView<S> grads, double lr) {
    check_size("Adam::step", "params", params, n_);
    check_size("Adam::step", "grads", grads, n_);
    if (!(lr >= 0 && lr <= AdamConfig::max_lr))
      raise_config("Adam::step", "lr must lie in [0, " + detail::optim_num(AdamConfig::max_lr) +
                                     "], got " + detail::optim_num(lr));
    Context& ctx = context();
    const Index bad = Backend::first_nonfinite(ctx, grads);
    if (bad >= 0)
      detail::optim_raise_nonfinite("Adam::step", "grads",
                                    detail::optim_element<Backend, S>(grads, bad), bad);

    ++t_;
    AdamStep a;
    a.beta1 = cfg_.beta1;
    a.beta2 = cfg_.beta2;
    const double wd = cfg_.weight_decay;
    // (2): bias corrections in double; torch's form step_size = lr / bc1 and
    // denom = sqrt(v) / sqrt(bc2) + eps (eps outside the root, after the correction).
    const double bc1 = 1.0 - std::pow(a.beta1, static_cast<double>(t_));
    const double bc2 = 1.0 - std::pow(a.beta2, static_cast<double>(t_));
    a.step_size = lr / bc1;
    a.bc2_sqrt = std::sqrt(bc2);
    // (3) AdamW shrinks the parameter by this step's lr; (4) L2 Adam adds wd p to the gradient.
    a.shrink = cfg_.decoupled ? 1.0 - lr * wd : 1.0;
    a.l2 = cfg_.decoupled ? 0.0 : wd;
    a.eps = cfg_.eps;
    Backend::adam_update(ctx, params, grads, VectorView<S>(m_.data(), n_),
                         VectorView<S>(v_.data(), n_), a);
  }

  /// step(params, grads, config().lr): a step at the configured constant rate.
  void step(VectorView<S> params, ConstVectorView<S> grads) { step(params, grads, cfg_.lr); }

  /// Number of steps taken (t of the last step; 0 before the first).
  Index steps() const { return t_; }
  /// Number of parameters n.
  Index size() const { return n_; }
  /// The hyper-parameters.
  const AdamConfig& config() const { return cfg_; }
  /// First moment m (size n), docs/math/optim.md (1), as a view of backend memory.
  ConstVectorView<S> m_view() const { return {m_.data(), n_}; }
  /// Second moment v (size n), docs/math/optim.md (1), as a view of backend memory.
  ConstVectorView<S> v_view() const { return {v_.data(), n_}; }
  /// Copies m to the host array `host` (n elements; Backend::copy_to_host): for checkpoints.
  void copy_m_to(S* host) const { Backend::copy_to_host(m_view().data, n_, host); }
  /// Copies v to the host array `host` (n elements; Backend::copy_to_host): for checkpoints.
  void copy_v_to(S* host) const { Backend::copy_to_host(v_view().data, n_, host); }
  /// A host copy of m (allocates n elements).
  std::vector<S> m() const {
    std::vector<S> host(static_cast<std::size_t>(n_));
    copy_m_to(host.data());
    return host;
  }
  /// A host copy of v (allocates n elements).
  std::vector<S> v() const {
    std::vector<S> host(static_cast<std::size_t>(n_));
    copy_v_to(host.data());
    return host;
  }

  /// The context the updates run on: the optimizer's own, or the one lent by set_context.
  Context& context() { return ctx_.get(); }
  /// Runs the updates on `ctx` from now on (not owned: the caller keeps it alive while the
  /// optimizer steps); nullptr returns to the optimizer's own context.
  void set_context(Context* ctx) { ctx_.lend(ctx); }

  /// Zeroes the step count and both moments (a fresh optimizer), on context().
  void reset() {
    t_ = 0;
    zero_moments();
  }

  /// Restores a checkpointed state (steps(), m(), v() of the saved optimizer), so that the next
  /// step is bit-identical to the one the saved optimizer would have taken. m and v are host
  /// memory (as m() and v() return it): they are checked on the host, then uploaded
  /// (Backend::copy_from_host).
  /// Throws shape_error if m or v has a size other than n, value_error if steps < 0, numeric_error
  /// if m or v holds NaN/Inf, value_error if v has a negative entry; the state is unchanged then.
  void set_state(Index steps, ConstVectorView<S> m, ConstVectorView<S> v) {
    check_size("Adam::set_state", "m", m, n_);
    check_size("Adam::set_state", "v", v, n_);
    if (steps < 0)
      detail::raise<value_error>("[flowprior.value] Adam::set_state: steps must be >= 0, got " +
                                 std::to_string(steps));
    Index bad = detail::host_first_nonfinite(m);
    if (bad >= 0) detail::optim_raise_nonfinite("Adam::set_state", "m", double(m[bad]), bad);
    bad = detail::host_first_nonfinite(v);
    if (bad >= 0) detail::optim_raise_nonfinite("Adam::set_state", "v", double(v[bad]), bad);
    bad = detail::host_first_negative(v);
    if (bad >= 0)
      detail::raise<value_error>(
          "[flowprior.value] Adam::set_state: argument 'v' must be >= 0, got " +
          detail::optim_num(double(v[bad])) + " at index " + std::to_string(bad));
    t_ = steps;
    Backend::copy_from_host(m.data, n_, m_);
    Backend::copy_from_host(v.data, n_, v_);
  }

 private:
  void zero_moments() {
    Context& ctx = context();
    Backend::fill(ctx, MatrixView<S>(m_.data(), n_, 1), S(0));
    Backend::fill(ctx, MatrixView<S>(v_.data(), n_, 1), S(0));
  }

  AdamConfig cfg_;
  Index n_ = 0;
  Index t_ = 0;
  Buffer m_;
  Buffer v_;
  ContextSlot<Backend> ctx_;
};

// ---------------------------------------------------------------------------------------------
// Gradient-norm clipping
// ---------------------------------------------------------------------------------------------

/// Global L2 norm sqrt(sum_i g_i^2), accumulated in double, docs/math/optim.md (5). Returns NaN
/// or Inf if g holds NaN or Inf (never throws); a finite g whose squares overflow double is
/// rescaled by its largest magnitude, so the result is finite whenever the norm is. 0 if empty.
/// Runs on the backend context ctx (Backend::sum_squares; first_nonfinite and max_abs only when
/// the sum is not finite).
template <class S, class Backend = CpuBackend>
double grad_norm(typename Backend::Context& ctx, ConstVectorView<S> g) {
  const double ss = Backend::sum_squares(ctx, g);
  if (std::isfinite(ss)) return std::sqrt(ss);
  // Either a NaN/Inf entry (propagate it) or overflow of the squares (rescale and retry).
  if (Backend::first_nonfinite(ctx, g) >= 0) return std::sqrt(ss);
  const double amax = Backend::max_abs(ctx, g);
  return amax * std::sqrt(Backend::sum_squares(ctx, g, amax));
}

/// grad_norm on a context of its own (empty on the CPU; with a backend whose context holds a
/// stream, pass one instead).
template <class S, class Backend = CpuBackend>
double grad_norm(ConstVectorView<S> g) {
  typename Backend::Context ctx;
  return grad_norm<S, Backend>(ctx, g);
}

/// Clips g in place to global L2 norm max_norm with torch.nn.utils.clip_grad_norm_ semantics
/// (error_if_nonfinite = True), docs/math/optim.md (5): with N = grad_norm(g) and
/// c = max_norm / (N + 1e-6), g <- c g when c < 1, otherwise g is unchanged. (So g is scaled
/// when N > max_norm - 1e-6: a norm equal to max_norm is scaled by max_norm / (max_norm + 1e-6),
/// as in PyTorch.) Returns N, the norm before clipping.
/// Throws config_error if max_norm is not > 0 (NaN included; +Inf means "never clip"), and
/// numeric_error naming the first NaN/Inf entry if N is not finite; g is unchanged then.
/// Runs on the backend context ctx (grad_norm, then Backend::scale_vec when clipping).
template <class S, class Backend = CpuBackend>
double clip_grad_norm(typename Backend::Context& ctx, VectorView<S> g, double max_norm) {
  if (!(max_norm > 0))
    raise_config("clip_grad_norm", "max_norm must be > 0, got " + detail::optim_num(max_norm));
  const double norm = grad_norm<S, Backend>(ctx, ConstVectorView<S>(g));
  if (!std::isfinite(norm)) {
    const Index bad = Backend::first_nonfinite(ctx, ConstVectorView<S>(g));
    detail::optim_raise_nonfinite("clip_grad_norm", "g",
                                  bad >= 0 ? detail::optim_element<Backend, S>(g, bad) : norm, bad);
  }
  const double coef = max_norm / (norm + 1e-6);
  if (coef < 1.0) Backend::scale_vec(ctx, g, coef);
  return norm;
}

/// clip_grad_norm on a context of its own (empty on the CPU; with a backend whose context holds
/// a stream, pass one instead).
template <class S, class Backend = CpuBackend>
double clip_grad_norm(VectorView<S> g, double max_norm) {
  typename Backend::Context ctx;
  return clip_grad_norm<S, Backend>(ctx, g, max_norm);
}

// ---------------------------------------------------------------------------------------------
// Learning-rate schedules
// ---------------------------------------------------------------------------------------------

/// Learning rate as a function of the optimizer step s = 0, 1, 2, ... (s is the number of steps
/// already taken, i.e. Adam::steps() before the step; the first step uses at(0)).
/// - Warmup, docs/math/optim.md (6): lr(s) = base_lr (s + 1) / warmup_steps for s < warmup_steps,
///   so the first step already moves (base_lr / warmup_steps) and s = warmup_steps - 1 reaches
///   base_lr.
/// - After warmup, Constant: base_lr. Cosine, (7): min_lr + (base_lr - min_lr) (1 + cos(pi q)) / 2
///   with q = (s - warmup_steps) / max(1, total_steps - warmup_steps) clamped to [0, 1]: base_lr
///   at s = warmup_steps, min_lr at s = total_steps and ever after.
/// Plain aggregate; call validate() after filling it (the factories below do).
struct LrSchedule {
  enum class Kind { Constant, Cosine };
  Kind kind = Kind::Constant;
  double base_lr = 1e-4;   ///< peak rate, >= 0
  Index warmup_steps = 0;  ///< W >= 0 (0: no warmup)
  Index total_steps = 0;   ///< T; Cosine needs T > W; ignored by Constant
  double min_lr = 0;       ///< final rate of Cosine, in [0, base_lr]; ignored by Constant

  /// Throws config_error naming the field: base_lr finite and >= 0, min_lr in [0, base_lr],
  /// warmup_steps >= 0, and for Cosine total_steps > warmup_steps.
  void validate() const {
    if (kind != Kind::Constant && kind != Kind::Cosine)
      raise_config("LrSchedule", "kind must be Constant or Cosine");
    if (!(std::isfinite(base_lr) && base_lr >= 0))
      raise_config("LrSchedule",
                   "base_lr must be finite and >= 0, got " + detail::optim_num(base_lr));
    if (!(min_lr >= 0 && min_lr <= base_lr))
      raise_config("LrSchedule", "min_lr must lie in [0, base_lr = " + detail::optim_num(base_lr) +
                                     "], got " + detail::optim_num(min_lr));
    if (warmup_steps < 0)
      raise_config("LrSchedule", "warmup_steps must be >= 0, got " + std::to_string(warmup_steps));
    if (kind == Kind::Cosine && !(total_steps > warmup_steps))
      raise_config("LrSchedule",
                   "total_steps must be > warmup_steps = " + std::to_string(warmup_steps) +
                       " for a cosine schedule, got " + std::to_string(total_steps));
  }

  /// The rate for step s (counted from 0), docs/math/optim.md (6)-(7).
  /// @pre validate() passes. Throws value_error if s < 0.
  double at(Index s) const {
    if (s < 0)
      detail::raise<value_error>("[flowprior.value] LrSchedule::at: step must be >= 0, got " +
                                 std::to_string(s));
    if (s < warmup_steps)  // (6)
      return base_lr * static_cast<double>(s + 1) / static_cast<double>(warmup_steps);
    if (kind == Kind::Constant) return base_lr;
    const Index span = total_steps - warmup_steps > 1 ? total_steps - warmup_steps : 1;
    double q = static_cast<double>(s - warmup_steps) / static_cast<double>(span);
    q = q < 0 ? 0 : (q > 1 ? 1 : q);
    const double pi = 3.14159265358979323846;
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + std::cos(pi * q));  // (7)
  }

  /// A constant rate lr after an optional linear warmup of warmup_steps (6). Validated.
  static LrSchedule constant(double lr, Index warmup_steps = 0) {
    LrSchedule s;
    s.kind = Kind::Constant;
    s.base_lr = lr;
    s.warmup_steps = warmup_steps;
    s.validate();
    return s;
  }

  /// Linear warmup to base_lr over warmup_steps (6), then cosine decay to min_lr at
  /// total_steps (7). Validated. The released prior: cosine(1e-4, 2500, total, 0) or so
  /// (docs/math/optim.md "Released recipe").
  static LrSchedule cosine(double base_lr, Index warmup_steps, Index total_steps,
                           double min_lr = 0) {
    LrSchedule s;
    s.kind = Kind::Cosine;
    s.base_lr = base_lr;
    s.warmup_steps = warmup_steps;
    s.total_steps = total_steps;
    s.min_lr = min_lr;
    s.validate();
    return s;
  }
};

// ---------------------------------------------------------------------------------------------
// Exponential moving average of the weights
// ---------------------------------------------------------------------------------------------

/// Exponential moving average of a flat parameter vector, docs/math/optim.md (8):
/// e <- decay e + (1 - decay) p at every update(), starting from e = the parameters given to the
/// constructor (as the released code's EMA copy of the model). No warmup of the decay.
/// The update runs on the backend primitive Backend::ema_update, on context() (the average's own
/// context, or the caller's: set_context). The weights are a Backend::Buffer<S> (device memory
/// on a device backend): weights_view() for primitives, copy_weights_to (or weights()) for a host
/// copy, set_state to restore one.
template <class S, class Backend = CpuBackend>
class Ema {
 public:
  using Scalar = S;
  using Context = typename Backend::Context;
  using Buffer = typename Backend::template Buffer<S>;

  /// Starts the average at a copy of params (size n; backend memory, e.g. a field's
  /// parameters()), made by Backend::copy on the average's own context. Throws config_error
  /// unless 0 <= decay < 1 (NaN fails).
  Ema(ConstVectorView<S> params, double decay) : decay_(decay) {
    if (!(decay >= 0 && decay < 1))
      raise_config("Ema", "decay must lie in [0, 1), got " + detail::optim_num(decay));
    if (params.size < 0)
      raise_config("Ema", "params must have size >= 0, got " + std::to_string(params.size));
    n_ = params.size;
    Backend::resize(w_, n_);
    Backend::copy(context(), ConstMatrixView<S>(params.data, n_, 1),
                  MatrixView<S>(w_.data(), n_, 1));
  }

  /// e <- decay e + (1 - decay) p, elementwise in double with double coefficients, (8).
  /// Throws shape_error if params has a size other than size() (state unchanged).
  void update(ConstVectorView<S> params) {
    check_size("Ema::update", "params", params, size());
    Backend::ema_update(context(), VectorView<S>(w_.data(), n_), params, decay_);
    ++updates_;
  }

  /// The context the updates run on: the average's own, or the one lent by set_context.
  Context& context() { return ctx_.get(); }
  /// Runs the updates on `ctx` from now on (not owned: the caller keeps it alive while the
  /// average is updated); nullptr returns to the average's own context.
  void set_context(Context* ctx) { ctx_.lend(ctx); }

  /// The averaged weights e (size n), as a view of backend memory.
  ConstVectorView<S> weights_view() const { return {w_.data(), n_}; }
  /// Copies e to the host array `host` (n elements; Backend::copy_to_host): for checkpoints.
  void copy_weights_to(S* host) const { Backend::copy_to_host(weights_view().data, n_, host); }
  /// A host copy of e (allocates n elements).
  std::vector<S> weights() const {
    std::vector<S> host(static_cast<std::size_t>(n_));
    copy_weights_to(host.data());
    return host;
  }
  /// The decay in [0, 1).
  double decay() const { return decay_; }
  /// Number of update() calls since construction (or as restored by set_state).
  Index updates() const { return updates_; }
  /// Number of parameters n.
  Index size() const { return n_; }

  /// Restores a checkpointed average: updates() and weights() of the saved Ema. weights is host
  /// memory (as weights() returns it), uploaded with Backend::copy_from_host.
  /// Throws shape_error if weights has a size other than n, value_error if updates < 0 (state
  /// unchanged then).
  void set_state(Index updates, ConstVectorView<S> weights) {
    check_size("Ema::set_state", "weights", weights, size());
    if (updates < 0)
      detail::raise<value_error>("[flowprior.value] Ema::set_state: updates must be >= 0, got " +
                                 std::to_string(updates));
    updates_ = updates;
    Backend::copy_from_host(weights.data, n_, w_);
  }

 private:
  double decay_;
  Index updates_ = 0;
  Index n_ = 0;
  Buffer w_;
  ContextSlot<Backend> ctx_;
};

}  // namespace optim
}  // namespace flowprior

#if !defined(__CUDACC__)
#include <flowprior/backend/cpu.hpp>  // the default backend of host code
#endif
