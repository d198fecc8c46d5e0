// NumPy .npy reading and writing (include/flowprior/io/npy.hpp, docs/formats.md "NumPy .npy"):
// round trips, byte-exact files as NumPy writes them, hand-made version 2.0/3.0 files, the
// (count, dim) <-> (dim, count) sample mapping, every malformed-input error, atomic writes.
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <flowprior/io/npy.hpp>
#include <limits>
#include <string>
#include <vector>

#include "catch.hpp"
#include "fixtures.hpp"

namespace {

namespace fs = std::filesystem;
using flowprior::io_error;
using flowprior::io::NpyArray;
using Bytes = std::vector<std::uint8_t>;
using Shape = std::vector<std::int64_t>;

using TempDir = fpt::TempDir;

Bytes to_bytes(const std::string& s) { return Bytes(s.begin(), s.end()); }

Bytes read_bytes(const std::string& path) { return flowprior::io::read_file(path); }

template <class T>
void append_values(Bytes& b, const std::vector<T>& v) {
  const auto* p = reinterpret_cast<const std::uint8_t*>(v.data());
  b.insert(b.end(), p, p + v.size() * sizeof(T));
}

/// A .npy file: magic, version major.0, little-endian header length (u16 for 1.0, u32 otherwise),
/// `header` verbatim (the caller pads it), then `data`.
Bytes make_npy(int major, const std::string& header, const Bytes& data = {}) {
  Bytes b = to_bytes(std::string("\x93NUMPY", 6));
  b.push_back(static_cast<std::uint8_t>(major));
  b.push_back(0);
  const std::size_t len_bytes = major == 1 ? 2 : 4;
  for (std::size_t i = 0; i < len_bytes; ++i)
    b.push_back(static_cast<std::uint8_t>((header.size() >> (8 * i)) & 0xff));
  b.insert(b.end(), header.begin(), header.end());
  b.insert(b.end(), data.begin(), data.end());
  return b;
}

/// `dict` padded with spaces and '\n' so that the preamble is a multiple of 64 bytes.
std::string padded(int major, const std::string& dict) {
  const std::size_t prefix = major == 1 ? 10 : 12;
  std::string h = dict;
  while ((prefix + h.size() + 1) % 64 != 0) h += ' ';
  return h + "\n";
}

/// A v1.0 '<f4' file of shape `shape_text` holding `values`.
Bytes f4_file(const std::string& shape_text, const std::vector<float>& values) {
  Bytes data;
  append_values(data, values);
  return make_npy(
      1, padded(1, "{'descr': '<f4', 'fortran_order': False, 'shape': " + shape_text + ", }"),
      data);
}

std::string message_of(const Bytes& b, bool allow_nonfinite = true) {
  try {
    flowprior::io::parse_npy<double>(b.data(), b.size(), "case.npy", allow_nonfinite);
  } catch (const io_error& e) {
    return e.what();
  }
  return "(no exception)";
}

/// parse_npy (float and double) throws io_error whose message names the file, the byte offset
/// and contains `part`.
void require_io_error(const Bytes& b, std::uint64_t offset, const std::string& part,
                      bool allow_nonfinite = true) {
  const std::string msg = message_of(b, allow_nonfinite);
  CAPTURE(msg);
  REQUIRE(msg.find("case.npy at byte " + std::to_string(offset) + ": expected") !=
          std::string::npos);
  REQUIRE(msg.find(part) != std::string::npos);
  REQUIRE_THROWS_AS(flowprior::io::parse_npy<float>(b.data(), b.size(), "f", allow_nonfinite),
                    io_error);
}

template <class S>
std::vector<S> iota_values(std::size_t n) {
  std::vector<S> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = static_cast<S>(0.5 * static_cast<double>(i) - 3.25);
  return v;
}

}  // namespace

