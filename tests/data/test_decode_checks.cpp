// The checks decode_image makes before stb_image decodes (decode.hpp; docs/data.md "Decoding"):
// a JPEG must reach its end-of-image marker (cut inside its scans: refused as truncated; bytes
// after the EOI: accepted), progressive JPEGs walked scan by scan; a PNG's IHDR is checked and
// its image data is inflated into a fixed buffer and must come to exactly the size the IHDR
// implies ("zip bombs" refused after a few KiB of output, short or corrupt streams refused),
// Adam7-interlaced PNGs included. The files are built here (image_bytes.hpp); the progressive
// JPEG, which stb_image_write cannot write, is tests/fuzz/corpus/image/jpeg-progressive-restart
// (libjpeg-turbo's cjpeg -progressive -restart 1B, 24 x 16, R = 10 x, G = 15 y, B = 5 (x + y)).
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <flowprior/datasets/decode.hpp>
#include <flowprior/io/file.hpp>
#include <fstream>
#include <string>
#include <vector>

#include "catch.hpp"
#include "image_bytes.hpp"

namespace {

namespace ds = flowprior::datasets;
using flowprior::io_error;
using imgbytes::Bytes;

// The io_error message of decoding `b` as `name`, or "" when it decodes.
std::string error_of(const Bytes& b, const std::string& name, int channels = 3) {
  try {
    (void)ds::decode_image(b.data(), b.size(), name, channels);
  } catch (const io_error& e) {
    return e.what();
  }
  return "";
}

std::string segments_error(const Bytes& b) {
  try {
    ds::check_jpeg_segments(b.data(), b.size(), "hand.jpg");
  } catch (const io_error& e) {
    return e.what();
  }
  return "";
}

Bytes cut(const Bytes& b, std::size_t n) {
  return Bytes(b.begin(), b.begin() + static_cast<long>(n));
}

std::string corpus(const std::string& name) {
  return std::string(FLOWPRIOR_TEST_SOURCE_DIR) + "/fuzz/corpus/image/" + name;
}

// Peak resident memory of this process, bytes.
std::uint64_t peak_rss() {
  struct rusage u {};
  ::getrusage(RUSAGE_SELF, &u);
  return static_cast<std::uint64_t>(u.ru_maxrss) * 1024;
}

// A marker segment: 0xff m, length, body.
void segment(Bytes& j, std::uint8_t m, const Bytes& body) {
  j.push_back(0xff);
  j.push_back(m);
  j.push_back(static_cast<std::uint8_t>((body.size() + 2) >> 8));
  j.push_back(static_cast<std::uint8_t>((body.size() + 2) & 0xff));
  j.insert(j.end(), body.begin(), body.end());
}

// The structure of a progressive JPEG, by hand (not decodable: the parser's walk only): APP0,
// SOF2, a DC table, a first DC scan whose data holds stuffed bytes, restart markers and fill
// (0xff 0xff 00, 0xff 0xff D1), an AC table between the scans, an AC scan, fill before the EOI,
// then bytes after it.
Bytes hand_progressive(std::size_t* eoi_end) {
  Bytes j = {0xff, 0xd8};
  segment(j, 0xe0, {'J', 'F', 'I', 'F', 0, 1, 1, 0, 0, 1, 0, 1, 0, 0});
  segment(j, 0xc2, {8, 0, 8, 0, 8, 1, 1, 0x11, 0});
  Bytes dht = {0x00, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};  // DC 0: one code
  segment(j, 0xc4, dht);
  segment(j, 0xda, {1, 1, 0x00, 0, 0, 0});  // DC first scan: Ss = Se = 0, Ah = Al = 0
  j.insert(j.end(), {0x12, 0x34, 0xff, 0x00, 0x56, 0xff, 0xd0, 0x78, 0xff, 0xff, 0x00, 0x9a, 0xff,
                     0xff, 0xd1, 0xbc});
  dht[0] = 0x10;  // AC 0
  segment(j, 0xc4, dht);
  segment(j, 0xda, {1, 1, 0x00, 1, 63, 0});  // AC scan: Ss = 1, Se = 63
  j.insert(j.end(), {0x01, 0x02, 0xff, 0x00, 0x00});
  j.insert(j.end(), {0xff, 0xff, 0xd9});
  *eoi_end = j.size();
  j.insert(j.end(), {0xff, 0xd8, 0xff, 0xe1, 0x00, 0x00, 0x13});  // after the EOI: not read
  return j;
}

}  // namespace

