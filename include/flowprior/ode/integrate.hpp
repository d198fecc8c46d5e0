/// @file
/// Batched ODE integration dz/dt = f(t, z) for z of shape (n, B) (one column per sample, all
/// columns at the same t): Euler, Heun (2nd order) and RK4 with a fixed number of steps, and
/// adaptive Dormand-Prince 5(4) with atol/rtol, a maximum number of steps and a minimum step.
/// Either direction of time. Equations and cost: docs/math/ode.md.
///
/// The system is any callable `f(double t, ConstMatrixView<S> z, MatrixView<S> dz_out)`.
/// Memory is a fixed set of stage buffers (independent of the number of steps); trajectories are
/// returned only at times the caller asks for.
#pragma once

#include <algorithm>
#include <cmath>
#include <flowprior/core/check.hpp>
#include <flowprior/core/size.hpp>
#include <flowprior/core/types.hpp>
#include <sstream>
#include <string>
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

/// Integrates dz/dt = f(t, z) from t0 to t1 in place. Stage buffers live in `work` (reused).
/// Throws ode_error if the adaptive solve cannot reach t1, numeric_error if the state becomes
/// non-finite.
template <class S, class F>
SolveStats integrate(F&& f, double t0, double t1, MatrixView<S> z, const SolverOptions& opt,
                     std::vector<S>& work);

/// The same, returning the state at each time of `times` (monotone from t0 towards t1) in
/// `observe(i, t_i, z)`. Each segment between consecutive times gets its share of fixed steps.
template <class S, class F, class Obs>
SolveStats integrate_observed(F&& f, double t0, const std::vector<double>& times, MatrixView<S> z,
                              const SolverOptions& opt, std::vector<S>& work, Obs&& observe);

