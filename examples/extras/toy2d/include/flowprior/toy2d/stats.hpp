/// @file
/// Statistics for evaluating alignment on the 2-D targets (docs/toy_targets.md "statistics"):
/// correlations of landscapes (pearson, spearman), a Gaussian kernel density estimate for the
/// targets without a closed-form density (Kde2D), distances from latents to target samples
/// (nearest_distance, NearestNeighbor2D), mode occupancy (the mode-seeking collapse of
/// method.md section 6) and a Monte Carlo mixture entropy (the NLL floor latents are compared
/// with). Everything is in double and deterministic given the caller's generator.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <flowprior/analytic/gaussian_mixture.hpp>
#include <flowprior/core/check.hpp>
#include <flowprior/core/error.hpp>
#include <flowprior/core/random.hpp>
#include <flowprior/core/types.hpp>
#include <limits>
#include <numeric>
#include <string>
#include <utility>
#include <vector>

namespace flowprior {
namespace eval {

namespace detail {

[[noreturn]] inline FLOWPRIOR_COLD void raise_value(const char* where, const std::string& what) {
  flowprior::detail::raise<value_error>(std::string("[flowprior.value] ") + where + ": " + what);
}

inline void check_finite_array(const char* where, const char* name, const double* a, Index n) {
  check_finite<double>(where, name, ConstMatrixView<double>(a, n, 1));
}

}  // namespace detail

/// Pearson correlation of a[0..n) and b[0..n) (two-pass, in double).
/// @pre n >= 2, finite values (numeric_error), neither array constant (value_error).
inline double pearson(const double* a, const double* b, Index n) {
  const char* w = "eval::pearson";
  if (n < 2) detail::raise_value(w, "needs n >= 2, got " + std::to_string(n));
  detail::check_finite_array(w, "a", a, n);
  detail::check_finite_array(w, "b", b, n);
  double ma = 0, mb = 0;
  for (Index i = 0; i < n; ++i) {
    ma += a[i];
    mb += b[i];
  }
  ma /= double(n);
  mb /= double(n);
  double sab = 0, saa = 0, sbb = 0;
  for (Index i = 0; i < n; ++i) {
    const double da = a[i] - ma, db = b[i] - mb;
    sab += da * db;
    saa += da * da;
    sbb += db * db;
  }
  if (saa == 0 || sbb == 0) detail::raise_value(w, "an input is constant (zero variance)");
  return std::max(-1.0, std::min(1.0, sab / std::sqrt(saa * sbb)));
}

/// 1-based ranks of a[0..n); tied values share the average of their ranks (e.g. {10, 20, 20, 30}
/// -> {1, 2.5, 2.5, 4}).
inline std::vector<double> average_ranks(const double* a, Index n) {
  std::vector<Index> order(static_cast<std::size_t>(std::max<Index>(n, 0)));
  std::iota(order.begin(), order.end(), Index(0));
  std::stable_sort(order.begin(), order.end(), [a](Index i, Index j) { return a[i] < a[j]; });
  std::vector<double> r(order.size());
  for (std::size_t i = 0; i < order.size();) {
    std::size_t j = i + 1;
    while (j < order.size() && a[order[j]] == a[order[i]]) ++j;
    const double avg = 0.5 * double(i + 1 + j);  // mean of ranks i+1 .. j
    for (std::size_t k = i; k < j; ++k) r[std::size_t(order[k])] = avg;
    i = j;
  }
  return r;
}

/// Spearman rank correlation: pearson of the average ranks (ties handled exactly).
/// @pre as pearson (an all-tied input has zero rank variance: value_error).
inline double spearman(const double* a, const double* b, Index n) {
  const char* w = "eval::spearman";
  if (n < 2) detail::raise_value(w, "needs n >= 2, got " + std::to_string(n));
  detail::check_finite_array(w, "a", a, n);
  detail::check_finite_array(w, "b", b, n);
  const std::vector<double> ra = average_ranks(a, n), rb = average_ranks(b, n);
  return pearson(ra.data(), rb.data(), n);
}

/// Isotropic Gaussian kernel density estimate in 2-D:
///
///   p(x) = (1 / n) sum_i N(x; s_i, h^2 I)
///
/// evaluated as a log-sum-exp around the nearest sample, so log_density is finite and accurate
/// arbitrarily far from the data. Cost: O(n) per query (two passes over the samples; exp only
/// for kernels within e^-40 of the largest). Measured at -O2: 1000 queries x 20k samples with
/// h = 0.05 take 41 ms (a 100 x 100 grid: about 0.4 s); with Scott's h = 0.19, 147 ms.
///
/// Bandwidth: an explicit h > 0, or (h <= 0) Scott's rule h = n^(-1/6) sigma, with sigma the
/// overall per-coordinate std sqrt((Var x + Var y) / 2) of the samples. Scott's rule is tuned for
/// one Gaussian: on the multimodal toy targets it over-smooths (in normalised units, n = 20k
/// gives h = 0.19, wider than a Ring5 component, std 0.14). Prefer an explicit h about a third
/// of the smallest feature width (0.05 in normalised units) with >= 20k samples there.
class Kde2D {
 public:
  /// @param samples   (2, n), n >= 1 (n >= 2 for Scott's rule), finite; copied
  /// @param bandwidth h > 0, or <= 0 for Scott's rule
  explicit Kde2D(ConstMatrixView<double> samples, double bandwidth = 0) {
    const char* w = "eval::Kde2D";
    check_shape(w, "samples", samples, 2, samples.cols);
    if (samples.cols < 1) detail::raise_value(w, "needs at least one sample");
    check_finite<double>(w, "samples", samples);
    if (!std::isfinite(bandwidth)) detail::raise_value(w, "bandwidth must be finite");
    h_ = bandwidth > 0 ? bandwidth : scott_bandwidth(samples);
    if (!(h_ > 0)) detail::raise_value(w, "Scott's rule gave a zero bandwidth (constant samples)");
    pts_.resize(static_cast<std::size_t>(2 * samples.cols));
    for (Index b = 0; b < samples.cols; ++b) {
      pts_[std::size_t(2 * b)] = samples(0, b);
      pts_[std::size_t(2 * b + 1)] = samples(1, b);
    }
  }

