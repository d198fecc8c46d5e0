/// @file
/// Counter-based random numbers for the data pipeline (docs/data.md "Determinism"). Every random
/// choice a sample needs (its crop, its flip) comes from a stream that is a pure function of
/// (seed, epoch, sample index), and the epoch's shuffle from a stream of (seed, epoch): so a batch
/// holds the same pixels whichever worker thread built it, with any number of threads, and after a
/// resume from a saved position. The streams are Philox4x32-10 blocks (core/random.hpp) with the
/// seed as key and the counter (draw, epoch, index low, index high).
#pragma once

#include <cstdint>
#include <flowprior/core/error.hpp>
#include <flowprior/core/random.hpp>
#include <numeric>
#include <string>
#include <vector>

namespace flowprior {
namespace datasets {

/// The sample index reserved for the shuffle stream of an epoch (no data set reaches it).
inline constexpr std::uint64_t kShuffleStream = ~std::uint64_t{0};

/// A stream of random numbers keyed by (seed, epoch, index). Draw k is word pair k of the Philox
/// block with counter (k / 2, epoch mod 2^32, index low 32 bits, index high 32 bits) and key seed:
/// each block gives two 64-bit words. Independent streams for distinct (epoch, index); at most
/// 2^33 draws per stream.
class SampleRng {
 public:
  /// The stream of sample `index` in epoch `epoch` under `seed`.
  SampleRng(std::uint64_t seed, std::uint64_t epoch, std::uint64_t index)
      : seed_(seed), epoch_(static_cast<std::uint32_t>(epoch)), index_(index) {}

  /// The next 64 random bits.
  std::uint64_t next_u64() {
    if (have_ == 0) {
      const Philox4x32 r =
          philox4x32_10(block_++, epoch_, static_cast<std::uint32_t>(index_),
                        static_cast<std::uint32_t>(index_ >> 32), static_cast<std::uint32_t>(seed_),
                        static_cast<std::uint32_t>(seed_ >> 32));
      words_[0] = (std::uint64_t(r.w[1]) << 32) | r.w[0];
      words_[1] = (std::uint64_t(r.w[3]) << 32) | r.w[2];
      have_ = 2;
    }
    return words_[2 - have_--];
  }

  /// Uniform double in [0, 1) with 53 random bits.
  double uniform01() { return static_cast<double>(next_u64() >> 11) * 0x1.0p-53; }

  /// Uniform double in [lo, hi).
  double uniform(double lo, double hi) { return lo + (hi - lo) * uniform01(); }

  /// Uniform integer in [0, n), n >= 1, without bias (Lemire's multiply-shift with rejection:
  /// "Fast random integer generation in an interval", 2019). n = 0 gives 0.
  std::uint64_t below(std::uint64_t n) {
    if (n <= 1) return 0;
    std::uint64_t hi, lo;
    mul_wide(next_u64(), n, hi, lo);
    if (lo < n) {
      const std::uint64_t threshold = (0 - n) % n;
      while (lo < threshold) mul_wide(next_u64(), n, hi, lo);
    }
    return hi;
  }

  /// The 128-bit product a * b as its high and low 64-bit halves (portable; no __int128).
  static void mul_wide(std::uint64_t a, std::uint64_t b, std::uint64_t& hi, std::uint64_t& lo) {
    const std::uint64_t a0 = a & 0xffffffffu, a1 = a >> 32, b0 = b & 0xffffffffu, b1 = b >> 32;
    const std::uint64_t p00 = a0 * b0, p01 = a0 * b1, p10 = a1 * b0, p11 = a1 * b1;
    const std::uint64_t mid = (p00 >> 32) + (p01 & 0xffffffffu) + (p10 & 0xffffffffu);
    lo = (mid << 32) | (p00 & 0xffffffffu);
    hi = p11 + (p01 >> 32) + (p10 >> 32) + (mid >> 32);
  }

 private:
  std::uint64_t seed_;
  std::uint32_t epoch_;
  std::uint64_t index_;
  std::uint32_t block_ = 0;
  std::uint64_t words_[2] = {0, 0};
  int have_ = 0;
};

/// The order of the samples in epoch `epoch`: a permutation of 0 .. n-1 by Fisher-Yates
/// (for i = n-1 down to 1: swap i with a uniform j in [0, i]) drawn from the stream
/// (seed, epoch, kShuffleStream); the identity when `shuffle` is false.
/// @throws config_error when n does not fit in 32 bits.
inline std::vector<std::uint32_t> epoch_order(std::uint64_t n, std::uint64_t seed,
                                              std::uint64_t epoch, bool shuffle) {
  if (n > 0xffffffffu)
    ::flowprior::detail::raise<config_error>("[flowprior.config] epoch_order: a data set of " +
                                             std::to_string(n) +
                                             " samples has more than 2^32 - 1 samples");
  std::vector<std::uint32_t> order(static_cast<std::size_t>(n));
  std::iota(order.begin(), order.end(), std::uint32_t{0});
  if (!shuffle) return order;
  SampleRng rng(seed, epoch, kShuffleStream);
  for (std::uint64_t i = n; i > 1; --i) {
    const std::uint64_t j = rng.below(i);
    std::swap(order[i - 1], order[j]);
  }
  return order;
}

}  // namespace datasets
}  // namespace flowprior
