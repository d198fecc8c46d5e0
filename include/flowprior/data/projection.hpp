/// @file
/// Fixed, seeded Gaussian random projection from target features (d2) to the latent dimension
/// (d), applied to the targets in stage 1 only (method.md section 1):
///   x = W (scale * f),   W (d, d2),  W_ij ~ N(0, 1/d2),  no bias.     projection.md (1)
/// The same seed gives the same W on every machine. `scale` brings the features to about unit
/// scale first (the released pipeline uses 64.0511 for Qwen2.5-0.5B token embeddings).
#pragma once

#include <cmath>
#include <cstdint>
#include <flowprior/core/check.hpp>
#include <flowprior/core/random.hpp>
#include <flowprior/core/size.hpp>
#include <flowprior/core/types.hpp>
#include <string>
#include <vector>

namespace flowprior {
namespace data {

template <class S>
class RandomProjection {
 public:
  /// @param out_dim  d (latent dimension)
  /// @param in_dim   d2 (feature dimension)
  /// @param seed     generator seed of W
  /// @param scale    multiplies the features before projecting
  RandomProjection(Index out_dim, Index in_dim, std::uint64_t seed, double scale = 1.0)
      : out_(out_dim), in_(in_dim), seed_(seed), scale_(scale) {
    const char* w = "RandomProjection";
    if (out_dim <= 0 || in_dim <= 0) raise_config(w, "dimensions must be positive");
    if (!std::isfinite(scale) || scale == 0) raise_config(w, "scale must be finite and non-zero");
    checked_resize(w, "the projection matrix", W_, checked_mul(w, "out_dim x in_dim", out_, in_));
    Rng rng(seed);
    const double sd = 1.0 / std::sqrt(double(in_));
    for (auto& x : W_) x = static_cast<S>(sd * normal01(rng));  // column-major (d, d2)
  }

  Index out_dim() const { return out_; }
  Index in_dim() const { return in_; }
  std::uint64_t seed() const { return seed_; }
  double scale() const { return scale_; }
  /// W as a (d, d2) column-major view.
  ConstMatrixView<S> matrix() const { return {W_.data(), out_, in_}; }

  /// out (d, N) = W (scale * features (d2, N)).                    projection.md (1)
  void apply(ConstMatrixView<S> features, MatrixView<S> out) const {
    const char* w = "RandomProjection::apply";
    check_shape(w, "features", features, in_, features.cols);
    check_shape(w, "out", out, out_, features.cols);
    check_finite(w, "features", features);
    for (Index b = 0; b < features.cols; ++b) {
      for (Index i = 0; i < out_; ++i) {
        double s = 0;
        for (Index j = 0; j < in_; ++j)
          s += double(W_[std::size_t(i + j * out_)]) * double(features(j, b));
        out(i, b) = static_cast<S>(scale_ * s);
      }
    }
  }

 private:
  Index out_, in_;
  std::uint64_t seed_;
  double scale_;
  std::vector<S> W_;
};

}  // namespace data
}  // namespace flowprior
