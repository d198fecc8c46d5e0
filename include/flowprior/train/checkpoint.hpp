/// @file
/// Training checkpoints (docs/formats.md "Checkpoints"): everything a flow-matching run needs to
/// continue exactly as if it had not stopped, in one safetensors file:
///
///   model.<name>   the field's parameters (PyTorch names and shapes, the field's scalar type)
///   ema.<name>     the EMA weights (the prior), same names
///   optim.m/.v     Adam's moment vectors (flat)
///   __metadata__   format ("checkpoint-2"), version, steps, EMA updates and decay, convention,
///                  schedule, the trainer configuration a resume must match (trainer.*), the
///                  generator's full state, the caller's extra entries (user.*), and a CRC-32 of
///                  the whole file ("flowprior.checksum")
///
/// Resuming N/2 steps + save + load + N/2 steps equals N uninterrupted steps bit for bit
/// (tested). Writes are atomic: a failed or interrupted save leaves the previous file intact.
/// Loads validate the whole file (checksum, metadata, trainer configuration, every tensor and
/// the optimizer state) before anything is modified; every failure is an io_error.
/// The ema./model. names also let load_state_dict read the prior straight from a checkpoint.
#pragma once

#include <cstdint>
#include <flowprior/core/convention.hpp>
#include <flowprior/core/random.hpp>
#include <flowprior/io/safetensors.hpp>
#include <flowprior/io/state_dict.hpp>
#include <flowprior/train/trainer.hpp>
#include <flowprior/version.hpp>
#include <limits>
#include <map>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

