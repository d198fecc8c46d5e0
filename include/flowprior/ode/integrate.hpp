/// @file
/// Batched ODE integration dz/dt = f(t, z) for z of shape (n, B) (one column per sample, all
/// columns at the same t): Euler, Heun (2nd order) and RK4 with a fixed number of steps, and
/// adaptive Dormand-Prince 5(4) with atol/rtol, a maximum number of steps and a minimum step.
/// Either direction of time. Equations and cost: docs/math/ode.md.
///
/// The system is any callable `f(double t, ConstMatrixView<S> z, MatrixView<S> dz_out)`.
/// Memory is a fixed set of stage buffers (independent of the number of steps); trajectories are
/// returned only at times the caller asks for.
///
/// The element work (the stage combinations, the error norms, the state checks) is done by the
/// backend's ODE primitives (docs/backends.md "ODE primitives") on one context, in stage memory
/// of the backend: this header has no loop over the elements of a state and includes no Eigen
/// (host code gets the default backend, CpuBackend, included at the end). The step-size control
/// stays on the host, on the doubles the primitives return.
#pragma once

#include <algorithm>
#include <cmath>
#include <flowprior/backend/context.hpp>
#include <flowprior/backend/fwd.hpp>
#include <flowprior/backend/ode_args.hpp>
#include <flowprior/core/check.hpp>
#include <flowprior/core/size.hpp>
#include <flowprior/core/types.hpp>
#include <new>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

namespace flowprior {

/// An ODE solve failed: the adaptive step size fell below min_step, or max_steps was reached,
/// before the requested end time. The message names the time and step size reached.
class ode_error : public error {
 public:
  using error::error;
};

namespace ode {

enum class Method {
  Euler,  ///< 1st order, 1 evaluation per step
  Heun,   ///< 2nd order (explicit trapezoid), 2 evaluations per step
  RK4,    ///< classic 4th order, 4 evaluations per step
  Dopri5  ///< adaptive Dormand-Prince 5(4), 6 evaluations per accepted step (FSAL)
};

inline const char* to_string(Method m) {
  switch (m) {
    case Method::Euler:
      return "euler";
    case Method::Heun:
      return "heun";
    case Method::RK4:
      return "rk4";
    default:
      return "dopri5";
  }
}

/// Solver options. `steps` is used by the fixed-step methods; the rest by Dopri5.
struct SolverOptions {
  Method method = Method::Dopri5;
  Index steps = 100;         ///< fixed-step methods: steps over the whole interval
  double atol = 1e-5;        ///< Dopri5: absolute tolerance
  double rtol = 1e-5;        ///< Dopri5: relative tolerance
  Index max_steps = 100000;  ///< Dopri5: accepted + rejected steps before giving up
  double min_step = 1e-12;   ///< Dopri5: smallest |h| before giving up
  double first_step = 0;     ///< Dopri5: initial |h|; 0 chooses it automatically

  void validate() const {
    const char* w = "ode::SolverOptions";
    if (method != Method::Dopri5 && steps <= 0)
      raise_config(w,
                   "steps must be positive for fixed-step methods, got " + std::to_string(steps));
    if (method == Method::Dopri5) {
      if (!(rtol > 0) || !std::isfinite(rtol)) raise_config(w, "rtol must be > 0");
      if (!(atol > 0) || !std::isfinite(atol)) raise_config(w, "atol must be > 0");
      if (max_steps <= 0) raise_config(w, "max_steps must be positive");
      if (!(min_step > 0)) raise_config(w, "min_step must be > 0");
      if (!(first_step >= 0) || !std::isfinite(first_step))
        raise_config(w, "first_step must be >= 0 (0 = automatic)");
    }
  }
};

/// What a solve did.
struct SolveStats {
  Index nfe = 0;       ///< field (right-hand side) evaluations
  Index accepted = 0;  ///< accepted steps
  Index rejected = 0;  ///< rejected steps (Dopri5)
};

/// Reused memory of the solvers (one per thread): the stage buffers, in memory of the backend
/// (5 n B values for the fixed-step methods, 9 n B for Dopri5, grown on first use, whatever the
/// number of steps), and the backend context the solvers run their primitives on: its own, or one
/// lent with set_context (docs/backends.md "Context"; copying gives a fresh context of its own).
template <class S, class Backend = CpuBackend>
class Work {
 public:
  using Context = typename Backend::Context;
  using Buffer = typename Backend::template Buffer<S>;

