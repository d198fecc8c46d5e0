/// @file
/// Decoding PNG and JPEG files into 8-bit pixels through stb_image (Debian libstb-dev;
/// docs/data.md "Decoding"). libstb.so holds stb_image's implementation, as it holds
/// stb_image_write's for flowprior::plot, so this header only declares it: STB_IMAGE_IMPLEMENTATION
/// must not be defined anywhere in a program that links flowprior::datasets.
///
/// Hostile files are expected (a data set of a million images has a few broken ones): every
/// failure is an io_error naming the file, and memory is bounded by DecodeLimits before stb
/// allocates the pixels; a PNG's image data is inflated here first, into a fixed buffer, and must
/// come to exactly the size its IHDR implies (so stb's growing inflate buffer stays within it),
/// and a JPEG must reach its end-of-image marker. stb_image keeps its failure reason per thread
/// (v2.27, thread-local), so decoding from several threads at once is safe; nothing here touches
/// stb's global settings.
#pragma once

#include <stb/stb_image.h>
#include <zlib.h>

#include <climits>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <flowprior/core/error.hpp>
#include <flowprior/datasets/transform.hpp>
#include <flowprior/io/file.hpp>
#include <limits>
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

/// Walks the marker segments of a JPEG from the start of image (SOI) to the end of image (EOI, FF
/// D9), the way stb_image reads them, and refuses what stb 2.27 would mishandle or what is not a
/// whole JPEG:
/// - a Huffman table (DHT) that declares more than 256 codes: stb_image 2.27 (Debian 12's libstb)
///   does not check this and writes past its tables (found by fuzz_image; stb_image 2.28 added
///   the check);
/// - a scan that reads an undefined Huffman table (check_jpeg_scan_tables);
/// - a file that ends before its EOI marker: "truncated: no end-of-image marker", with the offset
///   of the end and where the data stopped (in a segment, or in the entropy-coded data of a
///   scan). Bytes after the EOI are not read (cameras append data there). stb 2.27 also needs
///   the EOI (it refuses such a file, mostly with "expected marker"); this names the cause and
///   does not depend on stb's version.
///
/// The walk is strict where stb would be lenient and the two could part: bytes between segments
/// other than 0xff fill, a segment length below 2, a DHT whose tables do not fill its length.
/// After a start of scan (SOS) and its header comes entropy-coded data, in which a 0xff byte
/// starts either a stuffed 0xff (0xff 00), a restart marker (0xff D0-D7), both of which continue
/// the data, or the marker that ends the scan; a run of 0xff before any of these is fill (read as
/// stb and libjpeg read it: 0xff 0xff 00 is a stuffed 0xff). The marker after a scan may be EOI,
/// or the segments before the next scan (DHT, DQT, DRI, DNL, SOS ... of a progressive JPEG), all
/// walked the same way. One linear pass over the bytes in memory, no allocation.
/// @throws io_error naming `name` and the byte offset.
inline void check_jpeg_segments(const std::uint8_t* d, std::size_t n, const std::string& name) {
  std::size_t p = 2;        // after the start of image
  bool defined[2][4] = {};  // Huffman tables seen so far: [DC 0 / AC 1][id]
  bool progressive = false;
  bool in_scan = false;   // reading entropy-coded data
  std::size_t where = 0;  // offset of the SOS or segment marker being read, for messages
  auto truncated = [&](const std::string& inside) {
    io::fail(name, n,
             "truncated: no end-of-image marker (FF D9) before the end of the data, which ends " +
                 inside);
  };
  for (;;) {
    std::uint8_t m = 0;
    if (in_scan) {  // entropy-coded data: skip to the next 0xff
      const void* ff = p < n ? std::memchr(d + p, 0xff, n - p) : nullptr;
      if (ff == nullptr)
        truncated("in the entropy-coded data of the scan at byte " + std::to_string(where));
      p = static_cast<std::size_t>(static_cast<const std::uint8_t*>(ff) - d) + 1;
      while (p < n && d[p] == 0xff) ++p;  // fill
      if (p >= n)
        truncated("in the entropy-coded data of the scan at byte " + std::to_string(where));
      m = d[p++];
      if (m == 0x00 || (m >= 0xd0 && m <= 0xd7)) continue;  // stuffed 0xff, restart marker
      in_scan = false;
    } else {
      if (p >= n) truncated("after the marker or segment at byte " + std::to_string(where));
      if (d[p] != 0xff)
        io::fail(name, p, "expected a JPEG marker (0xff), found byte " + std::to_string(d[p]));
      where = p;
      while (p < n && d[p] == 0xff) ++p;  // fill bytes
      if (p >= n) truncated("in the marker at byte " + std::to_string(where));
      m = d[p++];
    }
    if (m == 0xd9) return;                                // end of image
    if (m == 0x01 || (m >= 0xd0 && m <= 0xd7)) continue;  // no length
    if (m == 0x00 || m == 0xd8)
      io::fail(name, p - 1, "expected a JPEG marker, found 0xff " + std::to_string(m));
    where = p - 2;
    if (p + 2 > n) truncated("in the length of the segment at byte " + std::to_string(where));
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
        if (q + 17 > n) break;                                      // truncated: refused below
        if ((d[q] >> 4) <= 1) defined[d[q] >> 4][d[q] & 3] = true;  // stb refuses other classes
        q += 17 + codes;
        left -= 17 + static_cast<long long>(codes);
      }
      // Past its length, or (when the file ended inside a table) a table that crosses the
      // segment's end although the segment itself is whole.
      if (left < 0 || (left > 0 && len <= n - p))
        io::fail(name, p, "a JPEG Huffman table segment whose tables overrun its length");
    }
    if (m == 0xc2) progressive = true;
    if (m == 0xda) check_jpeg_scan_tables(d, n, p, name, defined, progressive);
    if (len > n - p)
      truncated("in the segment at byte " + std::to_string(where) + " (marker 0xff " +
                std::to_string(m) + ", " + std::to_string(len) + " bytes)");
    p += len;
    if (m == 0xda) in_scan = true;  // its entropy-coded data follows
  }
}

