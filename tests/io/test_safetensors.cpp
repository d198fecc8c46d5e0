// safetensors: round trips, dtype conversions, state dicts by PyTorch names, and every kind of
// malformed file giving an io_error with the file, the byte offset and what was expected.
#include <flowprior/flowprior.hpp>
#include <flowprior/io/state_dict.hpp>

#include <cstdio>
#include <cstring>
#include <filesystem>

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
    REQUIRE(f16[i] == Approx(x[i]).epsilon(1e-3).margin(6e-8));  // half: 11-bit significand
    REQUIRE(bf16[i] == Approx(x[i]).epsilon(4e-3).margin(1e-38));  // bfloat16: 8-bit significand
  }
  REQUIRE(st.get<float>("empty").empty());
  // Exact half values and rounding to nearest even.
  REQUIRE(io::half_to_float(io::float_to_half(1.0f)) == 1.0f);
  REQUIRE(io::float_to_half(65504.0f) == 0x7BFF);
  REQUIRE(io::float_to_half(1e6f) == 0x7C00);  // overflow to +inf
  REQUIRE(io::half_to_float(0x0001) == Approx(5.960464477539063e-08));  // smallest subnormal
  REQUIRE(io::float_to_half(1.0f + 1.0f / 2048) == 0x3C00);  // tie to even
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
    REQUIRE_THROWS_WITH(parse(b), Catch::Contains("test.safetensors at byte") &&
                                      Catch::Contains(needle));
  };
  const std::string ok = R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})";
  REQUIRE_NOTHROW(parse(make_file(ok, four)));
  throws(Bytes{1, 2, 3}, "expected at least 8 bytes");
  throws(make_file(ok, four, 1000), "runs past the end of the file");
  throws(make_file(ok, four, std::uint64_t(1) << 40), "exceeds the limit");
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
  throws(make_file(R"({"__metadata__":{"k":1},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})",
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
  REQUIRE(std::equal(a.parameters().data, a.parameters().data + a.num_params(),
                     b.parameters().data));
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

TEST_CASE("atomic writes: a failed write leaves the previous file and no temporary",
          "[io]") {
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