  Buffer stages;  ///< the stage buffers (device memory on a device backend)

  /// The context the solvers run on.
  Context& context() { return ctx_.get(); }
  /// Runs on `ctx` from now on (not owned: the caller keeps it alive); nullptr returns to the
  /// work's own context.
  void set_context(Context* ctx) { ctx_.lend(ctx); }

 private:
  ContextSlot<Backend> ctx_;
};

/// Integrates dz/dt = f(t, z) from t0 to t1 in place (either direction of time; t0 and t1 are
/// whatever times the system f takes: this function has no time convention). Stage buffers and
/// context come from `work`. Throws ode_error if the adaptive solve cannot reach t1,
/// numeric_error naming the time and the element (i, j) if the state becomes non-finite.
template <class S, class F, class Backend>
SolveStats integrate(F&& f, double t0, double t1, MatrixView<S> z, const SolverOptions& opt,
                     Work<S, Backend>& work);

/// The same with stage memory in a host std::vector, on the CPU backend with a context of its own
/// (the original signature, for host callers).
template <class S, class F>
SolveStats integrate(F&& f, double t0, double t1, MatrixView<S> z, const SolverOptions& opt,
                     std::vector<S>& work);

/// The same on a context and a stage buffer of the caller's (ode::OdeWorkspace uses its field
/// workspace's context): `integrate_on<Backend>(ctx, stages, f, t0, t1, z, opt)`.
template <class Backend, class S, class F>
SolveStats integrate_on(typename Backend::Context& ctx,
                        typename Backend::template Buffer<S>& stages, F&& f, double t0, double t1,
                        MatrixView<S> z, const SolverOptions& opt);

/// The same, returning the state at each time of `times` (monotone from t0 towards the end time;
/// no time convention, as integrate) in `observe(i, t_i, z)`. Each segment between consecutive
/// times gets its share of fixed steps. (observe receives a view of the state: backend memory.)
template <class S, class F, class Obs, class Backend>
SolveStats integrate_observed(F&& f, double t0, const std::vector<double>& times, MatrixView<S> z,
                              const SolverOptions& opt, Work<S, Backend>& work, Obs&& observe);

/// integrate_observed with stage memory in a host std::vector (CPU backend, as integrate).
template <class S, class F, class Obs>
SolveStats integrate_observed(F&& f, double t0, const std::vector<double>& times, MatrixView<S> z,
                              const SolverOptions& opt, std::vector<S>& work, Obs&& observe);

/// integrate_observed on a context and a stage buffer of the caller's.
template <class Backend, class S, class F, class Obs>
SolveStats integrate_observed_on(typename Backend::Context& ctx,
                                 typename Backend::template Buffer<S>& stages, F&& f, double t0,
                                 const std::vector<double>& times, MatrixView<S> z,
                                 const SolverOptions& opt, Obs&& observe);

namespace detail {

/// CpuBackend as a name that depends on T (the host overloads name it before it is complete).
template <class T>
struct host_backend {
  using type = CpuBackend;
};

/// Grows a backend buffer to at least n elements (never shrinks), after checking that n of them
/// can fit in this machine's memory (config_error naming `what` otherwise); returns its data.
template <class Backend, class T>
T* grow(const char* where, const char* what, typename Backend::template Buffer<T>& buf, Index n) {
  if (Index(buf.size()) < n) {
    check_allocation(where, what, n, sizeof(T));
    try {
      Backend::resize(buf, n);
    } catch (const std::bad_alloc&) {
      flowprior::detail::raise_size_config(where, std::string(what) + ": cannot allocate " +
                                                      std::to_string(n) + " elements (" +
                                                      gib_string(double(n) * sizeof(T)) + ")");
    }
  }
  return buf.data();
}

/// The stage memory a method needs for a state of n x B values, and the name of those stages.
inline Index stage_elements(Method m, Index n, Index B) {
  const char* w = "ode::integrate";
  const Index slots = m == Method::Dopri5 ? 9 : 5;
  return checked_mul(w, m == Method::Dopri5 ? "9 x state size" : "5 x state size", slots,
                     checked_mul(w, "state size", n, B));
}
inline const char* stage_name(Method m) {
  return m == Method::Dopri5 ? "the Dopri5 stages" : "the RK4 stages";
}

/// Throws numeric_error naming the time and the first non-finite element of z (backend scan).
template <class Backend, class S>
void check_state(typename Backend::Context& ctx, const char* where, ConstMatrixView<S> z,
                 double t) {
  const NonFinite bad = Backend::find_nonfinite(ctx, z);
  if (!bad.found()) return;
  std::ostringstream os;
  os << "[flowprior.numeric] " << where << ": the state became non-finite at t = " << t
     << " (element (" << bad.i << ", " << bad.j << "))";
  flowprior::detail::raise<numeric_error>(os.str());
}

template <class Backend, class S, class F>
SolveStats fixed(typename Backend::Context& ctx, F& f, double t0, double t1, MatrixView<S> z,
                 const SolverOptions& opt, Index steps, S* mem) {
  const Index n = z.rows, B = z.cols;
  auto slot = [&](Index i) { return MatrixView<S>(mem + i * n * B, n, B); };
  const MatrixView<S> k1 = slot(0), k2 = slot(1), k3 = slot(2), k4 = slot(3), y = slot(4);
  using T = StageTerms<S>;
  SolveStats st;
  const double h = (t1 - t0) / double(steps);
  for (Index s = 0; s < steps; ++s) {
    const double t = t0 + double(s) * h;
    const double tn = s + 1 == steps ? t1 : t + h;  // land exactly on t1
    const double hh = tn - t;
    f(t, ConstMatrixView<S>(z), k1);
    ++st.nfe;
    switch (opt.method) {
      case Method::Euler:  // z += h k1                                   ode.md (1)
        Backend::lincomb(ctx, z, hh, T{{1.0, k1}}, z);
        break;
      case Method::Heun:  // z += h/2 (k1 + f(t+h, z + h k1))            ode.md (2)
        Backend::lincomb(ctx, z, hh, T{{1.0, k1}}, y);
        f(tn, ConstMatrixView<S>(y), k2);
        st.nfe += 1;
        Backend::lincomb(ctx, z, hh, T{{0.5, k1}, {0.5, k2}}, z);
        break;
      default:  // RK4                                                     ode.md (3)
        Backend::lincomb(ctx, z, 0.5 * hh, T{{1.0, k1}}, y);
        f(t + 0.5 * hh, ConstMatrixView<S>(y), k2);
        Backend::lincomb(ctx, z, 0.5 * hh, T{{1.0, k2}}, y);
        f(t + 0.5 * hh, ConstMatrixView<S>(y), k3);
        Backend::lincomb(ctx, z, hh, T{{1.0, k3}}, y);
        f(tn, ConstMatrixView<S>(y), k4);
        st.nfe += 3;
        Backend::lincomb(ctx, z, hh, T{{1.0 / 6, k1}, {1.0 / 3, k2}, {1.0 / 3, k3}, {1.0 / 6, k4}},
                         z);
        break;
    }
    check_state<Backend>(ctx, "ode::integrate", ConstMatrixView<S>(z), tn);
    ++st.accepted;
  }
  return st;
}

// Dormand-Prince 5(4) coefficients (Dormand & Prince 1980; Hairer, Norsett & Wanner, table 5.2).
struct Dp {
  static constexpr double c2 = 1.0 / 5, c3 = 3.0 / 10, c4 = 4.0 / 5, c5 = 8.0 / 9;
  static constexpr double a21 = 1.0 / 5;
  static constexpr double a31 = 3.0 / 40, a32 = 9.0 / 40;
  static constexpr double a41 = 44.0 / 45, a42 = -56.0 / 15, a43 = 32.0 / 9;
  static constexpr double a51 = 19372.0 / 6561, a52 = -25360.0 / 2187, a53 = 64448.0 / 6561,
                          a54 = -212.0 / 729;
  static constexpr double a61 = 9017.0 / 3168, a62 = -355.0 / 33, a63 = 46732.0 / 5247,
                          a64 = 49.0 / 176, a65 = -5103.0 / 18656;
  // 5th-order weights (also the last stage row, FSAL)
  static constexpr double b1 = 35.0 / 384, b3 = 500.0 / 1113, b4 = 125.0 / 192, b5 = -2187.0 / 6784,
                          b6 = 11.0 / 84;
  // 5th minus 4th-order weights: the error estimate
  static constexpr double e1 = 71.0 / 57600, e3 = -71.0 / 16695, e4 = 71.0 / 1920,
                          e5 = -17253.0 / 339200, e6 = 22.0 / 525, e7 = -1.0 / 40;
};

template <class Backend, class S, class F>
SolveStats dopri5(typename Backend::Context& ctx, F& f, double t0, double t1, MatrixView<S> z,
                  const SolverOptions& opt, S* mem) {
  const Index n = z.rows, B = z.cols;
  auto slot = [&](Index i) { return MatrixView<S>(mem + i * n * B, n, B); };
  MatrixView<S> k[7];
  for (int i = 0; i < 7; ++i) k[i] = slot(i);
  const MatrixView<S> y = slot(7), ynew = slot(8);
  using T = StageTerms<S>;
  SolveStats st;
  const double dir = t1 >= t0 ? 1.0 : -1.0;
  const double span = std::abs(t1 - t0);
  // Nothing to integrate: an empty batch has no error norm to steer the step size (0 / 0).
  if (span == 0 || n * B == 0) return st;
  const double count = double(n * B);
  double t = t0;
  f(t, ConstMatrixView<S>(z), k[0]);
  ++st.nfe;
  double h = opt.first_step;
  if (h == 0) {  // Hairer's starting step: h = 0.01 |y| / |f|, then an Euler probe   ode.md (6)
    const ConstMatrixView<S> none;
    double d0 = Backend::template scaled_sq_sum<S>(ctx, z, z, none, opt.atol, opt.rtol);
    double d1 = Backend::template scaled_sq_sum<S>(ctx, z, k[0], none, opt.atol, opt.rtol);
    d0 = std::sqrt(d0 / count);
    d1 = std::sqrt(d1 / count);
    double h0 = (d0 < 1e-5 || d1 < 1e-5) ? 1e-6 : 0.01 * d0 / d1;
    h0 = std::min(h0, span);
    Backend::lincomb(ctx, z, dir * h0, T{{1.0, k[0]}}, y);
    f(t + dir * h0, ConstMatrixView<S>(y), k[1]);
    ++st.nfe;
    double d2 = Backend::template scaled_sq_sum<S>(ctx, z, k[1], k[0], opt.atol, opt.rtol);
    d2 = std::sqrt(d2 / count) / h0;
    const double h1 = std::max(d1, d2) <= 1e-15 ? std::max(1e-6, h0 * 1e-3)
                                                : std::pow(0.01 / std::max(d1, d2), 1.0 / 5);
    h = std::min({100 * h0, h1, span});
  }
  h = std::min(h, span);
  while (dir * (t1 - t) > 0) {
    if (st.accepted + st.rejected >= opt.max_steps) {
      std::ostringstream os;
      os << "[flowprior.ode] dopri5: max_steps = " << opt.max_steps << " reached at t = " << t
         << " with step size h = " << h << " before the end time " << t1
         << " (loosen atol/rtol or raise max_steps)";
      flowprior::detail::raise<ode_error>(os.str());
    }
    if (h < opt.min_step) {
      std::ostringstream os;
      os << "[flowprior.ode] dopri5: the step size fell to h = " << h
         << " < min_step = " << opt.min_step << " at t = " << t << " before the end time " << t1
         << " (the tolerance cannot be met: stiff or non-smooth field, or non-finite values)";
      flowprior::detail::raise<ode_error>(os.str());
    }
    const bool last = h >= dir * (t1 - t);
    const double hh = last ? (t1 - t) : dir * h;  // signed step               ode.md (4)
    using D = Dp;
    Backend::lincomb(ctx, z, hh, T{{D::a21, k[0]}}, y);
    f(t + D::c2 * hh, ConstMatrixView<S>(y), k[1]);
    Backend::lincomb(ctx, z, hh, T{{D::a31, k[0]}, {D::a32, k[1]}}, y);
    f(t + D::c3 * hh, ConstMatrixView<S>(y), k[2]);
    Backend::lincomb(ctx, z, hh, T{{D::a41, k[0]}, {D::a42, k[1]}, {D::a43, k[2]}}, y);
    f(t + D::c4 * hh, ConstMatrixView<S>(y), k[3]);
    Backend::lincomb(ctx, z, hh, T{{D::a51, k[0]}, {D::a52, k[1]}, {D::a53, k[2]}, {D::a54, k[3]}},
                     y);
    f(t + D::c5 * hh, ConstMatrixView<S>(y), k[4]);
    Backend::lincomb(
        ctx, z, hh,
        T{{D::a61, k[0]}, {D::a62, k[1]}, {D::a63, k[2]}, {D::a64, k[3]}, {D::a65, k[4]}}, y);
    f(t + hh, ConstMatrixView<S>(y), k[5]);
    Backend::lincomb(ctx, z, hh,
                     T{{D::b1, k[0]}, {D::b3, k[2]}, {D::b4, k[3]}, {D::b5, k[4]}, {D::b6, k[5]}},
                     ynew);
    const double tn = last ? t1 : t + hh;
    f(tn, ConstMatrixView<S>(ynew), k[6]);
    st.nfe += 6;
    // RMS of the error estimate e = h sum_i (b_i - b*_i) k_i, scaled     ode.md (5)
    const T e{{D::e1, k[0]}, {D::e3, k[2]}, {D::e4, k[3]},
              {D::e5, k[4]}, {D::e6, k[5]}, {D::e7, k[6]}};
    const double err = std::sqrt(Backend::error_sq_sum(ctx, z, ynew, hh, e, opt.atol, opt.rtol) /
                                 double(std::max<Index>(1, n * B)));
    if (!std::isfinite(err)) {
      // a non-finite trial: shrink hard and retry (gives up through min_step if it persists)
      ++st.rejected;
      h *= 0.1;
      continue;
    }
    if (err <= 1.0) {  // accept                                           ode.md (5)
      t = tn;
      Backend::copy(ctx, ynew, z);
      std::swap(k[0], k[6]);  // FSAL: the last stage is the next first stage
      ++st.accepted;
    } else {
      ++st.rejected;
    }
    const double fac = err == 0 ? 5.0 : std::min(5.0, std::max(0.2, 0.9 * std::pow(err, -0.2)));
    h = std::abs(hh) * (err <= 1.0 ? fac : std::min(1.0, fac));
  }
  check_state<Backend>(ctx, "ode::integrate", ConstMatrixView<S>(z), t);
  return st;
}

inline void add(SolveStats& a, const SolveStats& b) {
  a.nfe += b.nfe;
  a.accepted += b.accepted;
  a.rejected += b.rejected;
}

/// The body of integrate: `stage_mem(count, what)` returns stage memory of at least count values.
template <class Backend, class S, class F, class Mem>
SolveStats solve(typename Backend::Context& ctx, F& f, double t0, double t1, MatrixView<S> z,
                 const SolverOptions& opt, Mem&& stage_mem) {
  opt.validate();
  if (!std::isfinite(t0) || !std::isfinite(t1))
    raise_config("ode::integrate", "t0, t1 must be finite");
  check_state<Backend>(ctx, "ode::integrate", ConstMatrixView<S>(z), t0);
  if (opt.method == Method::Dopri5)
    return dopri5<Backend>(
        ctx, f, t0, t1, z, opt,
        stage_mem(stage_elements(opt.method, z.rows, z.cols), stage_name(opt.method)));
  if (t0 == t1) return {};
  S* mem = stage_mem(stage_elements(opt.method, z.rows, z.cols), stage_name(opt.method));
  return fixed<Backend>(ctx, f, t0, t1, z, opt, opt.steps, mem);
}

/// The body of integrate_observed (stage memory as in solve).
template <class Backend, class S, class F, class Obs, class Mem>
SolveStats solve_observed(typename Backend::Context& ctx, F& f, double t0,
                          const std::vector<double>& times, MatrixView<S> z,
                          const SolverOptions& opt, Obs& observe, Mem&& stage_mem) {
  opt.validate();
  check_state<Backend>(ctx, "ode::integrate", ConstMatrixView<S>(z), t0);
  if (times.empty()) return {};
  const double t_end = times.back();
  const double dir = t_end >= t0 ? 1.0 : -1.0;
  double prev = t0;
  for (double t : times)
    if (!std::isfinite(t) || dir * (t - prev) < 0)
      raise_config("ode::integrate_observed",
                   "times must be finite and monotone from t0 towards the end time");
    else
      prev = t;
  SolveStats total;
  double t = t0;
  const double span = std::abs(t_end - t0);
  for (std::size_t i = 0; i < times.size(); ++i) {
    const double tn = times[i];
    if (tn != t) {
      S* mem = stage_mem(stage_elements(opt.method, z.rows, z.cols), stage_name(opt.method));
      if (opt.method == Method::Dopri5) {
        add(total, dopri5<Backend>(ctx, f, t, tn, z, opt, mem));
      } else {
        const Index steps =
            std::max<Index>(1, Index(std::llround(double(opt.steps) * std::abs(tn - t) / span)));
        add(total, fixed<Backend>(ctx, f, t, tn, z, opt, steps, mem));
      }
    }
    observe(i, tn, ConstMatrixView<S>(z));
    t = tn;
  }
  return total;
}

}  // namespace detail

template <class Backend, class S, class F>
SolveStats integrate_on(typename Backend::Context& ctx,
                        typename Backend::template Buffer<S>& stages, F&& f, double t0, double t1,
                        MatrixView<S> z, const SolverOptions& opt) {
  return detail::solve<Backend>(ctx, f, t0, t1, z, opt, [&](Index count, const char* what) {
    return detail::grow<Backend, S>("ode::integrate", what, stages, count);
  });
}

template <class S, class F, class Backend>
SolveStats integrate(F&& f, double t0, double t1, MatrixView<S> z, const SolverOptions& opt,
                     Work<S, Backend>& work) {
  return integrate_on<Backend>(work.context(), work.stages, f, t0, t1, z, opt);
}

template <class S, class F>
SolveStats integrate(F&& f, double t0, double t1, MatrixView<S> z, const SolverOptions& opt,
                     std::vector<S>& work) {
  using Backend = typename detail::host_backend<S>::type;
  typename Backend::Context ctx;
  return detail::solve<Backend>(ctx, f, t0, t1, z, opt, [&](Index count, const char* what) {
    checked_resize("ode::integrate", what, work, count);
    return work.data();
  });
}

template <class Backend, class S, class F, class Obs>
SolveStats integrate_observed_on(typename Backend::Context& ctx,
                                 typename Backend::template Buffer<S>& stages, F&& f, double t0,
                                 const std::vector<double>& times, MatrixView<S> z,
                                 const SolverOptions& opt, Obs&& observe) {
  return detail::solve_observed<Backend>(
      ctx, f, t0, times, z, opt, observe, [&](Index count, const char* what) {
        return detail::grow<Backend, S>("ode::integrate", what, stages, count);
      });
}

template <class S, class F, class Obs, class Backend>
SolveStats integrate_observed(F&& f, double t0, const std::vector<double>& times, MatrixView<S> z,
                              const SolverOptions& opt, Work<S, Backend>& work, Obs&& observe) {
  return integrate_observed_on<Backend>(work.context(), work.stages, f, t0, times, z, opt, observe);
}

template <class S, class F, class Obs>
SolveStats integrate_observed(F&& f, double t0, const std::vector<double>& times, MatrixView<S> z,
                              const SolverOptions& opt, std::vector<S>& work, Obs&& observe) {
  using Backend = typename detail::host_backend<S>::type;
  typename Backend::Context ctx;
  return detail::solve_observed<Backend>(ctx, f, t0, times, z, opt, observe,
                                         [&](Index count, const char* what) {
                                           checked_resize("ode::integrate", what, work, count);
                                           return work.data();
                                         });
}

}  // namespace ode
}  // namespace flowprior

#if !defined(__CUDACC__)
#include <flowprior/backend/cpu.hpp>  // the default backend of host code
#endif
