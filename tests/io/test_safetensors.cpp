// safetensors: round trips, dtype conversions, state dicts by PyTorch names, and every kind of
// malformed file giving an io_error with the file, the byte offset and what was expected.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <flowprior/flowprior.hpp>
#include <flowprior/io/npy.hpp>
#include <flowprior/io/state_dict.hpp>
#include <future>
#include <limits>

#include "catch.hpp"
#include "fixtures.hpp"
#include "gradcheck.hpp"

using flowprior::Index;
using flowprior::Rng;
namespace io = flowprior::io;
namespace nn = flowprior::nn;
using Bytes = std::vector<std::uint8_t>;

namespace {

// A file from a header text and data bytes.
Bytes make_file(const std::string& header, const Bytes& data, std::uint64_t claimed = 0) {
  Bytes b(8 + header.size() + data.size());
  io::store_u64_le(claimed ? claimed : header.size(), b.data());
  std::memcpy(b.data() + 8, header.data(), header.size());
  if (!data.empty()) std::memcpy(b.data() + 8 + header.size(), data.data(), data.size());
  return b;
}

io::Safetensors parse(const Bytes& b) { return io::Safetensors::parse(b, "test.safetensors"); }

nn::AdaLNMlpConfig small() {
  nn::AdaLNMlpConfig c;
  c.dim = 3;
  c.width = 8;
  c.depth = 2;
  c.time_freq_dim = 16;
  return c;
}

}  // namespace

TEST_CASE("safetensors: round trip of every float dtype with metadata", "[io]") {
  const std::vector<double> x = {0.0, -1.5, 3.25, 1e-3, 65504.0, -2.0e-7};
  io::SafetensorsWriter w;
  w.set_metadata("format", "pt");
  w.set_metadata("note", "quote \" backslash \\ newline \n");
  w.add("a.f64", x.data(), {2, 3}, io::Dtype::F64);
  w.add("a.f32", x.data(), {6}, io::Dtype::F32);
  w.add("a.f16", x.data(), {3, 2}, io::Dtype::F16);
  w.add("a.bf16", x.data(), {6}, io::Dtype::BF16);
  w.add("empty", x.data(), {0, 4}, io::Dtype::F32);
  const auto bytes = w.bytes();
  REQUIRE((io::load_u64_le(bytes.data()) + 8) % 8 == 0);  // header padded to 8 bytes
  const auto st = parse(bytes);
  REQUIRE(st.metadata().at("format") == "pt");
  REQUIRE(st.metadata().at("note") == "quote \" backslash \\ newline \n");
  REQUIRE(st.tensors().size() == 5);
  REQUIRE(st.at("a.f64").shape == std::vector<std::int64_t>{2, 3});
  REQUIRE(st.get<double>("a.f64") == x);
  const auto f32 = st.get<double>("a.f32");
  const auto f16 = st.get<double>("a.f16");
  const auto bf16 = st.get<double>("a.bf16");
  for (std::size_t i = 0; i < x.size(); ++i) {
    CAPTURE(i, x[i]);
    REQUIRE(f32[i] == double(float(x[i])));
    REQUIRE(f16[i] == Approx(x[i]).epsilon(1e-3).margin(6e-8));    // half: 11-bit significand
    REQUIRE(bf16[i] == Approx(x[i]).epsilon(4e-3).margin(1e-38));  // bfloat16: 8-bit significand
  }
  REQUIRE(st.get<float>("empty").empty());
  // Exact half values and rounding to nearest even.
  REQUIRE(io::half_to_float(io::float_to_half(1.0f)) == 1.0f);
  REQUIRE(io::float_to_half(65504.0f) == 0x7BFF);
  REQUIRE(io::float_to_half(1e6f) == 0x7C00);                           // overflow to +inf
  REQUIRE(io::half_to_float(0x0001) == Approx(5.960464477539063e-08));  // smallest subnormal
  REQUIRE(io::float_to_half(1.0f + 1.0f / 2048) == 0x3C00);             // tie to even
  REQUIRE(io::bf16_to_float(io::float_to_bf16(3.0f)) == 3.0f);
  // Writing to disk is atomic and reads back the same.
  const std::string path = fpt::temp_path("rt.safetensors");
  w.write(path);
  REQUIRE(io::Safetensors::read(path).get<double>("a.f64") == x);
  std::remove(path.c_str());
}

