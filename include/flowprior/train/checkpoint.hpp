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
///
/// The same layout holds a ReconstructionTrainer's state (an autoencoder: format
/// "reconstruction-checkpoint-1", with its configuration and every field of the model's
/// configuration as model.config.* instead of the flow entries), and a MarTrainer's (format
/// "mar-checkpoint-1": the MAR generator with its head, its convention, mask law and trainer
/// options); each load refuses the other kinds by name.
#pragma once

#include <cstdint>
#include <flowprior/core/convention.hpp>
#include <flowprior/core/random.hpp>
#include <flowprior/io/safetensors.hpp>
#include <flowprior/io/state_dict.hpp>
#include <flowprior/train/communicator.hpp>
#include <flowprior/train/mar.hpp>
#include <flowprior/train/reconstruction.hpp>
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
/// The format tag of ReconstructionTrainer checkpoints.
inline const char* reconstruction_format() { return "reconstruction-checkpoint-1"; }
/// The format tag of MarTrainer checkpoints.
inline const char* mar_format() { return "mar-checkpoint-1"; }
/// The trainer a checkpoint format belongs to (nullptr: not one of ours).
inline const char* trainer_of_format(const std::string& format) {
  if (format == checkpoint_format()) return "FlowMatchingTrainer";
  if (format == reconstruction_format()) return "ReconstructionTrainer";
  if (format == mar_format()) return "MarTrainer";
  return nullptr;
}

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

/// Checks that the checkpoint's entry `key` equals the trainer's value `want`. An entry listed
/// in `absent` (key, value) that the file lacks (written before the entry existed) reads as that
/// value.
inline void meta_match(const Safetensors& st, const std::string& key, const std::string& want,
                       const std::vector<std::pair<std::string, std::string>>& absent = {}) {
  if (st.metadata().find(key) == st.metadata().end())
    for (const auto& kv : absent)
      if (kv.first == key) {
        if (kv.second != want)
          fail(st.source(), "checkpoint " + key + " absent (a file written before the entry " +
                                "existed), meaning '" + kv.second + "', differs from the " +
                                "trainer's '" + want +
                                "' (resume with the configuration the checkpoint was saved with)");
        return;
      }
  const std::string& have = meta(st, key);
  if (have != want)
    fail(st.source(), "checkpoint " + key + " '" + have + "' differs from the trainer's '" + want +
                          "' (resume with the configuration the checkpoint was saved with)");
}

/// The configuration entries of a flow-matching checkpoint (besides the counters): convention,
/// schedule, EMA decay and trainer.*, all checked against the trainer on load. trainer.batch is
/// the global batch (the trainer's batch times its ranks: docs/distributed.md "Checkpoints"), so
/// a file resumes on any number of ranks whose batches add up to it.
template <class Field>
std::vector<std::pair<std::string, std::string>> flow_config_entries(
    const train::FlowMatchingTrainer<Field>& trainer) {
  train::TrainerConfig global = trainer.config();
  global.batch = checked_mul("flow_config_entries", "batch x ranks", global.batch,
                             Index(trainer.communicator().size()));
  std::vector<std::pair<std::string, std::string>> e = trainer_entries(global);
  e.emplace_back("convention", to_string(trainer.convention()));
  e.emplace_back("schedule", schedule_string(trainer.config().schedule));
  e.emplace_back("ema.decay", exact(trainer.ema().decay()));
  return e;
}

