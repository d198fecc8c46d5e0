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
///
/// Everything runs on the field's backend (nn::field_backend: Field::BackendType, else CpuBackend)
/// on one context, the workspace's (the field workspace's when it has one): the solvers and the
/// per-element work of the likelihood (the augmented state, the Hutchinson dot products, the
/// final log-density, the input check) are backend primitives (docs/backends.md "ODE
/// primitives") on buffers of the backend. Only draw_noise and the drawing of the Hutchinson
/// probes use the host (the caller's Rng); the probes are uploaded once per solve.
#pragma once

#include <algorithm>
#include <cmath>
#include <flowprior/backend/ode_args.hpp>
#include <flowprior/core/check.hpp>
#include <flowprior/core/convention.hpp>
#include <flowprior/core/random.hpp>
#include <flowprior/core/size.hpp>
#include <flowprior/nn/field_context.hpp>
#include <flowprior/ode/integrate.hpp>
#include <flowprior/prior.hpp>
#include <sstream>
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

/// Reused memory of the ODE routines (one per thread): the prior's workspace and buffers of the
/// field's backend (grown on first use, then reused: a warmed-up call allocates nothing).
///
/// The context (docs/backends.md "Context"): one context runs a whole solve, the field's passes,
/// the prior's and the ODE primitives alike: the prior workspace's (Prior::Workspace::context(),
/// the field workspace's when the field's workspace has one). set_context lends the caller's.
template <class Field>
struct OdeWorkspace {
  static_assert(nn::check_velocity_field<Field>(),
                "ode::OdeWorkspace<Field>: Field is not a velocity field (docs/fields.md)");
  using S = typename Field::Scalar;
  using Backend = nn::field_backend_t<Field>;
  using Context = typename Backend::Context;
  template <class T>
  using Buffer = typename Backend::template Buffer<T>;

  typename Prior<Field>::Workspace prior;
  /// Backend memory: the times of an evaluation, the exact divergences, the likelihood's
  /// augmented state, the solver's stages (`work`), the Hutchinson probes and their products.
  Buffer<S> t, div, state, work, probes, jv;
  std::vector<S> host_probes;  ///< the Hutchinson probes as drawn on the host, before the upload

  /// The context the ODE routines run on.
  Context& context() { return prior.context(); }
  /// Runs on `ctx` from now on (not owned: the caller keeps it alive); nullptr returns to the
  /// workspace's own.
  void set_context(Context* ctx) { prior.set_context(ctx); }
};

/// Fills z with standard normal noise from the caller's generator. A host helper: it writes the
/// elements of z on the host, so z must be host memory (for a device backend, draw into a host
/// matrix and upload it with Backend::copy_from_host).
template <class S>
void draw_noise(MatrixView<S> z, Rng& rng) {
  for (Index j = 0; j < z.cols; ++j)
    for (Index i = 0; i < z.rows; ++i) z(i, j) = static_cast<S>(normal01(rng));
}

