/// @file
/// Draws of (t, eps) for flow-matching and alignment losses (docs/math/flow_matching.md,
/// section "sampling"). Each of N rows gets K independent draws ("flow_mul", K = 4 in the
/// released code); draw k of row b is column b*K + k. All randomness comes from the caller's
/// generator, consumed in column order, so the same seed gives the same draws on any machine
/// and thread count.
#pragma once

#include <algorithm>
#include <cmath>
#include <flowprior/core/check.hpp>
#include <flowprior/core/convention.hpp>
#include <flowprior/core/math.hpp>
#include <flowprior/core/random.hpp>
#include <flowprior/core/size.hpp>
#include <flowprior/core/types.hpp>
#include <sstream>
#include <string>
#include <vector>

namespace flowprior {
namespace loss {

/// How the times t are drawn. Times are in the convention of the draws (FlowDraws::convention):
/// for the symmetric kinds this does not matter, for a logit-normal with mean != 0 it does.
struct TimeSampler {
  enum class Kind {
    Uniform,      ///< t ~ U[0, 1)
    LogitNormal,  ///< t = sigmoid(mean + std z), z ~ N(0, 1)
    Stratified,   ///< the N*K draws take one each of N*K equal strata, in random order
    Grid          ///< draw k of every row at the midpoint t = (k + 1/2) / K (landscapes)
  };
  Kind kind = Kind::Uniform;
  double mean = 0.0;  ///< logit-normal location
  double std = 1.0;   ///< logit-normal scale

  static TimeSampler uniform() { return {}; }
  static TimeSampler logit_normal(double m, double s) { return {Kind::LogitNormal, m, s}; }
  static TimeSampler stratified() { return {Kind::Stratified, 0, 1}; }
  static TimeSampler grid() { return {Kind::Grid, 0, 1}; }

  void validate() const {
    if (kind == Kind::LogitNormal && (!(std > 0) || !std::isfinite(std) || !std::isfinite(mean)))
      raise_config("TimeSampler", "logit-normal needs a finite mean and std > 0");
  }
};

/// N rows x K draws of (t, eps) in a stated convention. Fill them with loss::draw, or pass your
/// own with the explicit-draws constructor / assign(), which check every size and value. The
/// fields stay public (the samplers write them); every loss checks them with validate() before
/// reading, so sizes edited out of step with the buffers are a shape_error, never an
/// out-of-bounds read (docs/errors.md "Draws").
template <class S>
struct FlowDraws {
  FlowDraws() = default;

  /// Explicit draws: N = `n_rows` rows x K = `draws_per_row` draws of dimension d = `d`, the
  /// times `times` (N K) and noises `noise` (d, N K), column b K + k for draw k of row b, all in
  /// convention `conv` (t in [0, 1] of that convention: Paper t = 0 is noise, Code t = 0 is
  /// data). With `time_group` G > 1, each run of G consecutive columns must share its t (as
  /// loss::draw makes them; the last run may be shorter). Checks as assign().
  FlowDraws(Convention conv, Index n_rows, Index d, Index draws_per_row, ConstVectorView<S> times,
            ConstMatrixView<S> noise, Index time_group = 1) {
    assign(conv, n_rows, d, draws_per_row, times, noise, time_group);
  }

  Convention convention = Convention::Paper;
  Index rows = 0;             ///< N
  Index K = 0;                ///< draws per row
  Index dim = 0;              ///< d
  std::vector<S> t;           ///< (N*K)
  std::vector<S> eps;         ///< (d, N*K) column-major
  std::vector<Index> strata;  ///< scratch of the stratified sampler (kept: no allocation per draw)

  Index cols() const { return rows * K; }
  ConstVectorView<S> times() const { return {t.data(), cols()}; }
  ConstMatrixView<S> noise() const { return {eps.data(), dim, cols()}; }
  VectorView<S> times() { return {t.data(), cols()}; }
  MatrixView<S> noise() { return {eps.data(), dim, cols()}; }