TEST_CASE("safetensors: non-finite payloads are an error unless allowed", "[io]") {
  const std::vector<float> x = {1.0f, std::numeric_limits<float>::quiet_NaN(), 2.0f};
  io::SafetensorsWriter w;
  w.add("w", x.data(), {3});
  const auto st = parse(w.bytes());
  REQUIRE_THROWS_AS(st.get<float>("w"), flowprior::io_error);
  REQUIRE_THROWS_WITH(st.get<float>("w"), Catch::Contains("'w'") && Catch::Contains("element 1") &&
                                              Catch::Contains("at byte"));
  REQUIRE(std::isnan(st.get<float>("w", true)[1]));
}

TEST_CASE("safetensors: malformed files give io_error with file, offset and expectation",
          "[io][error]") {
  const Bytes four(4, 0);  // one F32
  auto throws = [](const Bytes& b, const std::string& needle) {
    CAPTURE(needle);
    REQUIRE_THROWS_AS(parse(b), flowprior::io_error);
    REQUIRE_THROWS_WITH(parse(b),
                        Catch::Contains("test.safetensors at byte") && Catch::Contains(needle));
  };
  const std::string ok = R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})";
  REQUIRE_NOTHROW(parse(make_file(ok, four)));
  throws(Bytes{1, 2, 3}, "expected at least 8 bytes");
  throws(make_file(ok, four, 1000), "runs past the end of the file");
  throws(make_file(ok, four, std::uint64_t(1) << 40), "exceeds the limit");
  // Strings must be UTF-8 and numbers must fit a double (nlohmann::json refuses both too:
  // tests/io/test_json_differential.cpp).
  throws(make_file("{\"a\xff\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", four),
         "at byte 11: malformed JSON header: invalid UTF-8 sequence");
  throws(make_file("{\"a\xed\xa0\x80\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
                   four),
         "invalid UTF-8 sequence");
  throws(make_file(R"({"a":{"dtype":"F32","shape":[1e400],"data_offsets":[0,4]}})", four),
         "number out of the double range");
  throws(make_file("[1,2]", {}), "start with '{'");
  throws(make_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]})", four),
         "malformed JSON");
  throws(make_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}x)", four),
         "expected end of JSON");
  throws(make_file(R"({"a":{"dtype":"Q8","shape":[1],"data_offsets":[0,4]}})", four),
         "unknown dtype 'Q8'");
  throws(make_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}})", four),
         "needs 8 bytes, data_offsets span 4");
  throws(make_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", four),
         "past the end of the data");
  throws(make_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                   R"("b":{"dtype":"F32","shape":[1],"data_offsets":[2,6]}})",
                   Bytes(8, 0)),
         "overlaps");
  throws(make_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", Bytes(8, 0)),
         "hole in the data");
  throws(make_file(ok, Bytes(6, 0)), "trailing bytes");
  throws(make_file(R"({"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", four),
         "non-negative integers");
  throws(make_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,0]}})", four), "< begin");
  throws(make_file(R"({"a":{"dtype":"F32","shape":[1]}})", four), "lacks data_offsets");
  throws(make_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":1}})", four),
         "unexpected key 'x'");
  throws(make_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                   R"("a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})",
                   four),
         "duplicate tensor name");
  throws(
      make_file(R"({"__metadata__":{"k":1},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})",
                four),
      "must be a string");
  throws(make_file(R"({"a":{"dtype":"F32","shape":[4294967296,4294967296,4294967296],)"
                   R"("data_offsets":[0,4]}})",
                   four),
         "overflows");
  throws(make_file(std::string(70, '[') + std::string(70, ']'), {}), "start with '{'");
  throws(make_file("{\"a\":" + std::string(70, '[') + std::string(70, ']') + "}", {}),
         "nesting deeper");
  throws(make_file(R"({"a\u00":1})", {}), "invalid hex digit");
  // The offset points into the file: the dtype string starts at byte 8 + 14.
  try {
    parse(make_file(R"({"a":{"dtype":"Q8","shape":[1],"data_offsets":[0,4]}})", four));
  } catch (const flowprior::io_error& e) {
    REQUIRE(std::string(e.what()).find("at byte 22") != std::string::npos);
  }
  REQUIRE_THROWS_AS(io::Safetensors::read(fpt::temp_path("does_not_exist")), flowprior::io_error);
}

