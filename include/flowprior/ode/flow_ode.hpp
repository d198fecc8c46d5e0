/// @file
/// Sampling from a flow prior and exact log-likelihoods by the probability-flow ODE dz/dt = v(z, t)
/// (docs/math/ode.md). Both take the convention explicitly and check it against the prior:
///
/// - sampling integrates from the noise time to the data time (Paper: 0 -> 1, Code: 1 -> 0);
/// - the log-likelihood integrates the state and l' = div v from the data time to the noise time:
///       log p(x) = log N(z_noise; 0, I) + l(noise time),  l(data time) = 0      ode.md (7)
///   which is the same formula in both conventions (only the direction of time differs).
///
/// The divergence is exact (the field's own divergence: about dim x-path passes) or a Hutchinson
/// estimate eps^T J eps averaged over K probes held fixed during one solve (K JVPs). Memory does
/// not grow with the number of steps.
#pragma once

#include <cmath>
#include <flowprior/core/check.hpp>
#include <flowprior/core/convention.hpp>
#include <flowprior/core/random.hpp>
#include <flowprior/core/size.hpp>
#include <flowprior/ode/integrate.hpp>
#include <flowprior/prior.hpp>
#include <string>
#include <vector>

namespace flowprior {
namespace ode {

/// How the divergence is computed inside the likelihood ODE.
enum class Divergence {
  Exact,      ///< tr(J) from the field (exact; cost grows with dim)
  Hutchinson  ///< (1/K) sum_k eps_k^T J eps_k, probes fixed during the solve (unbiased)
};

/// Distribution of the Hutchinson probes.
enum class Probe { Rademacher, Gaussian };

struct LikelihoodOptions {
  SolverOptions solver;  ///< Dopri5 with atol = rtol = 1e-5 by default
  Divergence divergence = Divergence::Exact;
  Index probes = 1;  ///< K, for Hutchinson
  Probe probe = Probe::Rademacher;