  /// Sizes the buffers (reusing their memory) for N rows, K draws, dimension d. Throws
  /// config_error, leaving the draws unchanged, when K < 1, N < 0, d < 1, or N K or d N K
  /// overflows or cannot fit in memory.
  void resize(Convention conv, Index n_rows, Index d, Index draws_per_row) {
    const char* w = "FlowDraws";
    if (draws_per_row <= 0)
      raise_config(w, "K (draws per row) must be >= 1, got " + std::to_string(draws_per_row));
    if (n_rows < 0 || d <= 0)
      raise_config(w, "rows must be >= 0 and dim >= 1, got rows " + std::to_string(n_rows) +
                          ", dim " + std::to_string(d));
    const Index M = checked_mul(w, "rows x K", n_rows, draws_per_row);
    const Index n_eps = checked_mul(w, "dim x rows x K", d, M);
    if (static_cast<std::size_t>(n_eps) > eps.size())  // growing: say what does not fit
      check_allocation(w,
                       "the noise of " + std::to_string(n_rows) + " rows x K " +
                           std::to_string(draws_per_row) + " draws of dim " + std::to_string(d),
                       n_eps, sizeof(S));
    checked_resize(w, "the times of the draws", t, M);
    checked_resize(w, "the noise of the draws", eps, n_eps);
    convention = conv;
    rows = n_rows;
    K = draws_per_row;
    dim = d;
  }

  /// Replaces the draws by explicit ones (arguments as the explicit-draws constructor; the
  /// convention is `conv`'s, the times lie in [0, 1] of it), reusing the buffers' memory: once
  /// they are large enough it allocates nothing. Everything is checked before anything is
  /// changed; the error names the offending argument:
  ///   config_error   `conv` is not Convention::Paper or Convention::Code; `n_rows` < 0,
  ///                  `d` < 1, `draws_per_row` (K) < 1, `time_group` < 1; N K or d N K
  ///                  overflows or cannot fit in memory
  ///   shape_error    `times` does not hold N K values, `noise` is not (d, N K)
  ///   numeric_error  a time or noise value is NaN or infinite
  ///   value_error    a time outside [0, 1], or a time group whose times differ
  void assign(Convention conv, Index n_rows, Index d, Index draws_per_row, ConstVectorView<S> times,
              ConstMatrixView<S> noise, Index time_group = 1) {
    const char* w = "FlowDraws";
    if (conv != Convention::Paper && conv != Convention::Code)
      raise_config(w, "argument 'conv' is not Convention::Paper or Convention::Code (got " +
                          std::to_string(static_cast<int>(conv)) + ")");
    if (n_rows < 0) raise_config(w, "argument 'rows' must be >= 0, got " + std::to_string(n_rows));
    if (d <= 0) raise_config(w, "argument 'dim' must be >= 1, got " + std::to_string(d));
    if (draws_per_row <= 0)
      raise_config(
          w, "argument 'K' (draws per row) must be >= 1, got " + std::to_string(draws_per_row));
    if (time_group <= 0)
      raise_config(w, "argument 'time_group' must be >= 1, got " + std::to_string(time_group));
    const Index M = checked_mul(w, "rows x K", n_rows, draws_per_row);
    checked_mul(w, "dim x rows x K", d, M);
    check_size(w, "t", times, M);
    check_shape(w, "eps", noise, d, M);
    check_finite(w, "t", ConstMatrixView<S>(times.data, M, 1));
    check_unit_interval(w, "t", times);
    check_finite(w, "eps", noise);
    for (Index col = 1; col < M; ++col) {
      if (col % time_group == 0 || times[col] == times[col - 1]) continue;
      std::ostringstream os;
      os.precision(17);
      os << "[flowprior.value] " << w << ": argument 't' differs inside time group "
         << col / time_group << " (time_group " << time_group << "): t[" << col - 1
         << "] = " << times[col - 1] << ", t[" << col << "] = " << times[col];
      flowprior::detail::raise<value_error>(os.str());
    }
    resize(conv, n_rows, d, draws_per_row);
    std::copy(times.data, times.data + M, t.begin());
    for (Index col = 0; col < M; ++col)
      std::copy(noise.col(col), noise.col(col) + d, eps.begin() + std::ptrdiff_t(col * d));
  }