TEST_CASE("state dict: save and load by PyTorch names, prefixes, strictness", "[io]") {
  Rng rng(5);
  nn::AdaLNMlp<double> a(small()), b(small());
  fpt::fill_uniform(a.parameters().data, a.num_params(), rng, -1, 1);
  const std::string path = fpt::temp_path("sd.safetensors");
  io::save_state_dict(a, path, io::Dtype::F64);
  REQUIRE(io::load_state_dict(b, io::Safetensors::read(path)) == "");
  REQUIRE(
      std::equal(a.parameters().data, a.parameters().data + a.num_params(), b.parameters().data));
  // Released layouts: the head under ema./model. and flow_loss.net.; EMA preferred.
  nn::AdaLNMlp<double> other(small());
  fpt::fill_uniform(other.parameters().data, other.num_params(), rng, -1, 1);
  io::SafetensorsWriter w;
  io::add_state_dict(w, other, "model.flow_loss.net.", io::Dtype::F32);
  io::add_state_dict(w, a, "ema.flow_loss.net.", io::Dtype::F32);
  const double step = 7;
  w.add("optim.step", &step, {1}, io::Dtype::F64);
  const auto st = parse(w.bytes());
  nn::AdaLNMlp<float> f(small());
  REQUIRE(io::load_state_dict(f, st) == "ema.flow_loss.net.");
  REQUIRE(f.parameters()[5] == float(a.parameters()[5]));
  io::LoadOptions explicit_model;
  explicit_model.prefix = "model.flow_loss.net.";
  io::load_state_dict(f, st, explicit_model);
  REQUIRE(f.parameters()[5] == float(other.parameters()[5]));
  // A field of another shape: the error names the tensor and both shapes.
  auto c = small();
  c.width = 9;
  nn::AdaLNMlp<double> wrong(c);
  REQUIRE_THROWS_WITH(io::load_state_dict(wrong, io::Safetensors::read(path)),
                      Catch::Contains("time_embed.mlp.0.weight") && Catch::Contains("(8, 16)") &&
                          Catch::Contains("(9, 16)"));
  // Missing tensor (a deeper field) and unexpected tensor (a shallower one).
  auto deeper = small();
  deeper.depth = 3;
  nn::AdaLNMlp<double> d3(deeper);
  REQUIRE_THROWS_WITH(io::load_state_dict(d3, io::Safetensors::read(path)),
                      Catch::Contains("missing tensor 'res_blocks.2."));
  auto shallower = small();
  shallower.depth = 1;
  nn::AdaLNMlp<double> d1(shallower);
  const std::vector<double> before(d1.parameters().data, d1.parameters().data + d1.num_params());
  REQUIRE_THROWS_WITH(io::load_state_dict(d1, io::Safetensors::read(path)),
                      Catch::Contains("unexpected tensor 'res_blocks.1."));
  // ... and the failed load left the field untouched.
  REQUIRE(std::equal(before.begin(), before.end(), d1.parameters().data));
  io::LoadOptions lax;
  lax.strict = false;
  REQUIRE_NOTHROW(io::load_state_dict(d1, io::Safetensors::read(path), lax));
  // NaN weights are refused unless allowed.
  a.parameters()[3] = std::numeric_limits<double>::quiet_NaN();
  io::save_state_dict(a, path, io::Dtype::F64);
  REQUIRE_THROWS_WITH(io::load_state_dict(b, io::Safetensors::read(path)),
                      Catch::Contains("non-finite"));
  io::LoadOptions nan_ok;
  nan_ok.allow_nonfinite = true;
  REQUIRE_NOTHROW(io::load_state_dict(b, io::Safetensors::read(path), nan_ok));
  std::remove(path.c_str());
}

