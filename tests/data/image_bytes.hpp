// Encoded images built in memory for the decode tests (test_decode_checks.cpp,
// test_folder_loader.cpp): JPEG and PNG through stb_image_write, and PNGs assembled chunk by
// chunk with zlib (compress2, deflate, crc32) where stb_image_write cannot make them: Adam7
// interlacing, sub-byte and 16-bit samples, image data of the wrong size, a "zip bomb".
#pragma once

#include <stb/stb_image_write.h>
#include <zlib.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

namespace imgbytes {

using Bytes = std::vector<std::uint8_t>;

inline void append_to(void* ctx, void* data, int size) {
  auto* out = static_cast<Bytes*>(ctx);
  const auto* p = static_cast<const std::uint8_t*>(data);
  out->insert(out->end(), p, p + size);
}

/// `pixels`: w x h x comp interleaved 8-bit values.
inline Bytes encode_jpg(int w, int h, int comp, const Bytes& pixels, int quality = 90) {
  Bytes out;
  if (stbi_write_jpg_to_func(append_to, &out, w, h, comp, pixels.data(), quality) == 0)
    throw std::runtime_error("stbi_write_jpg_to_func failed");
  return out;
}

inline Bytes encode_png(int w, int h, int comp, const Bytes& pixels) {
  Bytes out;
  if (stbi_write_png_to_func(append_to, &out, w, h, comp, pixels.data(), w * comp) == 0)
    throw std::runtime_error("stbi_write_png_to_func failed");
  return out;
}

/// w x h x comp values, a deterministic pattern that differs with `tag`.
inline Bytes pattern(int w, int h, int comp, int tag) {
  Bytes p(static_cast<std::size_t>(w) * static_cast<std::size_t>(h) * comp);
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x)
      for (int c = 0; c < comp; ++c)
        p[(static_cast<std::size_t>(y) * w + x) * comp + c] =
            static_cast<std::uint8_t>((x * 7 + y * 3 + c * 50 + tag * 31) & 0xff);
  return p;
}

inline void put_u32(Bytes& out, std::uint32_t v) {
  for (int s = 24; s >= 0; s -= 8) out.push_back(static_cast<std::uint8_t>(v >> s));
}

/// Appends a PNG chunk: [length][type][data][CRC-32 of type and data].
inline void put_chunk(Bytes& out, const char* type, const Bytes& data) {
  put_u32(out, static_cast<std::uint32_t>(data.size()));
  const std::size_t at = out.size();
  out.insert(out.end(), type, type + 4);
  out.insert(out.end(), data.begin(), data.end());
  const uLong crc = crc32(0L, out.data() + at, static_cast<uInt>(4 + data.size()));
  put_u32(out, static_cast<std::uint32_t>(crc));
}

struct Ihdr {
  std::uint32_t width = 1, height = 1;
  int bit_depth = 8, color_type = 2, compression = 0, filter = 0, interlace = 0;
};

inline Bytes ihdr_data(const Ihdr& h) {
  Bytes d;
  put_u32(d, h.width);
  put_u32(d, h.height);
  for (int v : {h.bit_depth, h.color_type, h.compression, h.filter, h.interlace})
    d.push_back(static_cast<std::uint8_t>(v));
  return d;
}

/// A whole PNG: signature, IHDR, the IDAT data split into chunks of at most `idat_chunk` bytes,
/// IEND. A palette image gets a 256-entry grey PLTE.
inline Bytes png_file(const Ihdr& h, const Bytes& idat, std::size_t idat_chunk = 1 << 16) {
  Bytes out = {0x89, 'P', 'N', 'G', 0x0d, 0x0a, 0x1a, 0x0a};
  put_chunk(out, "IHDR", ihdr_data(h));
  if (h.color_type == 3) {
    Bytes plte;
    for (int i = 0; i < 256; ++i)
      for (int c = 0; c < 3; ++c) plte.push_back(static_cast<std::uint8_t>(i));
    put_chunk(out, "PLTE", plte);
  }
  for (std::size_t p = 0; p < idat.size() || p == 0; p += idat_chunk) {
    const std::size_t end = std::min(idat.size(), p + idat_chunk);
    put_chunk(out, "IDAT",
              Bytes(idat.begin() + static_cast<long>(p), idat.begin() + static_cast<long>(end)));
    if (idat.empty()) break;
  }
  put_chunk(out, "IEND", Bytes{});
  return out;
}

inline Bytes zlib_compress(const Bytes& raw) {
  uLongf size = compressBound(static_cast<uLong>(raw.size()));
  Bytes out(size);
  if (compress2(out.data(), &size, raw.data(), static_cast<uLong>(raw.size()), 9) != Z_OK)
    throw std::runtime_error("compress2 failed");
  out.resize(size);
  return out;
}