TEST_CASE("decode: a JPEG cut inside its scan data is refused as truncated", "[data]") {
  const Bytes jpg = imgbytes::encode_jpg(64, 48, 3, imgbytes::pattern(64, 48, 3, 1));
  const imgbytes::JpegLayout l = imgbytes::jpeg_layout(jpg);
  REQUIRE(l.sos.size() == 1);
  REQUIRE(l.eoi_end == jpg.size());
  REQUIRE(error_of(jpg, "whole.jpg").empty());
  const std::size_t d = l.data[0], e = l.data_end[0];
  REQUIRE(e - d > 100);
  // Inside the data, at its end (the EOI missing), between the 0xff and the D9 of the EOI.
  for (std::size_t n : {d, d + 1, (d + e) / 2, e - 1, e, e + 1}) {
    INFO("cut at " << n);
    CHECK_THAT(error_of(cut(jpg, n), "cut.jpg"),
               Catch::Contains("cut.jpg at byte " + std::to_string(n) +
                               ": truncated: no end-of-image marker (FF D9)") &&
                   Catch::Contains("in the entropy-coded data of the scan at byte " +
                                   std::to_string(l.sos[0])));
  }
  // In the headers: the same, naming the segment.
  CHECK_THAT(error_of(cut(jpg, 40), "cut.jpg"),
             Catch::Contains("at byte 40: truncated: no end-of-image marker") &&
                 Catch::Contains("in the segment at byte"));
  CHECK_THAT(error_of(cut(jpg, 3), "cut.jpg"), Catch::Contains("truncated"));
  // Zeros in place of the end (a file whose tail was never written): still no EOI.
  Bytes zeroed = jpg;
  std::fill(zeroed.end() - 200, zeroed.end(), std::uint8_t{0});
  CHECK_THAT(error_of(zeroed, "zeroed.jpg"), Catch::Contains("truncated"));
}

TEST_CASE("decode: bytes after a JPEG's end-of-image marker are ignored", "[data]") {
  for (int comp : {3, 1}) {
    const Bytes jpg = imgbytes::encode_jpg(33, 21, comp, imgbytes::pattern(33, 21, comp, 2));
    Bytes longer = jpg;
    // Another image's start, fill, zeros, text: what cameras and tools append.
    longer.insert(longer.end(), {0xff, 0xd8, 0xff, 0xe1, 0x12, 0x34, 0xff, 0xff, 0, 0, 0});
    for (int i = 0; i < 1000; ++i) longer.push_back(static_cast<std::uint8_t>(i * 131 + 7));
    for (int channels : {3, 1}) {
      const ds::Image8 a = ds::decode_image(jpg.data(), jpg.size(), "a.jpg", channels);
      const ds::Image8 b = ds::decode_image(longer.data(), longer.size(), "b.jpg", channels);
      CHECK(a.width == 33);
      CHECK(b.width == a.width);
      CHECK(b.height == a.height);
      CHECK(b.pixels == a.pixels);
    }
  }
}

