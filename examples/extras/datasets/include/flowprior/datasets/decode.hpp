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

/// A start of scan (SOS segment at p: [length][Ns][Ns x (component, DC table << 4 | AC table)]
/// [Ss][Se][Ah Al]) must use only Huffman tables that a DHT defined before it. stb_image 2.27
/// decodes with whatever an undefined table's memory holds (uninitialised heap), which trips an
/// assertion in its decoder (abort) or decodes garbage (found by fuzz_image:
/// corpus/image/jpeg-scan-undefined-huffman-table). The tables a scan reads: DC and AC for a
/// sequential JPEG; for a progressive one, DC on a first DC scan (Ss = 0, Ah = 0), AC on an AC
/// scan (Ss > 0). Ids above 3 are left to stb, which refuses them.
/// @throws io_error naming `name` and the byte offset of the scan header.
inline void check_jpeg_scan_tables(const std::uint8_t* d, std::size_t n, std::size_t p,
                                   const std::string& name, const bool (&defined)[2][4],
                                   bool progressive) {
  if (p + 3 > n) return;
  const std::size_t ns = d[p + 2];
  const std::size_t tail = p + 3 + 2 * ns;  // Ss, Se, Ah Al
  if (tail + 3 > n) return;                 // truncated: stb refuses it
  const bool first_dc = d[tail] == 0 && (d[tail + 2] >> 4) == 0;
  const bool uses_dc = !progressive || first_dc;
  const bool uses_ac = !progressive || d[tail] > 0;
  for (std::size_t i = 0; i < ns; ++i) {
    const int dc = d[p + 4 + 2 * i] >> 4, ac = d[p + 4 + 2 * i] & 15;
    const char* kind = nullptr;
    int id = 0;
    if (uses_dc && dc <= 3 && !defined[0][dc]) {
      kind = "DC";
      id = dc;
    } else if (uses_ac && ac <= 3 && !defined[1][ac]) {
      kind = "AC";
      id = ac;
    }
    if (kind != nullptr)
      io::fail(name, p,
               std::string("a JPEG scan uses the ") + kind + " Huffman table " +
                   std::to_string(id) +
                   ", which no DHT segment before it defines (refused "
                   "before decoding)");
  }
}

/// Walks the marker segments of a JPEG the way stb_image reads them and refuses a Huffman table
/// (DHT) that declares more than 256 codes. stb_image 2.27 (Debian 12's libstb) does not check
/// this and writes past its tables (found by fuzz_image; stb_image 2.28 added the check), so the
/// check must come first. The walk is strict where stb would be lenient and the two could part:
/// bytes between segments other than 0xff fill, a segment length below 2, a DHT whose tables do
/// not fill its length. Entropy-coded data after a start of scan (SOS) runs to the next 0xff that
/// is followed by neither 0x00 (a stuffed byte) nor a restart marker. The walk stops at the end of
/// image (EOI) or at the end of the data (a truncated file, which stb decodes or refuses itself;
/// every table before the cut was checked, and stb reads zeros past the end).
/// @throws io_error naming `name` and the byte offset.
inline void check_jpeg_segments(const std::uint8_t* d, std::size_t n, const std::string& name) {
  std::size_t p = 2;        // after the start of image
  bool defined[2][4] = {};  // Huffman tables seen so far: [DC 0 / AC 1][id]
  bool progressive = false;
  for (;;) {
    if (p >= n) return;
    if (d[p] != 0xff)
      io::fail(name, p, "expected a JPEG marker (0xff), found byte " + std::to_string(d[p]));
    while (p < n && d[p] == 0xff) ++p;  // fill bytes
    if (p >= n) return;
    const std::uint8_t m = d[p++];
    if (m == 0xd9) return;                                // end of image
    if (m == 0x01 || (m >= 0xd0 && m <= 0xd7)) continue;  // no length
    if (m == 0x00 || m == 0xd8)
      io::fail(name, p - 1, "expected a JPEG marker, found 0xff " + std::to_string(m));
    if (p + 2 > n) return;
    const std::size_t len = (std::size_t{d[p]} << 8) | d[p + 1];
    if (len < 2) io::fail(name, p, "a JPEG segment length of " + std::to_string(len) + " (< 2)");
    if (m == 0xc4) {  // define Huffman tables: [class/id][16 counts][sum of counts values]...
      long long left = static_cast<long long>(len) - 2;
      std::size_t q = p + 2;
      while (left > 0) {
        std::size_t codes = 0;
        for (std::size_t i = 1; i <= 16; ++i)
          if (q + i < n) codes += d[q + i];
        if (codes > 256)
          io::fail(name, q,
                   "a JPEG Huffman table declares " + std::to_string(codes) +
                       " codes, more than 256 (refused before decoding)");
        if (q + 17 > n) return;
        if ((d[q] >> 4) <= 1) defined[d[q] >> 4][d[q] & 3] = true;  // stb refuses other classes
        q += 17 + codes;
        left -= 17 + static_cast<long long>(codes);
      }
      if (left != 0)
        io::fail(name, p, "a JPEG Huffman table segment whose tables overrun its length");
    }
    if (m == 0xc2) progressive = true;
    if (m == 0xda) check_jpeg_scan_tables(d, n, p, name, defined, progressive);
    p += len;
    if (m == 0xda) {  // start of scan: skip the entropy-coded data
      while (p + 1 < n &&
             !(d[p] == 0xff && d[p + 1] != 0x00 && !(d[p + 1] >= 0xd0 && d[p + 1] <= 0xd7)))
        ++p;
      if (p + 1 >= n) return;
    }
  }
}