TEMPLATE_TEST_CASE("npy: write then read round trips every shape and order", "[io]", float,
                   double) {
  using S = TestType;
  TempDir tmp;
  const std::vector<Shape> shapes = {{2, 3}, {4}, {}, {0}, {0, 3}, {3, 0, 2}, {2, 3, 4}, {1, 1, 5}};
  for (const Shape& shape : shapes) {
    for (bool fortran : {false, true}) {
      CAPTURE(flowprior::io::detail::npy_shape_str(shape), fortran);
      std::size_t n = 1;
      for (auto d : shape) n *= static_cast<std::size_t>(d);
      const std::vector<S> v = iota_values<S>(n);
      const std::string path = tmp / "a.npy";
      flowprior::io::write_npy<S>(path, v.data(), shape, fortran);
      const Bytes bytes = read_bytes(path);
      REQUIRE(bytes.size() % 64 == n * sizeof(S) % 64);  // 64-byte aligned preamble

      const NpyArray<S> a = flowprior::io::read_npy<S>(path);
      REQUIRE(a.info.descr == (sizeof(S) == 4 ? "<f4" : "<f8"));
      REQUIRE(a.info.fortran_order == fortran);
      REQUIRE(a.info.shape == shape);
      REQUIRE(a.info.major == 1);
      REQUIRE(a.info.minor == 0);
      REQUIRE(a.info.data_offset % 64 == 0);
      REQUIRE(a.info.numel() == n);
      REQUIRE(a.data == v);

      // The other precision converts element by element.
      const auto b = flowprior::io::read_npy<double>(path);
      for (std::size_t i = 0; i < n; ++i) REQUIRE(b.data[i] == static_cast<double>(v[i]));
    }
  }
  REQUIRE(tmp.entries() == std::vector<std::string>{"a.npy"});
}

TEST_CASE("npy: byte-exact file as numpy 2.x saves a (2, 3) float64 C-order array", "[io]") {
  // numpy.save('x.npy', np.arange(1., 7.).reshape(2, 3)): keys sorted, 21 - len('2') = 20 growth
  // spaces after the dict, then 38 spaces of padding and '\n': 10 + 118 = 128 bytes of preamble.
  const std::string header = "{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3), }" +
                             std::string(20 + 38, ' ') + "\n";
  REQUIRE(header.size() == 0x76);
  Bytes file = to_bytes(std::string("\x93NUMPY\x01\x00\x76\x00", 10) + header);
  const std::uint8_t data[6][8] = {{0, 0, 0, 0, 0, 0, 0xf0, 0x3f}, {0, 0, 0, 0, 0, 0, 0x00, 0x40},
                                   {0, 0, 0, 0, 0, 0, 0x08, 0x40}, {0, 0, 0, 0, 0, 0, 0x10, 0x40},
                                   {0, 0, 0, 0, 0, 0, 0x14, 0x40}, {0, 0, 0, 0, 0, 0, 0x18, 0x40}};
  for (const auto& d : data) file.insert(file.end(), d, d + 8);
  REQUIRE(file.size() == 128 + 48);

  const auto a = flowprior::io::parse_npy<double>(file.data(), file.size(), "x.npy");
  REQUIRE(a.info.shape == Shape{2, 3});
  REQUIRE_FALSE(a.info.fortran_order);
  REQUIRE(a.info.data_offset == 128);
  REQUIRE(a.data == std::vector<double>{1, 2, 3, 4, 5, 6});

  // write_npy produces exactly these bytes.
  TempDir tmp;
  flowprior::io::write_npy<double>(tmp / "w.npy", a.data.data(), {2, 3});
  REQUIRE(read_bytes(tmp / "w.npy") == file);

  // As samples: 2 rows = 2 samples of dim 3, same memory.
  const auto s = flowprior::io::parse_npy_samples<double>(file.data(), file.size(), "x.npy");
  REQUIRE(s.dim == 3);
  REQUIRE(s.count == 2);
  REQUIRE(s.data == a.data);
}

TEST_CASE("npy: byte-exact file as numpy 1.x saves a (2, 2) float32 Fortran-order array", "[io]") {
  // Older numpy (no growth spaces): the 58-byte dict, 59 spaces and '\n': 10 + 118 = 128 bytes.
  // Data in Fortran order: a = [[1, 3], [2, 4]] is stored 1, 2, 3, 4.
  const std::string header =
      "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2), }" + std::string(59, ' ') + "\n";
  REQUIRE(header.size() == 118);
  Bytes file = to_bytes(std::string("\x93NUMPY\x01\x00\x76\x00", 10) + header);
  const std::uint8_t data[] = {0, 0, 0x80, 0x3f, 0, 0, 0x00, 0x40,
                               0, 0, 0x40, 0x40, 0, 0, 0x80, 0x40};
  file.insert(file.end(), data, data + sizeof data);

  const auto a = flowprior::io::parse_npy<float>(file.data(), file.size(), "f.npy");
  REQUIRE(a.info.fortran_order);
  REQUIRE(a.info.shape == Shape{2, 2});
  REQUIRE(a.data == std::vector<float>{1, 2, 3, 4});  // file element order

  // Samples are rows: (1, 3) and (2, 4), so the (dim, count) column-major data is 1, 3, 2, 4.
  const auto s = flowprior::io::parse_npy_samples<float>(file.data(), file.size(), "f.npy");
  REQUIRE(s.dim == 2);
  REQUIRE(s.count == 2);
  REQUIRE(s.data == std::vector<float>{1, 3, 2, 4});
}