namespace detail {

/// The times of one evaluation: B copies of t (clamped to [0, 1]) in `buf`, by Backend::fill.
template <class Backend, class S>
ConstVectorView<S> fill_time(typename Backend::Context& ctx,
                             typename Backend::template Buffer<S>& buf, Index B, double t) {
  // Stage times of the solvers stay inside [t0, t1]; clamp the last rounding error.
  const S tt = static_cast<S>(std::min(1.0, std::max(0.0, t)));
  S* p = grow<Backend, S>("ode", "the times of an evaluation", buf, B);
  Backend::fill(ctx, MatrixView<S>(p, B, 1), tt);
  return {p, B};
}

/// Throws numeric_error naming the argument, the position (i, j) and the value of the first NaN
/// or Inf of m (a backend scan: Backend::find_nonfinite).
template <class Backend, class S>
void check_finite_on(typename Backend::Context& ctx, const char* where, const char* name,
                     ConstMatrixView<S> m) {
  const NonFinite bad = Backend::find_nonfinite(ctx, m);
  if (!bad.found()) return;
  std::ostringstream os;
  os << "[flowprior.numeric] " << where << ": argument '" << name << "' has a non-finite value "
     << bad.value << " at (" << bad.i << ", " << bad.j << ")";
  flowprior::detail::raise<numeric_error>(os.str());
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
  using Backend = typename OdeWorkspace<Field>::Backend;
  auto& ctx = ws.context();
  auto f = [&](double t, ConstMatrixView<S> x, MatrixView<S> dx) {
    prior.forward(x, detail::fill_time<Backend, S>(ctx, ws.t, x.cols, t), dx, ws.prior);
  };
  return integrate_on<Backend>(ctx, ws.work, f, noise_time(conv), data_time(conv), z, opt);
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
  using Backend = typename OdeWorkspace<Field>::Backend;
  auto& ctx = ws.context();
  auto f = [&](double t, ConstMatrixView<S> x, MatrixView<S> dx) {
    prior.forward(x, detail::fill_time<Backend, S>(ctx, ws.t, x.cols, t), dx, ws.prior);
  };
  return integrate_observed_on<Backend>(ctx, ws.work, f, noise_time(conv), times, z, opt, observe);
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
  using Backend = typename OdeWorkspace<Field>::Backend;
  auto& ctx = ws.context();
  detail::check_finite_on<Backend, S>(ctx, w, "x", x);
  const bool hutch = opt.divergence == Divergence::Hutchinson;
  const Index K = opt.probes;
  if (hutch) {
    if (rng == nullptr) raise_config(w, "Hutchinson estimates need a random generator");
    const Index n_probes =
        checked_mul(w, "dim x rows x probes", checked_mul(w, "dim x rows", d, B), K);
    checked_resize(w, "the Hutchinson probes", ws.host_probes, n_probes);
    for (auto& e : ws.host_probes)  // drawn once on the host: fixed during the solve
      e = opt.probe == Probe::Rademacher ? (uniform01(*rng) < 0.5 ? S(-1) : S(1))
                                         : static_cast<S>(normal01(*rng));
    detail::grow<Backend, S>(w, "the Hutchinson probes", ws.probes, n_probes);
    Backend::copy_from_host(ws.host_probes.data(), n_probes, ws.probes);
    detail::grow<Backend, S>(w, "the Hutchinson products", ws.jv, n_probes);
  }
  // Augmented state (d + 1, B): rows 0..d-1 the point, row d the accumulated divergence.
  const Index n_state = checked_mul(w, "(dim + 1) x rows", checked_add(w, "dim + 1", d, 1), B);
  MatrixView<S> s(detail::grow<Backend, S>(w, "the augmented state", ws.state, n_state), d + 1, B);
  Backend::copy(ctx, x, s.row_block(0, d));
  Backend::fill(ctx, s.row_block(d, 1), S(0));
  S* div_mem = detail::grow<Backend, S>(w, "the divergences", ws.div, B);
  auto f = [&](double t, ConstMatrixView<S> st, MatrixView<S> ds) {
    const ConstMatrixView<S> xz = st.row_block(0, d);
    MatrixView<S> v = ds.row_block(0, d);
    const Index n = st.cols;
    const auto tv = detail::fill_time<Backend, S>(ctx, ws.t, n, t);
    if (!hutch) {
      prior.divergence(xz, tv, v, VectorView<S>(div_mem, n), ws.prior);
      Backend::copy(ctx, ConstMatrixView<S>(div_mem, 1, n), ds.row_block(d, 1));
    } else {
      prior.forward(xz, tv, v, ws.prior);
      const ConstMatrixView<S> eps(ws.probes.data(), d, n * K);
      const MatrixView<S> jv(ws.jv.data(), d, n * K);
      prior.jvp_x(ws.prior, eps, jv, K);
      // (1/K) sum_k eps_k . (J eps_k) into the last row                    ode.md (9)
      Backend::probe_dots(ctx, eps, jv, K, ds.row_block(d, 1));
    }
  };
  const SolveStats st =
      integrate_on<Backend>(ctx, ws.work, f, data_time(conv), noise_time(conv), s, opt.solver);
  // log N(z; 0, I) + l per column                                                  ode.md (7)
  Backend::normal_logpdf(ctx, s.row_block(0, d), s.row_block(d, 1), logp);
  if (!z_noise.empty()) Backend::copy(ctx, s.row_block(0, d), z_noise);
  return st;
}

/// Bits per dimension of a log-likelihood in nats: -log p / (dim ln 2).            ode.md (10)
inline double bits_per_dim(double logp_nats, Index dim) {
  return -logp_nats / (double(dim) * std::log(2.0));
}

}  // namespace ode
}  // namespace flowprior