namespace detail {

template <class S>
MatrixView<S> buf(std::vector<S>& w, Index slot, Index n, Index B) {
  return {w.data() + slot * n * B, n, B};
}

template <class S>
void check_state(const char* where, ConstMatrixView<S> z, double t) {
  for (Index j = 0; j < z.cols; ++j)
    for (Index i = 0; i < z.rows; ++i)
      if (!std::isfinite(z(i, j))) {
        std::ostringstream os;
        os << "[flowprior.numeric] " << where << ": the state became non-finite at t = " << t
           << " (element (" << i << ", " << j << "))";
        flowprior::detail::raise<numeric_error>(os.str());
      }
}

// y_out = z + h * sum_k c_k k_k  (c_k may be zero)
template <class S>
void combine(MatrixView<S> out, ConstMatrixView<S> z, double h,
             std::initializer_list<std::pair<double, ConstMatrixView<S>>> terms) {
  for (Index j = 0; j < z.cols; ++j)
    for (Index i = 0; i < z.rows; ++i) {
      double acc = 0;
      for (const auto& tk : terms) acc += tk.first * double(tk.second(i, j));
      out(i, j) = static_cast<S>(double(z(i, j)) + h * acc);
    }
}

template <class S>
void copy_into(ConstMatrixView<S> a, MatrixView<S> b) {
  for (Index j = 0; j < a.cols; ++j)
    for (Index i = 0; i < a.rows; ++i) b(i, j) = a(i, j);
}

template <class S, class F>
SolveStats fixed(F& f, double t0, double t1, MatrixView<S> z, const SolverOptions& opt, Index steps,
                 std::vector<S>& work) {
  const Index n = z.rows, B = z.cols;
  const char* w = "ode::integrate";
  checked_resize(w, "the RK4 stages", work,
                 checked_mul(w, "5 x state size", 5, checked_mul(w, "state size", n, B)));
  MatrixView<S> k1 = buf(work, 0, n, B), k2 = buf(work, 1, n, B), k3 = buf(work, 2, n, B),
                k4 = buf(work, 3, n, B), y = buf(work, 4, n, B);
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
        combine<S>(z, z, hh, {{1.0, k1}});
        break;
      case Method::Heun:  // z += h/2 (k1 + f(t+h, z + h k1))            ode.md (2)
        combine<S>(y, z, hh, {{1.0, k1}});
        f(tn, ConstMatrixView<S>(y), k2);
        st.nfe += 1;
        combine<S>(z, z, hh, {{0.5, k1}, {0.5, k2}});
        break;
      default:  // RK4                                                     ode.md (3)
        combine<S>(y, z, 0.5 * hh, {{1.0, k1}});
        f(t + 0.5 * hh, ConstMatrixView<S>(y), k2);
        combine<S>(y, z, 0.5 * hh, {{1.0, k2}});
        f(t + 0.5 * hh, ConstMatrixView<S>(y), k3);
        combine<S>(y, z, hh, {{1.0, k3}});
        f(tn, ConstMatrixView<S>(y), k4);
        st.nfe += 3;
        combine<S>(z, z, hh, {{1.0 / 6, k1}, {1.0 / 3, k2}, {1.0 / 3, k3}, {1.0 / 6, k4}});
        break;
    }
    check_state("ode::integrate", ConstMatrixView<S>(z), tn);
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

template <class S, class F>
SolveStats dopri5(F& f, double t0, double t1, MatrixView<S> z, const SolverOptions& opt,
                  std::vector<S>& work) {
  const Index n = z.rows, B = z.cols;
  const char* w = "ode::integrate";
  checked_resize(w, "the Dopri5 stages", work,
                 checked_mul(w, "9 x state size", 9, checked_mul(w, "state size", n, B)));
  MatrixView<S> k[7];
  for (int i = 0; i < 7; ++i) k[i] = buf(work, i, n, B);
  MatrixView<S> y = buf(work, 7, n, B), ynew = buf(work, 8, n, B);
  SolveStats st;
  const double dir = t1 >= t0 ? 1.0 : -1.0;
  const double span = std::abs(t1 - t0);
  if (span == 0) return st;
  auto err_norm = [&](ConstMatrixView<S> y0, ConstMatrixView<S> y1, ConstMatrixView<S> e) {
    // RMS over all elements of e / (atol + rtol max(|y0|, |y1|))               ode.md (5)
    double s = 0;
    for (Index j = 0; j < B; ++j)
      for (Index i = 0; i < n; ++i) {
        const double sc =
            opt.atol + opt.rtol * std::max(std::abs(double(y0(i, j))), std::abs(double(y1(i, j))));
        const double r = double(e(i, j)) / sc;
        s += r * r;
      }
    return std::sqrt(s / double(std::max<Index>(1, n * B)));
  };
  double t = t0;
  f(t, ConstMatrixView<S>(z), k[0]);
  ++st.nfe;
  double h = opt.first_step;
  if (h == 0) {  // Hairer's starting step: h = 0.01 |y| / |f|, then an Euler probe   ode.md (6)
    double d0 = 0, d1 = 0;
    for (Index j = 0; j < B; ++j)
      for (Index i = 0; i < n; ++i) {
        const double sc = opt.atol + opt.rtol * std::abs(double(z(i, j)));
        d0 += std::pow(double(z(i, j)) / sc, 2);
        d1 += std::pow(double(k[0](i, j)) / sc, 2);
      }
    d0 = std::sqrt(d0 / double(n * B));
    d1 = std::sqrt(d1 / double(n * B));
    double h0 = (d0 < 1e-5 || d1 < 1e-5) ? 1e-6 : 0.01 * d0 / d1;
    h0 = std::min(h0, span);
    combine<S>(y, z, dir * h0, {{1.0, k[0]}});
    f(t + dir * h0, ConstMatrixView<S>(y), k[1]);
    ++st.nfe;
    double d2 = 0;
    for (Index j = 0; j < B; ++j)
      for (Index i = 0; i < n; ++i) {
        const double sc = opt.atol + opt.rtol * std::abs(double(z(i, j)));
        d2 += std::pow((double(k[1](i, j)) - double(k[0](i, j))) / sc, 2);
      }
    d2 = std::sqrt(d2 / double(n * B)) / h0;
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
    combine<S>(y, z, hh, {{D::a21, k[0]}});
    f(t + D::c2 * hh, ConstMatrixView<S>(y), k[1]);
    combine<S>(y, z, hh, {{D::a31, k[0]}, {D::a32, k[1]}});
    f(t + D::c3 * hh, ConstMatrixView<S>(y), k[2]);
    combine<S>(y, z, hh, {{D::a41, k[0]}, {D::a42, k[1]}, {D::a43, k[2]}});
    f(t + D::c4 * hh, ConstMatrixView<S>(y), k[3]);
    combine<S>(y, z, hh, {{D::a51, k[0]}, {D::a52, k[1]}, {D::a53, k[2]}, {D::a54, k[3]}});
    f(t + D::c5 * hh, ConstMatrixView<S>(y), k[4]);
    combine<S>(y, z, hh,
               {{D::a61, k[0]}, {D::a62, k[1]}, {D::a63, k[2]}, {D::a64, k[3]}, {D::a65, k[4]}});
    f(t + hh, ConstMatrixView<S>(y), k[5]);
    combine<S>(ynew, z, hh,
               {{D::b1, k[0]}, {D::b3, k[2]}, {D::b4, k[3]}, {D::b5, k[4]}, {D::b6, k[5]}});
    const double tn = last ? t1 : t + hh;
    f(tn, ConstMatrixView<S>(ynew), k[6]);
    st.nfe += 6;
    // error estimate e = h sum_i (b_i - b*_i) k_i, into y
    for (Index j = 0; j < B; ++j)
      for (Index i = 0; i < n; ++i)
        y(i, j) = static_cast<S>(hh * (D::e1 * double(k[0](i, j)) + D::e3 * double(k[2](i, j)) +
                                       D::e4 * double(k[3](i, j)) + D::e5 * double(k[4](i, j)) +
                                       D::e6 * double(k[5](i, j)) + D::e7 * double(k[6](i, j))));
    const double err = err_norm(z, ynew, y);
    if (!std::isfinite(err)) {
      // a non-finite trial: shrink hard and retry (gives up through min_step if it persists)
      ++st.rejected;
      h *= 0.1;
      continue;
    }
    if (err <= 1.0) {  // accept                                           ode.md (5)
      t = tn;
      copy_into<S>(ynew, z);
      std::swap(k[0], k[6]);  // FSAL: the last stage is the next first stage
      ++st.accepted;
    } else {
      ++st.rejected;
    }
    const double fac = err == 0 ? 5.0 : std::min(5.0, std::max(0.2, 0.9 * std::pow(err, -0.2)));
    h = std::abs(hh) * (err <= 1.0 ? fac : std::min(1.0, fac));
  }
  check_state("ode::integrate", ConstMatrixView<S>(z), t);
  return st;
}

inline void add(SolveStats& a, const SolveStats& b) {
  a.nfe += b.nfe;
  a.accepted += b.accepted;
  a.rejected += b.rejected;
}

}  // namespace detail