  void validate() const {
    solver.validate();
    if (divergence == Divergence::Hutchinson && probes <= 0)
      raise_config("ode::LikelihoodOptions",
                   "probes must be positive, got " + std::to_string(probes));
  }
};

/// Reused memory of the ODE routines (one per thread).
template <class Field>
struct OdeWorkspace {
  static_assert(nn::check_velocity_field<Field>(),
                "ode::OdeWorkspace<Field>: Field is not a velocity field (docs/fields.md)");
  using S = typename Field::Scalar;
  typename Prior<Field>::Workspace prior;
  std::vector<S> t, div, state, work, probes, jv;
};

/// Fills z with standard normal noise.
template <class S>
void draw_noise(MatrixView<S> z, Rng& rng) {
  for (Index j = 0; j < z.cols; ++j)
    for (Index i = 0; i < z.rows; ++i) z(i, j) = static_cast<S>(normal01(rng));
}

namespace detail {

template <class S>
ConstVectorView<S> fill_time(std::vector<S>& buf, Index B, double t) {
  // Stage times of the solvers stay inside [t0, t1]; clamp the last rounding error.
  const S tt = static_cast<S>(std::min(1.0, std::max(0.0, t)));
  buf.assign(static_cast<std::size_t>(B), tt);
  return {buf.data(), B};
}

}  // namespace detail

/// Transports noise to data: on entry z (dim, B) holds noise (draw_noise), on exit samples of
/// the prior. Integrates from noise_time(conv) to data_time(conv).                ode.md (8)
template <class Field>
SolveStats sample(const Prior<Field>& prior, Convention conv, MatrixView<typename Field::Scalar> z,
                  const SolverOptions& opt, OdeWorkspace<Field>& ws) {
  using S = typename Field::Scalar;
  check_convention("ode::sample", "the prior", prior.convention(), conv);
  check_shape("ode::sample", "z", z, prior.dim(), z.cols);
  auto f = [&](double t, ConstMatrixView<S> x, MatrixView<S> dx) {
    prior.forward(x, detail::fill_time(ws.t, x.cols, t), dx, ws.prior);
  };
  return integrate(f, noise_time(conv), data_time(conv), z, opt, ws.work);
}

/// As sample, also reporting the state at `times` (monotone from the noise time towards the data
/// time) through observe(i, t_i, z).
template <class Field, class Obs>
SolveStats sample_trajectory(const Prior<Field>& prior, Convention conv,
                             MatrixView<typename Field::Scalar> z, const std::vector<double>& times,
                             const SolverOptions& opt, OdeWorkspace<Field>& ws, Obs&& observe) {
  using S = typename Field::Scalar;
  check_convention("ode::sample_trajectory", "the prior", prior.convention(), conv);
  check_shape("ode::sample_trajectory", "z", z, prior.dim(), z.cols);
  for (double t : times)
    if (!(t >= 0 && t <= 1))
      raise_config("ode::sample_trajectory", "requested times must lie in [0, 1]");
  auto f = [&](double t, ConstMatrixView<S> x, MatrixView<S> dx) {
    prior.forward(x, detail::fill_time(ws.t, x.cols, t), dx, ws.prior);
  };
  return integrate_observed(f, noise_time(conv), times, z, opt, ws.work, observe);
}

/// log p(x) per column of x (dim, B) under the prior, in nats, by the likelihood ODE.
/// @param rng     generator of the Hutchinson probes (unused, may be null, for Exact)
/// @param z_noise optional (dim, B): the noise each point maps to
/// @return solver statistics (field evaluations)                                  ode.md (7)
template <class Field>
SolveStats log_likelihood(const Prior<Field>& prior, Convention conv,
                          ConstMatrixView<typename Field::Scalar> x,
                          VectorView<typename Field::Scalar> logp, const LikelihoodOptions& opt,
                          OdeWorkspace<Field>& ws, Rng* rng = nullptr,
                          MatrixView<typename Field::Scalar> z_noise = {}) {
  using S = typename Field::Scalar;
  const char* w = "ode::log_likelihood";
  opt.validate();
  check_convention(w, "the prior", prior.convention(), conv);
  const Index d = prior.dim(), B = x.cols;
  check_shape(w, "x", x, d, B);
  check_size(w, "logp", logp, B);
  if (!z_noise.empty()) check_shape(w, "z_noise", z_noise, d, B);
  check_finite(w, "x", x);
  const bool hutch = opt.divergence == Divergence::Hutchinson;
  const Index K = opt.probes;
  if (hutch) {
    if (rng == nullptr) raise_config(w, "Hutchinson estimates need a random generator");
    const Index n_probes =
        checked_mul(w, "dim x rows x probes", checked_mul(w, "dim x rows", d, B), K);
    checked_resize(w, "the Hutchinson probes", ws.probes, n_probes);
    checked_resize(w, "the Hutchinson products", ws.jv, n_probes);
    for (auto& e : ws.probes)  // drawn once: fixed during the solve
      e = opt.probe == Probe::Rademacher ? (uniform01(*rng) < 0.5 ? S(-1) : S(1))
                                         : static_cast<S>(normal01(*rng));
  }
  // Augmented state (d + 1, B): rows 0..d-1 the point, row d the accumulated divergence.
  ws.state.resize(static_cast<std::size_t>((d + 1) * B));
  MatrixView<S> s(ws.state.data(), d + 1, B);
  for (Index b = 0; b < B; ++b) {
    for (Index i = 0; i < d; ++i) s(i, b) = x(i, b);
    s(d, b) = S(0);
  }
  ws.div.resize(static_cast<std::size_t>(B));
  auto f = [&](double t, ConstMatrixView<S> st, MatrixView<S> ds) {
    const ConstMatrixView<S> xz = st.row_block(0, d);
    MatrixView<S> v = ds.row_block(0, d);
    const Index n = st.cols;
    VectorView<S> div(ws.div.data(), n);
    const auto tv = detail::fill_time(ws.t, n, t);
    if (!hutch) {
      prior.divergence(xz, tv, v, div, ws.prior);
    } else {
      prior.forward(xz, tv, v, ws.prior);
      const ConstMatrixView<S> eps(ws.probes.data(), d, n * K);
      MatrixView<S> jv(ws.jv.data(), d, n * K);
      prior.jvp_x(ws.prior, eps, jv, K);
      for (Index b = 0; b < n; ++b) {  // (1/K) sum_k eps_k . (J eps_k)           ode.md (9)
        double acc = 0;
        for (Index k = 0; k < K; ++k)
          for (Index i = 0; i < d; ++i) acc += double(eps(i, b * K + k)) * double(jv(i, b * K + k));
        div[b] = static_cast<S>(acc / double(K));
      }
    }
    for (Index b = 0; b < n; ++b) ds(d, b) = div[b];
  };
  const SolveStats st = integrate(f, data_time(conv), noise_time(conv), s, opt.solver, ws.work);
  const double log2pi = std::log(2.0 * 3.14159265358979323846);
  for (Index b = 0; b < B; ++b) {
    double r2 = 0;
    for (Index i = 0; i < d; ++i) r2 += double(s(i, b)) * double(s(i, b));
    logp[b] = static_cast<S>(-0.5 * r2 - 0.5 * double(d) * log2pi + double(s(d, b)));
    if (!z_noise.empty())
      for (Index i = 0; i < d; ++i) z_noise(i, b) = s(i, b);
  }
  return st;
}

/// Bits per dimension of a log-likelihood in nats: -log p / (dim ln 2).            ode.md (10)
inline double bits_per_dim(double logp_nats, Index dim) {
  return -logp_nats / (double(dim) * std::log(2.0));
}

}  // namespace ode
}  // namespace flowprior
