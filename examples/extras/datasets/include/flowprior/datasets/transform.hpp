/// @file
/// Image geometry and resampling of the data pipeline (docs/data.md "Resizing" and "Crops"):
/// an antialiased separable triangle filter (the filter PIL and torchvision use for bilinear
/// resizing with antialias), torchvision's shorter-side Resize and CenterCrop, RandomResizedCrop
/// and the horizontal flip, and the mapping of 8-bit pixels to [-1, 1] in channel-major (CHW)
/// order. No decoding here (decode.hpp), so everything can be tested on synthetic pixels.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <flowprior/core/error.hpp>
#include <flowprior/datasets/random.hpp>
#include <string>
#include <vector>

namespace flowprior {
namespace datasets {

/// A decoded 8-bit image: `height` rows of `width` pixels of `channels` interleaved values
/// (HWC, row-major, rows top to bottom): value (c, y, x) is pixels[(y * width + x) * channels + c].
struct Image8 {
  int width = 0, height = 0, channels = 0;
  std::vector<std::uint8_t> pixels;
};

/// An integer rectangle of pixels: columns [x, x + width), rows [y, y + height).
struct Region {
  int x = 0, y = 0, width = 0, height = 0;
};

/// A width and a height in pixels.
struct Size2 {
  int width = 0, height = 0;
};

/// The taps of one output sample along one axis: input samples first .. first + count - 1 with
/// their weights (summing to 1).
struct AxisTaps {
  std::vector<int> first, count;
  std::vector<double> weights;  ///< output i's weights at [i * stride, i * stride + count[i])
  int stride = 0;
};

/// The triangle (tent) kernel: max(0, 1 - |x|), support 1.
inline double triangle_kernel(double x) {
  x = std::fabs(x);
  return x < 1.0 ? 1.0 - x : 0.0;
}

/// The taps of output samples first_out .. first_out + count - 1 of the resize of the input
/// interval [start, start + len) to out_len samples (docs/data.md (1)-(3)). With s = len / out_len
/// and f = max(s, 1) (the filter is stretched by the downscale factor: the antialias),
/// output i has its centre at c = start + (i + 1/2) s in input coordinates, uses the input
/// samples j of [start, start + len) with |j + 1/2 - c| < f, weighted by
/// triangle((j + 1/2 - c) / f) and normalised to sum 1. Samples outside the interval are never
/// used (a crop is resized on its own, as torchvision crops before it resizes).
/// Preconditions (checked by the callers): len >= 1, out_len >= 1, the outputs in [0, out_len).
inline AxisTaps axis_taps(int start, int len, int out_len, int first_out, int count) {
  AxisTaps t;
  const double s = static_cast<double>(len) / out_len;
  const double f = std::max(s, 1.0);
  t.stride = static_cast<int>(std::ceil(2.0 * f)) + 2;
  t.first.resize(static_cast<std::size_t>(count));
  t.count.resize(static_cast<std::size_t>(count));
  t.weights.assign(static_cast<std::size_t>(count) * static_cast<std::size_t>(t.stride), 0.0);
  for (int k = 0; k < count; ++k) {
    const double c = start + (first_out + k + 0.5) * s;
    int lo = static_cast<int>(std::floor(c - f + 0.5));
    int hi = static_cast<int>(std::floor(c + f + 0.5));  // exclusive
    lo = std::max(lo, start);
    hi = std::min(hi, start + len);
    if (hi - lo > t.stride) hi = lo + t.stride;  // cannot happen; keeps the writes in bounds
    double* w = &t.weights[static_cast<std::size_t>(k) * static_cast<std::size_t>(t.stride)];
    double sum = 0.0;
    for (int j = lo; j < hi; ++j) {
      w[j - lo] = triangle_kernel((j + 0.5 - c) / f);
      sum += w[j - lo];
    }
    if (!(sum > 0.0)) {  // no tap reached: take the nearest sample of the interval
      lo = std::min(std::max(static_cast<int>(std::floor(c)), start), start + len - 1);
      hi = lo + 1;
      w[0] = 1.0;
      sum = 1.0;
    }
    for (int j = 0; j < hi - lo; ++j) w[j] /= sum;
    t.first[static_cast<std::size_t>(k)] = lo;
    t.count[static_cast<std::size_t>(k)] = hi - lo;
  }
  return t;
}

namespace detail {

[[noreturn]] inline FLOWPRIOR_COLD void raise_transform(const char* where,
                                                        const std::string& what) {
  ::flowprior::detail::raise<config_error>(std::string("[flowprior.config] ") + where + ": " +
                                           what);
}

}  // namespace detail

/// Resamples `box` of an interleaved image (value (c, y, x) at
/// src[(y * width + x) * channels + c]) to a virtual image of out_w x out_h pixels and writes
/// its `window` (a region of the virtual image) channel-major:
///   out[(c * window.height + y) * window.width + x] = scale * v(c, window.y + y, X) + offset,
/// X = window.x + x, or window.x + window.width - 1 - x when `flip` (a horizontal mirror).
/// Separable: rows first (the rows the vertical taps reach), then columns; weights and sums in
/// double. The triangle weights are non-negative, so every output lies within the range of its
/// inputs (before scale and offset).
/// @throws config_error for an empty or out-of-image box, a non-positive output size, a window
///         outside the virtual image, or channels outside 1..4.
template <class T>
void resample(const T* src, int width, int height, int channels, Region box, int out_w, int out_h,
              Region window, bool flip, float scale, float offset, float* out) {
  const char* where = "resample";
  if (channels < 1 || channels > 4)
    detail::raise_transform(where, "channels must be 1 to 4, got " + std::to_string(channels));
  if (box.width < 1 || box.height < 1 || box.x < 0 || box.y < 0 || box.x > width - box.width ||
      box.y > height - box.height)
    detail::raise_transform(where, "the box (" + std::to_string(box.x) + ", " +
                                       std::to_string(box.y) + ", " + std::to_string(box.width) +
                                       " x " + std::to_string(box.height) +
                                       ") is empty or not inside the " + std::to_string(width) +
                                       " x " + std::to_string(height) + " image");
  if (out_w < 1 || out_h < 1 || window.width < 1 || window.height < 1 || window.x < 0 ||
      window.y < 0 || window.x > out_w - window.width || window.y > out_h - window.height)
    detail::raise_transform(where, "the window is empty or not inside the " +
                                       std::to_string(out_w) + " x " + std::to_string(out_h) +
                                       " output");
  const AxisTaps tx = axis_taps(box.x, box.width, out_w, window.x, window.width);
  const AxisTaps ty = axis_taps(box.y, box.height, out_h, window.y, window.height);
  // Rows of the source that some vertical tap reaches.
  const int row0 = ty.first.front();
  const int row1 = ty.first.back() + ty.count.back();  // taps move forward with the output
  const std::size_t C = static_cast<std::size_t>(channels), W = static_cast<std::size_t>(width);
  const std::size_t ww = static_cast<std::size_t>(window.width);
  const std::size_t wh = static_cast<std::size_t>(window.height);
  // Horizontal pass: rows row0 .. row1-1 -> tmp (row, x, c), window.width columns.
  std::vector<double> tmp(static_cast<std::size_t>(row1 - row0) * ww * C);
  for (int y = row0; y < row1; ++y) {
    const T* row = src + static_cast<std::size_t>(y) * W * C;
    double* dst = &tmp[static_cast<std::size_t>(y - row0) * ww * C];
    for (std::size_t x = 0; x < ww; ++x) {
      const double* w = &tx.weights[x * static_cast<std::size_t>(tx.stride)];
      const int first = tx.first[x], n = tx.count[x];
      for (std::size_t c = 0; c < C; ++c) {
        double acc = 0.0;
        for (int j = 0; j < n; ++j)
          acc += w[j] * static_cast<double>(row[static_cast<std::size_t>(first + j) * C + c]);
        dst[x * C + c] = acc;
      }
    }
  }
  // Vertical pass, affine map and flip, written channel-major.
  for (std::size_t y = 0; y < wh; ++y) {
    const double* w = &ty.weights[y * static_cast<std::size_t>(ty.stride)];
    const int first = ty.first[y], n = ty.count[y];
    for (std::size_t x = 0; x < ww; ++x) {
      const std::size_t ox = flip ? ww - 1 - x : x;
      for (std::size_t c = 0; c < C; ++c) {
        double acc = 0.0;
        for (int j = 0; j < n; ++j)
          acc += w[j] * tmp[(static_cast<std::size_t>(first + j - row0) * ww + x) * C + c];
        out[(c * wh + y) * ww + ox] = static_cast<float>(scale * acc + offset);
      }
    }
  }
}

/// Python's round() (halves to even), as torchvision's geometry uses it.
inline long long round_half_even(double v) { return static_cast<long long>(std::nearbyint(v)); }

/// torchvision's Resize(size) with an int: the shorter side becomes `size`, the longer
/// floor(size * long / short) (docs/data.md (4)); a square image becomes size x size.
inline Size2 shorter_side_size(int width, int height, int size) {
  if (width < 1 || height < 1 || size < 1)
    detail::raise_transform("shorter_side_size",
                            "sizes must be positive, got image " + std::to_string(width) + " x " +
                                std::to_string(height) + " and size " + std::to_string(size));
  const bool wide = width >= height;
  const long long lng = wide ? width : height, shrt = wide ? height : width;
  const int other = static_cast<int>(static_cast<double>(size * lng) / static_cast<double>(shrt));
  return wide ? Size2{std::max(other, 1), size} : Size2{size, std::max(other, 1)};
}

/// torchvision's CenterCrop of crop_w x crop_h from a width x height image (not larger):
/// top = round((height - crop_h) / 2), left = round((width - crop_w) / 2), Python's rounding
/// (docs/data.md (5)).
inline Region center_crop(int width, int height, int crop_w, int crop_h) {
  if (crop_w < 1 || crop_h < 1 || crop_w > width || crop_h > height)
    detail::raise_transform("center_crop", "a crop of " + std::to_string(crop_w) + " x " +
                                               std::to_string(crop_h) + " does not fit a " +
                                               std::to_string(width) + " x " +
                                               std::to_string(height) + " image");
  return Region{static_cast<int>(round_half_even((width - crop_w) / 2.0)),
                static_cast<int>(round_half_even((height - crop_h) / 2.0)), crop_w, crop_h};
}

/// The parameters of a random resized crop (torchvision's RandomResizedCrop.get_params,
/// docs/data.md (6)).
struct CropParams {
  double scale_min = 0.08, scale_max = 1.0;             ///< of the image's area
  double ratio_min = 3.0 / 4.0, ratio_max = 4.0 / 3.0;  ///< width / height
  int attempts = 10;                                    ///< tries before the centre fallback
};

/// torchvision's RandomResizedCrop box of a width x height image, drawn from `rng`. Up to
/// `attempts` times: area a = W H U(scale_min, scale_max), ratio r = exp(U(log ratio_min,
/// log ratio_max)), w = round(sqrt(a r)), h = round(sqrt(a / r)); if 0 < w <= W and
/// 0 < h <= H, the box is at top U{0 .. H - h}, left U{0 .. W - w}. Otherwise the fallback: the
/// largest centred box whose ratio is clamped to [ratio_min, ratio_max] (the whole image when its
/// ratio is within). Draws per attempt: two uniforms, then two integers on success.
inline Region random_resized_crop(int width, int height, SampleRng& rng, const CropParams& p = {}) {
  const double area = static_cast<double>(width) * height;
  const double lr0 = std::log(p.ratio_min), lr1 = std::log(p.ratio_max);
  for (int attempt = 0; attempt < p.attempts; ++attempt) {
    const double target = area * rng.uniform(p.scale_min, p.scale_max);
    const double ratio = std::exp(rng.uniform(lr0, lr1));
    const long long w = round_half_even(std::sqrt(target * ratio));
    const long long h = round_half_even(std::sqrt(target / ratio));
    if (w > 0 && w <= width && h > 0 && h <= height) {
      const int top = static_cast<int>(rng.below(static_cast<std::uint64_t>(height - h + 1)));
      const int left = static_cast<int>(rng.below(static_cast<std::uint64_t>(width - w + 1)));
      return Region{left, top, static_cast<int>(w), static_cast<int>(h)};
    }
  }
  const double in_ratio = static_cast<double>(width) / height;
  long long w = width, h = height;
  if (in_ratio < p.ratio_min) {
    h = round_half_even(w / p.ratio_min);
  } else if (in_ratio > p.ratio_max) {
    w = round_half_even(h * p.ratio_max);
  }
  w = std::min<long long>(std::max<long long>(w, 1), width);
  h = std::min<long long>(std::max<long long>(h, 1), height);
  return Region{static_cast<int>((width - w) / 2), static_cast<int>((height - h) / 2),
                static_cast<int>(w), static_cast<int>(h)};
}

/// Evaluation or training preprocessing.
enum class TransformMode {
  Eval,  ///< shorter side to `resize`, then the centre size x size crop
  Train  ///< random resized crop to size x size, then a horizontal flip with probability 1/2
};

/// How an image becomes a sample of channels x size x size values in [-1, 1].
struct ImageTransform {
  TransformMode mode = TransformMode::Eval;
  int size = 224;    ///< output side (square)
  int resize = 256;  ///< Eval: the shorter side before the centre crop (>= size)
  int channels = 3;  ///< 3: RGB; 1: grey (luma, as stb_image converts)
  CropParams crop;   ///< Train: the random resized crop
  bool flip = true;  ///< Train: mirror with probability 1/2

