// Test-only helpers for gradient checks (tests/support, never installed).
//
// - fd_gradient: central differences of a scalar function in double precision, step
//   h = 1e-6 max(1, |x_i|).
// - rel_error: ||a - n|| / (||a|| + ||n||), 0 when both vanish.
// - require_close: reports the tensor name, the relative error and the worst index on failure.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <flowprior/core/random.hpp>
#include <flowprior/core/types.hpp>
#include <string>
#include <vector>

#include "catch.hpp"

namespace fpt {

using flowprior::Index;
using Vec = Eigen::VectorXd;
using Mat = Eigen::MatrixXd;

inline double rel_error(const double* a, const double* n, Index size) {
  double diff = 0, na = 0, nn = 0;
  for (Index i = 0; i < size; ++i) {
    diff += (a[i] - n[i]) * (a[i] - n[i]);
    na += a[i] * a[i];
    nn += n[i] * n[i];
  }
  const double den = std::sqrt(na) + std::sqrt(nn);
  return den == 0 ? 0.0 : std::sqrt(diff) / den;
}

/// Central-difference gradient of f() w.r.t. x[0..n), perturbing x in place (restored after).
template <class F>
std::vector<double> fd_gradient(F&& f, double* x, Index n) {
  std::vector<double> g(static_cast<std::size_t>(n));
  for (Index i = 0; i < n; ++i) {
    const double x0 = x[i];
    const double h = 1e-6 * std::max(1.0, std::abs(x0));
    x[i] = x0 + h;
    const double fp = f();
    x[i] = x0 - h;
    const double fm = f();
    x[i] = x0;
    g[static_cast<std::size_t>(i)] = (fp - fm) / (2 * h);
  }
  return g;
}

/// Requires rel_error(analytic, numeric) < tol and prints the worst element otherwise.
inline void require_close(const std::string& name, const double* analytic, const double* numeric,
                          Index n, double tol) {
  const double err = rel_error(analytic, numeric, n);
  Index worst = 0;
  double wd = -1;
  for (Index i = 0; i < n; ++i) {
    const double d = std::abs(analytic[i] - numeric[i]);
    if (d > wd) {
      wd = d;
      worst = i;
    }
  }
  INFO(name << ": relative error " << err << " (worst index " << worst << ": analytic "
            << (n ? analytic[worst] : 0.0) << ", numeric " << (n ? numeric[worst] : 0.0) << ")");
  CHECK(err < tol);
}

inline void require_close(const std::string& name, const double* analytic,
                          const std::vector<double>& numeric, double tol) {
  require_close(name, analytic, numeric.data(), Index(numeric.size()), tol);
}

/// Fills [p, p + n) with uniform values in [lo, hi).
template <class S>
void fill_uniform(S* p, Index n, flowprior::Rng& rng, double lo, double hi) {
  for (Index i = 0; i < n; ++i) p[i] = static_cast<S>(flowprior::uniform(rng, lo, hi));
}

inline Mat random_mat(Index r, Index c, flowprior::Rng& rng, double lo = -1, double hi = 1) {
  Mat m(r, c);
  fill_uniform(m.data(), m.size(), rng, lo, hi);
  return m;
}

inline Vec random_vec(Index n, flowprior::Rng& rng, double lo = -1, double hi = 1) {
  Vec v(n);
  fill_uniform(v.data(), v.size(), rng, lo, hi);
  return v;
}

/// <a, b> over all entries.
inline double dot(const Mat& a, const Mat& b) { return (a.array() * b.array()).sum(); }

}  // namespace fpt