/// Writes a training state atomically: model.<name> and ema.<name> (the model's tensors by their
/// PyTorch names and shapes), optim.m and optim.v, the counters, the generator, `format`, the
/// configuration entries and the caller's user.* entries, with a CRC-32 of the whole file. The
/// parameters, the EMA weights and Adam's moments live in backend memory: they reach the file
/// through host copies (Backend::copy_to_host, Ema::copy_weights_to, Adam::copy_m_to / _v_to).
template <class Model, class S, class Backend>
void write_state(const std::string& path, const char* format,
                 const std::vector<std::pair<std::string, std::string>>& config, const Model& model,
                 const optim::Adam<S, Backend>& adam, const optim::Ema<S, Backend>& avg,
                 const Rng& rng, const std::map<std::string, std::string>& extra_metadata,
                 WriteFaults faults) {
  const auto n = static_cast<std::size_t>(model.num_params());
  std::vector<S> params(n), ema(n), m(n), v(n);
  Backend::copy_to_host(model.parameters().data, model.num_params(), params.data());
  avg.copy_weights_to(ema.data());
  adam.copy_m_to(m.data());
  adam.copy_v_to(v.data());
  SafetensorsWriter w;
  const Dtype dt = dtype_of<S>();
  // The model's tensors by their PyTorch names and shapes, as add_state_dict writes them.
  const auto add_model = [&](const std::string& prefix, const std::vector<S>& values) {
    for (const auto& t : model.layout().tensors())
      w.add(prefix + t.name, values.data() + t.offset,
            std::vector<std::int64_t>(t.shape.begin(), t.shape.end()), dt);
  };
  add_model("model.", params);
  add_model("ema.", ema);
  w.add("optim.m", m.data(), {std::int64_t(n)}, dt);
  w.add("optim.v", v.data(), {std::int64_t(n)}, dt);
  for (const auto& kv : extra_metadata) w.set_metadata("user." + kv.first, kv.second);
  w.set_metadata("flowprior.format", format);
  w.set_metadata("flowprior.version", FLOWPRIOR_VERSION_STRING);
  w.set_metadata("steps", std::to_string(adam.steps()));
  w.set_metadata("ema.updates", std::to_string(avg.updates()));
  for (const auto& kv : config) w.set_metadata(kv.first, kv.second);
  std::ostringstream rs;
  rs << rng;
  w.set_metadata("rng", rs.str());
  w.set_checksum(true);
  w.write(path, faults);
}