TEST_CASE("safetensors: the writer refuses names the reader would refuse", "[io][error]") {
  // A name or metadata entry that is not UTF-8 would give a header no reader accepts.
  const std::vector<double> x = {1, 2, 3};
  io::SafetensorsWriter w;
  REQUIRE_THROWS_WITH(w.add("w\xff", x.data(), {3}), Catch::Contains("not valid UTF-8"));
  REQUIRE_THROWS_AS(w.add("w\xc0\x80", x.data(), {3}), flowprior::config_error);
  REQUIRE_THROWS_AS(w.set_metadata("k", "v\xed\xa0\x80"), flowprior::config_error);
  REQUIRE_THROWS_AS(w.set_metadata("k\xe2\x82", "v"), flowprior::config_error);
  w.add("w\xe2\x82\xac", x.data(), {3});  // the euro sign is fine
  w.set_metadata("k\xc3\xa9", "\xf0\x9f\x98\x80");
  const auto st = io::Safetensors::parse(w.bytes(), "utf8.safetensors");
  REQUIRE(st.get<double>("w\xe2\x82\xac") == x);
  REQUIRE(st.metadata().at("k\xc3\xa9") == "\xf0\x9f\x98\x80");
}

TEST_CASE("atomic writes: a failed write leaves the previous file and no temporary", "[io]") {
  const std::string path = fpt::temp_path("atomic.safetensors");
  const std::vector<double> x = {1, 2, 3};
  io::SafetensorsWriter w;
  w.add("x", x.data(), {3});
  w.write(path);
  const std::vector<double> y = {4, 5, 6, 7};
  io::SafetensorsWriter w2;
  w2.add("y", y.data(), {4});
  REQUIRE_THROWS_AS(w2.write(path, io::WriteFaults{40}), flowprior::io_error);
  const auto st = io::Safetensors::read(path);
  REQUIRE(st.find("y") == nullptr);
  REQUIRE(st.get<double>("x") == x);
  for (const auto& e : std::filesystem::directory_iterator(std::filesystem::temp_directory_path()))
    REQUIRE(e.path().string().find(path + ".tmp") == std::string::npos);
  std::remove(path.c_str());
}

TEST_CASE("safetensors: zero-size tensors anywhere in the offset order are accepted", "[io]") {
  // As the reference implementation: offsets sorted by (begin, end) must tile the data.
  const std::string a = R"("a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]})";
  const std::string b = R"("b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]})";
  const std::string z4 = R"("z":{"dtype":"F32","shape":[0],"data_offsets":[4,4]})";
  const std::string z0 = R"("z":{"dtype":"F32","shape":[0,3],"data_offsets":[0,0]})";
  const std::string z8 = R"("z":{"dtype":"F64","shape":[2,0],"data_offsets":[8,8]})";
  const Bytes eight(8, 0);
  for (const std::string& h :
       {"{" + a + "," + b + "," + z4 + "}", "{" + z4 + "," + a + "," + b + "}",
        "{" + a + "," + z4 + "," + b + "}", "{" + b + "," + a + "," + z0 + "}",
        "{" + b + "," + z8 + "," + a + "}", "{" + z8 + "," + b + "," + a + "}"}) {
    CAPTURE(h);
    REQUIRE_NOTHROW(parse(make_file(h, eight)));
    const auto st = parse(make_file(h, eight));
    REQUIRE(st.tensors().size() == 3);
    REQUIRE(st.get<float>("z").empty());
  }
  // Two zero-size tensors at the same offset, and a file of zero-size tensors only.
  REQUIRE_NOTHROW(parse(make_file("{" + a + "," + b + "," + z4 + "," +
                                      R"("y":{"dtype":"U8","shape":[0],"data_offsets":[4,4]}})",
                                  eight)));
  REQUIRE_NOTHROW(
      parse(make_file(R"({"z":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}})", {})));
  // Still refused: a zero-size tensor outside the data, and real overlaps.
  REQUIRE_THROWS_WITH(
      parse(make_file(
          "{" + a + "," + b + R"(,"z":{"dtype":"F32","shape":[0],"data_offsets":[9,9]}})", eight)),
      Catch::Contains("past the end of the data"));
  REQUIRE_THROWS_WITH(
      parse(
          make_file("{" + a + "," + b + R"(,"c":{"dtype":"F32","shape":[1],"data_offsets":[2,6]}})",
                    Bytes(12, 0))),
      Catch::Contains("overlaps"));
}