  /// Scott's rule in 2-D: n^(-1/6) sqrt((Var x + Var y) / 2) (variances with 1/(n-1)).
  /// @pre samples (2, n), n >= 2.
  static double scott_bandwidth(ConstMatrixView<double> samples) {
    const char* w = "eval::Kde2D::scott_bandwidth";
    check_shape(w, "samples", samples, 2, samples.cols);
    const Index n = samples.cols;
    if (n < 2) detail::raise_value(w, "needs n >= 2 samples");
    double var = 0;
    for (Index i = 0; i < 2; ++i) {
      double m = 0, s = 0;
      for (Index b = 0; b < n; ++b) m += samples(i, b);
      m /= double(n);
      for (Index b = 0; b < n; ++b) s += (samples(i, b) - m) * (samples(i, b) - m);
      var += s / double(n - 1);
    }
    return std::pow(double(n), -1.0 / 6.0) * std::sqrt(0.5 * var);
  }

  /// log p(x) at x (2 values).
  double log_density(const double* x) const {
    const double* p = pts_.data();
    const Index n = size();
    double r2min = std::numeric_limits<double>::infinity();
    for (Index i = 0; i < n; ++i) r2min = std::min(r2min, dist2(x, p + 2 * i));
    const double inv = 1.0 / (2 * h_ * h_);
    // s = sum_i exp(-(r2_i - r2min) / 2h^2) >= 1. Terms below e^-40 are skipped: together they
    // change log s by at most n e^-40 (2e-13 for n = 50k), and most exp calls are saved.
    double s = 0;
    for (Index i = 0; i < n; ++i) {
      const double e = (dist2(x, p + 2 * i) - r2min) * inv;
      if (e < 40.0) s += std::exp(-e);
    }
    return -r2min * inv + std::log(s) - std::log(double(n)) -
           std::log(2 * 3.14159265358979323846 * h_ * h_);
  }

