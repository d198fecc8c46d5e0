// The bodies of the fuzz targets, shared by the libFuzzer entry points (fuzz_*.cpp) and the
// corpus regression test (tests/io/test_fuzz_corpus.cpp). io_error is the expected outcome for
// malformed input; any other exception escapes and is a finding, as is any sanitizer report.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include <flowprior/flowprior.hpp>
#include <flowprior/io/npy.hpp>
#include <flowprior/io/state_dict.hpp>

namespace fuzz {

inline void safetensors_one(const std::uint8_t* data, std::size_t size) {
  try {
    const auto st = flowprior::io::Safetensors::parse(std::vector<std::uint8_t>(data, data + size),
                                                      "fuzz.safetensors");
    for (const auto& t : st.tensors()) {
      if (t.numel() > (1u << 20)) continue;
      (void)st.get<float>(t.name, true);
      try {
        (void)st.get<double>(t.name, false);
      } catch (const flowprior::io_error&) {
      }
    }
    // The state-dict path over whatever parsed, into a tiny field.
    flowprior::nn::MlpFieldConfig c;
    c.dim = 2;
    c.width = 2;
    c.depth = 1;
    c.time_encoding = flowprior::nn::TimeEncoding::Concat;
    flowprior::nn::MlpField<float> field(c);
    flowprior::io::load_state_dict(field, st);
  } catch (const flowprior::io_error&) {
  }
}

inline void npy_one(const std::uint8_t* data, std::size_t size) {
  try {
    (void)flowprior::io::parse_npy<float>(data, size, "fuzz.npy", true);
  } catch (const flowprior::io_error&) {
  }
  try {
    (void)flowprior::io::parse_npy<double>(data, size, "fuzz.npy", false);
  } catch (const flowprior::io_error&) {
  }
  try {
    (void)flowprior::io::parse_npy_samples<float>(data, size, "fuzz.npy", false);
  } catch (const flowprior::io_error&) {
  }
}

}  // namespace fuzz