TEST_CASE("safetensors: duplicate __metadata__ objects or keys are refused", "[io][error]") {
  const std::string t = R"("a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]})";
  const Bytes four(4, 0);
  REQUIRE_NOTHROW(parse(make_file(R"({"__metadata__":{"k":"1","l":"2"},)" + t + "}", four)));
  REQUIRE_THROWS_AS(parse(make_file(R"({"__metadata__":{"k":"1","k":"2"},)" + t + "}", four)),
                    flowprior::io_error);
  REQUIRE_THROWS_WITH(parse(make_file(R"({"__metadata__":{"k":"1","k":"2"},)" + t + "}", four)),
                      Catch::Contains("test.safetensors at byte") &&
                          Catch::Contains("duplicate __metadata__ key 'k'"));
  REQUIRE_THROWS_WITH(
      parse(make_file(R"({"__metadata__":{"k":"1"},)" + t + R"(,"__metadata__":{"l":"2"}})", four)),
      Catch::Contains("test.safetensors at byte") && Catch::Contains("duplicate __metadata__"));
}

TEST_CASE("safetensors: F64 values beyond the float range are refused when read as float",
          "[io][error]") {
  const std::vector<double> x = {1.0, -1e300, 3.0};
  io::SafetensorsWriter w;
  w.add("w", x.data(), {3}, io::Dtype::F64);
  const auto st = parse(w.bytes());
  REQUIRE(st.get<double>("w") == x);
  REQUIRE_THROWS_AS(st.get<float>("w"), flowprior::io_error);
  REQUIRE_THROWS_WITH(st.get<float>("w"), Catch::Contains("'w'") && Catch::Contains("element 1") &&
                                              Catch::Contains("overflows float32") &&
                                              Catch::Contains("at byte"));
  // Allowed non-finite values: it becomes -inf, as in the npy reader.
  REQUIRE(st.get<float>("w", true)[1] == -std::numeric_limits<float>::infinity());
  // The largest float and values that round to it are fine.
  const std::vector<double> edge = {double(std::numeric_limits<float>::max()),
                                    -double(std::numeric_limits<float>::max())};
  io::SafetensorsWriter we;
  we.add("e", edge.data(), {2}, io::Dtype::F64);
  REQUIRE(parse(we.bytes()).get<float>("e")[0] == std::numeric_limits<float>::max());
  // A state dict of doubles loaded into a float field.
  Rng rng(8);
  nn::AdaLNMlp<double> a(small());
  fpt::fill_uniform(a.parameters().data, a.num_params(), rng, -1, 1);
  a.parameters()[7] = 1e300;
  io::SafetensorsWriter ws;
  io::add_state_dict(ws, a, "", io::Dtype::F64);
  nn::AdaLNMlp<float> f(small());
  const std::vector<float> before(f.parameters().data, f.parameters().data + f.num_params());
  REQUIRE_THROWS_WITH(io::load_state_dict(f, parse(ws.bytes())),
                      Catch::Contains("overflows float32"));
  REQUIRE(std::equal(before.begin(), before.end(), f.parameters().data));
}

TEST_CASE("files: FIFOs, devices and directories are refused without blocking", "[io][error]") {
  fpt::TempDir dir("fifo");
  const std::string fifo = dir / "pipe";
  REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
  // Read in another thread; if it blocks, open the writing end to release it and fail.
  auto fut = std::async(std::launch::async, [&] {
    try {
      (void)io::read_file(fifo);
      return std::string("no error");
    } catch (const flowprior::io_error& e) {
      return std::string(e.what());
    }
  });
  const bool blocked = fut.wait_for(std::chrono::seconds(10)) == std::future_status::timeout;
  if (blocked) {
    const int fd = ::open(fifo.c_str(), O_WRONLY);
    if (fd >= 0) ::close(fd);
  }
  const std::string what = fut.get();
  REQUIRE_FALSE(blocked);
  REQUIRE_THAT(what, Catch::Contains(fifo) && Catch::Contains("not a regular file"));
  // A device that never ends, a directory, through every reader.
  REQUIRE_THROWS_WITH(io::read_file("/dev/zero"), Catch::Contains("not a regular file"));
  REQUIRE_THROWS_WITH(io::Safetensors::read("/dev/zero"), Catch::Contains("not a regular file"));
  REQUIRE_THROWS_WITH(io::read_npy<float>("/dev/zero"), Catch::Contains("not a regular file"));
  REQUIRE_THROWS_WITH(io::read_file(dir.dir.string()), Catch::Contains("not a regular file"));
}