TEST_CASE("decode: a progressive JPEG with restart markers is walked scan by scan", "[data]") {
  const Bytes jpg = flowprior::io::read_file(corpus("jpeg-progressive-restart"));
  const imgbytes::JpegLayout l = imgbytes::jpeg_layout(jpg);
  REQUIRE(l.sos.size() >= 6);  // DC and AC scans, DHT segments between them
  REQUIRE(l.eoi_end == jpg.size());
  const ds::Image8 img = ds::decode_image(jpg.data(), jpg.size(), "p.jpg");
  REQUIRE(img.width == 24);
  REQUIRE(img.height == 16);
  double err = 0;
  for (int y = 0; y < 16; ++y)
    for (int x = 0; x < 24; ++x) {
      const int want[3] = {10 * x, 15 * y, 5 * (x + y)};
      for (int c = 0; c < 3; ++c)
        err += std::abs(img.pixels[static_cast<std::size_t>((y * 24 + x) * 3 + c)] - want[c]);
    }
  CHECK(err / (24 * 16 * 3) < 4.0);  // a quality-90 JPEG of a smooth image
  // Cut inside every scan's data, just after it (before the next segment), and inside the
  // segments between scans.
  for (std::size_t s = 0; s < l.sos.size(); ++s) {
    for (std::size_t n : {(l.data[s] + l.data_end[s]) / 2, l.data_end[s], l.data_end[s] + 1}) {
      INFO("scan " << s << ", cut at " << n);
      CHECK_THAT(
          error_of(cut(jpg, n), "p.jpg"),
          Catch::Contains("at byte " + std::to_string(n) + ": truncated: no end-of-image marker"));
    }
    if (s > 0) {
      const std::size_t n = l.sos[s] + 5;
      INFO("SOS header " << s << ", cut at " << n);
      CHECK_THAT(error_of(cut(jpg, n), "p.jpg"), Catch::Contains("truncated"));
    }
  }
  Bytes longer = jpg;
  longer.insert(longer.end(), 300, std::uint8_t{0xff});
  CHECK(ds::decode_image(longer.data(), longer.size(), "p.jpg").pixels == img.pixels);
}

TEST_CASE("decode: the JPEG walk, by hand: stuffing, restarts, fill, scans, EOI", "[data]") {
  std::size_t eoi_end = 0;
  const Bytes j = hand_progressive(&eoi_end);
  CHECK(segments_error(j).empty());
  CHECK(segments_error(cut(j, eoi_end)).empty());
  // Every cut before the end of the EOI is a truncation (headers, scan headers, data, fill).
  for (std::size_t n = 2; n < eoi_end; ++n) {
    INFO("cut at " << n);
    CHECK_THAT(segments_error(cut(j, n)),
               Catch::Contains("hand.jpg at byte " + std::to_string(n) +
                               ": truncated: no end-of-image marker (FF D9)"));
  }
  // Between segments only markers and 0xff fill may come.
  Bytes bad = j;
  bad[2] = 0x00;
  CHECK_THAT(segments_error(bad), Catch::Contains("expected a JPEG marker (0xff)"));
  // 0xff 00 outside a scan's data is no marker.
  bad = {0xff, 0xd8, 0xff, 0x00, 0xff, 0xd9};
  CHECK_THAT(segments_error(bad), Catch::Contains("found 0xff 0"));
}

TEST_CASE("decode: a PNG zip bomb is refused after a few KiB of output, no large allocation",
          "[data]") {
  imgbytes::Ihdr h;
  h.width = 8;
  h.height = 8;  // RGB, 8 bits: 8 x (1 + 24) = 200 bytes of image data
  const Bytes idat = imgbytes::zlib_zeros(std::uint64_t{64} << 20);
  REQUIRE(idat.size() < (std::size_t{80} << 10));  // 64 MiB from about 64 KiB
  for (std::size_t chunk : {std::size_t{1} << 16, std::size_t{1000}}) {
    const Bytes png = imgbytes::png_file(h, idat, chunk);
    const std::uint64_t rss = peak_rss();
    const auto t0 = std::chrono::steady_clock::now();
    const std::string msg = error_of(png, "bomb.png");
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    INFO(msg);
    CHECK_THAT(msg, Catch::Contains("bomb.png at byte") &&
                        Catch::Contains("the PNG image data (IDAT) inflates to more than the "
                                        "200 bytes its IHDR implies (8 x 8, colour type 2, bit "
                                        "depth 8, not interlaced): refused after 32768 bytes"));
    CHECK(s < 2.0);  // microseconds in practice; stb would inflate all 64 MiB
    // stb 2.27 would grow its buffer to 64 MiB and more; the check holds 32 KiB on the stack.
    CHECK(peak_rss() - rss < (std::uint64_t{16} << 20));
  }
}