  /// out[b] = log p(x[:, b]) for x (2, B).
  void log_density(ConstMatrixView<double> x, VectorView<double> out) const {
    const char* w = "eval::Kde2D::log_density";
    check_shape(w, "x", x, 2, x.cols);
    check_size(w, "out", out, x.cols);
    for (Index b = 0; b < x.cols; ++b) out[b] = log_density(x.col(b));
  }

  double bandwidth() const { return h_; }
  Index size() const { return Index(pts_.size() / 2); }

 private:
  static double dist2(const double* a, const double* b) {
    const double dx = a[0] - b[0], dy = a[1] - b[1];
    return dx * dx + dy * dy;
  }

  double h_ = 0;
  std::vector<double> pts_;  // (2, n) interleaved
};

/// Euclidean distance from x (targets.rows values) to its nearest column of targets (dim, n),
/// by brute force. @pre n >= 1.
inline double nearest_distance(const double* x, ConstMatrixView<double> targets) {
  if (targets.cols < 1 || targets.rows < 1)
    detail::raise_value("eval::nearest_distance", "needs a non-empty (dim, n) target set");
  double best = std::numeric_limits<double>::infinity();
  for (Index b = 0; b < targets.cols; ++b) {
    double d2 = 0;
    for (Index i = 0; i < targets.rows; ++i) {
      const double d = x[i] - targets(i, b);
      d2 += d * d;
    }
    best = std::min(best, d2);
  }
  return std::sqrt(best);
}

/// Exact nearest-neighbour queries in 2-D through a uniform grid of buckets over the targets'
/// bounding box (about 2 targets per cell). A query visits rings of cells around the cell of its
/// clamped position and stops once the exact lower bound of the next ring's distance reaches the
/// best distance found, so queries outside the box (far latents) are exact too. Typical cost:
/// a few dozen distance evaluations per query instead of n.
class NearestNeighbor2D {
 public:
  /// @param targets (2, n), n >= 1, finite; copied.
  explicit NearestNeighbor2D(ConstMatrixView<double> targets) {
    const char* w = "eval::NearestNeighbor2D";
    check_shape(w, "targets", targets, 2, targets.cols);
    const Index n = targets.cols;
    if (n < 1) detail::raise_value(w, "needs at least one target");
    check_finite<double>(w, "targets", targets);
    lo_[0] = hi_[0] = targets(0, 0);
    lo_[1] = hi_[1] = targets(1, 0);
    for (Index b = 1; b < n; ++b)
      for (int i = 0; i < 2; ++i) {
        lo_[i] = std::min(lo_[i], targets(i, b));
        hi_[i] = std::max(hi_[i], targets(i, b));
      }
    const double wx = hi_[0] - lo_[0], wy = hi_[1] - lo_[1];
    // Cell side for ~2 points per cell; a degenerate (line or point) box falls back to its
    // longer side divided into n / 2 cells, or to 1 for identical points.
    h_ = std::sqrt(wx * wy * 2.0 / double(n));
    h_ = std::max(h_, std::max(wx, wy) * 2.0 / double(n));
    if (!(h_ > 0)) h_ = 1.0;
    for (int i = 0; i < 2; ++i) {
      const double cells = std::floor((hi_[i] - lo_[i]) / h_) + 1;
      g_[i] = static_cast<Index>(std::min(cells, 1e6));
    }
    // Counting sort of the targets into cells (CSR layout; points stored contiguously per cell).
    std::vector<Index> cell_of(static_cast<std::size_t>(n));
    start_.assign(static_cast<std::size_t>(g_[0] * g_[1] + 1), 0);
    for (Index b = 0; b < n; ++b) {
      const double p[2] = {targets(0, b), targets(1, b)};
      cell_of[std::size_t(b)] = cell_index(axis_cell(p[0], 0), axis_cell(p[1], 1));
      ++start_[std::size_t(cell_of[std::size_t(b)] + 1)];
    }
    for (std::size_t c = 1; c < start_.size(); ++c) start_[c] += start_[c - 1];
    std::vector<Index> fill(start_.begin(), start_.end() - 1);
    pts_.resize(static_cast<std::size_t>(2 * n));
    ids_.resize(static_cast<std::size_t>(n));
    for (Index b = 0; b < n; ++b) {
      const Index slot = fill[std::size_t(cell_of[std::size_t(b)])]++;
      pts_[std::size_t(2 * slot)] = targets(0, b);
      pts_[std::size_t(2 * slot + 1)] = targets(1, b);
      ids_[std::size_t(slot)] = b;
    }
  }

