/// @file
/// Portable random numbers. The caller always passes the generator (there is no global RNG).
/// The distributions are written here rather than taken from <random>, whose distributions are
/// implementation-defined: with these, the same seed gives the same numbers with every standard
/// library, which reference fixtures and bit-exact checkpoint resumption rely on.
///
/// Two kinds of generator:
/// - Rng (std::mt19937_64), sequential, on the host: everything drawn in order (times, batch
///   indices, initial weights, keys);
/// - Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011), a
///   counter-based function of (counter, key): element e of a tensor of noise is a pure function
///   of e and a key drawn from the Rng, so that a backend fills noise in parallel, in any order,
///   with the same bits on any thread count and (up to the libm's cos/sin/log) on any device.
#pragma once

#include <cmath>
#include <cstdint>
#include <flowprior/config.hpp>
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

/// The four output words of Philox4x32-10 for a 128-bit counter c[0..3] and a 64-bit key
/// k[0..1] (10 rounds; the round multipliers and the Weyl key increments of the Random123
/// definition). Host and device. Known answers: tests/unit/test_draws.cpp.
struct Philox4x32 {
  std::uint32_t w[4];
};

FLOWPRIOR_HD inline Philox4x32 philox4x32_10(std::uint32_t c0, std::uint32_t c1, std::uint32_t c2,
                                             std::uint32_t c3, std::uint32_t k0, std::uint32_t k1) {
  constexpr std::uint64_t kMul0 = 0xD2511F53u, kMul1 = 0xCD9E8D57u;
  constexpr std::uint32_t kWeyl0 = 0x9E3779B9u, kWeyl1 = 0xBB67AE85u;
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      k0 += kWeyl0;
      k1 += kWeyl1;
    }
    const std::uint64_t p0 = kMul0 * c0, p1 = kMul1 * c2;
    const std::uint32_t hi0 = std::uint32_t(p0 >> 32), lo0 = std::uint32_t(p0);
    const std::uint32_t hi1 = std::uint32_t(p1 >> 32), lo1 = std::uint32_t(p1);
    const std::uint32_t n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
  }
  return {{c0, c1, c2, c3}};
}

/// Two independent standard normals from one Philox block: pair p of stream `stream` under
/// `key` (counter = (p, stream) as four 32-bit words, low first; key = (key low, key high)).
/// Box-Muller in double: u1 in (0, 1] from words 0-1, u2 in [0, 1) from words 2-3 (53 bits
/// each); z0 = r cos(2 pi u2), z1 = r sin(2 pi u2), r = sqrt(-2 ln u1).
/// docs/math/flow_matching.md "Sampling".
struct NormalPair {
  double z0, z1;
};

FLOWPRIOR_HD inline NormalPair philox_normal_pair(std::uint64_t key, std::uint64_t stream,
                                                  std::uint64_t p) {
  const Philox4x32 r =
      philox4x32_10(std::uint32_t(p), std::uint32_t(p >> 32), std::uint32_t(stream),
                    std::uint32_t(stream >> 32), std::uint32_t(key), std::uint32_t(key >> 32));
  const std::uint64_t a = (std::uint64_t(r.w[1]) << 32) | r.w[0];
  const std::uint64_t b = (std::uint64_t(r.w[3]) << 32) | r.w[2];
  const double u1 = (double(a >> 11) + 1.0) * 0x1.0p-53;
  const double u2 = double(b >> 11) * 0x1.0p-53;
  const double rad = std::sqrt(-2.0 * std::log(u1));
  const double ang = 6.283185307179586476925 * u2;
  return {rad * std::cos(ang), rad * std::sin(ang)};
}

}  // namespace flowprior