/// What a PNG's IHDR chunk says (read_png_header).
struct PngHeader {
  std::uint32_t width = 0, height = 0;
  int bit_depth = 0;   ///< bits per sample: 1, 2, 4, 8 or 16
  int color_type = 0;  ///< 0 grey, 2 RGB, 3 palette, 4 grey + alpha, 6 RGB + alpha
  int interlace = 0;   ///< 0 none, 1 Adam7
  int channels = 0;    ///< samples per pixel: 1, 3, 1 (palette index), 2, 4
};

namespace detail {

inline std::uint32_t png_u32(const std::uint8_t* p) {
  return (std::uint32_t{p[0]} << 24) | (std::uint32_t{p[1]} << 16) | (std::uint32_t{p[2]} << 8) |
         p[3];
}

/// A chunk type for messages: 'IHDR' when it is four ASCII letters, else its bytes in hex.
inline std::string png_chunk_type(const std::uint8_t* t) {
  bool letters = true;
  for (int i = 0; i < 4; ++i)
    letters = letters && ((t[i] >= 'A' && t[i] <= 'Z') || (t[i] >= 'a' && t[i] <= 'z'));
  if (letters) return "'" + std::string(reinterpret_cast<const char*>(t), 4) + "'";
  static const char hex[] = "0123456789abcdef";
  std::string s = "0x";
  for (int i = 0; i < 4; ++i) {
    s += hex[t[i] >> 4];
    s += hex[t[i] & 15];
  }
  return s;
}

inline bool png_is(const std::uint8_t* t, const char* type) { return std::memcmp(t, type, 4) == 0; }

}  // namespace detail