  Index size() const { return Index(ids_.size()); }
  /// Grid cells per axis and cell side (for tests and tuning).
  Index grid_cols() const { return g_[0]; }
  Index grid_rows() const { return g_[1]; }
  double cell_size() const { return h_; }

  /// Distance from x (2 values) to the nearest target.
  double distance(const double* x) const {
    Index idx;
    return std::sqrt(query(x, idx));
  }

  /// Column index (in the constructor's targets) of the nearest target; ties: any of them.
  Index nearest(const double* x) const {
    Index idx;
    query(x, idx);
    return idx;
  }

 private:
  /// Cell coordinate along `axis` of position v, clamped to the grid.
  Index axis_cell(double v, int axis) const {
    const double c = std::floor((v - lo_[axis]) / h_);
    if (!(c > 0)) return 0;  // also NaN-safe
    return std::min<Index>(g_[axis] - 1, static_cast<Index>(std::min(c, 1e9)));
  }
  Index cell_index(Index cx, Index cy) const { return cx + g_[0] * cy; }
  /// Gap along `axis` between v and cell interval c (0 inside).
  double gap(double v, Index c, int axis) const {
    const double a = lo_[axis] + double(c) * h_, b = a + h_;
    return v < a ? a - v : (v > b ? v - b : 0.0);
  }

  /// Squared distance to the nearest target; idx receives its column.
  double query(const double* x, Index& idx) const {
    const Index cx = axis_cell(x[0], 0), cy = axis_cell(x[1], 1);
    double best = std::numeric_limits<double>::infinity();
    idx = ids_[0];
    const double gx0 = gap(x[0], cx, 0), gy0 = gap(x[1], cy, 1);  // smallest gaps per axis
    const Index kmax = std::max(std::max(cx, g_[0] - 1 - cx), std::max(cy, g_[1] - 1 - cy));
    for (Index k = 0; k <= kmax; ++k) {
      // Exact lower bound of the ring: its column sides (|i - cx| = k) are at least gap_x(i) away
      // along x and gy0 along y; its row sides likewise. The bound never decreases with k.
      double lb2 = std::numeric_limits<double>::infinity();
      if (k == 0) {
        lb2 = gx0 * gx0 + gy0 * gy0;
      } else {
        for (Index s = -1; s <= 1; s += 2) {
          const Index i = cx + s * k, j = cy + s * k;
          if (i >= 0 && i < g_[0]) lb2 = std::min(lb2, sq(gap(x[0], i, 0)) + gy0 * gy0);
          if (j >= 0 && j < g_[1]) lb2 = std::min(lb2, gx0 * gx0 + sq(gap(x[1], j, 1)));
        }
      }
      if (lb2 >= best) break;
      const Index i0 = std::max<Index>(0, cx - k), i1 = std::min<Index>(g_[0] - 1, cx + k);
      const Index j0 = std::max<Index>(0, cy - k), j1 = std::min<Index>(g_[1] - 1, cy + k);
      for (Index j = j0; j <= j1; ++j) {
        const bool edge_row = (j == cy - k || j == cy + k);
        // Interior rows of the ring contribute only their two end cells.
        const Index step = edge_row ? 1 : std::max<Index>(1, 2 * k);
        for (Index i = edge_row ? i0 : cx - k; i <= (edge_row ? i1 : cx + k); i += step) {
          if (i < 0 || i >= g_[0]) continue;
          if (sq(gap(x[0], i, 0)) + sq(gap(x[1], j, 1)) >= best) continue;
          const Index c = cell_index(i, j);
          for (Index p = start_[std::size_t(c)]; p < start_[std::size_t(c + 1)]; ++p) {
            const double d2 =
                sq(x[0] - pts_[std::size_t(2 * p)]) + sq(x[1] - pts_[std::size_t(2 * p + 1)]);
            if (d2 < best) {
              best = d2;
              idx = ids_[std::size_t(p)];
            }
          }
        }
      }
    }
    return best;
  }