TEST_CASE("decode: PNG image data shorter than its IHDR implies, or corrupt, is refused",
          "[data]") {
  imgbytes::Ihdr h;
  h.width = 8;
  h.height = 8;
  // Incompressible rows (filter 0 and pseudo-random bytes), 200 bytes.
  Bytes raw(200);
  std::uint32_t x = 12345;
  for (std::size_t i = 0; i < raw.size(); ++i) {
    x = x * 1664525u + 1013904223u;
    raw[i] = i % 25 == 0 ? 0 : static_cast<std::uint8_t>(x >> 24);
  }
  const Bytes good = imgbytes::png_file(h, imgbytes::zlib_compress(raw));
  REQUIRE(error_of(good, "good.png").empty());
  // A whole stream of 7 rows (175 bytes).
  const Bytes seven = imgbytes::png_file(h, imgbytes::zlib_compress(cut(raw, 175)));
  CHECK_THAT(error_of(seven, "seven.png"),
             Catch::Contains("seven.png at byte 33: the PNG image data (IDAT) inflates to 175 "
                             "bytes, where its zlib stream ends, fewer than the 200 bytes its "
                             "IHDR implies"));
  // The stream cut in half (the IDAT chunk then ends there).
  const Bytes z = imgbytes::zlib_compress(raw);
  CHECK_THAT(error_of(imgbytes::png_file(h, cut(z, z.size() / 2)), "half.png"),
             Catch::Contains("where the IDAT data ends, fewer than the 200 bytes") &&
                 Catch::Contains("truncated"));
  // All the data but not the Adler-32 checksum.
  CHECK_THAT(error_of(imgbytes::png_file(h, cut(z, z.size() - 4)), "noadler.png"),
             Catch::Contains("has the 200 bytes its IHDR implies, but its zlib stream does not "
                             "end"));
  // A wrong Adler-32 checksum, a wrong zlib header, no IDAT at all.
  Bytes bad = z;
  bad.back() ^= 1;
  CHECK_THAT(error_of(imgbytes::png_file(h, bad), "adler.png"),
             Catch::Contains("corrupt PNG image data (zlib: incorrect data check)"));
  bad = z;
  bad[0] = 0x79;
  CHECK_THAT(error_of(imgbytes::png_file(h, bad), "header.png"),
             Catch::Contains("corrupt PNG image data (zlib:"));
  CHECK_THAT(error_of(imgbytes::png_file(h, Bytes{}), "empty.png"),
             Catch::Contains("inflates to 0 bytes"));
  Bytes none = {0x89, 'P', 'N', 'G', 0x0d, 0x0a, 0x1a, 0x0a};
  imgbytes::put_chunk(none, "IHDR", imgbytes::ihdr_data(h));
  imgbytes::put_chunk(none, "IEND", Bytes{});
  CHECK_THAT(error_of(none, "none.png"), Catch::Contains("no IDAT chunk"));
  // Bytes after the end of the zlib stream are ignored (as stb and libpng do).
  Bytes trailing = z;
  trailing.insert(trailing.end(), {1, 2, 3});
  CHECK(error_of(imgbytes::png_file(h, trailing), "trailing.png").empty());
}