/// Reads and checks a PNG's IHDR, which must be the first chunk and 13 bytes long: width and
/// height in 1 .. 2^31 - 1, a colour type of 0, 2, 3, 4 or 6, a bit depth the colour type allows
/// (grey 1, 2, 4, 8, 16; palette 1, 2, 4, 8; the others 8, 16), compression method 0, filter
/// method 0, interlace method 0 or 1. Apple's CgBI variant (a CgBI chunk before the IHDR, raw
/// deflate data, BGR order) is not a standard PNG: stb 2.27 decodes it with its colours swapped,
/// and it is refused here.
/// @throws io_error naming `name` and the byte offset of the offending field.
inline PngHeader read_png_header(const std::uint8_t* d, std::size_t n, const std::string& name) {
  if (n < 8 + 8 + 13 + 4)
    io::fail(name, 8, "expected the PNG's IHDR chunk, found the end of the file (truncated)");
  const std::uint8_t* type = d + 12;
  if (detail::png_is(type, "CgBI"))
    io::fail(name, 12,
             "a CgBI PNG (Apple's iOS variant: raw deflate, BGR order), not a standard PNG");
  if (!detail::png_is(type, "IHDR"))
    io::fail(name, 12,
             "expected the IHDR chunk first, found " + detail::png_chunk_type(type) + " chunk");
  const std::uint32_t len = detail::png_u32(d + 8);
  if (len != 13)
    io::fail(name, 8, "an IHDR chunk of " + std::to_string(len) + " bytes (expected 13)");
  PngHeader h;
  h.width = detail::png_u32(d + 16);
  h.height = detail::png_u32(d + 20);
  h.bit_depth = d[24];
  h.color_type = d[25];
  h.interlace = d[28];
  for (int i = 0; i < 2; ++i) {
    const std::uint32_t v = i == 0 ? h.width : h.height;
    if (v == 0 || v > 0x7fffffffu)
      io::fail(name, 16 + 4 * i,
               std::string("a PNG ") + (i == 0 ? "width" : "height") + " of " + std::to_string(v) +
                   " (expected 1 to 2^31 - 1)");
  }
  const int bd = h.bit_depth;
  const bool sub8 = bd == 1 || bd == 2 || bd == 4;
  switch (h.color_type) {
    case 0:
      h.channels = 1;
      if (!(sub8 || bd == 8 || bd == 16)) h.channels = 0;
      break;
    case 3:
      h.channels = 1;
      if (!(sub8 || bd == 8)) h.channels = 0;
      break;
    case 2:
    case 4:
    case 6:
      h.channels = h.color_type == 2 ? 3 : h.color_type == 4 ? 2 : 4;
      if (bd != 8 && bd != 16) h.channels = 0;
      break;
    default:
      io::fail(name, 25,
               "a PNG colour type of " + std::to_string(h.color_type) +
                   " (expected 0 grey, 2 RGB, 3 palette, 4 grey + alpha or 6 RGB + alpha)");
  }
  if (h.channels == 0)
    io::fail(name, 24,
             "a PNG bit depth of " + std::to_string(bd) + " for colour type " +
                 std::to_string(h.color_type) + " (allowed: " +
                 (h.color_type == 0   ? "1, 2, 4, 8, 16"
                  : h.color_type == 3 ? "1, 2, 4, 8"
                                      : "8, 16") +
                 ")");
  if (d[26] != 0)
    io::fail(name, 26,
             "a PNG compression method of " + std::to_string(d[26]) + " (expected 0, deflate)");
  if (d[27] != 0)
    io::fail(name, 27, "a PNG filter method of " + std::to_string(d[27]) + " (expected 0)");
  if (h.interlace > 1)
    io::fail(name, 28,
             "a PNG interlace method of " + std::to_string(h.interlace) +
                 " (expected 0 none or 1 Adam7)");
  return h;
}

