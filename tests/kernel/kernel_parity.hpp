// Support of the kernel-backend tests: the same primitive run on CpuBackend (the oracle) and on
// HostKernelBackend (the CUDA backend's kernel bodies, run serially on the host), on copies of
// the same random operands, and the results compared.
//
// Operands are host matrices with a leading dimension larger than their rows (the padding holds
// NaN: a primitive that reads it, or an output that keeps it, fails the comparison).
// Tolerances: the kernel bodies evaluate the formulas of CpuBackend in the same precision, but
// the CPU's vectorised paths (Eigen's packet exp, its GEMM's blocking) round differently, so
// results agree to a few ulp, not to the bit: relative 1e-12 in double, 2e-5 in float.
#pragma once

#include <cmath>
#include <cstddef>
#include <flowprior/backend/cpu.hpp>
#include <flowprior/backend/kernel_backend.hpp>
#include <flowprior/core/random.hpp>
#include <limits>
#include <string>
#include <vector>

#include "catch.hpp"

namespace fpt {
namespace kp {

using flowprior::Index;
using Cpu = flowprior::CpuBackend;
using Ker = flowprior::HostKernelBackend;

/// The tolerance of a comparison in S (see the file comment).
template <class S>
constexpr double tol() {
  return std::is_same<S, double>::value ? 1e-12 : 2e-5;
}

/// A rows x cols matrix with leading dimension rows + pad, values uniform in [lo, hi], NaN in
/// the padding.
template <class S>
struct Mat {
  Index rows = 0, cols = 0, ld = 0;
  std::vector<S> store;

  Mat() = default;
  Mat(Index r, Index c, Index pad = 0) : rows(r), cols(c), ld(r + pad) {
    store.assign(static_cast<std::size_t>(ld * (c > 0 ? c : 1)),
                 std::numeric_limits<S>::quiet_NaN());
    for (Index j = 0; j < cols; ++j)
      for (Index i = 0; i < rows; ++i) at(i, j) = S(0);
  }
  /// Random values in [lo, hi] from rng.
  Mat& random(flowprior::Rng& rng, double lo = -2.0, double hi = 2.0) {
    for (Index j = 0; j < cols; ++j)
      for (Index i = 0; i < rows; ++i) at(i, j) = static_cast<S>(flowprior::uniform(rng, lo, hi));
    return *this;
  }
  S& at(Index i, Index j) { return store[static_cast<std::size_t>(i + j * ld)]; }
  const S& at(Index i, Index j) const { return store[static_cast<std::size_t>(i + j * ld)]; }
  flowprior::MatrixView<S> view() { return {store.data(), rows, cols, ld}; }
  flowprior::ConstMatrixView<S> cview() const { return {store.data(), rows, cols, ld}; }
  flowprior::VectorView<S> vec() { return {store.data(), rows * cols}; }
  flowprior::ConstVectorView<S> cvec() const { return {store.data(), rows * cols}; }
  S* data() { return store.data(); }
};

/// |a - b| <= tol (|a| + |b| + atol) for every element (NaN equal to NaN, inf to inf); the
/// padding is not compared. `what` names the output in the failure message.
template <class S>
void require_close(const Mat<S>& a, const Mat<S>& b, const std::string& what,
                   double rtol = tol<S>(), double atol = 1.0) {
  REQUIRE(a.rows == b.rows);
  REQUIRE(a.cols == b.cols);
  for (Index j = 0; j < a.cols; ++j)
    for (Index i = 0; i < a.rows; ++i) {
      const double x = static_cast<double>(a.at(i, j)), y = static_cast<double>(b.at(i, j));
      if (std::isnan(x) && std::isnan(y)) continue;
      if (x == y) continue;
      const double err = std::abs(x - y), bound = rtol * (std::abs(x) + std::abs(y) + atol);
      if (!(err <= bound)) {
        INFO(what << "(" << i << ", " << j << "): cpu " << x << ", kernel " << y << ", error "
                  << err << " > " << bound);
        REQUIRE(err <= bound);
      }
    }
}

/// The same for two scalars (reductions).
inline void require_close(double x, double y, const std::string& what, double rtol,
                          double atol = 1.0) {
  if (std::isnan(x) && std::isnan(y)) return;
  if (x == y) return;
  INFO(what << ": cpu " << x << ", kernel " << y);
  REQUIRE(std::abs(x - y) <= rtol * (std::abs(x) + std::abs(y) + atol));
}

/// The contexts of one comparison.
struct Contexts {
  Cpu::Context cpu;
  Ker::Context ker;
};

}  // namespace kp
}  // namespace fpt