/// Walks the chunks of a PNG ([u32 length][4-byte type][data][u32 CRC], big-endian) from the
/// signature to IEND and refuses a chunk whose declared length runs past the end of the data.
/// stb_image 2.27 allocates an IDAT chunk's declared length before reading it (found by
/// fuzz_image: a 100-byte file asked for 2 GiB), so the lengths are checked first; a truncated
/// PNG is refused here with its offset.
/// @throws io_error naming `name` and the byte offset.
inline void check_png_chunks(const std::uint8_t* d, std::size_t n, const std::string& name) {
  std::size_t p = 8;
  for (;;) {
    if (n - p < 8)
      io::fail(name, p, "expected a PNG chunk header, found the end of the file (truncated)");
    const std::uint64_t len = (std::uint64_t{d[p]} << 24) | (std::uint64_t{d[p + 1]} << 16) |
                              (std::uint64_t{d[p + 2]} << 8) | d[p + 3];
    if (len > 0x7fffffffu || len + 12 > n - p)
      io::fail(name, p,
               "a PNG chunk declares " + std::to_string(len) + " data bytes, only " +
                   std::to_string(n - p < 12 ? 0 : n - p - 12) +
                   " remain (the file is truncated or corrupt)");
    const bool iend = d[p + 4] == 'I' && d[p + 5] == 'E' && d[p + 6] == 'N' && d[p + 7] == 'D';
    p += 12 + static_cast<std::size_t>(len);
    if (iend) return;
  }
}

/// Decodes a PNG or JPEG held in memory into `channels` (1: grey, 3: RGB) interleaved 8-bit
/// values (stb converts: grey is replicated to RGB, RGB becomes luma, alpha is dropped, 16-bit
/// PNG is scaled to 8 bits). `name` identifies the source in messages.
/// @throws io_error "[flowprior.io] <name>: ..." for an empty input, an input that is neither a
///         PNG nor a JPEG, a JPEG whose segments are malformed (check_jpeg_segments), a PNG whose
///         chunks run past its end (check_png_chunks), a header
///         stb cannot read, a size above `limits`, or a decode failure
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
  const ImageFormat format = sniff_format(data, size);
  if (format == ImageFormat::Unknown)
    io::fail(name, 0, "expected a PNG or JPEG signature, found neither");
  if (format == ImageFormat::Jpeg) check_jpeg_segments(data, size, name);
  if (format == ImageFormat::Png) check_png_chunks(data, size, name);
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