/// The exact number of bytes a PNG's image data inflates to: per row, one filter-type byte and
/// ceil(width x channels x bit depth / 8) bytes. Not interlaced: height such rows. Adam7: the sum
/// over its 7 passes (sub-images of the pixels (x0 + i dx, y0 + j dy)) of rows x (1 + row bytes),
/// a pass with no column or no row contributing nothing. Returns false when the size does not fit
/// in 64 bits (a 16-bit RGBA image near 2^31 x 2^31).
inline bool png_image_data_size(const PngHeader& h, std::uint64_t& size) {
  struct Pass {
    std::uint32_t x0, y0, dx, dy;
  };
  static const Pass adam7[7] = {{0, 0, 8, 8}, {4, 0, 8, 8}, {0, 4, 4, 8}, {2, 0, 4, 4},
                                {0, 2, 2, 4}, {1, 0, 2, 2}, {0, 1, 1, 2}};
  static const Pass whole[1] = {{0, 0, 1, 1}};
  const Pass* passes = h.interlace == 1 ? adam7 : whole;
  const int count = h.interlace == 1 ? 7 : 1;
  const std::uint64_t bits = static_cast<std::uint64_t>(h.channels) * h.bit_depth;  // per pixel
  size = 0;
  for (int i = 0; i < count; ++i) {
    const Pass& s = passes[i];
    if (h.width <= s.x0 || h.height <= s.y0) continue;
    const std::uint64_t cols = (std::uint64_t{h.width} - s.x0 + s.dx - 1) / s.dx;
    const std::uint64_t rows = (std::uint64_t{h.height} - s.y0 + s.dy - 1) / s.dy;
    const std::uint64_t row = 1 + (cols * bits + 7) / 8;  // < 2^35
    if (rows > (std::numeric_limits<std::uint64_t>::max() - size) / row) return false;
    size += rows * row;
  }
  return true;
}

/// Walks the chunks of a PNG ([u32 length][4-byte type][data][u32 CRC], big-endian) from the
/// signature to IEND, checks its IHDR (read_png_header) and refuses a chunk whose declared length
/// runs past the end of the data. stb_image 2.27 allocates an IDAT chunk's declared length before
/// reading it (found by fuzz_image: a 100-byte file asked for 2 GiB), so the lengths are checked
/// first; a truncated PNG is refused here with its offset. CRCs are not checked (neither does
/// stb).
/// @throws io_error naming `name` and the byte offset.
inline void check_png_chunks(const std::uint8_t* d, std::size_t n, const std::string& name) {
  (void)read_png_header(d, n, name);
  std::size_t p = 8;
  for (;;) {
    if (n - p < 8)
      io::fail(name, p, "expected a PNG chunk header, found the end of the file (truncated)");
    const std::uint64_t len = detail::png_u32(d + p);
    if (len > 0x7fffffffu || len + 12 > n - p)
      io::fail(name, p,
               "a PNG chunk declares " + std::to_string(len) + " data bytes, only " +
                   std::to_string(n - p < 12 ? 0 : n - p - 12) +
                   " remain (the file is truncated or corrupt)");
    const bool iend = detail::png_is(d + p + 4, "IEND");
    p += 12 + static_cast<std::size_t>(len);
    if (iend) return;
  }
}