  static double sq(double v) { return v * v; }

  double lo_[2] = {0, 0}, hi_[2] = {0, 0};
  double h_ = 1;
  Index g_[2] = {1, 1};
  std::vector<Index> start_;  // (cells + 1) CSR offsets
  std::vector<double> pts_;   // (2, n) sorted by cell
  std::vector<Index> ids_;    // original column of each sorted point
};

/// Points per mode: each column of points (2, n) goes to its nearest mode and is counted there
/// if radius < 0, or only if that nearest mode lies within `radius` (>= 0). Returns K counts; the
/// points counted nowhere are n - sum. @pre modes non-empty, finite points.
inline std::vector<Index> mode_occupancy(ConstMatrixView<double> points,
                                         const std::vector<std::array<double, 2>>& modes,
                                         double radius) {
  const char* w = "eval::mode_occupancy";
  check_shape(w, "points", points, 2, points.cols);
  if (modes.empty()) detail::raise_value(w, "needs at least one mode");
  check_finite<double>(w, "points", points);
  if (std::isnan(radius)) detail::raise_value(w, "radius is NaN");
  std::vector<Index> count(modes.size(), 0);
  const double r2 = radius * radius;
  for (Index b = 0; b < points.cols; ++b) {
    std::size_t best_k = 0;
    double best = std::numeric_limits<double>::infinity();
    for (std::size_t k = 0; k < modes.size(); ++k) {
      const double dx = points(0, b) - modes[k][0], dy = points(1, b) - modes[k][1];
      const double d2 = dx * dx + dy * dy;
      if (d2 < best) {
        best = d2;
        best_k = k;
      }
    }
    if (radius < 0 || best <= r2) ++count[best_k];
  }
  return count;
}

/// A Monte Carlo estimate and its standard error (sample std / sqrt(n)).
struct McEstimate {
  double value = 0;
  double std_error = 0;
};

/// Entropy H = -E log p(x), x ~ gmm, by Monte Carlo over n samples drawn from `rng` (in chunks,
/// memory O(dim)). @pre n >= 2.
inline McEstimate mixture_entropy_mc(const analytic::GaussianMixture& gmm, Index n, Rng& rng) {
  if (n < 2) detail::raise_value("eval::mixture_entropy_mc", "needs n >= 2 samples");
  const Index d = gmm.dim(), chunk = 4096;
  std::vector<double> buf(static_cast<std::size_t>(d * chunk));
  double mean = 0, m2 = 0;  // Welford
  Index seen = 0;
  for (Index start = 0; start < n; start += chunk) {
    const Index m = std::min(chunk, n - start);
    gmm.sample(MatrixView<double>(buf.data(), d, m), rng);
    for (Index b = 0; b < m; ++b) {
      const double v = -gmm.log_density(buf.data() + b * d);
      ++seen;
      const double delta = v - mean;
      mean += delta / double(seen);
      m2 += delta * (v - mean);
    }
  }
  return {mean, std::sqrt(m2 / double(n - 1) / double(n))};
}

}  // namespace eval
}  // namespace flowprior