TEST_CASE("decode: the size of PNG image data, non-interlaced and Adam7", "[data]") {
  auto size = [](std::uint32_t w, std::uint32_t hh, int ct, int depth, int interlace) {
    ds::PngHeader h;
    h.width = w;
    h.height = hh;
    h.color_type = ct;
    h.bit_depth = depth;
    h.interlace = interlace;
    h.channels = ct == 2 ? 3 : ct == 4 ? 2 : ct == 6 ? 4 : 1;
    std::uint64_t n = 0;
    return ds::png_image_data_size(h, n) ? n : ~std::uint64_t{0};
  };
  CHECK(size(8, 8, 0, 8, 0) == 8 * 9);
  CHECK(size(13, 11, 0, 1, 0) == 11 * 3);       // ceil(13 / 8) = 2 bytes a row
  CHECK(size(5, 3, 6, 16, 0) == 3 * (1 + 40));  // 8 bytes a pixel
  CHECK(size(3, 2, 3, 4, 0) == 2 * (1 + 2));    // palette indices of 4 bits
  CHECK(size(1, 1, 2, 8, 1) == 4);              // Adam7: only the first pass
  // Adam7, 8 x 8 grey: passes 1x1, 1x1, 2x1, 2x2, 4x2, 4x4, 8x4.
  CHECK(size(8, 8, 0, 8, 1) == 2 + 2 + 3 + 2 * 3 + 2 * 5 + 4 * 5 + 4 * 9);
  // 2 x 1: passes 1 (1x1) and 6 (1x1); the others have no column or no row.
  CHECK(size(2, 1, 2, 8, 1) == 4 + 4);
  CHECK(size(0x7fffffffu, 0x7fffffffu, 6, 16, 0) == ~std::uint64_t{0});  // beyond 2^64
}

TEST_CASE("decode: Adam7-interlaced PNGs decode as their non-interlaced twins", "[data]") {
  struct Case {
    int w, h, color_type, depth;
  };
  for (const Case& c : {Case{13, 11, 2, 8}, Case{13, 11, 0, 1}, Case{5, 9, 6, 16}, Case{9, 4, 0, 2},
                        Case{1, 1, 2, 8}, Case{2, 1, 2, 8}, Case{3, 5, 4, 8}}) {
    const int ch = c.color_type == 2 ? 3 : c.color_type == 4 ? 2 : c.color_type == 6 ? 4 : 1;
    INFO(c.w << " x " << c.h << ", colour type " << c.color_type << ", depth " << c.depth);
    std::vector<std::uint16_t> samples(static_cast<std::size_t>(c.w * c.h * ch));
    for (std::size_t i = 0; i < samples.size(); ++i)
      samples[i] = static_cast<std::uint16_t>((i * 2654435761u >> 7) & ((1u << c.depth) - 1));
    imgbytes::Ihdr h;
    h.width = static_cast<std::uint32_t>(c.w);
    h.height = static_cast<std::uint32_t>(c.h);
    h.color_type = c.color_type;
    h.bit_depth = c.depth;
    const Bytes flat = imgbytes::png_file(
        h, imgbytes::zlib_compress(imgbytes::png_raw(samples, c.w, c.h, ch, c.depth, false)));
    h.interlace = 1;
    const Bytes inter = imgbytes::png_file(
        h, imgbytes::zlib_compress(imgbytes::png_raw(samples, c.w, c.h, ch, c.depth, true)));
    const int out = ch >= 3 ? 3 : 1;
    const ds::Image8 a = ds::decode_image(flat.data(), flat.size(), "flat.png", out);
    const ds::Image8 b = ds::decode_image(inter.data(), inter.size(), "adam7.png", out);
    CHECK(b.width == c.w);
    CHECK(b.height == c.h);
    CHECK(b.pixels == a.pixels);
    // The values themselves: 8 bits as they are, 16 bits by their high byte, grey below 8 bits
    // scaled to 0..255 (1 bit: x 255, 2 bits: x 85); alpha dropped.
    for (std::size_t p = 0; p < static_cast<std::size_t>(c.w * c.h); ++p)
      for (int k = 0; k < out; ++k) {
        const std::uint16_t v =
            samples[p * static_cast<std::size_t>(ch) + static_cast<std::size_t>(k)];
        const int want = c.depth == 16  ? v >> 8
                         : c.depth == 8 ? v
                                        : v * (255 / ((1 << c.depth) - 1));
        REQUIRE(b.pixels[p * static_cast<std::size_t>(out) + static_cast<std::size_t>(k)] == want);
      }
  }
}