TEST_CASE("files: a file above the size limit is refused before it is read", "[io][error]") {
  fpt::TempDir dir("cap");
  const std::string path = dir / "big.bin";
  {
    std::FILE* f = std::fopen(path.c_str(), "wb");
    REQUIRE(f);
    const std::vector<std::uint8_t> kb(1000, 7);
    REQUIRE(std::fwrite(kb.data(), 1, kb.size(), f) == kb.size());
    std::fclose(f);
  }
  REQUIRE(io::read_file(path, 1000).size() == 1000);
  REQUIRE_THROWS_AS(io::read_file(path, 999), flowprior::io_error);
  REQUIRE_THROWS_WITH(io::read_file(path, 999), Catch::Contains(path) &&
                                                    Catch::Contains("1000 bytes") &&
                                                    Catch::Contains("limit of 999"));
  REQUIRE(io::kMaxFileBytes >= (std::uint64_t(1) << 32));
}

TEST_CASE("safetensors: a checksummed file detects any changed byte", "[io][error]") {
  const std::vector<double> x = {0.25, -1.5, 3.0};
  io::SafetensorsWriter w;
  w.set_metadata("note", "hello");
  w.add("x", x.data(), {3}, io::Dtype::F32);
  w.set_checksum(true);
  const Bytes good = w.bytes();
  const auto st = parse(good);
  REQUIRE(st.checksum() == io::ChecksumState::Verified);
  REQUIRE(st.metadata().at("flowprior.checksum").rfind("crc32:", 0) == 0);
  // Every single changed bit, anywhere in the file, is an io_error (a validation error or the
  // checksum), never a verified load. The only flips that parse are those in the checksum's key
  // name, which leave a file without a checksum (checkpoints require one).
  std::size_t parsed = 0;
  for (std::size_t i = 0; i < good.size(); ++i)
    for (int bit = 0; bit < 8; ++bit) {
      Bytes b = good;
      b[i] ^= std::uint8_t(1u << bit);
      CAPTURE(i, bit);
      try {
        const auto bad = parse(b);
        REQUIRE(bad.checksum() == io::ChecksumState::Absent);
        ++parsed;
      } catch (const flowprior::io_error&) {
      }
    }
  REQUIRE(parsed <= std::string("flowprior.checksum").size() * 8);
  // The message names the file and the checksums.
  Bytes b = good;
  b[b.size() - 1] ^= 0x01;
  REQUIRE_THROWS_WITH(parse(b),
                      Catch::Contains("test.safetensors") && Catch::Contains("checksum mismatch"));
  // Without the checksum, a file from another writer loads as before.
  io::SafetensorsWriter plain;
  plain.add("x", x.data(), {3}, io::Dtype::F32);
  REQUIRE(parse(plain.bytes()).checksum() == io::ChecksumState::Absent);
  // State dicts carry one too.
  Rng rng(9);
  nn::AdaLNMlp<double> net(small());
  fpt::fill_uniform(net.parameters().data, net.num_params(), rng, -1, 1);
  const std::string path = fpt::temp_path("crc_sd.safetensors");
  io::save_state_dict(net, path);
  REQUIRE(io::Safetensors::read(path).checksum() == io::ChecksumState::Verified);
  auto sd = io::read_file(path);
  sd[sd.size() - 3] ^= 0x10;
  REQUIRE_THROWS_WITH(parse(sd), Catch::Contains("checksum mismatch"));
  io::ReadOptions salvage;
  salvage.verify_checksum = false;
  REQUIRE(io::Safetensors::parse(sd, "x", salvage).checksum() == io::ChecksumState::NotVerified);
  std::remove(path.c_str());
  // The key is reserved for the writer.
  io::SafetensorsWriter reserved;
  REQUIRE_THROWS_AS(reserved.set_metadata("flowprior.checksum", "crc32:00000000"),
                    flowprior::config_error);
  // CRC-32 of the check string (the zlib / PNG / Python zlib.crc32 polynomial).
  const std::string check = "123456789";
  REQUIRE(io::crc32(check.data(), check.size()) == 0xCBF43926u);
  REQUIRE(io::crc32(nullptr, 0) == 0u);
}