  /// Floats per sample: channels * size * size.
  std::int64_t sample_size() const {
    return static_cast<std::int64_t>(channels) * size * static_cast<std::int64_t>(size);
  }

  /// @throws config_error naming the field: size outside 1..8192, resize < size or > 65536,
  /// channels not 1 or 3, crop scales not 0 < min <= max, ratios not 0 < min <= max (finite),
  /// attempts outside 0..1000.
  void validate() const {
    const char* w = "ImageTransform";
    if (size < 1 || size > 8192)
      detail::raise_transform(w, "size must be in 1..8192, got " + std::to_string(size));
    if (mode == TransformMode::Eval && (resize < size || resize > 65536))
      detail::raise_transform(w, "resize must be in size..65536 (" + std::to_string(size) +
                                     "..65536), got " + std::to_string(resize));
    if (channels != 1 && channels != 3)
      detail::raise_transform(w, "channels must be 1 or 3, got " + std::to_string(channels));
    if (!(crop.scale_min > 0.0 && crop.scale_min <= crop.scale_max) ||
        !std::isfinite(crop.scale_max))
      detail::raise_transform(w, "crop scales must satisfy 0 < scale_min <= scale_max, got (" +
                                     std::to_string(crop.scale_min) + ", " +
                                     std::to_string(crop.scale_max) + ")");
    if (!(crop.ratio_min > 0.0 && crop.ratio_min <= crop.ratio_max) ||
        !std::isfinite(crop.ratio_max))
      detail::raise_transform(w, "crop ratios must satisfy 0 < ratio_min <= ratio_max, got (" +
                                     std::to_string(crop.ratio_min) + ", " +
                                     std::to_string(crop.ratio_max) + ")");
    if (crop.attempts < 0 || crop.attempts > 1000)
      detail::raise_transform(
          w, "crop attempts must be in 0..1000, got " + std::to_string(crop.attempts));
  }
};

/// Applies `tf` to a decoded image (its channels must equal tf.channels) and writes
/// tf.sample_size() floats channel-major: out[(c * size + y) * size + x] = v / 127.5 - 1, so 0
/// maps to -1 and 255 to 1. Eval draws nothing from `rng`; Train draws the crop, then the flip
/// (one uniform, flipped when < 1/2) when tf.flip.
/// @throws config_error for an empty image or a channel mismatch.
inline void transform_image(const Image8& img, const ImageTransform& tf, SampleRng& rng,
                            float* out) {
  if (img.width < 1 || img.height < 1 || img.channels != tf.channels ||
      img.pixels.size() != static_cast<std::size_t>(img.width) *
                               static_cast<std::size_t>(img.height) *
                               static_cast<std::size_t>(img.channels))
    detail::raise_transform("transform_image", "the image (" + std::to_string(img.width) + " x " +
                                                   std::to_string(img.height) + ", " +
                                                   std::to_string(img.channels) +
                                                   " channels) is empty, inconsistent or has not " +
                                                   std::to_string(tf.channels) + " channels");
  const float scale = static_cast<float>(1.0 / 127.5), offset = -1.0f;
  const Region full{0, 0, img.width, img.height};
  if (tf.mode == TransformMode::Eval) {
    const Size2 r = shorter_side_size(img.width, img.height, tf.resize);
    const Region win = center_crop(r.width, r.height, tf.size, tf.size);
    resample(img.pixels.data(), img.width, img.height, img.channels, full, r.width, r.height, win,
             false, scale, offset, out);
    return;
  }
  const Region box = random_resized_crop(img.width, img.height, rng, tf.crop);
  const bool flip = tf.flip && rng.uniform01() < 0.5;
  resample(img.pixels.data(), img.width, img.height, img.channels, box, tf.size, tf.size,
           Region{0, 0, tf.size, tf.size}, flip, scale, offset, out);
}

}  // namespace datasets
}  // namespace flowprior
