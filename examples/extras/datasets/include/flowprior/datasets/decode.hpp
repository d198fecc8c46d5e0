/// @file
/// Decoding PNG and JPEG files into 8-bit pixels through stb_image (Debian libstb-dev;
/// docs/data.md "Decoding"). libstb.so holds stb_image's implementation, as it holds
/// stb_image_write's for flowprior::plot, so this header only declares it: STB_IMAGE_IMPLEMENTATION
/// must not be defined anywhere in a program that links flowprior::datasets.
///
/// Hostile files are expected (a data set of a million images has a few broken ones): every
/// failure is an io_error naming the file, and memory is bounded by DecodeLimits before stb
/// allocates the pixels. stb_image keeps its failure reason per thread (v2.27, thread-local), so
/// decoding from several threads at once is safe; nothing here touches stb's global settings.
#pragma once

#include <stb/stb_image.h>

#include <climits>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <flowprior/core/error.hpp>
#include <flowprior/datasets/transform.hpp>
#include <flowprior/io/file.hpp>
#include <memory>
#include <string>

namespace flowprior {
namespace datasets {

/// Bounds on what a decode may allocate.
struct DecodeLimits {
  /// Largest width x height accepted (default 2^26, 64 megapixels: 192 MiB as RGB). Checked from
  /// the file's header before the pixels are decoded.
  std::int64_t max_pixels = std::int64_t{1} << 26;
  /// Largest side in pixels (stb_image's own limit is 2^24).
  int max_side = 1 << 16;
};

/// The container of an encoded image, told by its first bytes.
enum class ImageFormat { Unknown, Png, Jpeg };

/// PNG: the 8-byte signature 89 50 4E 47 0D 0A 1A 0A; JPEG: FF D8 FF (start of image and a
/// marker). Anything else is Unknown.
inline ImageFormat sniff_format(const std::uint8_t* data, std::size_t size) {
  static const std::uint8_t png[8] = {0x89, 'P', 'N', 'G', 0x0d, 0x0a, 0x1a, 0x0a};
  if (size >= 8 && std::memcmp(data, png, 8) == 0) return ImageFormat::Png;
  if (size >= 3 && data[0] == 0xff && data[1] == 0xd8 && data[2] == 0xff) return ImageFormat::Jpeg;
  return ImageFormat::Unknown;
}

/// Decodes a PNG or JPEG held in memory into `channels` (1: grey, 3: RGB) interleaved 8-bit
/// values (stb converts: grey is replicated to RGB, RGB becomes luma, alpha is dropped, 16-bit
/// PNG is scaled to 8 bits). `name` identifies the source in messages.
/// @throws io_error "[flowprior.io] <name>: ..." for an empty input, an input that is neither a
///         PNG nor a JPEG, a header stb cannot read, a size above `limits`, or a decode failure
///         (stb's reason quoted); config_error for channels other than 1 or 3.
inline Image8 decode_image(const std::uint8_t* data, std::size_t size, const std::string& name,
                           int channels = 3, const DecodeLimits& limits = {}) {
  if (channels != 1 && channels != 3)
    ::flowprior::detail::raise<config_error>(
        "[flowprior.config] decode_image: channels must be 1 or 3, got " +
        std::to_string(channels));
  if (size == 0) io::fail(name, "expected a PNG or JPEG image, found an empty file");
  if (size > static_cast<std::size_t>(INT_MAX))
    io::fail(name, "the file has " + std::to_string(size) +
                       " bytes, more than the 2^31 - 1 the decoder accepts");
  if (sniff_format(data, size) == ImageFormat::Unknown)
    io::fail(name, 0, "expected a PNG or JPEG signature, found neither");
  const int len = static_cast<int>(size);
  int w = 0, h = 0, comp = 0;
  if (!stbi_info_from_memory(data, len, &w, &h, &comp)) {
    const char* why = stbi_failure_reason();
    io::fail(name, std::string("cannot read the image header (stb_image: ") +
                       (why ? why : "unknown reason") + ")");
  }
  if (w < 1 || h < 1 || w > limits.max_side || h > limits.max_side ||
      static_cast<std::int64_t>(w) * h > limits.max_pixels)
    io::fail(name, "the image is " + std::to_string(w) + " x " + std::to_string(h) +
                       " pixels, beyond the limit of " + std::to_string(limits.max_side) +
                       " per side and " + std::to_string(limits.max_pixels) + " in all");
  int dw = 0, dh = 0, dc = 0;
  std::unique_ptr<stbi_uc, void (*)(void*)> pixels(
      stbi_load_from_memory(data, len, &dw, &dh, &dc, channels), stbi_image_free);
  if (!pixels) {
    const char* why = stbi_failure_reason();
    io::fail(name, std::string("cannot decode the image (stb_image: ") +
                       (why ? why : "unknown reason") + ")");
  }
  if (dw != w || dh != h)
    io::fail(name, "the decoded size " + std::to_string(dw) + " x " + std::to_string(dh) +
                       " differs from the header's " + std::to_string(w) + " x " +
                       std::to_string(h));
  Image8 img;
  img.width = dw;
  img.height = dh;
  img.channels = channels;
  const std::size_t n = static_cast<std::size_t>(dw) * static_cast<std::size_t>(dh) *
                        static_cast<std::size_t>(channels);
  img.pixels.assign(pixels.get(), pixels.get() + n);
  return img;
}

/// Reads and decodes an image file (a regular file of at most `max_file_bytes`, io::read_file).
/// @throws io_error naming `path` (see decode_image and io::read_file).
inline Image8 read_image(const std::string& path, int channels = 3, const DecodeLimits& limits = {},
                         std::uint64_t max_file_bytes = std::uint64_t{1} << 30) {
  const std::vector<std::uint8_t> bytes = io::read_file(path, max_file_bytes);
  return decode_image(bytes.data(), bytes.size(), path, channels, limits);
}

}  // namespace datasets
}  // namespace flowprior