  /// Throws shape_error unless the sizes agree with the buffers (t holds rows K times, eps
  /// dim rows K values, K >= 1, rows >= 0, dim >= 1), naming `where`. The losses call it.
  void validate(const char* where) const {
    Index M = 0, n_eps = 0;
    const bool sizes_ok = K >= 1 && rows >= 0 && dim >= 1 && !__builtin_mul_overflow(rows, K, &M) &&
                          !__builtin_mul_overflow(dim, M, &n_eps) && Index(t.size()) == M &&
                          Index(eps.size()) == n_eps;
    if (!sizes_ok)
      flowprior::detail::raise<shape_error>(
          std::string("[flowprior.shape] ") + where + ": the draws say rows " +
          std::to_string(rows) + ", K " + std::to_string(K) + ", dim " + std::to_string(dim) +
          " but hold " + std::to_string(t.size()) + " times and " + std::to_string(eps.size()) +
          " noise values (use FlowDraws::resize, then fill t and eps)");
  }
};

/// Fills `out` with N rows x K draws: t from `sampler`, eps ~ N(0, I). With `antithetic`,
/// draws come in pairs (k = 2j, 2j + 1) whose noises are eps and -eps (K must be even); each
/// draw keeps its own t from the sampler, so grids and strata stay intact. The estimator stays
/// unbiased; its variance falls only when the paired losses are negatively correlated, which
/// the caller should measure (docs/math/flow_matching.md "Sampling").
///
/// With `time_group` G > 1, consecutive runs of G columns (the last run may be shorter) share
/// one t, drawn per run from the sampler (a stratified sampler stratifies over the runs). The
/// estimator of the loss stays unbiased; networks evaluate the t-dependent work once per run
/// (adaln.md "Time groups"). Grid times cannot be grouped.
template <class S>
void draw(FlowDraws<S>& out, Convention conv, Index rows, Index dim, Index K,
          const TimeSampler& sampler, Rng& rng, bool antithetic = false, Index time_group = 1) {
  sampler.validate();
  if (antithetic && K % 2 != 0)
    raise_config("loss::draw", "antithetic draws need an even K, got " + std::to_string(K));
  if (time_group <= 0)
    raise_config("loss::draw", "time_group must be >= 1, got " + std::to_string(time_group));
  if (time_group > 1 && sampler.kind == TimeSampler::Kind::Grid)
    raise_config("loss::draw", "grid times cannot be shared by time groups");
  out.resize(conv, rows, dim, K);
  const Index M = out.cols();
  const Index G = time_group;
  const Index n_times = M / G + (M % G != 0);  // one time per run of G columns
  std::vector<Index>& strata = out.strata;
  if (sampler.kind == TimeSampler::Kind::Stratified) {
    strata.resize(static_cast<std::size_t>(n_times));
    for (Index i = 0; i < n_times; ++i) strata[std::size_t(i)] = i;
    for (Index i = n_times - 1; i > 0; --i) {  // Fisher-Yates with our portable uniform
      const Index j = std::min<Index>(i, Index(uniform01(rng) * double(i + 1)));
      std::swap(strata[std::size_t(i)], strata[std::size_t(j)]);
    }
  }
  for (Index col = 0; col < M; ++col) {
    const Index k = col % K;
    if (G > 1 && col % G != 0) {  // inside a time group: the group's t, fresh noise
      out.t[std::size_t(col)] = out.t[std::size_t(col - 1)];
      if (antithetic && k % 2 == 1) {
        for (Index i = 0; i < dim; ++i)
          out.eps[std::size_t(col * dim + i)] = -out.eps[std::size_t((col - 1) * dim + i)];
      } else {
        for (Index i = 0; i < dim; ++i)
          out.eps[std::size_t(col * dim + i)] = static_cast<S>(normal01(rng));
      }
      continue;
    }
    double tt = 0;
    switch (sampler.kind) {
      case TimeSampler::Kind::Uniform:
        tt = uniform01(rng);
        break;
      case TimeSampler::Kind::LogitNormal:
        tt = math::sigmoid(sampler.mean + sampler.std * normal01(rng));
        break;
      case TimeSampler::Kind::Stratified:
        tt = (double(strata[std::size_t(col / G)]) + uniform01(rng)) / double(n_times);
        break;
      case TimeSampler::Kind::Grid:
        tt = (double(k) + 0.5) / double(K);
        break;
    }
    out.t[std::size_t(col)] = static_cast<S>(std::min(std::max(tt, 0.0), 1.0));
    if (antithetic && k % 2 == 1) {  // the partner of the previous draw: -eps
      for (Index i = 0; i < dim; ++i)
        out.eps[std::size_t(col * dim + i)] = -out.eps[std::size_t((col - 1) * dim + i)];
      continue;
    }
    for (Index i = 0; i < dim; ++i)
      out.eps[std::size_t(col * dim + i)] = static_cast<S>(normal01(rng));
  }
}

}  // namespace loss
}  // namespace flowprior
