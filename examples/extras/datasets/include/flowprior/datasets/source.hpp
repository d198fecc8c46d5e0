/// @file
/// What a Loader draws samples from (docs/data.md "Loader"): the SampleSource interface and its
/// two implementations, an image folder decoded on the fly (ImageFolderSource) and 8-bit images
/// held in memory, such as an IDX file (ArraySource).
#pragma once

#include <cstdint>
#include <flowprior/core/error.hpp>
#include <flowprior/datasets/decode.hpp>
#include <flowprior/datasets/folder.hpp>
#include <flowprior/datasets/idx.hpp>
#include <flowprior/datasets/random.hpp>
#include <flowprior/datasets/transform.hpp>
#include <string>
#include <utility>

namespace flowprior {
namespace datasets {

/// A data set the loader reads sample by sample. load() is called from several worker threads
/// at once, so it must only read the source's state. Randomness comes only from the SampleRng it
/// is handed (a function of seed, epoch and index), never from state.
class SampleSource {
 public:
  virtual ~SampleSource() = default;
  /// Number of samples.
  virtual std::size_t size() const = 0;
  /// Floats per sample (C * H * W).
  virtual std::int64_t sample_size() const = 0;
  /// The label of sample i.
  virtual int label(std::size_t i) const = 0;
  /// A name of sample i for reports (a path).
  virtual std::string describe(std::size_t i) const = 0;
  /// Writes sample i to out[0, sample_size()). Returns false, with the reason in `why`, when the
  /// sample cannot be used (an unreadable or corrupt file): the loader skips and counts it.
  /// Errors that are not the sample's fault (a bug, out of memory) are thrown.
  virtual bool load(std::size_t i, SampleRng& rng, float* out, std::string& why) const = 0;
};

/// Images of an ImageFolder, read, decoded (decode.hpp) and transformed (transform.hpp) when
/// loaded: channels x size x size floats in [-1, 1], channel-major.
class ImageFolderSource : public SampleSource {
 public:
  /// @throws config_error when `tf` is invalid (ImageTransform::validate).
  ImageFolderSource(ImageFolder folder, ImageTransform tf, DecodeLimits limits = {},
                    std::uint64_t max_file_bytes = std::uint64_t{1} << 30)
      : folder_(std::move(folder)), tf_(tf), limits_(limits), max_file_bytes_(max_file_bytes) {
    tf_.validate();
  }

  std::size_t size() const override { return folder_.size(); }
  std::int64_t sample_size() const override { return tf_.sample_size(); }
  int label(std::size_t i) const override { return folder_.label(i); }
  std::string describe(std::size_t i) const override { return folder_.path(i); }

  /// Reads, decodes and transforms image i; io_error (unreadable, not an image, corrupt,
  /// truncated, too large) makes it a skipped sample with the message as the reason.
  bool load(std::size_t i, SampleRng& rng, float* out, std::string& why) const override {
    try {
      const Image8 img = read_image(folder_.path(i), tf_.channels, limits_, max_file_bytes_);
      transform_image(img, tf_, rng, out);
      return true;
    } catch (const io_error& e) {
      why = e.what();
      return false;
    }
  }

  /// The folder listed.
  const ImageFolder& folder() const { return folder_; }
  /// The transform applied.
  const ImageTransform& transform() const { return tf_; }

 private:
  ImageFolder folder_;
  ImageTransform tf_;
  DecodeLimits limits_;
  std::uint64_t max_file_bytes_;
};

/// 8-bit images in memory (an ImageArray, e.g. Fashion-MNIST from load_fashion_mnist), each
/// mapped to v / 127.5 - 1 in the array's channel-major order; with `flip`, mirrored
/// horizontally with probability 1/2 (one uniform drawn per sample). Never skips.
class ArraySource : public SampleSource {
 public:
  /// @throws shape_error when the pixels or labels do not match count and the image size.
  explicit ArraySource(ImageArray images, bool flip = false) : a_(std::move(images)), flip_(flip) {
    const std::uint64_t want =
        static_cast<std::uint64_t>(a_.count) * static_cast<std::uint64_t>(a_.sample_size());
    if (a_.count < 0 || a_.sample_size() < 1 || a_.pixels.size() != want ||
        a_.labels.size() != static_cast<std::size_t>(a_.count))
      ::flowprior::detail::raise<shape_error>(
          "[flowprior.shape] ArraySource: " + std::to_string(a_.pixels.size()) + " pixels and " +
          std::to_string(a_.labels.size()) + " labels do not make " + std::to_string(a_.count) +
          " images of " + std::to_string(a_.channels) + " x " + std::to_string(a_.height) + " x " +
          std::to_string(a_.width));
  }

  std::size_t size() const override { return static_cast<std::size_t>(a_.count); }
  std::int64_t sample_size() const override { return a_.sample_size(); }
  int label(std::size_t i) const override { return a_.labels[i]; }
  std::string describe(std::size_t i) const override { return "image " + std::to_string(i); }

  bool load(std::size_t i, SampleRng& rng, float* out, std::string&) const override {
    const std::size_t n = static_cast<std::size_t>(a_.sample_size());
    const std::uint8_t* p = a_.pixels.data() + i * n;
    const bool flip = flip_ && rng.uniform01() < 0.5;
    const std::size_t W = static_cast<std::size_t>(a_.width);
    const std::size_t rows = n / W;  // channels x height
    for (std::size_t r = 0; r < rows; ++r)
      for (std::size_t x = 0; x < W; ++x)
        out[r * W + (flip ? W - 1 - x : x)] = static_cast<float>(p[r * W + x] / 127.5 - 1.0);
    return true;
  }

  /// The images held.
  const ImageArray& images() const { return a_; }

 private:
  ImageArray a_;
  bool flip_;
};

}  // namespace datasets
}  // namespace flowprior
