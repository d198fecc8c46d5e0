// IDX files of flowprior::datasets (idx.hpp, docs/data.md "IDX"): round trips of files written
// here, raw and gzipped (one and two gzip members), every corruption a typed error naming the
// file, and the real Fashion-MNIST files of Debian's dataset-fashion-mnist when installed.
#include <zlib.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <flowprior/datasets/idx.hpp>
#include <flowprior/datasets/source.hpp>
#include <fstream>
#include <string>
#include <vector>

#include "catch.hpp"
#include "fixtures.hpp"

namespace {

namespace ds = flowprior::datasets;
using flowprior::io_error;
using Bytes = std::vector<std::uint8_t>;

// An IDX stream: the magic, big-endian dims, then `payload` (already big-endian).
Bytes idx_bytes(std::uint8_t type, const std::vector<std::uint32_t>& dims, const Bytes& payload) {
  Bytes b = {0, 0, type, static_cast<std::uint8_t>(dims.size())};
  for (std::uint32_t d : dims)
    for (int s = 24; s >= 0; s -= 8) b.push_back(static_cast<std::uint8_t>(d >> s));
  b.insert(b.end(), payload.begin(), payload.end());
  return b;
}

// A gzip member of `raw` (deflate with the gzip wrapper, windowBits 15 + 16).
Bytes gzip(const Bytes& raw) {
  z_stream zs;
  std::memset(&zs, 0, sizeof zs);
  REQUIRE(deflateInit2(&zs, 6, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) == Z_OK);
  Bytes out(deflateBound(&zs, static_cast<uLong>(raw.size())) + 64);
  zs.next_in = const_cast<Bytef*>(raw.data());
  zs.avail_in = static_cast<uInt>(raw.size());
  zs.next_out = out.data();
  zs.avail_out = static_cast<uInt>(out.size());
  REQUIRE(deflate(&zs, Z_FINISH) == Z_STREAM_END);
  out.resize(zs.total_out);
  deflateEnd(&zs);
  return out;
}

void write(const std::string& path, const Bytes& b) {
  std::ofstream f(path, std::ios::binary);
  f.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
}

// The message of the io_error `f` throws ("" if none).
template <class F>
std::string io_message(F&& f) {
  try {
    f();
  } catch (const io_error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("idx: every element type round-trips, raw and gzipped", "[data]") {
  fpt::TempDir dir("idx");
  // 2 x 3 of each type, big-endian payloads written by hand.
  const Bytes u8 = {0, 1, 2, 253, 254, 255};
  auto a = ds::parse_idx(idx_bytes(0x08, {2, 3}, u8).data(), 4 + 8 + 6, "u8");
  REQUIRE(a.info.type == ds::IdxType::U8);
  REQUIRE(a.info.dims == std::vector<std::int64_t>{2, 3});
  REQUIRE(a.info.numel == 6);
  CHECK(a.value(5) == 255);
  const Bytes i8 = {0x80, 0xff, 0, 1, 0x7f, 2};
  Bytes f = idx_bytes(0x09, {6}, i8);
  a = ds::parse_idx(f.data(), f.size(), "i8");
  CHECK(a.value(0) == -128);
  CHECK(a.value(1) == -1);
  CHECK(a.value(4) == 127);
  f = idx_bytes(0x0B, {2}, {0x80, 0x00, 0x12, 0x34});
  a = ds::parse_idx(f.data(), f.size(), "i16");
  CHECK(a.value(0) == -32768);
  CHECK(a.value(1) == 0x1234);
  f = idx_bytes(0x0C, {1}, {0xff, 0xff, 0xff, 0xfe});
  a = ds::parse_idx(f.data(), f.size(), "i32");
  CHECK(a.value(0) == -2);
  f = idx_bytes(0x0D, {1}, {0x3f, 0xc0, 0x00, 0x00});  // 1.5f
  a = ds::parse_idx(f.data(), f.size(), "f32");
  CHECK(a.value(0) == 1.5);
  f = idx_bytes(0x0E, {1}, {0xc0, 0x04, 0, 0, 0, 0, 0, 0});  // -2.5
  a = ds::parse_idx(f.data(), f.size(), "f64");
  CHECK(a.value(0) == -2.5);

  // Files: images (3, 2, 4) and labels, raw and gzipped, give the same arrays.
  Bytes pixels(24);
  for (std::size_t i = 0; i < pixels.size(); ++i) pixels[i] = static_cast<std::uint8_t>(10 * i);
  const Bytes images = idx_bytes(0x08, {3, 2, 4}, pixels), labels = idx_bytes(0x08, {3}, {7, 0, 9});
  write(dir / "img", images);
  write(dir / "lab", labels);
  write(dir / "img.gz", gzip(images));
  write(dir / "lab.gz", gzip(labels));
  // Two gzip members are one stream, as gzip -d reads them.
  Bytes halves = gzip(Bytes(images.begin(), images.begin() + 10));
  const Bytes rest = gzip(Bytes(images.begin() + 10, images.end()));
  halves.insert(halves.end(), rest.begin(), rest.end());
  write(dir / "img2.gz", halves);
  for (const char* name : {"img", "img.gz", "img2.gz"}) {
    const ds::IdxArray r = ds::read_idx(dir / name);
    CHECK(r.info.dims == std::vector<std::int64_t>{3, 2, 4});
    CHECK(r.data == pixels);
  }
  const ds::ImageArray set = ds::read_idx_images(dir / "img.gz", dir / "lab");
  CHECK(set.count == 3);
  CHECK(set.height == 2);
  CHECK(set.width == 4);
  CHECK(set.labels == std::vector<int>{7, 0, 9});
  CHECK(set.pixels == pixels);
  // The same through ArraySource: v / 127.5 - 1, image by image.
  ds::ArraySource src(set);
  std::vector<float> out(8);
  ds::SampleRng rng(0, 0, 1);
  std::string why;
  REQUIRE(src.load(1, rng, out.data(), why));
  for (int k = 0; k < 8; ++k)
    CHECK(out[static_cast<std::size_t>(k)] == Approx(10.0 * (8 + k) / 127.5 - 1.0));
}

TEST_CASE("idx: every corruption is an io_error naming the file and the offset", "[data]") {
  const Bytes good = idx_bytes(0x08, {2, 3}, {1, 2, 3, 4, 5, 6});
  auto msg = [](const Bytes& b) {
    return io_message([&] { (void)ds::parse_idx(b.data(), b.size(), "bad.idx"); });
  };
  CHECK(msg(good).empty());
  CHECK_THAT(msg(Bytes{}),
             Catch::Contains("bad.idx at byte 0") && Catch::Contains("4-byte IDX magic"));
  CHECK_THAT(msg(Bytes{0, 0, 8}), Catch::Contains("after 3 bytes"));
  Bytes b = good;
  b[1] = 1;
  CHECK_THAT(msg(b), Catch::Contains("two zero bytes") && Catch::Contains("0x01"));
  b = good;
  b[2] = 0x0A;
  CHECK_THAT(msg(b), Catch::Contains("at byte 2") && Catch::Contains("type byte") &&
                         Catch::Contains("0x0a"));
  b = good;
  b[3] = 0;
  CHECK_THAT(msg(b), Catch::Contains("at least one dimension"));
  b = good;
  b[3] = 5;  // five dims announced, the header runs into the data and past the end
  CHECK_THAT(msg(b), Catch::Contains("5 dimensions"));
  CHECK_THAT(msg(Bytes(good.begin(), good.end() - 1)),
             Catch::Contains("expected 6 data bytes") && Catch::Contains("truncated"));
  b = good;
  b.push_back(0);
  CHECK_THAT(msg(b), Catch::Contains("at byte 18") && Catch::Contains("1 extra bytes"));
  // Dims whose product overflows: 4 x 2^32-1 of f64.
  b = idx_bytes(0x0E, {0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu}, {});
  CHECK_THAT(msg(b), Catch::Contains("overflows"));
  // Huge but not overflowing dims against a short file: truncated, nothing allocated.
  b = idx_bytes(0x08, {0xffffffffu, 0xffffu}, {1, 2});
  CHECK_THAT(msg(b), Catch::Contains("truncated"));

  // Gzip: truncated, corrupt (a flipped byte fails zlib's CRC or the inflate), trailing bytes,
  // and a stream that inflates beyond the limit.
  const Bytes z = gzip(good);
  auto zmsg = [](const Bytes& bytes, std::uint64_t max = std::uint64_t{1} << 32) {
    ds::IdxReadOptions opt;
    opt.max_bytes = max;
    return io_message([&] { (void)ds::parse_idx_file(bytes.data(), bytes.size(), "bad.gz", opt); });
  };
  CHECK(zmsg(z).empty());
  CHECK_THAT(zmsg(Bytes(z.begin(), z.end() - 3)), Catch::Contains("truncated"));
  CHECK_THAT(zmsg(Bytes(z.begin(), z.begin() + 2)), Catch::Contains("truncated"));
  b = z;
  b[b.size() - 6] ^= 0x40;  // inside the CRC-32 of the trailer
  CHECK_THAT(zmsg(b), Catch::Contains("corrupt gzip stream"));
  b = z;
  b.push_back(0);
  CHECK_THAT(zmsg(b), Catch::Contains("1 trailing bytes"));
  CHECK_THAT(zmsg(z, 10), Catch::Contains("more than 10 bytes"));
  CHECK(zmsg(z, good.size()).empty());  // exactly at the limit is fine
  // A gzipped stream with a bad IDX inside names the inflated stream.
  Bytes inner = good;
  inner[2] = 0x01;
  CHECK_THAT(zmsg(gzip(inner)), Catch::Contains("bad.gz (inflated) at byte 2"));

  // Files: missing, a directory, images and labels that do not pair.
  fpt::TempDir dir("idxbad");
  CHECK_THROWS_AS(ds::read_idx(dir / "missing"), io_error);
  CHECK_THROWS_AS(ds::read_idx(dir.dir.string()), io_error);
  write(dir / "img", idx_bytes(0x08, {2, 1, 1}, {1, 2}));
  write(dir / "lab3", idx_bytes(0x08, {3}, {1, 2, 3}));
  write(dir / "lab_i16", idx_bytes(0x0B, {2}, {0, 1, 0, 2}));
  CHECK_THAT(io_message([&] { (void)ds::read_idx_images(dir / "img", dir / "lab3"); }),
             Catch::Contains("expected 2 labels"));
  CHECK_THAT(io_message([&] { (void)ds::read_idx_images(dir / "img", dir / "lab_i16"); }),
             Catch::Contains("expected labels: u8"));
  CHECK_THAT(io_message([&] { (void)ds::read_idx_images(dir / "lab3", dir / "lab3"); }),
             Catch::Contains("expected images: u8 with dims (count, rows, cols)"));
}

TEST_CASE("idx: the real Fashion-MNIST files when installed", "[data]") {
  const std::string dir = ds::fashion_mnist_dir();
  if (!std::filesystem::exists(ds::mnist_file(dir, ds::Split::Train, true))) {
    WARN("Fashion-MNIST is not installed (Debian dataset-fashion-mnist): skipped");
    return;
  }
  for (ds::Split split : {ds::Split::Train, ds::Split::Test}) {
    const ds::ImageArray a = ds::load_fashion_mnist(split, dir);
    const std::int64_t n = split == ds::Split::Train ? 60000 : 10000;
    CHECK(a.count == n);
    CHECK(a.height == 28);
    CHECK(a.width == 28);
    CHECK(a.pixels.size() == static_cast<std::size_t>(n * 784));
    std::vector<int> per_class(10, 0);
    for (int l : a.labels) {
      REQUIRE(l >= 0);
      REQUIRE(l <= 9);
      ++per_class[static_cast<std::size_t>(l)];
    }
    for (int c : per_class) CHECK(c == n / 10);  // Fashion-MNIST is balanced
    std::uint8_t lo = 255, hi = 0;
    for (std::uint8_t p : a.pixels) {
      lo = std::min(lo, p);
      hi = std::max(hi, p);
    }
    CHECK(lo == 0);
    CHECK(hi == 255);
  }
}
