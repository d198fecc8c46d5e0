/// @file
/// A small PNG encoder for 8-bit RGB images (docs/plotting.md "PNG encoding"). The container
/// (signature, IHDR, IDAT, IEND chunks, per-row filters) is written here; zlib provides only the
/// deflate compressor and the CRC-32. Files are written atomically through io::atomic_write.
///
/// Needs zlib: link flowprior::plot (which links ZLIB::ZLIB), not only flowprior::flowprior.
#pragma once

#include <zlib.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <flowprior/core/error.hpp>
#include <flowprior/io/file.hpp>
#include <limits>
#include <string>
#include <vector>

namespace flowprior {
namespace plot {

/// Largest accepted width or height in pixels. PNG allows 2^31 - 1; a figure never needs more
/// than this, and the bound keeps every size computation far from overflow.
inline constexpr int kMaxImageSide = 1 << 15;

namespace detail {

/// Throws config_error unless 1 <= width, height <= kMaxImageSide and rgb is not null.
inline void check_image(int width, int height, const void* rgb, const char* who) {
  if (width < 1 || height < 1 || width > kMaxImageSide || height > kMaxImageSide)
    flowprior::detail::raise<config_error>(
        std::string("[flowprior.config] ") + who + ": image size " + std::to_string(width) + "x" +
        std::to_string(height) + " is outside 1.." + std::to_string(kMaxImageSide));
  if (rgb == nullptr)
    flowprior::detail::raise<config_error>(std::string("[flowprior.config] ") + who +
                                           ": pixel pointer is null");
}

inline void put_u32_be(std::vector<std::uint8_t>& out, std::uint32_t v) {
  out.push_back(static_cast<std::uint8_t>(v >> 24));
  out.push_back(static_cast<std::uint8_t>(v >> 16));
  out.push_back(static_cast<std::uint8_t>(v >> 8));
  out.push_back(static_cast<std::uint8_t>(v));
}

/// Appends one chunk: length (big-endian), 4-byte type, data, CRC-32 over type + data.
inline void put_chunk(std::vector<std::uint8_t>& out, const char* type, const std::uint8_t* data,
                      std::size_t n) {
  put_u32_be(out, static_cast<std::uint32_t>(n));
  const std::size_t type_at = out.size();
  out.insert(out.end(), type, type + 4);
  if (n > 0) out.insert(out.end(), data, data + n);
  // crc32 takes a uInt length; chunks are capped well below 4 GiB by the caller.
  uLong crc = ::crc32(0L, Z_NULL, 0);
  crc = ::crc32(crc, out.data() + type_at, static_cast<uInt>(4 + n));
  put_u32_be(out, static_cast<std::uint32_t>(crc));
}

/// The Paeth predictor of the PNG specification (section 9.4): whichever of left, up and
/// upper-left is closest to left + up - upper-left, ties broken in that order.
inline int paeth(int a, int b, int c) {
  const int p = a + b - c;
  const int pa = std::abs(p - a), pb = std::abs(p - b), pc = std::abs(p - c);
  if (pa <= pb && pa <= pc) return a;
  if (pb <= pc) return b;
  return c;
}

/// Filters every scanline into `out` (1 filter byte + 3*width bytes per row). Per row the filter
/// (0 None, 1 Sub, 2 Up, 3 Average, 4 Paeth) with the smallest sum of |byte as signed| wins: the
/// heuristic the PNG specification recommends (section 12.8); it helps deflate on flat areas
/// and gradients, which is most of a plot.
inline void filter_scanlines(int width, int height, const std::uint8_t* rgb,
                             std::vector<std::uint8_t>& out) {
  const std::size_t stride = static_cast<std::size_t>(width) * 3;
  out.resize((stride + 1) * static_cast<std::size_t>(height));
  std::vector<std::uint8_t> trial(stride * 5);
  const std::vector<std::uint8_t> zero_row(stride, 0);
  for (int y = 0; y < height; ++y) {
    const std::uint8_t* row = rgb + stride * static_cast<std::size_t>(y);
    const std::uint8_t* up = y > 0 ? row - stride : zero_row.data();
    unsigned long best_cost = std::numeric_limits<unsigned long>::max();
    int best = 0;
    for (int f = 0; f < 5; ++f) {
      std::uint8_t* t = trial.data() + stride * static_cast<std::size_t>(f);
      unsigned long cost = 0;
      for (std::size_t i = 0; i < stride; ++i) {
        const int a = i >= 3 ? row[i - 3] : 0;  // left (same channel, previous pixel)
        const int b = up[i];
        const int c = i >= 3 ? up[i - 3] : 0;
        int pred = 0;
        switch (f) {
          case 1:
            pred = a;
            break;
          case 2:
            pred = b;
            break;
          case 3:
            pred = (a + b) / 2;
            break;
          case 4:
            pred = paeth(a, b, c);
            break;
          default:
            break;
        }
        const auto v = static_cast<std::uint8_t>(row[i] - pred);
        t[i] = v;
        cost += static_cast<unsigned long>(v < 128 ? v : 256 - v);
      }
      if (cost < best_cost) {
        best_cost = cost;
        best = f;
      }
    }
    std::uint8_t* dst = out.data() + (stride + 1) * static_cast<std::size_t>(y);
    dst[0] = static_cast<std::uint8_t>(best);
    std::copy(
        trial.begin() + static_cast<std::ptrdiff_t>(stride * static_cast<std::size_t>(best)),
        trial.begin() + static_cast<std::ptrdiff_t>(stride * static_cast<std::size_t>(best + 1)),
        dst + 1);
  }
}

}  // namespace detail

/// Encodes an 8-bit RGB image as PNG bytes.
/// @param rgb  width*height*3 bytes, row-major, top row first, channels r, g, b.
/// @pre 1 <= width, height <= kMaxImageSide (else config_error); rgb not null (config_error).
/// @throws io_error if zlib fails (out of memory); `name` is the file named in that message.
inline std::vector<std::uint8_t> encode_png(int width, int height, const std::uint8_t* rgb,
                                            const std::string& name = "<png in memory>") {
  detail::check_image(width, height, rgb, "encode_png");

  std::vector<std::uint8_t> raw;
  detail::filter_scanlines(width, height, rgb, raw);
  uLongf packed_size = ::compressBound(static_cast<uLong>(raw.size()));
  std::vector<std::uint8_t> packed(packed_size);
  // Level 6 is zlib's default trade-off; plots compress well at any level, so speed wins.
  const int rc =
      ::compress2(packed.data(), &packed_size, raw.data(), static_cast<uLong>(raw.size()), 6);
  if (rc != Z_OK) io::fail(name, "zlib compress2 failed with code " + std::to_string(rc));
  packed.resize(packed_size);

  std::vector<std::uint8_t> png;
  png.reserve(packed.size() + 64 + packed.size() / 1000);
  static const std::uint8_t kSignature[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  png.insert(png.end(), kSignature, kSignature + 8);

  std::vector<std::uint8_t> ihdr;
  detail::put_u32_be(ihdr, static_cast<std::uint32_t>(width));
  detail::put_u32_be(ihdr, static_cast<std::uint32_t>(height));
  ihdr.push_back(8);  // bit depth
  ihdr.push_back(2);  // colour type 2: truecolour RGB
  ihdr.push_back(0);  // compression method: deflate
  ihdr.push_back(0);  // filter method: adaptive, five filter types
  ihdr.push_back(0);  // no interlace
  detail::put_chunk(png, "IHDR", ihdr.data(), ihdr.size());

  // The zlib stream may be split over several IDAT chunks; 1 MiB pieces keep each chunk length
  // and each crc32() call well inside 32 bits whatever the image size.
  constexpr std::size_t kIdatPiece = std::size_t{1} << 20;
  for (std::size_t at = 0; at < packed.size(); at += kIdatPiece) {
    const std::size_t n = std::min(kIdatPiece, packed.size() - at);
    detail::put_chunk(png, "IDAT", packed.data() + at, n);
  }
  detail::put_chunk(png, "IEND", nullptr, 0);
  return png;
}

/// Writes an 8-bit RGB image to `path` as a PNG file, atomically (a crash or a full disk leaves
/// any previous file untouched).
/// @param rgb  width*height*3 bytes, row-major, top row first, channels r, g, b.
/// @throws config_error for a bad size or a null pointer; io_error naming `path` when the file
///         cannot be written.
inline void write_png(const std::string& path, int width, int height, const std::uint8_t* rgb) {
  const std::vector<std::uint8_t> png = encode_png(width, height, rgb, path);
  io::atomic_write(path, [&](io::Writer& w) { w.write(png.data(), png.size()); });
}

}  // namespace plot
}  // namespace flowprior