TEST_CASE("npy: hand-made version 2.0 and 3.0 files", "[io]") {
  SECTION("2.0: u32 header length, 12-byte prefix") {
    Bytes data;
    append_values(data, std::vector<double>{0.5, -1.5, 2.5});
    const Bytes f =
        make_npy(2, padded(2, "{'descr': '<f8', 'fortran_order': False, 'shape': (3,), }"), data);
    REQUIRE(f[8] == 128 - 12);
    REQUIRE(f[9] == 0);
    const auto a = flowprior::io::parse_npy<double>(f.data(), f.size(), "v2.npy");
    REQUIRE(a.info.major == 2);
    REQUIRE(a.info.minor == 0);
    REQUIRE(a.info.data_offset == 128);
    REQUIRE(a.info.shape == Shape{3});
    REQUIRE(a.data == std::vector<double>{0.5, -1.5, 2.5});
  }
  SECTION("3.0: UTF-8 header, double quotes, other key order, no trailing comma") {
    Bytes data;
    append_values(data, std::vector<float>{1, 2, 3, 4, 5, 6});
    const Bytes f = make_npy(
        3, padded(3, "{\"shape\": (3, 2), \"fortran_order\": True, \"descr\": \"<f4\"}"), data);
    const auto a = flowprior::io::parse_npy<float>(f.data(), f.size(), "v3.npy");
    REQUIRE(a.info.major == 3);
    REQUIRE(a.info.fortran_order);
    REQUIRE(a.info.shape == Shape{3, 2});
    REQUIRE(a.data == std::vector<float>{1, 2, 3, 4, 5, 6});
  }
  SECTION("write_npy switches to 2.0 when the header exceeds 65535 bytes") {
    TempDir tmp;
    const Shape shape(22000, 1);  // "1, " x 22000 > 65535 bytes of header
    const float v = 7.5f;
    flowprior::io::write_npy<float>(tmp / "big.npy", &v, shape);
    const auto a = flowprior::io::read_npy<float>(tmp / "big.npy");
    REQUIRE(a.info.major == 2);
    REQUIRE(a.info.data_offset % 64 == 0);
    REQUIRE(a.info.shape == shape);
    REQUIRE(a.data == std::vector<float>{7.5f});
  }
}

TEST_CASE("npy: accepted header spellings", "[io]") {
  const std::vector<float> v = {1, 2, 3, 4, 5, 6};
  Bytes data;
  append_values(data, v);
  const std::vector<std::string> dicts = {
      "{'descr':'<f4','fortran_order':False,'shape':(2,3)}",
      "{ 'descr' : '<f4' , 'fortran_order' : False , 'shape' : ( 2 , 3 , ) , }",
      "{'shape': (2L, 3L), 'descr': '<f4', 'fortran_order': False}",  // Python 2 longs
      "{\t'descr': \"<f4\",\n 'fortran_order': False, 'shape': (2, 3), }",
  };
  for (const std::string& d : dicts) {
    CAPTURE(d);
    const Bytes f = make_npy(1, padded(1, d), data);
    const auto a = flowprior::io::parse_npy<float>(f.data(), f.size(), "ok.npy");
    REQUIRE(a.info.shape == Shape{2, 3});
    REQUIRE(a.data == v);
  }
  // Any alignment is accepted on read (very old files align to 16 bytes).
  std::string h = "{'descr': '<f4', 'fortran_order': False, 'shape': (6,), }";
  while ((10 + h.size() + 1) % 16 != 0) h += ' ';
  const Bytes f16 = make_npy(1, h + "\n", data);
  REQUIRE(flowprior::io::parse_npy<float>(f16.data(), f16.size(), "a16").data == v);
  const Bytes f0 = make_npy(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (6,)}\n", data);
  REQUIRE(flowprior::io::parse_npy<float>(f0.data(), f0.size(), "a0").info.data_offset == 66);
}

