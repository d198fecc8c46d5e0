// Whole-stack parity runs: the fields, both losses, a training run, the latent aligner, sampling
// and likelihoods, run on any backend B in scalar S, with every result downloaded into named
// host vectors of double (Results). Two backends are compared with compare(): CpuBackend against
// the guarded CPU backend (bit for bit), against HostKernelBackend (tests/kernel), and
// HostKernelBackend against CudaBackend (tests/cuda).
//
// Eigen-free and framework-free: this header includes no Eigen header and no Catch2, so that a
// CUDA translation unit (nvcc never sees Eigen) can use it as a .cpp test does.
//
// Determinism across backends: every input and every parameter is drawn on the host from a
// seeded flowprior::Rng, in double, then rounded to S, identically for any backend; data enter
// and leave the backend only through B::copy_from_host / B::copy_to_host (device memory is not
// host-accessible). The generators the library itself consumes (draws, trainer, aligner,
// Hutchinson probes) are seeded the same on every backend and advance on the host only, so both
// sides of a comparison see the same random numbers.
//
// Parameters are random and non-degenerate, never the released zero initialisation (it hides
// bugs: docs/pitfalls.md): weights uniform with bound sqrt(3 / fan_in), LayerNorm gains in
// [0.6, 1.4], every other vector (biases, modulations) in [-0.3, 0.3] (docs/testing.md).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <flowprior/core/check.hpp>
#include <flowprior/core/convention.hpp>
#include <flowprior/core/random.hpp>
#include <flowprior/core/types.hpp>
#include <flowprior/loss/draws.hpp>
#include <flowprior/loss/flow_loss.hpp>
#include <flowprior/nn/adaln_mlp.hpp>
#include <flowprior/nn/mlp.hpp>
#include <flowprior/nn/params.hpp>
#include <flowprior/ode/flow_ode.hpp>
#include <flowprior/prior.hpp>
#include <flowprior/train/align.hpp>
#include <flowprior/train/trainer.hpp>
#include <string>
#include <utility>
#include <vector>

namespace fpt {
namespace stack {

using flowprior::ConstMatrixView;
using flowprior::ConstVectorView;
using flowprior::Convention;
using flowprior::Index;
using flowprior::MatrixView;
using flowprior::Rng;
using flowprior::VectorView;

// ------------------------------------------------------------------------------------------------
// Results and their comparison

/// The named results of a run, in the order they were produced. Every value is a host double
/// (float results are widened exactly).
struct Results {
  std::vector<std::pair<std::string, std::vector<double>>> entries;