/// A zlib stream of `n` zero bytes, deflated from a 1 MiB buffer at a time (about n / 1000
/// bytes: a "zip bomb"), without holding the n bytes.
inline Bytes zlib_zeros(std::uint64_t n) {
  const Bytes zeros(std::size_t{1} << 20, 0);
  z_stream zs;
  std::memset(&zs, 0, sizeof zs);
  if (deflateInit(&zs, 9) != Z_OK) throw std::runtime_error("deflateInit failed");
  Bytes out, buf(std::size_t{1} << 16);
  std::uint64_t left = n;
  for (;;) {
    const std::size_t now = static_cast<std::size_t>(std::min<std::uint64_t>(left, zeros.size()));
    zs.next_in = const_cast<Bytef*>(zeros.data());
    zs.avail_in = static_cast<uInt>(now);
    left -= now;
    const int flush = left == 0 ? Z_FINISH : Z_NO_FLUSH;
    int rc = Z_OK;
    do {
      zs.next_out = buf.data();
      zs.avail_out = static_cast<uInt>(buf.size());
      rc = deflate(&zs, flush);
      out.insert(out.end(), buf.data(), buf.data() + (buf.size() - zs.avail_out));
    } while (zs.avail_out == 0);
    if (flush == Z_FINISH) {
      deflateEnd(&zs);
      if (rc != Z_STREAM_END) throw std::runtime_error("deflate did not finish");
      return out;
    }
  }
}

/// The filtered image data of a PNG whose samples are `samples` (w x h x channels values, each
/// below 2^depth), every row with filter type 0 (none): samples packed most significant bits
/// first below 8 bits, big-endian at 16. With `adam7`, the 7 passes of Adam7 one after another
/// (a pass without columns or rows has no bytes).
inline Bytes png_raw(const std::vector<std::uint16_t>& samples, int w, int h, int channels,
                     int depth, bool adam7) {
  struct Pass {
    int x0, y0, dx, dy;
  };
  const std::vector<Pass> passes =
      adam7 ? std::vector<Pass>{{0, 0, 8, 8}, {4, 0, 8, 8}, {0, 4, 4, 8}, {2, 0, 4, 4},
                                {0, 2, 2, 4}, {1, 0, 2, 2}, {0, 1, 1, 2}}
            : std::vector<Pass>{{0, 0, 1, 1}};
  Bytes out;
  for (const Pass& s : passes) {
    for (int y = s.y0; y < h; y += s.dy) {
      if (s.x0 >= w) break;
      out.push_back(0);  // filter type: none
      int acc = 0, bits = 0;
      for (int x = s.x0; x < w; x += s.dx)
        for (int c = 0; c < channels; ++c) {
          const std::uint16_t v = samples[(static_cast<std::size_t>(y) * w + x) * channels + c];
          if (depth == 16) {
            out.push_back(static_cast<std::uint8_t>(v >> 8));
            out.push_back(static_cast<std::uint8_t>(v & 0xff));
          } else {
            acc = (acc << depth) | v;
            bits += depth;
            if (bits == 8) {
              out.push_back(static_cast<std::uint8_t>(acc));
              acc = bits = 0;
            }
          }
        }
      if (bits > 0) out.push_back(static_cast<std::uint8_t>(acc << (8 - bits)));
    }
  }
  return out;
}

/// Offsets of the SOS markers (0xff 0xda) of a well-formed JPEG, found by walking its segments
/// and skipping each scan's entropy-coded data (to a 0xff followed by neither 0x00 nor a restart
/// marker), and the offset just past its EOI. For locating cut points in tests.
struct JpegLayout {
  std::vector<std::size_t> sos;       ///< the SOS markers
  std::vector<std::size_t> data;      ///< where each scan's entropy-coded data starts
  std::vector<std::size_t> data_end;  ///< where it ends (the next marker)
  std::size_t eoi_end = 0;
};

inline JpegLayout jpeg_layout(const Bytes& j) {
  JpegLayout l;
  std::size_t p = 2;
  while (p + 1 < j.size()) {
    if (j[p] != 0xff) throw std::runtime_error("jpeg_layout: expected a marker");
    const std::uint8_t m = j[p + 1];
    if (m == 0xd9) {
      l.eoi_end = p + 2;
      return l;
    }
    const std::size_t len = (std::size_t{j[p + 2]} << 8) | j[p + 3];
    if (m != 0xda) {
      p += 2 + len;
      continue;
    }
    l.sos.push_back(p);
    p += 2 + len;
    l.data.push_back(p);
    while (!(j[p] == 0xff && j[p + 1] != 0x00 && !(j[p + 1] >= 0xd0 && j[p + 1] <= 0xd7))) ++p;
    l.data_end.push_back(p);
  }
  throw std::runtime_error("jpeg_layout: no EOI");
}

}  // namespace imgbytes