TEST_CASE("npy: float16 files are read", "[io]") {
  // 1.0, -2.0, 65504 (max), 2^-24 (smallest subnormal), +inf, 0.
  const std::vector<std::uint16_t> h = {0x3c00, 0xc000, 0x7bff, 0x0001, 0x7c00, 0x0000};
  Bytes data;
  append_values(data, h);
  const Bytes f =
      make_npy(1, padded(1, "{'descr': '<f2', 'fortran_order': False, 'shape': (6,), }"), data);
  const auto a = flowprior::io::parse_npy<double>(f.data(), f.size(), "h.npy");
  REQUIRE(a.info.descr == "<f2");
  REQUIRE(a.data[0] == 1.0);
  REQUIRE(a.data[1] == -2.0);
  REQUIRE(a.data[2] == 65504.0);
  REQUIRE(a.data[3] == std::ldexp(1.0, -24));
  REQUIRE(std::isinf(a.data[4]));
  REQUIRE(a.data[5] == 0.0);
  const Bytes nan = make_npy(
      1, padded(1, "{'descr': '<f2', 'fortran_order': False, 'shape': (1,), }"), Bytes{0x01, 0x7e});
  REQUIRE(std::isnan(flowprior::io::parse_npy<float>(nan.data(), nan.size(), "n").data[0]));
}

TEMPLATE_TEST_CASE("npy: samples layout conversions", "[io]", float, double) {
  using S = TestType;
  using flowprior::io::parse_npy_samples;
  auto file = [](const std::string& shape, bool fortran, const std::vector<S>& v) {
    Bytes data;
    append_values(data, v);
    return make_npy(1,
                    padded(1, std::string("{'descr': '") + (sizeof(S) == 4 ? "<f4" : "<f8") +
                                  "', 'fortran_order': " + (fortran ? "True" : "False") +
                                  ", 'shape': " + shape + ", }"),
                    data);
  };
  SECTION("(count, dim) C order is (dim, count) column-major as is") {
    const std::vector<S> v = iota_values<S>(12);
    const Bytes f = file("(4, 3)", false, v);
    const auto s = parse_npy_samples<S>(f.data(), f.size(), "s");
    REQUIRE(s.dim == 3);
    REQUIRE(s.count == 4);
    REQUIRE(s.data == v);
  }
  SECTION("(count, dim) Fortran order is transposed") {
    const std::vector<S> v = iota_values<S>(12);  // element (r, c) at r + 4 c
    const Bytes f = file("(4, 3)", true, v);
    const auto s = parse_npy_samples<S>(f.data(), f.size(), "s");
    REQUIRE(s.dim == 3);
    REQUIRE(s.count == 4);
    for (std::size_t r = 0; r < 4; ++r)
      for (std::size_t c = 0; c < 3; ++c) REQUIRE(s.data[c + 3 * r] == v[r + 4 * c]);
  }
  SECTION("(count,) is dim 1, in either order") {
    const std::vector<S> v = iota_values<S>(5);
    for (bool fortran : {false, true}) {
      const Bytes f = file("(5,)", fortran, v);
      const auto s = parse_npy_samples<S>(f.data(), f.size(), "s");
      REQUIRE(s.dim == 1);
      REQUIRE(s.count == 5);
      REQUIRE(s.data == v);
    }
  }
  SECTION("(batch, tokens, dim): every token is a sample") {
    const std::vector<S> v = iota_values<S>(2 * 3 * 4);
    const Bytes c = file("(2, 3, 4)", false, v);
    const auto sc = parse_npy_samples<S>(c.data(), c.size(), "s");
    REQUIRE(sc.dim == 4);
    REQUIRE(sc.count == 6);
    REQUIRE(sc.data == v);                       // C order: sample b*3 + t is data[(b*3 + t)*4 ...]
    const Bytes f = file("(2, 3, 4)", true, v);  // element (b, t, d) at b + 2 (t + 3 d)
    const auto sf = parse_npy_samples<S>(f.data(), f.size(), "s");
    REQUIRE(sf.dim == 4);
    REQUIRE(sf.count == 6);
    for (std::size_t b = 0; b < 2; ++b)
      for (std::size_t t = 0; t < 3; ++t)
        for (std::size_t d = 0; d < 4; ++d)
          REQUIRE(sf.data[d + 4 * (b * 3 + t)] == v[b + 2 * (t + 3 * d)]);
    const Bytes f1 = file("(2, 3, 1)", true, iota_values<S>(6));  // dim 1 still needs the reorder
    const auto s1 = parse_npy_samples<S>(f1.data(), f1.size(), "s");
    REQUIRE(s1.data[1] == iota_values<S>(6)[2]);  // (b=0, t=1) is at 0 + 2*1
  }
  SECTION("zero-size samples") {
    const Bytes f = file("(0, 7)", true, {});
    const auto s = parse_npy_samples<S>(f.data(), f.size(), "s");
    REQUIRE(s.dim == 7);
    REQUIRE(s.count == 0);
    REQUIRE(s.data.empty());
  }
  SECTION("0-d and 4-d arrays are not sample arrays") {
    const Bytes f0 = file("()", false, {S(1)});
    REQUIRE_THROWS_AS(parse_npy_samples<S>(f0.data(), f0.size(), "s"), io_error);
    const Bytes f4 = file("(1, 1, 1, 1)", false, {S(1)});
    REQUIRE_THROWS_WITH(parse_npy_samples<S>(f4.data(), f4.size(), "s"),
                        Catch::Contains("at byte 10") && Catch::Contains("(1, 1, 1, 1)"));
  }
  SECTION("write_npy_samples writes (count, dim) C order; read_npy_samples inverts it") {
    TempDir tmp;
    const std::vector<S> v = iota_values<S>(10);  // dim 2, count 5, column-major
    flowprior::io::write_npy_samples<S>(tmp / "s.npy", v.data(), 2, 5);
    const auto a = flowprior::io::read_npy<S>(tmp / "s.npy");
    REQUIRE(a.info.shape == Shape{5, 2});
    REQUIRE_FALSE(a.info.fortran_order);
    REQUIRE(a.data == v);
    const auto s = flowprior::io::read_npy_samples<S>(tmp / "s.npy");
    REQUIRE(s.dim == 2);
    REQUIRE(s.count == 5);
    REQUIRE(s.data == v);
  }
}