template <class S, class F>
SolveStats integrate(F&& f, double t0, double t1, MatrixView<S> z, const SolverOptions& opt,
                     std::vector<S>& work) {
  opt.validate();
  if (!std::isfinite(t0) || !std::isfinite(t1))
    raise_config("ode::integrate", "t0, t1 must be finite");
  detail::check_state("ode::integrate", ConstMatrixView<S>(z), t0);
  if (opt.method == Method::Dopri5) return detail::dopri5(f, t0, t1, z, opt, work);
  if (t0 == t1) return {};
  return detail::fixed(f, t0, t1, z, opt, opt.steps, work);
}

template <class S, class F, class Obs>
SolveStats integrate_observed(F&& f, double t0, const std::vector<double>& times, MatrixView<S> z,
                              const SolverOptions& opt, std::vector<S>& work, Obs&& observe) {
  opt.validate();
  detail::check_state("ode::integrate", ConstMatrixView<S>(z), t0);
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
      if (opt.method == Method::Dopri5) {
        detail::add(total, detail::dopri5(f, t, tn, z, opt, work));
      } else {
        const Index steps =
            std::max<Index>(1, Index(std::llround(double(opt.steps) * std::abs(tn - t) / span)));
        detail::add(total, detail::fixed(f, t, tn, z, opt, steps, work));
      }
    }
    observe(i, tn, ConstMatrixView<S>(z));
    t = tn;
  }
  return total;
}

}  // namespace ode
}  // namespace flowprior