  /// Adds an entry; a name given twice is a config_error (a typo in a run, not a result).
  void put(const std::string& name, std::vector<double> values) {
    if (find(name) != nullptr)
      flowprior::raise_config("fpt::stack::Results::put", "duplicate result name '" + name + "'");
    entries.emplace_back(name, std::move(values));
  }
  void put(const std::string& name, double value) { put(name, std::vector<double>{value}); }
  /// Adds every entry of `other`, its names prefixed by `prefix`.
  void append(const std::string& prefix, const Results& other) {
    for (const auto& e : other.entries) put(prefix + e.first, e.second);
  }
  /// The values of `name`, or nullptr.
  const std::vector<double>* find(const std::string& name) const {
    for (const auto& e : entries)
      if (e.first == name) return &e.second;
    return nullptr;
  }
  std::size_t size() const { return entries.size(); }
};

namespace detail {
inline std::string num(double x) {
  char buf[40];
  std::snprintf(buf, sizeof(buf), "%.17g", x);
  return buf;
}
}  // namespace detail

/// Compares two runs entry by entry: for each name, the first element i where
///     |a_i - b_i| > rtol * max(|a_i|, |b_i|, max_j |a_j|)
/// is reported with both values (the entry's largest magnitude bounds the error of elements
/// that arise by cancellation). NaN equals NaN at the same place; rtol = 0 asks for the same
/// bits (up to the sign of zero). Names present on one side only, and sizes that differ, are
/// reported too. Returns one line per failing entry (empty: the runs agree).
/// Throws config_error unless rtol is finite and >= 0.
inline std::vector<std::string> compare(const Results& a, const Results& b, double rtol) {
  if (!(rtol >= 0) || !std::isfinite(rtol))
    flowprior::raise_config("fpt::stack::compare",
                            "rtol must be finite and >= 0, got " + detail::num(rtol));
  std::vector<std::string> out;
  for (const auto& e : a.entries) {
    const std::string& name = e.first;
    const std::vector<double>& x = e.second;
    const std::vector<double>* y = b.find(name);
    if (y == nullptr) {
      out.push_back(name + ": missing in the second run");
      continue;
    }
    if (y->size() != x.size()) {
      out.push_back(name + ": " + std::to_string(x.size()) + " values against " +
                    std::to_string(y->size()));
      continue;
    }
    double scale = 0;
    for (double v : x)
      if (std::isfinite(v)) scale = std::max(scale, std::abs(v));
    for (std::size_t i = 0; i < x.size(); ++i) {
      const double p = x[i], q = (*y)[i];
      if (p == q || (std::isnan(p) && std::isnan(q))) continue;
      const double err = std::abs(p - q);
      const double bound = rtol * std::max({std::abs(p), std::abs(q), scale});
      if (!(err <= bound)) {
        out.push_back(name + "[" + std::to_string(i) + "]: " + detail::num(p) + " against " +
                      detail::num(q) + " (error " + detail::num(err) + " > " + detail::num(bound) +
                      ")");
        break;
      }
    }
  }
  for (const auto& e : b.entries)
    if (a.find(e.first) == nullptr) out.push_back(e.first + ": missing in the first run");
  return out;
}

/// The lines of compare() joined into one message (for a test framework's report).
inline std::string join(const std::vector<std::string>& lines) {
  std::string s;
  for (const auto& l : lines) s += l + "\n";
  return s;
}

// ------------------------------------------------------------------------------------------------
// Host generation and backend transfers

/// n values uniform in [lo, hi] from rng, in double.
inline std::vector<double> uniform_values(Rng& rng, Index n, double lo, double hi) {
  std::vector<double> v(static_cast<std::size_t>(n));
  for (auto& e : v) e = flowprior::uniform(rng, lo, hi);
  return v;
}

/// n elements of backend memory at p, as host doubles.
template <class B, class S>
std::vector<double> download(const S* p, Index n) {
  std::vector<S> s(static_cast<std::size_t>(n));
  B::copy_to_host(p, n, s.data());
  return std::vector<double>(s.begin(), s.end());
}

/// A (rows, cols) matrix in memory of backend B, filled from host doubles (rounded to S) and
/// read back as host doubles, only through B's memory functions.
template <class B, class S>
struct Dev {
  typename B::template Buffer<S> buf;
  Index rows = 0, cols = 0;