TEST_CASE("npy: malformed preambles throw io_error with the byte offset", "[io]") {
  const std::string ok_dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }";
  const Bytes ok = f4_file("(2,)", {1, 2});
  REQUIRE(message_of(ok) == "(no exception)");

  require_io_error({}, 0, "found the end of the file after 0 bytes");
  require_io_error(Bytes(ok.begin(), ok.begin() + 3), 3, "magic");
  Bytes bad_magic = ok;
  bad_magic[1] = 'X';
  require_io_error(bad_magic, 1, "found \\x93XUMPY");
  require_io_error(Bytes(ok.begin(), ok.begin() + 7), 7, "version bytes");
  Bytes v4 = ok;
  v4[6] = 4;
  require_io_error(v4, 6, "found 4.0");
  Bytes v11 = ok;
  v11[7] = 1;
  require_io_error(v11, 6, "found 1.1");
  require_io_error(Bytes(ok.begin(), ok.begin() + 9), 9, "2-byte header length");
  const Bytes v2 = make_npy(2, padded(2, ok_dict));
  require_io_error(Bytes(v2.begin(), v2.begin() + 11), 11, "4-byte header length");
  Bytes long_header = ok;
  long_header[8] = 0xff;
  long_header[9] = 0xff;
  require_io_error(long_header, 8, "header of 65535 bytes from byte 10, found only");
  const Bytes v3_huge = make_npy(3, "");  // header length 0 ...
  Bytes v3 = v3_huge;
  v3[8] = v3[9] = v3[10] = v3[11] = 0xff;  // ... now 4294967295, far past the end
  require_io_error(v3, 8, "header of 4294967295 bytes");
}