/// Restores a training state written by write_state (whose format the caller has checked) into
/// `model`, `adam`, `avg` and `rng`, after checking everything: the checksum's presence, every
/// configuration entry, the counters, the generator, every tensor and the optimizer state.
/// Nothing is modified unless the whole file is valid; every error is an io_error. `absent`: the
/// configuration entries a file may lack, with the value that means (meta_match).
template <class Model, class S, class Backend>
void read_state(const Safetensors& st,
                const std::vector<std::pair<std::string, std::string>>& config, Model& model,
                optim::Adam<S, Backend>& adam_out, optim::Ema<S, Backend>& avg_out, Rng& rng,
                const std::vector<std::pair<std::string, std::string>>& absent = {}) {
  const std::string& path = st.source();
  if (st.checksum() == ChecksumState::Absent)
    fail(path,
         std::string("checkpoint without a checksum ('") + checksum_key() + "' in __metadata__)");
  // The trainer must be configured as the one the checkpoint was saved from.
  for (const auto& kv : config) meta_match(st, kv.first, kv.second, absent);
  // Counters and the generator, exactly in the form write_state writes them.
  const std::int64_t steps = meta_int(st, "steps");
  const std::int64_t updates = meta_int(st, "ema.updates");
  Rng restored;
  {
    const std::string& text = meta(st, "rng");
    std::istringstream is(text);
    is >> restored;
    std::ostringstream back;
    back << restored;
    if (is.fail() || back.str() != text)
      fail(path,
           "checkpoint metadata 'rng' is not a generator state as save_checkpoint writes "
           "it (312 numbers separated by single spaces, nothing before or after)");
  }
  // Every tensor, read and checked into temporaries.
  const Index n = model.num_params();
  const auto& layout = model.layout().tensors();
  for (const char* key : {"optim.m", "optim.v"})
    if (st.at(key).numel() != std::uint64_t(n))
      fail(path, std::string("tensor '") + key + "' has " + std::to_string(st.at(key).numel()) +
                     " elements, the model has " + std::to_string(n) + " parameters");
  std::vector<S> params, m(static_cast<std::size_t>(n)), v(m.size()), ema(m.size());
  LoadOptions lo;
  lo.prefix = "model.";
  stage_state_dict(model, st, lo, params);
  st.get<S>("optim.m", m.data(), m.size());
  st.get<S>("optim.v", v.data(), v.size());
  for (const auto& t : layout) {
    const TensorEntry& e = st.at("ema." + t.name);
    const std::vector<std::int64_t> want(t.shape.begin(), t.shape.end());
    if (e.shape != want)
      fail(path, st.data_start() + e.begin,
           "tensor 'ema." + t.name + "' has shape " + shape_string(e.shape) +
               ", the model expects " + shape_string(want));
    st.get<S>("ema." + t.name, ema.data() + t.offset, std::uint64_t(t.size()));
  }
  if (st.tensors().size() != 2 * layout.size() + 2)
    for (const auto& e : st.tensors()) {
      const bool in_model = e.name.rfind("model.", 0) == 0 && model.layout().find(e.name.substr(6));
      const bool in_avg = e.name.rfind("ema.", 0) == 0 && model.layout().find(e.name.substr(4));
      if (!in_model && !in_avg && e.name != "optim.m" && e.name != "optim.v")
        fail(path, st.data_start() + e.begin,
             "unexpected tensor '" + e.name + "' in a checkpoint of this model");
    }
  const TensorEntry& ve = st.at("optim.v");
  for (std::size_t i = 0; i < v.size(); ++i)
    if (v[i] < S(0))
      fail(path, st.data_start() + ve.begin + i * size_of(ve.dtype),
           "tensor 'optim.v' holds a negative second moment " + exact(double(v[i])) +
               " at element " + std::to_string(i) + " (Adam's v is never negative)");
  // The optimizer and the EMA check their own state: into copies, so that a refusal
  // (value_error, numeric_error, shape_error) becomes an io_error and changes nothing.
  auto adam = adam_out;
  auto avg = avg_out;
  try {
    adam.set_state(steps, ConstVectorView<S>(m.data(), n), ConstVectorView<S>(v.data(), n));
    avg.set_state(updates, ConstVectorView<S>(ema.data(), n));
  } catch (const flowprior::error& e) {
    fail(path, std::string("invalid optimizer or EMA state: ") + e.what());
  }
  // Everything is read and checked: commit (nothing below throws). The parameters are uploaded
  // into the model's backend memory.
  adam_out = std::move(adam);
  avg_out = std::move(avg);
  Backend::copy_from_host(params.data(), model.num_params(), model.parameters().data);
  rng = restored;
}

/// The format tag of a checkpoint, and a refusal naming what a different kind of file is.
inline void expect_format(const Safetensors& st, const char* want) {
  const std::string& path = st.source();
  const std::string& format = meta(st, "flowprior.format");
  if (format == want) return;
  if (format == "checkpoint-1")
    fail(path,
         "checkpoint format 'checkpoint-1' (flowprior 0.1.0) has no checksum and does not "
         "record the trainer configuration, so it cannot be resumed safely; its weights "
         "still load with load_state_dict (prefix 'ema.' or 'model.')");
  if (const char* kind = trainer_of_format(format))
    fail(path, "checkpoint format '" + format + "' is a checkpoint of a " + kind +
                   "; this load expects '" + want + "' (a " + trainer_of_format(want) +
                   "); its weights load with load_state_dict (prefix 'ema.' or 'model.')");
  fail(path, "not a flowprior checkpoint (format '" + format + "', expected '" + want + "')");
}

}  // namespace detail

