/// @file
/// Portable random numbers. The caller always passes the generator (there is no global RNG).
/// The distributions are written here rather than taken from <random>, whose distributions are
/// implementation-defined: with these, the same seed gives the same numbers with every standard
/// library, which reference fixtures and bit-exact checkpoint resumption rely on.
#pragma once

#include <cmath>
#include <cstdint>
#include <random>

namespace flowprior {

/// The generator type used throughout flowprior.
using Rng = std::mt19937_64;

/// Uniform double in [0, 1) with 53 random bits.
inline double uniform01(Rng& rng) { return static_cast<double>(rng() >> 11) * 0x1.0p-53; }

/// Uniform double in (0, 1]: safe to take the logarithm of.
inline double uniform01_open_low(Rng& rng) {
  return (static_cast<double>(rng() >> 11) + 1.0) * 0x1.0p-53;
}

/// Uniform double in [lo, hi).
inline double uniform(Rng& rng, double lo, double hi) { return lo + (hi - lo) * uniform01(rng); }

/// Standard normal by the Box-Muller transform (one draw per call; the pair's second value is
/// discarded so that the generator state depends only on the number of calls).
inline double normal01(Rng& rng) {
  const double u1 = uniform01_open_low(rng);
  const double u2 = uniform01(rng);
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586476925 * u2);
}

}  // namespace flowprior