TEST_CASE("decode: PNGs written by stb_image_write still decode bit for bit", "[data]") {
  for (int comp = 1; comp <= 4; ++comp)
    for (int w : {1, 7, 40})
      for (int h : {1, 5, 30}) {
        INFO(w << " x " << h << " x " << comp);
        const Bytes px = imgbytes::pattern(w, h, comp, comp + w);
        const Bytes png = imgbytes::encode_png(w, h, comp, px);
        const int out = comp >= 3 ? 3 : 1;
        const ds::Image8 img = ds::decode_image(png.data(), png.size(), "w.png", out);
        REQUIRE(img.width == w);
        REQUIRE(img.height == h);
        for (std::size_t p = 0; p < static_cast<std::size_t>(w * h); ++p)
          for (int k = 0; k < out; ++k)
            REQUIRE(img.pixels[p * static_cast<std::size_t>(out) + static_cast<std::size_t>(k)] ==
                    px[p * static_cast<std::size_t>(comp) + static_cast<std::size_t>(k)]);
      }
}

TEST_CASE("decode: invalid IHDR fields are refused with their offset", "[data]") {
  const Bytes idat = imgbytes::zlib_compress(Bytes(200, 0));
  auto msg = [&](const imgbytes::Ihdr& h) {
    return error_of(imgbytes::png_file(h, idat), "h.png");
  };
  imgbytes::Ihdr h;
  h.width = 8;
  h.height = 8;
  REQUIRE(msg(h).empty());
  imgbytes::Ihdr b = h;
  b.color_type = 5;
  CHECK_THAT(msg(b), Catch::Contains("h.png at byte 25: a PNG colour type of 5"));
  b = h;
  b.bit_depth = 4;
  CHECK_THAT(msg(b), Catch::Contains("at byte 24: a PNG bit depth of 4 for colour type 2 "
                                     "(allowed: 8, 16)"));
  b = h;
  b.color_type = 3;
  b.bit_depth = 16;
  CHECK_THAT(msg(b), Catch::Contains("bit depth of 16 for colour type 3 (allowed: 1, 2, 4, 8)"));
  b = h;
  b.color_type = 0;
  b.bit_depth = 3;
  CHECK_THAT(msg(b), Catch::Contains("bit depth of 3 for colour type 0 (allowed: 1, 2, 4, 8, 16)"));
  b = h;
  b.compression = 1;
  CHECK_THAT(msg(b), Catch::Contains("at byte 26: a PNG compression method of 1"));
  b = h;
  b.filter = 1;
  CHECK_THAT(msg(b), Catch::Contains("at byte 27: a PNG filter method of 1"));
  b = h;
  b.interlace = 2;
  CHECK_THAT(msg(b), Catch::Contains("at byte 28: a PNG interlace method of 2"));
  b = h;
  b.width = 0;
  CHECK_THAT(msg(b), Catch::Contains("at byte 16: a PNG width of 0"));
  b = h;
  b.height = 0x80000000u;
  CHECK_THAT(msg(b), Catch::Contains("at byte 20: a PNG height of 2147483648"));
  // The IHDR must come first, 13 bytes long; Apple's CgBI variant is named.
  Bytes png = {0x89, 'P', 'N', 'G', 0x0d, 0x0a, 0x1a, 0x0a};
  imgbytes::put_chunk(png, "tEXt", Bytes{'a', 0, 'b'});
  imgbytes::put_chunk(png, "IEND", Bytes{});
  CHECK_THAT(error_of(png, "t.png"),
             Catch::Contains("expected the IHDR chunk first, found 'tEXt'"));
  png.resize(8);
  imgbytes::put_chunk(png, "CgBI", Bytes{0x50, 0, 0x20, 0x06});
  imgbytes::put_chunk(png, "IHDR", imgbytes::ihdr_data(h));
  CHECK_THAT(error_of(png, "c.png"), Catch::Contains("a CgBI PNG"));
  png.resize(8);
  Bytes short_ihdr = imgbytes::ihdr_data(h);
  short_ihdr.pop_back();
  imgbytes::put_chunk(png, "IHDR", short_ihdr);
  imgbytes::put_chunk(png, "IEND", Bytes{});
  CHECK_THAT(error_of(png, "s.png"), Catch::Contains("an IHDR chunk of 12 bytes (expected 13)"));
}