/// Saves the trainer's state, its field and the generator `rng` atomically to `path`, with a
/// CRC-32 of the whole file in its metadata (format `checkpoint-2`, docs/formats.md
/// "Checkpoints"). `extra_metadata` is stored as user.<key>.
///
/// With the trainer's communicator of several ranks (docs/distributed.md "Checkpoints") the call
/// is collective: rank 0 writes (the ranks hold the same state), then all ranks agree on the
/// outcome, so it returns on every rank once the file is complete; if rank 0's write failed,
/// rank 0 rethrows its io_error and the others throw distributed_error.
template <class Field>
void save_checkpoint(const std::string& path, const train::FlowMatchingTrainer<Field>& trainer,
                     const Field& field, const Rng& rng,
                     const std::map<std::string, std::string>& extra_metadata = {},
                     WriteFaults faults = {}) {
  train::Communicator& comm = trainer.communicator();
  train::agree_on(
      comm, "save_checkpoint",
      [&] {
        detail::write_state(path, detail::checkpoint_format(), detail::flow_config_entries(trainer),
                            field, trainer.optimizer(), trainer.ema(), rng, extra_metadata, faults);
      },
      comm.rank() == 0);
}

namespace detail {
template <class Field>
void load_flow(const Safetensors& st, train::FlowMatchingTrainer<Field>& trainer, Field& field,
               Rng& rng) {
  detail::expect_format(st, detail::checkpoint_format());
  detail::read_state(st, detail::flow_config_entries(trainer), field, trainer.optimizer(),
                     trainer.ema(), rng);
}
}  // namespace detail

/// Restores a parsed checkpoint `st` into `trainer`, `field` and `rng`: see the overload taking
/// a path. `st` must carry a checksum (Safetensors::read verifies it).
template <class Field>
void load_checkpoint(const Safetensors& st, train::FlowMatchingTrainer<Field>& trainer,
                     Field& field, Rng& rng) {
  train::agree_on(trainer.communicator(), "load_checkpoint",
                  [&] { detail::load_flow(st, trainer, field, rng); });
}

/// Restores a checkpoint written by save_checkpoint into `trainer`, `field` and `rng`. The
/// trainer must have been built for `field` with the configuration the checkpoint was saved
/// with: convention, schedule, EMA decay, batch, K, reduction, time sampler, antithetic draws,
/// time groups, Adam's betas, eps, weight decay and mode, and the gradient clip (an io_error
/// names the entry and both values). Nothing is modified unless the whole file is valid: the
/// checksum, the metadata, every tensor and the optimizer state are checked first. Every error
/// is an io_error naming the file.
///
/// With the trainer's communicator of several ranks, every rank reads the file (it must be
/// visible to all: a shared folder) and the ranks agree on the outcome: a rank that fails
/// rethrows its error, the others throw distributed_error; no rank continues alone.
template <class Field>
void load_checkpoint(const std::string& path, train::FlowMatchingTrainer<Field>& trainer,
                     Field& field, Rng& rng) {
  train::agree_on(trainer.communicator(), "load_checkpoint",
                  [&] { detail::load_flow(Safetensors::read(path), trainer, field, rng); });
}

// ---------------------------------------------------------------------------------------------
// Reconstruction (autoencoder) checkpoints
// ---------------------------------------------------------------------------------------------

namespace detail {
/// The configuration entries of a reconstruction checkpoint: schedule, EMA decay, trainer.*
/// (Adam's betas, eps, weight decay and mode, the clip, the KL weight) and model.config.* (every
/// field of the model's configuration: Model::Config::entries()), all checked against the
/// trainer on load.
template <class Model>
std::vector<std::pair<std::string, std::string>> reconstruction_config_entries(
    const train::ReconstructionTrainer<Model>& trainer) {
  const train::ReconstructionConfig& c = trainer.config();
  std::vector<std::pair<std::string, std::string>> e = {
      {"schedule", schedule_string(c.schedule)},
      {"ema.decay", exact(trainer.ema().decay())},
      {"trainer.loss", "mse"},
      {"trainer.adam.beta1", exact(c.adam.beta1)},
      {"trainer.adam.beta2", exact(c.adam.beta2)},
      {"trainer.adam.eps", exact(c.adam.eps)},
      {"trainer.adam.weight_decay", exact(c.adam.weight_decay)},
      {"trainer.adam.decoupled", c.adam.decoupled ? "true" : "false"},
      {"trainer.clip_norm", exact(c.clip_norm)},
      {"trainer.kl_beta", exact(c.kl_beta)}};
  for (const auto& kv : trainer.model().config().entries())
    e.emplace_back("model.config." + kv.first, kv.second);
  return e;
}

/// The entries that reconstruction checkpoints written before them lack, and what their absence
/// means: no KL term, a deterministic posterior.
inline std::vector<std::pair<std::string, std::string>> reconstruction_absent_entries() {
  return {{"trainer.kl_beta", exact(0.0)}, {"model.config.posterior", "deterministic"}};
}
}  // namespace detail