TEST_CASE("npy: malformed header dicts throw io_error with the byte offset", "[io]") {
  // (dict, offset of the error inside the header, part of the message)
  struct Case {
    std::string dict;
    std::size_t at;
    std::string part;
  };
  const std::string D = "'descr': '<f4', ";
  const std::string F = "'fortran_order': False, ";
  const std::vector<Case> cases = {
      {"", 1, "'{' opening the header dict in the header, found the end of the header"},
      {"['descr', '<f4']", 0, "found '['"},
      {"{" + D + F + "}", 41, "expected the key 'shape'"},
      {"{'shape': (2,), " + F + "}", 40, "expected the key 'descr'"},
      {"{" + D + "'shape': (2,), }", 32, "expected the key 'fortran_order'"},
      {"{" + D + F + "'shape': (2,), 'extra': 1}", 56, "found 'extra'"},
      {"{" + D + F + "'shape': (2,), 'descr': '<f4'}", 56, "found 'descr' twice"},
      {"{'descr': '>f4', " + F + "'shape': (2,)}", 10, "found descr '>f4'"},
      {"{'descr': '<i8', " + F + "'shape': (2,)}", 10, "found descr '<i8'"},
      {"{'descr': '|O', " + F + "'shape': (2,)}", 10, "found descr '|O'"},
      {"{'descr': [('a', '<f4'), ('b', '<f8')], " + F + "'shape': (2,)}", 10,
       "structured dtype [('a', '<f4'), ('b', '<f8')]"},
      {"{'descr': 3, " + F + "'shape': (2,)}", 10, "found 3"},
      {"{" + D + "'fortran_order': false, 'shape': (2,)}", 34, "found 'false'"},
      {"{" + D + "'fortran_order': 1, 'shape': (2,)}", 34, "found '1'"},
      {"{" + D + F + "'shape': (2)}", 52, "',' after the only dimension"},
      {"{" + D + F + "'shape': 2}", 50, "shape tuple '('"},
      {"{" + D + F + "'shape': [2]}", 50, "shape tuple '('"},
      {"{" + D + F + "'shape': (-1, 2)}", 51, "non-negative dimension, found '-'"},
      {"{" + D + F + "'shape': (2,, 3)}", 53, "a dimension"},
      {"{" + D + F + "'shape': (a,)}", 51, "a dimension"},
      {"{" + D + F + "'shape': (02,)}", 52, "no leading zero"},
      {"{" + D + F + "'shape': (2 3)}", 53, "',' or ')' in the shape tuple"},
      {"{" + D + F + "'shape': (99999999999999999999,)}", 51, "at most 2^63-1"},
      {"{" + D + F + "'shape': (4294967296, 4294967296)}", 50, "size overflows"},
      {"{" + D + F + "'shape': (2,), 'x}", 59,
       "printable character in a string in the header, found byte 0x0a"},
      {"{'de\\u0073cr': '<f4', " + F + "'shape': (2,)}", 4, "without escape sequences"},
      {"{" + D + F + "'shape': (2,)} x", 56, "only space padding"},
      {"{" + D + F + "'shape': (2,)}}", 55, "only space padding"},
      {"{" + D + F + "'shape': (2,) 'x': 1}", 55, "',' or '}' after the value of 'shape'"},
      {"{" + D + F + "'shape': (2,)", 55, "',' or '}' after the value of 'shape'"},
      {"{" + D + ", " + F + "'shape': (2,)}", 17, "a quoted key or '}'"},
      {"{" + D + F + "'shape': (2,)," + std::string(1, '\x01') + "}", 55, "byte 0x01"},
  };
  for (const Case& c : cases) {
    CAPTURE(c.dict);
    const std::string header = c.dict + "\n";
    Bytes data;
    append_values(data, std::vector<float>{1, 2});
    require_io_error(make_npy(1, header, data), 10 + c.at, c.part);
    // Version 2.0 shifts every offset by 2.
    require_io_error(make_npy(2, header, data), 12 + c.at, c.part);
  }
  // A header that does not end in '\n' (the last header byte is reported).
  const Bytes no_nl =
      make_npy(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2,)} ", Bytes(8, 0));
  require_io_error(no_nl, 10 + 55, "'\\n' as the last header byte");
  // A string cut by the end of the header.
  require_io_error(make_npy(1, "{'descr': '<f4"), 10 + 14, "closing ' of a string");
}

