/// @file
/// PNG encoding of 8-bit RGB images (docs/plotting.md "PNG encoding") through stb_image_write
/// (Debian libstb-dev). libstb.so holds stb_image_write's implementation, so this header only
/// declares it (STB_IMAGE_WRITE_IMPLEMENTATION must not be defined anywhere in a program that
/// links libstb). The image is encoded into memory and then written atomically through
/// io::atomic_write.
///
/// Needs stb: link flowprior::plot (which links libstb), not only flowprior::flowprior.
#pragma once

#include <stb/stb_image_write.h>

#include <cstddef>
#include <cstdint>
#include <flowprior/core/error.hpp>
#include <flowprior/io/file.hpp>
#include <new>
#include <string>
#include <utility>
#include <vector>

namespace flowprior {
namespace plot {

/// Largest accepted width or height in pixels. PNG allows 2^31 - 1; a figure never needs more
/// than this, and the bound keeps every size computation far from overflow.
inline constexpr int kMaxImageSide = 1 << 15;

/// Largest accepted image in filtered bytes ((3 * width + 1) * height): 1 GiB. stb_image_write
/// counts sizes in int, and its deflate may grow incompressible data by an eighth, so this keeps
/// every count it makes below 2^31. A figure is a few MiB.
inline constexpr std::int64_t kMaxImageBytes = std::int64_t{1} << 30;

namespace detail {

/// Throws config_error unless 1 <= width, height <= kMaxImageSide, the image fits in
/// kMaxImageBytes and rgb is not null.
inline void check_image(int width, int height, const void* rgb, const char* who) {
  if (width < 1 || height < 1 || width > kMaxImageSide || height > kMaxImageSide)
    flowprior::detail::raise<config_error>(
        std::string("[flowprior.config] ") + who + ": image size " + std::to_string(width) + "x" +
        std::to_string(height) + " is outside 1.." + std::to_string(kMaxImageSide));
  const std::int64_t bytes = (3 * std::int64_t{width} + 1) * std::int64_t{height};
  if (bytes > kMaxImageBytes)
    flowprior::detail::raise<config_error>(
        std::string("[flowprior.config] ") + who + ": image size " + std::to_string(width) + "x" +
        std::to_string(height) + " needs " + std::to_string(bytes) +
        " bytes, more than the PNG encoder takes (" + std::to_string(kMaxImageBytes) + ")");
  if (rgb == nullptr)
    flowprior::detail::raise<config_error>(std::string("[flowprior.config] ") + who +
                                           ": pixel pointer is null");
}

/// Where stb_image_write hands its output, piece by piece. No exception may leave the callback
/// (it is called from C code), so a failed allocation is only recorded.
struct PngSink {
  std::vector<std::uint8_t> bytes;
  bool out_of_memory = false;
};

inline void append_to_sink(void* context, void* data, int size) {
  auto* sink = static_cast<PngSink*>(context);
  if (sink->out_of_memory || size <= 0) return;
  const auto* p = static_cast<const std::uint8_t*>(data);
  try {
    sink->bytes.insert(sink->bytes.end(), p, p + size);
  } catch (const std::bad_alloc&) {
    sink->out_of_memory = true;
  }
}

}  // namespace detail

/// Encodes an 8-bit RGB image as PNG bytes.
/// @param rgb  width*height*3 bytes, row-major, top row first, channels r, g, b.
/// @pre 1 <= width, height <= kMaxImageSide and (3 * width + 1) * height <= kMaxImageBytes
///      (else config_error); rgb not null (config_error).
/// @throws io_error if the encoder fails (out of memory); `name` is the file named in that
///         message.
inline std::vector<std::uint8_t> encode_png(int width, int height, const std::uint8_t* rgb,
                                            const std::string& name = "<png in memory>") {
  detail::check_image(width, height, rgb, "encode_png");
  detail::PngSink sink;
  // stb_image_write picks each row's filter by the smallest sum of |byte as signed| (the
  // heuristic the PNG specification recommends) and deflates at its default level.
  const int ok =
      ::stbi_write_png_to_func(&detail::append_to_sink, &sink, width, height, 3, rgb, width * 3);
  if (ok == 0 || sink.out_of_memory || sink.bytes.empty())
    io::fail(name, "stb_image_write could not encode the PNG (out of memory)");
  return std::move(sink.bytes);
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