/// Inflates a PNG's image data, the data of its IDAT chunks in file order as one zlib stream,
/// through zlib into a fixed 32 KiB buffer that is overwritten (nothing is kept), counting the
/// output, and refuses it unless it is exactly the size the IHDR implies (png_image_data_size):
/// as soon as the output exceeds that size (a "zip bomb": stb 2.27 inflates into a buffer that
/// grows without bound, about 1000 bytes per compressed byte), when the stream ends or the IDAT
/// data runs out before it, when the stream does not end (its final block or Adler-32 checksum
/// missing), or when zlib finds it corrupt (zlib's message; the Adler-32 checksum included).
/// Bytes after the end of the stream in the last IDAT are ignored, as stb and libpng do. Memory:
/// zlib's inflate state (about 7 KiB and its 32 KiB window) and the buffer, on the stack; time:
/// linear in the file and the expected size. Checks the chunks first (check_png_chunks).
/// @throws io_error naming `name`, the expected and the found size.
inline void check_png_image_data(const std::uint8_t* d, std::size_t n, const std::string& name) {
  check_png_chunks(d, n, name);
  const PngHeader h = read_png_header(d, n, name);
  std::uint64_t expected = 0;
  const std::string what = std::to_string(h.width) + " x " + std::to_string(h.height) +
                           ", colour type " + std::to_string(h.color_type) + ", bit depth " +
                           std::to_string(h.bit_depth) +
                           (h.interlace == 1 ? ", Adam7-interlaced" : ", not interlaced");
  if (!png_image_data_size(h, expected))
    io::fail(name, 16, "a PNG of " + what + " is too large: its image data exceeds 2^64 bytes");
  z_stream zs;
  std::memset(&zs, 0, sizeof zs);
  if (inflateInit(&zs) != Z_OK) io::fail(name, "cannot start zlib's inflate (out of memory)");
  struct End {
    z_stream* z;
    ~End() { inflateEnd(z); }
  } end{&zs};
  std::uint8_t out[std::size_t{1} << 15];
  std::uint64_t found = 0;  // bytes inflated so far
  bool ended = false;       // the zlib stream ended
  std::size_t p = 8, first_idat = 0;
  while (!ended) {
    const std::size_t len = detail::png_u32(d + p);  // within the file: check_png_chunks
    const std::uint8_t* type = d + p + 4;
    if (detail::png_is(type, "IEND")) break;
    if (detail::png_is(type, "IDAT")) {
      if (first_idat == 0) first_idat = p;
      zs.next_in = const_cast<Bytef*>(d + p + 8);
      zs.avail_in = static_cast<uInt>(len);
      do {  // until zlib leaves room in the buffer: it has used what it can of this chunk
        zs.next_out = out;
        zs.avail_out = sizeof out;
        const int rc = inflate(&zs, Z_NO_FLUSH);
        found += sizeof out - zs.avail_out;
        const std::size_t at = p + 8 + (len - zs.avail_in);
        if (found > expected)
          io::fail(name, at,
                   "the PNG image data (IDAT) inflates to more than the " +
                       std::to_string(expected) + " bytes its IHDR implies (" + what +
                       "): refused after " + std::to_string(found) + " bytes");
        if (rc == Z_STREAM_END) {
          ended = true;
          break;
        }
        if (rc == Z_BUF_ERROR) break;  // no progress: this chunk is used up
        if (rc == Z_DATA_ERROR || rc == Z_NEED_DICT)
          io::fail(name, at,
                   std::string("corrupt PNG image data (zlib: ") +
                       (zs.msg != nullptr   ? zs.msg
                        : rc == Z_NEED_DICT ? "a preset dictionary is required"
                                            : "data error") +
                       ")");
        if (rc == Z_MEM_ERROR) io::fail(name, "out of memory while inflating the PNG image data");
        if (rc != Z_OK) io::fail(name, at, "zlib's inflate failed with code " + std::to_string(rc));
      } while (zs.avail_out == 0);
    }
    p += 12 + len;
  }
  if (first_idat == 0) io::fail(name, p, "a PNG without image data (no IDAT chunk before IEND)");
  if (found < expected)
    io::fail(name, first_idat,
             "the PNG image data (IDAT) inflates to " + std::to_string(found) + " bytes, " +
                 (ended ? "where its zlib stream ends" : "where the IDAT data ends") +
                 ", fewer than the " + std::to_string(expected) + " bytes its IHDR implies (" +
                 what + "; truncated)");
  if (!ended)
    io::fail(name, first_idat,
             "the PNG image data (IDAT) has the " + std::to_string(expected) +
                 " bytes its IHDR implies, but its zlib stream does not end (the final block or "
                 "the Adler-32 checksum is missing: truncated)");
}

/// Decodes a PNG or JPEG held in memory into `channels` (1: grey, 3: RGB) interleaved 8-bit
/// values (stb converts: grey is replicated to RGB, RGB becomes luma, alpha is dropped, 16-bit
/// PNG is scaled to 8 bits). `name` identifies the source in messages.
/// @throws io_error "[flowprior.io] <name>: ..." for an empty input, an input that is neither a
///         PNG nor a JPEG, a JPEG whose segments are malformed or that ends before its EOI marker
///         (check_jpeg_segments), a PNG whose IHDR is invalid or whose chunks run past its end
///         (check_png_chunks), a header stb cannot read, a size above `limits`, a PNG whose
///         image data does not inflate to exactly the size its IHDR implies
///         (check_png_image_data), or a decode failure (stb's reason quoted); config_error for
///         channels other than 1 or 3.
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
  // After the size check, which bounds the inflate's time: at most about max_pixels x 8 bytes.
  if (format == ImageFormat::Png) check_png_image_data(data, size, name);
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