/// Saves a ReconstructionTrainer's state (its model's parameters, the EMA weights, Adam's
/// moments, the counters, the configuration, the generator `rng` and the caller's entries as
/// user.<key>, e.g. a data loader's position) atomically to `path`, with a CRC-32 of the whole
/// file (format `reconstruction-checkpoint-1`, docs/formats.md "Checkpoints").
///
/// With the trainer's communicator of several ranks: rank 0 writes and the ranks agree on the
/// outcome, as the flow-matching overload.
template <class Model>
void save_checkpoint(const std::string& path, const train::ReconstructionTrainer<Model>& trainer,
                     const Rng& rng, const std::map<std::string, std::string>& extra_metadata = {},
                     WriteFaults faults = {}) {
  train::Communicator& comm = trainer.communicator();
  train::agree_on(
      comm, "save_checkpoint",
      [&] {
        detail::write_state(path, detail::reconstruction_format(),
                            detail::reconstruction_config_entries(trainer), trainer.model(),
                            trainer.optimizer(), trainer.ema(), rng, extra_metadata, faults);
      },
      comm.rank() == 0);
}

/// Restores a parsed reconstruction checkpoint `st` into `trainer` (its model, optimizer and EMA)
/// and `rng`. The trainer must have the configuration the checkpoint was saved with (schedule,
/// EMA decay, Adam, clip, kl_beta, and every field of the model's configuration: an io_error
/// names the entry and both values; a file without trainer.kl_beta or model.config.posterior,
/// written before they existed, has kl_beta 0 and a deterministic posterior). Nothing is modified unless the whole file is valid; every error is an
/// io_error naming the file. The caller's user.* entries are in st.metadata().
/// With the trainer's communicator of several ranks, the ranks agree on the outcome (as the
/// flow-matching overload).
template <class Model>
void load_checkpoint(const Safetensors& st, train::ReconstructionTrainer<Model>& trainer,
                     Rng& rng) {
  train::agree_on(trainer.communicator(), "load_checkpoint", [&] {
    detail::expect_format(st, detail::reconstruction_format());
    detail::read_state(st, detail::reconstruction_config_entries(trainer), trainer.model(),
                       trainer.optimizer(), trainer.ema(), rng,
                       detail::reconstruction_absent_entries());
  });
}

/// load_checkpoint(Safetensors::read(path), trainer, rng); the read is inside the ranks'
/// agreement too.
template <class Model>
void load_checkpoint(const std::string& path, train::ReconstructionTrainer<Model>& trainer,
                     Rng& rng) {
  train::agree_on(trainer.communicator(), "load_checkpoint", [&] {
    const Safetensors st = Safetensors::read(path);
    detail::expect_format(st, detail::reconstruction_format());
    detail::read_state(st, detail::reconstruction_config_entries(trainer), trainer.model(),
                       trainer.optimizer(), trainer.ema(), rng,
                       detail::reconstruction_absent_entries());
  });
}

// ---------------------------------------------------------------------------------------------
// MAR generator checkpoints
// ---------------------------------------------------------------------------------------------

