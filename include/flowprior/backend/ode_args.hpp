/// @file
/// Arguments and results of the backends' ODE primitives that ode/ fills in or reads without
/// including a backend (docs/backends.md "ODE primitives", docs/math/ode.md). Plain structs of
/// views and numbers: trivially copyable, so a CUDA kernel can take them by value.
#pragma once

#include <flowprior/core/error.hpp>
#include <flowprior/core/types.hpp>
#include <initializer_list>
#include <utility>

namespace flowprior {

/// The stages and coefficients of a linear combination sum_k c_k k_k (a Runge-Kutta stage or
/// error estimate, docs/math/ode.md (1)-(5)): up to kMax terms, each a coefficient in double and a
/// read-only view of the state's shape. Terms are used in the order they were given, which fixes
/// the summation order of the primitives that take them.
template <class S>
struct StageTerms {
  static constexpr int kMax = 7;  ///< Dopri5's error estimate has 6 terms, its stages up to 6

  int count = 0;
  double coef[kMax] = {};
  ConstMatrixView<S> stage[kMax] = {};

  StageTerms() = default;
  /// {{c_1, k_1}, {c_2, k_2}, ...}; more than kMax terms is a programming error (assert_error).
  StageTerms(std::initializer_list<std::pair<double, ConstMatrixView<S>>> terms) {
    for (const auto& t : terms) add(t.first, t.second);
  }
  void add(double c, ConstMatrixView<S> k) {
    if (count == kMax)
      detail::raise<assert_error>("[flowprior.assert] StageTerms: more than 7 terms");
    coef[count] = c;
    stage[count] = k;
    ++count;
  }
};

/// Where a scan found its first NaN or Inf (column-major order: column by column, each column top
/// to bottom): row i, column j and the value there, widened to double; i = j = -1 when every
/// element is finite.
struct NonFinite {
  Index i = -1;
  Index j = -1;
  double value = 0;

  bool found() const { return j >= 0; }
};

}  // namespace flowprior