// Writes the hostile seeds of tests/fuzz/corpus/image/ made from these builders, into the folder
// named by FLOWPRIOR_SEED_DIR. Hidden: run by hand, ./test_data "[.seeds]".
TEST_CASE("decode: write the image fuzz seeds", "[.seeds]") {
  const char* dir = std::getenv("FLOWPRIOR_SEED_DIR");
  REQUIRE(dir != nullptr);
  auto put = [&](const std::string& name, const Bytes& b) {
    std::ofstream f(std::filesystem::path(dir) / name, std::ios::binary);
    f.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
  };
  const Bytes jpg = imgbytes::encode_jpg(16, 8, 3, imgbytes::pattern(16, 8, 3, 5), 50);
  const imgbytes::JpegLayout l = imgbytes::jpeg_layout(jpg);
  put("jpeg-truncated-in-scan", cut(jpg, (l.data[0] + l.data_end[0]) / 2));
  put("jpeg-truncated-before-eoi", cut(jpg, l.data_end[0]));
  Bytes after = jpg;
  after.insert(after.end(), {0xff, 0xd8, 0xff, 0xe1, 0x00, 0x10, 'E', 'x', 'i', 'f'});
  put("jpeg-bytes-after-eoi", after);
  imgbytes::Ihdr h;
  h.width = 4;
  h.height = 4;
  put("png-idat-bomb-1mib", imgbytes::png_file(h, imgbytes::zlib_zeros(1 << 20)));
  put("png-idat-short", imgbytes::png_file(h, imgbytes::zlib_compress(Bytes(39, 0))));
  const Bytes z = imgbytes::zlib_compress(imgbytes::pattern(13, 4, 1, 3));
  put("png-idat-stream-cut", imgbytes::png_file(h, cut(z, z.size() - 6)));
  std::vector<std::uint16_t> samples(13 * 11 * 3);
  for (std::size_t i = 0; i < samples.size(); ++i)
    samples[i] = static_cast<std::uint16_t>(i * 37 & 0xff);
  imgbytes::Ihdr a;
  a.width = 13;
  a.height = 11;
  a.interlace = 1;
  put("png-adam7-rgb", imgbytes::png_file(a, imgbytes::zlib_compress(
                                                 imgbytes::png_raw(samples, 13, 11, 3, 8, true))));
  imgbytes::Ihdr g = a;
  g.color_type = 0;
  g.bit_depth = 1;
  for (auto& v : samples) v &= 1;
  put("png-adam7-grey-1bit", imgbytes::png_file(g, imgbytes::zlib_compress(imgbytes::png_raw(
                                                       samples, 13, 11, 1, 1, true))));
  imgbytes::Ihdr bad = h;
  bad.bit_depth = 4;
  put("png-ihdr-rgb-4bit", imgbytes::png_file(bad, imgbytes::zlib_compress(Bytes(40, 0))));
}