namespace detail {
/// The configuration entries of a MAR checkpoint: schedule, EMA decay, convention, trainer.*
/// (K, time sampler, mask law, Adam, clip) and model.config.* (MarConfig::entries()), all
/// checked against the trainer on load.
template <class S, class Backend>
std::vector<std::pair<std::string, std::string>> mar_config_entries(
    const train::MarTrainer<S, Backend>& trainer) {
  const train::MarTrainerConfig& c = trainer.config();
  std::vector<std::pair<std::string, std::string>> e = {
      {"schedule", schedule_string(c.schedule)},
      {"ema.decay", exact(trainer.ema().decay())},
      {"convention", to_string(trainer.convention())},
      {"trainer.loss", "mar-flow-matching"},
      {"trainer.K", std::to_string(c.K)},
      {"trainer.sampler", sampler_string(c.sampler)},
      {"trainer.mask.mask_ratio_min", exact(c.mask.mask_ratio_min)},
      {"trainer.mask.mean", exact(c.mask.mean)},
      {"trainer.mask.std", exact(c.mask.std)},
      {"trainer.adam.beta1", exact(c.adam.beta1)},
      {"trainer.adam.beta2", exact(c.adam.beta2)},
      {"trainer.adam.eps", exact(c.adam.eps)},
      {"trainer.adam.weight_decay", exact(c.adam.weight_decay)},
      {"trainer.adam.decoupled", c.adam.decoupled ? "true" : "false"},
      {"trainer.clip_norm", exact(c.clip_norm)}};
  for (const auto& kv : trainer.model().config().entries())
    e.emplace_back("model.config." + kv.first, kv.second);
  return e;
}
}  // namespace detail

/// Saves a MarTrainer's state (the generator's parameters, head included, the EMA weights,
/// Adam's moments, the counters, the configuration, `rng` and the caller's entries as
/// user.<key>) atomically to `path`, with a CRC-32 of the whole file (format
/// `mar-checkpoint-1`, docs/formats.md "Checkpoints").
///
/// With the trainer's communicator of several ranks: rank 0 writes and the ranks agree on the
/// outcome, as the flow-matching overload.
template <class S, class Backend>
void save_checkpoint(const std::string& path, const train::MarTrainer<S, Backend>& trainer,
                     const Rng& rng, const std::map<std::string, std::string>& extra_metadata = {},
                     WriteFaults faults = {}) {
  train::Communicator& comm = trainer.communicator();
  train::agree_on(
      comm, "save_checkpoint",
      [&] {
        detail::write_state(path, detail::mar_format(), detail::mar_config_entries(trainer),
                            trainer.model(), trainer.optimizer(), trainer.ema(), rng,
                            extra_metadata, faults);
      },
      comm.rank() == 0);
}

/// Restores a parsed MAR checkpoint `st` into `trainer` (its model, optimizer and EMA) and
/// `rng`; the trainer must have the configuration the checkpoint was saved with (an io_error
/// names the entry and both values). Other kinds of checkpoint are refused by name. Nothing is
/// modified unless the whole file is valid; every error is an io_error naming the file.
/// With the trainer's communicator of several ranks, the ranks agree on the outcome (as the
/// flow-matching overload).
template <class S, class Backend>
void load_checkpoint(const Safetensors& st, train::MarTrainer<S, Backend>& trainer, Rng& rng) {
  train::agree_on(trainer.communicator(), "load_checkpoint", [&] {
    detail::expect_format(st, detail::mar_format());
    detail::read_state(st, detail::mar_config_entries(trainer), trainer.model(),
                       trainer.optimizer(), trainer.ema(), rng);
  });
}

/// load_checkpoint(Safetensors::read(path), trainer, rng); the read is inside the ranks'
/// agreement too.
template <class S, class Backend>
void load_checkpoint(const std::string& path, train::MarTrainer<S, Backend>& trainer, Rng& rng) {
  train::agree_on(trainer.communicator(), "load_checkpoint", [&] {
    const Safetensors st = Safetensors::read(path);
    detail::expect_format(st, detail::mar_format());
    detail::read_state(st, detail::mar_config_entries(trainer), trainer.model(),
                       trainer.optimizer(), trainer.ema(), rng);
  });
}

}  // namespace checkpoint_impl

using checkpoint_impl::load_checkpoint;
using checkpoint_impl::save_checkpoint;

}  // namespace train
}  // namespace flowprior