  /// Zeros.
  Dev(Index r, Index c) : Dev(std::vector<double>(static_cast<std::size_t>(r * c), 0.0), r, c) {}
  /// The values of `host` (column-major, rows * cols of them).
  Dev(const std::vector<double>& host, Index r, Index c) : rows(r), cols(c) {
    if (Index(host.size()) != r * c)
      flowprior::raise_config("fpt::stack::Dev", "host data of " + std::to_string(host.size()) +
                                                     " values for a " + std::to_string(r) + " x " +
                                                     std::to_string(c) + " matrix");
    const std::vector<S> s(host.begin(), host.end());
    B::copy_from_host(s.data(), r * c, buf);
  }
  MatrixView<S> view() { return {buf.data(), rows, cols}; }
  ConstMatrixView<S> cview() const { return {buf.data(), rows, cols}; }
  VectorView<S> vec() { return {buf.data(), rows * cols}; }
  ConstVectorView<S> cvec() const { return {buf.data(), rows * cols}; }
  std::vector<double> host() const { return download<B>(buf.data(), rows * cols); }
};

/// Random non-degenerate parameters for a layout (see the file comment), in double.
inline std::vector<double> random_parameters(const flowprior::nn::ParamLayout& layout, Rng& rng) {
  std::vector<double> p(static_cast<std::size_t>(layout.total()), 0.0);
  for (const auto& t : layout.tensors()) {
    double* q = p.data() + t.offset;
    double lo = -0.3, hi = 0.3;
    if (t.name.find("ln.weight") != std::string::npos) {
      lo = 0.6;
      hi = 1.4;
    } else if (t.shape.size() == 2) {
      hi = std::sqrt(3.0 / double(t.shape[1]));
      lo = -hi;
    }
    for (Index i = 0; i < t.size(); ++i) q[i] = flowprior::uniform(rng, lo, hi);
  }
  return p;
}

/// Sets a field's parameters to random_parameters(layout, Rng(seed)), uploaded in S.
template <class Field>
void randomize(Field& net, std::uint64_t seed) {
  using S = typename Field::Scalar;
  using B = flowprior::nn::field_backend_t<Field>;
  Rng rng(seed);
  const std::vector<double> p = random_parameters(net.layout(), rng);
  const std::vector<S> s(p.begin(), p.end());
  B::copy_from_host(s.data(), net.num_params(), net.parameters().data);
}

/// The field's parameters as host doubles.
template <class Field>
std::vector<double> parameters_of(const Field& net) {
  using B = flowprior::nn::field_backend_t<Field>;
  return download<B>(net.parameters().data, net.num_params());
}

// ------------------------------------------------------------------------------------------------
// The fields of the runs

/// The adaLN flow head of the runs: dim 3, width 16, depth 2, 8 time features.
inline flowprior::nn::AdaLNMlpConfig adaln_config() {
  flowprior::nn::AdaLNMlpConfig c;
  c.dim = 3;
  c.width = 16;
  c.depth = 2;
  c.time_freq_dim = 8;
  return c;
}

/// The plain MLP field of the runs: dim 3, width 16, depth 2, sinusoidal time (8 features).
inline flowprior::nn::MlpFieldConfig mlp_config() {
  flowprior::nn::MlpFieldConfig c;
  c.dim = 3;
  c.width = 16;
  c.depth = 2;
  c.time_encoding = flowprior::nn::TimeEncoding::Sinusoidal;
  c.time_freq_dim = 8;
  return c;
}

template <class B, class S>
using AdaLN = flowprior::nn::AdaLNMlp<S, B>;
template <class B, class S>
using Mlp = flowprior::nn::MlpField<S, B>;

// ------------------------------------------------------------------------------------------------
// a) the fields

/// One field's passes at one batch: forward, backward (d_x and the parameter gradient, from
/// zero), vjp_x with another cotangent, jvp_x with K = 2 tangents per sample, the exact
/// divergence (and the v it returns). Times all distinct, or in two runs of three equal times
/// (time groups; the number of groups used is an entry too).
template <class Field>
Results field_passes(const Field& net, bool grouped, std::uint64_t seed) {
  using S = typename Field::Scalar;
  using B = flowprior::nn::field_backend_t<Field>;
  const Index d = net.dim(), N = 6, K = 2;
  Rng rng(seed);
  const std::vector<double> x = uniform_values(rng, d * N, -1.5, 1.5);
  std::vector<double> t = uniform_values(rng, N, 0.02, 0.98);
  if (grouped) t = {0.25, 0.25, 0.25, 0.75, 0.75, 0.75};
  const std::vector<double> dv = uniform_values(rng, d * N, -1, 1),
                            u = uniform_values(rng, d * N, -1, 1),
                            w = uniform_values(rng, d * N * K, -1, 1);
  Dev<B, S> X(x, d, N), T(t, N, 1), DV(dv, d, N), U(u, d, N), W(w, d, N * K), V(d, N), GX(d, N),
      GP(net.num_params(), 1), VX(d, N), JV(d, N * K), VD(d, N), DIV(N, 1);
  typename Field::Workspace ws;
  net.forward(X.cview(), T.cvec(), V.view(), ws);
  Results r;
  r.put("v", V.host());
  r.put("time_groups", double(net.time_groups(ws)));
  net.backward(ws, DV.cview(), GX.view(), GP.vec());
  r.put("backward.d_x", GX.host());
  r.put("backward.d_params", GP.host());
  net.vjp_x(ws, U.cview(), VX.view());
  r.put("vjp_x", VX.host());
  net.jvp_x(ws, W.cview(), JV.view(), K);
  r.put("jvp_x", JV.host());
  net.divergence(X.cview(), T.cvec(), VD.view(), DIV.vec(), ws);
  r.put("divergence.v", VD.host());
  r.put("divergence", DIV.host());
  return r;
}

/// Run (a): both fields (AdaLNMlp, MlpField), times distinct and grouped.
template <class B, class S>
Results run_fields(std::uint64_t seed = 1) {
  Results r;
  AdaLN<B, S> adaln(adaln_config());
  Mlp<B, S> mlp(mlp_config());
  randomize(adaln, seed);
  randomize(mlp, seed + 1);
  for (const bool grouped : {false, true}) {
    const std::string g = grouped ? "grouped/" : "distinct/";
    r.append("adaln/" + g, field_passes(adaln, grouped, seed + 2));
    r.append("mlp/" + g, field_passes(mlp, grouped, seed + 3));
  }
  return r;
}

// ------------------------------------------------------------------------------------------------
// b) the losses

/// Run (b): the flow-matching loss with its parameter gradient and the alignment loss with its
/// latent gradient (with and without detach_pred_v), both conventions (the field trained in
/// Code, seen reversed in Paper), K = 2 draws from loss::draw and a seeded Rng: uniform times,
/// and stratified antithetic times in groups of two. The draws themselves are entries too.
template <class B, class S>
Results run_losses(std::uint64_t seed = 11) {
  namespace loss = flowprior::loss;
  using Net = AdaLN<B, S>;
  Net net(adaln_config());
  randomize(net, seed);
  const Index d = 3, N = 5, K = 2;
  Rng r0(seed + 1);
  const std::vector<double> y = uniform_values(r0, d * N, -1.5, 1.5);
  Dev<B, S> Y(y, d, N);
  Results r;
  for (const Convention conv : {Convention::Code, Convention::Paper}) {
    const flowprior::Prior<Net> prior = flowprior::Prior<Net>(net, Convention::Code).as(conv);
    for (const bool varied : {false, true}) {
      const std::string p =
          std::string(conv == Convention::Code ? "code/" : "paper/") + (varied ? "strat/" : "uni/");
      Rng rng(seed + 2);
      loss::FlowDraws<S, B> draws;
      loss::draw(draws, conv, N, d, K,
                 varied ? loss::TimeSampler::stratified() : loss::TimeSampler::uniform(), rng,
                 /*antithetic=*/varied, /*time_group=*/varied ? 2 : 1);
      r.put(p + "draws.t", download<B>(draws.t.data(), N * K));
      r.put(p + "draws.eps", download<B>(draws.eps.data(), d * N * K));
      loss::LossWorkspace<Net> ws;
      Dev<B, S> GP(net.num_params(), 1), ROW(N, 1);
      r.put(p + "fm.loss",
            loss::flow_matching_loss(prior, conv, Y.cview(), draws, loss::Reduction::Mean, ws,
                                     GP.vec(), ROW.vec()));
      r.put(p + "fm.d_params", GP.host());
      r.put(p + "fm.rows", ROW.host());
      for (const bool detach : {false, true}) {
        const std::string q = p + (detach ? "align.detached." : "align.");
        const loss::AlignmentOptions opt{loss::Reduction::SumChannels, 0.7, detach};
        Dev<B, S> G(d, N), AROW(N, 1);
        r.put(q + "loss",
              loss::alignment_loss(prior, conv, Y.cview(), draws, opt, ws, AROW.vec(), G.view()));
        r.put(q + "rows", AROW.host());
        r.put(q + "d_y", G.host());
      }
    }
  }
  return r;
}

// ------------------------------------------------------------------------------------------------
// c) training

/// The flow head of the training and alignment runs (dim 3, width 8, depth 1, 8 time features):
/// small enough for hundreds of steps in a Debug test.
inline flowprior::nn::AdaLNMlpConfig small_adaln_config() {
  flowprior::nn::AdaLNMlpConfig c = adaln_config();
  c.width = 8;
  c.depth = 1;
  return c;
}

/// Run (c): train::FlowMatchingTrainer for `steps` steps on 32 targets (two clusters) from a
/// random start: batch 8, K = 2 antithetic draws in time groups of two, Adam at a constant 1e-2
/// after 2 warm-up steps, clipping at 1, EMA 0.9. Entries: the loss and gradient-norm history,
/// the final parameters, the EMA weights and Adam's moments.
template <class B, class S>
Results run_training(Index steps = 200, std::uint64_t seed = 21) {
  if (steps <= 0)
    flowprior::raise_config("fpt::stack::run_training",
                            "steps must be positive, got " + std::to_string(steps));
  using Net = AdaLN<B, S>;
  Net net(small_adaln_config());
  randomize(net, seed);
  const Index d = 3, n = 32;
  Rng r0(seed + 1);
  std::vector<double> targets = uniform_values(r0, d * n, -0.3, 0.3);
  for (Index j = 0; j < n; ++j) targets[std::size_t(j * d)] += j % 2 == 0 ? 1.0 : -1.0;
  Dev<B, S> TG(targets, d, n);
  flowprior::train::TrainerConfig tc;
  tc.batch = 8;
  tc.K = 2;
  tc.antithetic = true;
  tc.time_group = 2;
  tc.schedule = flowprior::optim::LrSchedule::constant(1e-2, 2);
  tc.clip_norm = 1.0;
  tc.ema_decay = 0.9;
  flowprior::train::FlowMatchingTrainer<Net> trainer(net, Convention::Code, tc);
  Rng rng(seed + 2);
  std::vector<double> losses, norms;
  for (Index s = 0; s < steps; ++s) {
    const auto st = trainer.step(TG.cview(), rng);
    losses.push_back(st.loss);
    norms.push_back(st.grad_norm);
  }
  Results r;
  r.put("loss", losses);
  r.put("grad_norm", norms);
  r.put("params", parameters_of(net));
  const auto ema = trainer.ema().weights();
  r.put("ema", std::vector<double>(ema.begin(), ema.end()));
  const auto m = trainer.optimizer().m(), v = trainer.optimizer().v();
  r.put("adam.m", std::vector<double>(m.begin(), m.end()));
  r.put("adam.v", std::vector<double>(v.begin(), v.end()));
  return r;
}

/// What of a float training run two backends can be asked to share: the first `early` losses
/// ("loss.early") and the mean of the last `tail` losses ("loss.tail_mean"). Float rounding
/// differences between backends (summation orders, FMA contraction, libm) are amplified by every
/// step, so after hundreds of steps the trajectories, hence the final parameters, are different
/// samples of the same training; their early losses still agree closely and their final
/// loss levels statistically. Throws config_error unless `run` has a loss history of at least
/// max(early, tail) steps.
inline Results training_summary(const Results& run, Index early = 5, Index tail = 20) {
  const std::vector<double>* loss = run.find("loss");
  if (loss == nullptr || early <= 0 || tail <= 0 || Index(loss->size()) < std::max(early, tail))
    flowprior::raise_config("fpt::stack::training_summary",
                            "needs a loss history of at least max(early, tail) steps");
  Results r;
  r.put("loss.early", std::vector<double>(loss->begin(), loss->begin() + early));
  double s = 0;
  for (auto it = loss->end() - tail; it != loss->end(); ++it) s += *it;
  r.put("loss.tail_mean", s / double(tail));
  return r;
}

// ------------------------------------------------------------------------------------------------
// d) the latent aligner

/// Run (d): train::LatentAligner for `steps` steps on 8 latents under a random prior trained in
/// Code and seen in Paper (reversed): K = 4 draws in time groups of two, the paper's Adam (lr
/// 1e-2). Entries: the loss history and the final latents.
template <class B, class S>
Results run_alignment(Index steps = 30, std::uint64_t seed = 31) {
  if (steps <= 0)
    flowprior::raise_config("fpt::stack::run_alignment",
                            "steps must be positive, got " + std::to_string(steps));
  using Net = AdaLN<B, S>;
  Net net(small_adaln_config());
  randomize(net, seed);
  const flowprior::Prior<Net> prior =
      flowprior::Prior<Net>(net, Convention::Code).as(Convention::Paper);
  const Index d = 3, n = 8;
  Rng r0(seed + 1);
  Dev<B, S> Y(uniform_values(r0, d * n, -1.5, 1.5), d, n);
  flowprior::train::AlignConfig ac;
  ac.time_group = 2;
  flowprior::train::LatentAligner<Net> aligner(prior, Convention::Paper, n, ac);
  Rng rng(seed + 2);
  std::vector<double> losses;
  for (Index s = 0; s < steps; ++s) losses.push_back(aligner.step(Y.view(), rng));
  Results r;
  r.put("loss", losses);
  r.put("y", Y.host());
  return r;
}

// ------------------------------------------------------------------------------------------------
// e) sampling and likelihoods

/// Run (e): ode::sample (RK4, 8 steps; Dopri5 at 1e-4) and ode::log_likelihood (RK4, 8 steps:
/// exact divergence, and Hutchinson with 2 Rademacher probes from a seeded Rng; Dopri5 at 1e-4
/// exact) of 4 points under the run (a) flow head, trained in Code, seen in Paper. Entries: the
/// samples, the log-densities, the noises the points map to, the evaluation counts.
template <class B, class S>
Results run_ode(std::uint64_t seed = 41) {
  namespace ode = flowprior::ode;
  using Net = AdaLN<B, S>;
  Net net(adaln_config());
  randomize(net, seed);
  const flowprior::Prior<Net> prior =
      flowprior::Prior<Net>(net, Convention::Code).as(Convention::Paper);
  const Index d = 3, n = 4;
  Rng r0(seed + 1);
  const std::vector<double> z0 = uniform_values(r0, d * n, -1.5, 1.5);
  ode::OdeWorkspace<Net> ws;
  Results r;
  for (const auto method : {ode::Method::RK4, ode::Method::Dopri5}) {
    const std::string m = method == ode::Method::RK4 ? "rk4/" : "dopri5/";
    ode::SolverOptions so;
    so.method = method;
    so.steps = 8;
    so.atol = so.rtol = 1e-4;
    Dev<B, S> Z(z0, d, n);
    const auto st = ode::sample(prior, Convention::Paper, Z.view(), so, ws);
    r.put(m + "sample", Z.host());
    r.put(m + "sample.nfe", double(st.nfe));
    for (const auto div : {ode::Divergence::Exact, ode::Divergence::Hutchinson}) {
      if (method == ode::Method::Dopri5 && div == ode::Divergence::Hutchinson) continue;
      const std::string q = m + (div == ode::Divergence::Exact ? "exact/" : "hutchinson/");
      ode::LikelihoodOptions lo;
      lo.solver = so;
      lo.divergence = div;
      lo.probes = 2;
      Dev<B, S> X(z0, d, n), LP(n, 1), ZN(d, n);
      Rng rng(seed + 2);
      const auto ls = ode::log_likelihood(prior, Convention::Paper, X.cview(), LP.vec(), lo, ws,
                                          &rng, ZN.view());
      r.put(q + "logp", LP.host());
      r.put(q + "z_noise", ZN.host());
      r.put(q + "nfe", double(ls.nfe));
    }
  }
  return r;
}

/// Every run but training (fast), prefixed "fields/", "losses/", "align/", "ode/".
template <class B, class S>
Results run_passes() {
  Results r;
  r.append("fields/", run_fields<B, S>());
  r.append("losses/", run_losses<B, S>());
  r.append("align/", run_alignment<B, S>());
  r.append("ode/", run_ode<B, S>());
  return r;
}

}  // namespace stack
}  // namespace fpt