namespace flowprior {
namespace train {

/// The implementation reads and writes safetensors (io/); its two entry points are exported into
/// flowprior::train below.
namespace checkpoint_impl {

using namespace flowprior::io;

namespace detail {

/// The format tag of the checkpoints written now.
inline const char* checkpoint_format() { return "checkpoint-2"; }

inline std::string exact(double x) {
  std::ostringstream os;
  os.precision(17);
  os << x;
  return os.str();
}

inline std::string schedule_string(const optim::LrSchedule& s) {
  return std::string(s.kind == optim::LrSchedule::Kind::Cosine ? "cosine" : "constant") +
         " base_lr=" + exact(s.base_lr) + " warmup=" + std::to_string(s.warmup_steps) +
         " total=" + std::to_string(s.total_steps) + " min_lr=" + exact(s.min_lr);
}

inline std::string sampler_string(const loss::TimeSampler& s) {
  switch (s.kind) {
    case loss::TimeSampler::Kind::Uniform:
      return "uniform";
    case loss::TimeSampler::Kind::LogitNormal:
      return "logit_normal mean=" + exact(s.mean) + " std=" + exact(s.std);
    case loss::TimeSampler::Kind::Stratified:
      return "stratified";
    default:
      return "grid";
  }
}

/// The trainer configuration a resume must match, as metadata entries (besides "convention",
/// "schedule" and "ema.decay"). Adam's lr is not stored: the trainer uses the schedule's.
inline std::vector<std::pair<std::string, std::string>> trainer_entries(
    const train::TrainerConfig& c) {
  return {{"trainer.batch", std::to_string(c.batch)},
          {"trainer.K", std::to_string(c.K)},
          {"trainer.reduction", loss::to_string(c.reduction)},
          {"trainer.sampler", sampler_string(c.sampler)},
          {"trainer.antithetic", c.antithetic ? "true" : "false"},
          {"trainer.time_group", std::to_string(c.time_group)},
          {"trainer.adam.beta1", exact(c.adam.beta1)},
          {"trainer.adam.beta2", exact(c.adam.beta2)},
          {"trainer.adam.eps", exact(c.adam.eps)},
          {"trainer.adam.weight_decay", exact(c.adam.weight_decay)},
          {"trainer.adam.decoupled", c.adam.decoupled ? "true" : "false"},
          {"trainer.clip_norm", exact(c.clip_norm)}};
}

inline const std::string& meta(const Safetensors& st, const std::string& key) {
  const auto it = st.metadata().find(key);
  if (it == st.metadata().end()) fail(st.source(), "checkpoint metadata lacks '" + key + "'");
  return it->second;
}

/// A count as save_checkpoint writes it: decimal digits only (no sign, spaces or leading zeros),
/// at most 2^63 - 1.
inline std::int64_t meta_int(const Safetensors& st, const std::string& key) {
  const std::string& s = meta(st, key);
  bool ok = !s.empty() && s.size() <= 19 && (s.size() == 1 || s[0] != '0');
  std::uint64_t v = 0;
  for (const char c : s) {
    ok = ok && c >= '0' && c <= '9';
    if (ok) v = v * 10 + std::uint64_t(c - '0');
  }
  if (!ok || v > std::uint64_t(std::numeric_limits<std::int64_t>::max()))
    fail(st.source(),
         "checkpoint metadata '" + key + "' is not a non-negative integer: '" + s + "'");
  return static_cast<std::int64_t>(v);
}

/// Checks that the checkpoint's entry `key` equals the trainer's value `want`.
inline void meta_match(const Safetensors& st, const std::string& key, const std::string& want) {
  const std::string& have = meta(st, key);
  if (have != want)
    fail(st.source(), "checkpoint " + key + " '" + have + "' differs from the trainer's '" + want +
                          "' (resume with the configuration the checkpoint was saved with)");
}

}  // namespace detail

/// Saves the trainer's state, its field and the generator `rng` atomically to `path`, with a
/// CRC-32 of the whole file in its metadata. The parameters, the EMA weights and Adam's moments
/// live in backend memory: they reach the file through host copies (Backend::copy_to_host,
/// Ema::copy_weights_to, Adam::copy_m_to / copy_v_to).
template <class Field>
void save_checkpoint(const std::string& path, const train::FlowMatchingTrainer<Field>& trainer,
                     const Field& field, const Rng& rng,
                     const std::map<std::string, std::string>& extra_metadata = {},
                     WriteFaults faults = {}) {
  using S = typename Field::Scalar;
  using Backend = typename train::FlowMatchingTrainer<Field>::Backend;
  const auto n = static_cast<std::size_t>(field.num_params());
  const auto& adam = trainer.optimizer();
  std::vector<S> params(n), ema(n), m(n), v(n);
  Backend::copy_to_host(field.parameters().data, field.num_params(), params.data());
  trainer.ema().copy_weights_to(ema.data());
  adam.copy_m_to(m.data());
  adam.copy_v_to(v.data());
  SafetensorsWriter w;
  const Dtype dt = dtype_of<S>();
  // The field's tensors by their PyTorch names and shapes, as add_state_dict writes them.
  const auto add_field = [&](const std::string& prefix, const std::vector<S>& values) {
    for (const auto& t : field.layout().tensors())
      w.add(prefix + t.name, values.data() + t.offset,
            std::vector<std::int64_t>(t.shape.begin(), t.shape.end()), dt);
  };
  add_field("model.", params);
  add_field("ema.", ema);
  w.add("optim.m", m.data(), {std::int64_t(n)}, dt);
  w.add("optim.v", v.data(), {std::int64_t(n)}, dt);
  for (const auto& kv : extra_metadata) w.set_metadata("user." + kv.first, kv.second);
  w.set_metadata("flowprior.format", detail::checkpoint_format());
  w.set_metadata("flowprior.version", FLOWPRIOR_VERSION_STRING);
  w.set_metadata("steps", std::to_string(adam.steps()));
  w.set_metadata("ema.updates", std::to_string(trainer.ema().updates()));
  w.set_metadata("ema.decay", detail::exact(trainer.ema().decay()));
  w.set_metadata("convention", to_string(trainer.convention()));
  w.set_metadata("schedule", detail::schedule_string(trainer.config().schedule));
  for (const auto& kv : detail::trainer_entries(trainer.config()))
    w.set_metadata(kv.first, kv.second);
  std::ostringstream rs;
  rs << rng;
  w.set_metadata("rng", rs.str());
  w.set_checksum(true);
  w.write(path, faults);
}

/// Restores a parsed checkpoint `st` into `trainer`, `field` and `rng`: see the overload taking
/// a path. `st` must carry a checksum (Safetensors::read verifies it).
template <class Field>
void load_checkpoint(const Safetensors& st, train::FlowMatchingTrainer<Field>& trainer,
                     Field& field, Rng& rng) {
  using S = typename Field::Scalar;
  using Backend = typename train::FlowMatchingTrainer<Field>::Backend;
  const std::string& path = st.source();
  // 1. The format and the integrity of the file.
  const std::string& format = detail::meta(st, "flowprior.format");
  if (format == "checkpoint-1")
    fail(path,
         "checkpoint format 'checkpoint-1' (flowprior 0.1.0) has no checksum and does not "
         "record the trainer configuration, so it cannot be resumed safely; its weights "
         "still load with load_state_dict (prefix 'ema.' or 'model.')");
  if (format != detail::checkpoint_format())
    fail(path, "not a flowprior checkpoint (format '" + format + "', expected '" +
                   detail::checkpoint_format() + "')");
  if (st.checksum() == ChecksumState::Absent)
    fail(path,
         std::string("checkpoint without a checksum ('") + checksum_key() + "' in __metadata__)");
  // 2. The trainer must be configured as the one the checkpoint was saved from.
  detail::meta_match(st, "convention", to_string(trainer.convention()));
  detail::meta_match(st, "schedule", detail::schedule_string(trainer.config().schedule));
  detail::meta_match(st, "ema.decay", detail::exact(trainer.ema().decay()));
  for (const auto& kv : detail::trainer_entries(trainer.config()))
    detail::meta_match(st, kv.first, kv.second);
  // 3. Counters and the generator, exactly in the form save_checkpoint writes them.
  const std::int64_t steps = detail::meta_int(st, "steps");
  const std::int64_t updates = detail::meta_int(st, "ema.updates");
  Rng restored;
  {
    const std::string& text = detail::meta(st, "rng");
    std::istringstream is(text);
    is >> restored;
    std::ostringstream back;
    back << restored;
    if (is.fail() || back.str() != text)
      fail(path,
           "checkpoint metadata 'rng' is not a generator state as save_checkpoint writes "
           "it (312 numbers separated by single spaces, nothing before or after)");
  }
  // 4. Every tensor, read and checked into temporaries.
  const Index n = field.num_params();
  const auto& layout = field.layout().tensors();
  for (const char* key : {"optim.m", "optim.v"})
    if (st.at(key).numel() != std::uint64_t(n))
      fail(path, std::string("tensor '") + key + "' has " + std::to_string(st.at(key).numel()) +
                     " elements, the field has " + std::to_string(n) + " parameters");
  std::vector<S> params, m(static_cast<std::size_t>(n)), v(m.size()), ema(m.size());
  LoadOptions lo;
  lo.prefix = "model.";
  stage_state_dict(field, st, lo, params);
  st.get<S>("optim.m", m.data(), m.size());
  st.get<S>("optim.v", v.data(), v.size());
  for (const auto& t : layout) {
    const TensorEntry& e = st.at("ema." + t.name);
    const std::vector<std::int64_t> want(t.shape.begin(), t.shape.end());
    if (e.shape != want)
      fail(path, st.data_start() + e.begin,
           "tensor 'ema." + t.name + "' has shape " + shape_string(e.shape) +
               ", the field expects " + shape_string(want));
    st.get<S>("ema." + t.name, ema.data() + t.offset, std::uint64_t(t.size()));
  }
  if (st.tensors().size() != 2 * layout.size() + 2)
    for (const auto& e : st.tensors()) {
      const bool model = e.name.rfind("model.", 0) == 0 && field.layout().find(e.name.substr(6));
      const bool avg = e.name.rfind("ema.", 0) == 0 && field.layout().find(e.name.substr(4));
      if (!model && !avg && e.name != "optim.m" && e.name != "optim.v")
        fail(path, st.data_start() + e.begin,
             "unexpected tensor '" + e.name + "' in a checkpoint of this field");
    }
  const TensorEntry& ve = st.at("optim.v");
  for (std::size_t i = 0; i < v.size(); ++i)
    if (v[i] < S(0))
      fail(path, st.data_start() + ve.begin + i * size_of(ve.dtype),
           "tensor 'optim.v' holds a negative second moment " + detail::exact(double(v[i])) +
               " at element " + std::to_string(i) + " (Adam's v is never negative)");
  // 5. The optimizer and the EMA check their own state: into copies, so that a refusal
  //    (value_error, numeric_error, shape_error) becomes an io_error and changes nothing.
  auto adam = trainer.optimizer();
  auto avg = trainer.ema();
  try {
    adam.set_state(steps, ConstVectorView<S>(m.data(), n), ConstVectorView<S>(v.data(), n));
    avg.set_state(updates, ConstVectorView<S>(ema.data(), n));
  } catch (const flowprior::error& e) {
    fail(path, std::string("invalid optimizer or EMA state: ") + e.what());
  }
  // 6. Everything is read and checked: commit (nothing below throws). The parameters are
  //    uploaded into the field's backend memory.
  trainer.optimizer() = std::move(adam);
  trainer.ema() = std::move(avg);
  Backend::copy_from_host(params.data(), field.num_params(), field.parameters().data);
  rng = restored;
}

/// Restores a checkpoint written by save_checkpoint into `trainer`, `field` and `rng`. The
/// trainer must have been built for `field` with the configuration the checkpoint was saved
/// with: convention, schedule, EMA decay, batch, K, reduction, time sampler, antithetic draws,
/// time groups, Adam's betas, eps, weight decay and mode, and the gradient clip (an io_error
/// names the entry and both values). Nothing is modified unless the whole file is valid: the
/// checksum, the metadata, every tensor and the optimizer state are checked first. Every error
/// is an io_error naming the file.
template <class Field>
void load_checkpoint(const std::string& path, train::FlowMatchingTrainer<Field>& trainer,
                     Field& field, Rng& rng) {
  load_checkpoint(Safetensors::read(path), trainer, field, rng);
}

}  // namespace checkpoint_impl

using checkpoint_impl::load_checkpoint;
using checkpoint_impl::save_checkpoint;

}  // namespace train
}  // namespace flowprior