TEST_CASE("npy: data size and values are checked", "[io]") {
  const Bytes ok = f4_file("(2, 3)", {1, 2, 3, 4, 5, 6});
  REQUIRE(ok.size() == 128 + 24);
  require_io_error(Bytes(ok.begin(), ok.end() - 5), 147,
                   "expected 24 data bytes (6 elements of 4 bytes, shape (2, 3)) from byte 128, "
                   "found 19");
  Bytes longer = ok;
  longer.push_back(0);
  longer.push_back(0);
  require_io_error(longer, 152, "found 2 extra bytes");
  // A shape claiming far more than the file holds is rejected before any allocation.
  require_io_error(f4_file("(1000000000000, 1000)", {}), 128,
                   "expected 4000000000000000 data bytes");

  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  const Bytes with_nan = f4_file("(2, 3)", {1, 2, 3, 4, nan, 6});
  REQUIRE(flowprior::io::parse_npy<float>(with_nan.data(), with_nan.size(), "n").data.size() == 6);
  require_io_error(with_nan, 128 + 16, "expected finite values, found nan at flat index 4", false);
  require_io_error(f4_file("(2,)", {-inf, 1}), 128, "found -inf at flat index 0", false);

  // float64 beyond float32 range becomes +-inf as float, rejected when finite values are required.
  Bytes data;
  append_values(data, std::vector<double>{1.0, -1e300});
  const Bytes big =
      make_npy(1, padded(1, "{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }"), data);
  REQUIRE(flowprior::io::parse_npy<float>(big.data(), big.size(), "b").data[1] ==
          -std::numeric_limits<float>::infinity());
  REQUIRE(flowprior::io::parse_npy<double>(big.data(), big.size(), "b", false).data[1] == -1e300);
  REQUIRE_THROWS_WITH(flowprior::io::parse_npy<float>(big.data(), big.size(), "b", false),
                      Catch::Contains("at byte 136") && Catch::Contains("overflows float32"));
}

TEST_CASE("npy: atomic writes leave the previous file intact on failure", "[io]") {
  TempDir tmp;
  const std::string path = tmp / "keep.npy";
  const std::vector<double> v = {1, 2, 3};
  flowprior::io::write_npy<double>(path, v.data(), {3});
  const Bytes before = read_bytes(path);
  const std::vector<double> w = {9, 9, 9, 9};
  flowprior::io::WriteFaults faults;
  faults.fail_after_bytes = 20;
  REQUIRE_THROWS_AS(flowprior::io::write_npy<double>(path, w.data(), {4}, false, faults), io_error);
  REQUIRE_THROWS_AS(flowprior::io::write_npy_samples<double>(path, w.data(), 2, 2, faults),
                    io_error);
  REQUIRE(read_bytes(path) == before);
  REQUIRE(tmp.entries() == std::vector<std::string>{"keep.npy"});
  // Data write failures too (the fault hits after the 128-byte preamble).
  faults.fail_after_bytes = 130;
  REQUIRE_THROWS_AS(flowprior::io::write_npy<double>(path, w.data(), {4}, false, faults), io_error);
  REQUIRE(read_bytes(path) == before);
  REQUIRE(tmp.entries() == std::vector<std::string>{"keep.npy"});
}

TEST_CASE("npy: API misuse and missing files", "[io]") {
  TempDir tmp;
  const float x = 1;
  REQUIRE_THROWS_AS(flowprior::io::write_npy<float>(tmp / "n.npy", &x, {2, -1}),
                    flowprior::shape_error);
  REQUIRE_THROWS_AS(flowprior::io::write_npy<float>(tmp / "n.npy", nullptr, {2}),
                    flowprior::shape_error);
  REQUIRE_THROWS_AS(flowprior::io::write_npy<float>(tmp / "n.npy", &x, {1LL << 40, 1LL << 40}),
                    flowprior::shape_error);
  REQUIRE(tmp.entries().empty());
  flowprior::io::write_npy<float>(tmp / "z.npy", nullptr, {0, 4});  // zero-size needs no data
  REQUIRE(flowprior::io::read_npy<float>(tmp / "z.npy").info.shape == Shape{0, 4});
  REQUIRE_THROWS_WITH(flowprior::io::read_npy<float>(tmp / "missing.npy"),
                      Catch::Contains("missing.npy") && Catch::Contains("cannot open"));
}
