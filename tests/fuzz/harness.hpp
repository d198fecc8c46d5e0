// The bodies of the fuzz targets, shared by the libFuzzer entry points (fuzz_*.cpp) and the
// corpus regression test (tests/io/test_fuzz_corpus.cpp). io_error is the expected outcome for
// malformed input; any other exception escapes and is a finding, as is any sanitizer report.
#pragma once

#include <cstddef>
#include <cstdint>
#include <flowprior/flowprior.hpp>
#include <flowprior/io/npy.hpp>
#include <flowprior/io/state_dict.hpp>
#include <flowprior/train/checkpoint.hpp>
#include <string>
#include <vector>

namespace fuzz {

/// The tiny field and trainer configuration of the checkpoint path (the corpus holds a valid
/// checkpoint of exactly this, written by make_checkpoint_seed).
inline flowprior::nn::MlpFieldConfig tiny_field() {
  flowprior::nn::MlpFieldConfig c;
  c.dim = 2;
  c.width = 2;
  c.depth = 1;
  c.time_encoding = flowprior::nn::TimeEncoding::Concat;
  return c;
}

inline flowprior::train::TrainerConfig tiny_trainer() {
  flowprior::train::TrainerConfig t;
  t.batch = 4;
  t.K = 2;
  t.schedule = flowprior::optim::LrSchedule::constant(1e-3);
  t.ema_decay = 0.9;
  return t;
}

/// load_checkpoint of a parsed file into a fresh tiny field and trainer.
inline void checkpoint_one(const flowprior::io::Safetensors& st) {
  using Field = flowprior::nn::MlpField<float>;
  Field field(tiny_field());
  flowprior::train::FlowMatchingTrainer<Field> trainer(field, flowprior::Convention::Code,
                                                       tiny_trainer());
  flowprior::Rng rng(1);
  flowprior::train::load_checkpoint(st, trainer, field, rng);
}

/// A valid checkpoint of the tiny field after two steps (a corpus seed).
inline std::vector<std::uint8_t> make_checkpoint_seed(const std::string& path) {
  using Field = flowprior::nn::MlpField<float>;
  Field field(tiny_field());
  flowprior::Rng rng(7);
  field.init(rng);
  flowprior::train::FlowMatchingTrainer<Field> trainer(field, flowprior::Convention::Code,
                                                       tiny_trainer());
  Eigen::MatrixXf data = Eigen::MatrixXf::Random(2, 8);
  trainer.step(data, rng);
  trainer.step(data, rng);
  flowprior::train::save_checkpoint(path, trainer, field, rng, {{"seed", "fuzz"}});
  return flowprior::io::read_file(path);
}

inline void safetensors_one(const std::uint8_t* data, std::size_t size) {
  // Behind the checksum: the checkpoint loader on a file whose checksum is parsed but not
  // compared (random mutations never keep a CRC-32 valid).
  try {
    flowprior::io::ReadOptions unverified;
    unverified.verify_checksum = false;
    const auto st = flowprior::io::Safetensors::parse(std::vector<std::uint8_t>(data, data + size),
                                                      "fuzz.safetensors", unverified);
    if (st.metadata().count("flowprior.format")) checkpoint_one(st);
  } catch (const flowprior::io_error&) {
  }
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
    flowprior::nn::MlpField<float> field(tiny_field());
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
