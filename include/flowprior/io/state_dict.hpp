/// @file
/// Loading and saving a field's parameters by their PyTorch state_dict names (docs/formats.md
/// "State dicts"). A field exposes layout() (names, PyTorch shapes, offsets) and parameters();
/// these functions move tensors between it and a safetensors file.
///
/// Released checkpoints store the flow head under an outer key (`ema`, `model` or `state_dict`)
/// and sometimes under `flow_loss.` and/or `net.` (the head inside the MAR flow loss). Once
/// flattened into safetensors (tools/convert_checkpoint.py), their names look like
/// `ema.net.input_proj.weight`. load_state_dict finds the prefix by itself (EMA weights first:
/// they are the prior) or takes the one given.
#pragma once

#include <algorithm>
#include <flowprior/backend/fwd.hpp>
#include <flowprior/io/safetensors.hpp>
#include <map>
#include <string>
#include <vector>

namespace flowprior {
namespace io {

struct LoadOptions {
  /// The prefix of the field's tensors in the file; "auto" tries every combination of an outer
  /// "ema." / "" / "model." / "state_dict." (EMA first: it is the prior) with an inner "" /
  /// "net." / "flow_loss." / "flow_loss.net.", in that order, and takes the first under which
  /// every tensor of the field exists. Shapes are checked afterwards: a prefix whose shapes do
  /// not match is an error, not a reason to try the next one (name the prefix to choose).
  std::string prefix = "auto";
  /// Accept NaN/Inf weights (an io_error otherwise).
  bool allow_nonfinite = false;
  /// Reject tensors under the prefix that the field does not have (a wrong architecture).
  bool strict = true;
};

/// The candidate prefixes tried by LoadOptions::prefix == "auto", in order.
inline std::vector<std::string> candidate_prefixes() {
  std::vector<std::string> out;
  for (const char* outer : {"", "ema.", "model.", "state_dict."})
    for (const char* inner : {"", "net.", "flow_loss.", "flow_loss.net."})
      out.push_back(std::string(outer) + inner);
  // Prefer the EMA weights over raw training weights when both are present.
  std::stable_partition(out.begin(), out.end(),
                        [](const std::string& p) { return p.rfind("ema.", 0) == 0; });
  return out;
}

/// Reads and checks every parameter tensor of `field` from `st` into `staged` (the field's flat
/// parameter layout, num_params() values), converting to the field's scalar type, without
/// touching the field. Throws io_error as load_state_dict. Returns the prefix used.
template <class Field>
std::string stage_state_dict(const Field& field, const Safetensors& st, const LoadOptions& opt,
                             std::vector<typename Field::Scalar>& staged) {
  using S = typename Field::Scalar;
  const auto& tensors = field.layout().tensors();
  std::string prefix = opt.prefix;
  if (prefix == "auto") {
    std::size_t best_hits = 0;
    std::string best, found;
    bool ok = false;
    for (const auto& cand : candidate_prefixes()) {
      std::size_t hits = 0;
      for (const auto& t : tensors) hits += st.find(cand + t.name) != nullptr;
      if (hits == tensors.size()) {
        found = cand;
        ok = true;
        break;
      }
      if (hits > best_hits) {
        best_hits = hits;
        best = cand;
      }
    }
    if (!ok) {
      for (const auto& t : tensors)
        if (!st.find(best + t.name))
          fail(st.source(), "missing tensor '" + best + t.name + "' (" + std::to_string(best_hits) +
                                " of " + std::to_string(tensors.size()) +
                                " tensors of the field found under the prefix '" + best + "')");
    }
    prefix = found;
  }
  // Check everything before touching the field.
  for (const auto& t : tensors) {
    const TensorEntry* e = st.find(prefix + t.name);
    if (!e) fail(st.source(), "missing tensor '" + prefix + t.name + "'");
    if (e->shape != std::vector<std::int64_t>(t.shape.begin(), t.shape.end()))
      fail(st.source(), st.data_start() + e->begin,
           "tensor '" + e->name + "' has shape " + shape_string(e->shape) + ", the field expects " +
               shape_string(std::vector<std::int64_t>(t.shape.begin(), t.shape.end())));
  }
  if (opt.strict) {
    const std::vector<std::string> others = {"ema.", "model.", "state_dict.", "optim.", "trainer."};
    for (const auto& e : st.tensors()) {
      if (e.name.rfind(prefix, 0) != 0) continue;
      const std::string rest = e.name.substr(prefix.size());
      bool belongs_elsewhere = false;
      if (prefix.empty())
        for (const auto& o : others) belongs_elsewhere |= rest.rfind(o, 0) == 0;
      if (belongs_elsewhere || field.layout().find(rest)) continue;
      fail(st.source(), st.data_start() + e.begin,
           "unexpected tensor '" + e.name + "': the field has no parameter '" + rest +
               "' (a different architecture or configuration?)");
    }
  }
  staged.assign(static_cast<std::size_t>(field.num_params()), S(0));
  for (const auto& t : tensors)
    st.get<S>(prefix + t.name, staged.data() + t.offset, std::uint64_t(t.size()),
              opt.allow_nonfinite);
  return prefix;
}

/// Loads every parameter tensor of `field` from `st`, converting to the field's scalar type.
/// Throws io_error naming the tensor for a missing tensor, a wrong shape, an unexpected tensor
/// (strict), a non-finite value, or (float fields) an F64 value beyond the float range. Returns
/// the prefix used. The field is modified only when every tensor was found and checked.
template <class Field>
std::string load_state_dict(Field& field, const Safetensors& st, const LoadOptions& opt = {}) {
  std::vector<typename Field::Scalar> staged;
  const std::string prefix = stage_state_dict(field, st, opt, staged);
  using Backend = backend_of_t<Field>;
  Backend::copy_from_host(staged.data(), field.num_params(), field.parameters().data);
  return prefix;
}

/// Adds every parameter of `field` to `w` as `prefix + name` with its PyTorch shape.
template <class Field>
void add_state_dict(SafetensorsWriter& w, const Field& field, const std::string& prefix,
                    Dtype dtype) {
  using Backend = backend_of_t<Field>;
  std::vector<typename Field::Scalar> host(static_cast<std::size_t>(field.num_params()));
  Backend::copy_to_host(field.parameters().data, field.num_params(), host.data());
  for (const auto& t : field.layout().tensors())
    w.add(prefix + t.name, host.data() + t.offset,
          std::vector<std::int64_t>(t.shape.begin(), t.shape.end()), dtype);
}

/// Saves `field` as a safetensors state dict that PyTorch's load_state_dict of the released
/// module accepts (same names and shapes), atomically, with a CRC-32 of the file in its metadata
/// ("flowprior.checksum", verified by Safetensors::read; other readers ignore it).
template <class Field>
void save_state_dict(const Field& field, const std::string& path,
                     Dtype dtype = dtype_of<typename Field::Scalar>(),
                     const std::map<std::string, std::string>& metadata = {},
                     WriteFaults faults = {}) {
  SafetensorsWriter w;
  for (const auto& kv : metadata) w.set_metadata(kv.first, kv.second);
  add_state_dict(w, field, "", dtype);
  w.set_checksum(true);
  w.write(path, faults);
}

}  // namespace io
}  // namespace flowprior

#if !defined(__CUDACC__)
#include <flowprior/backend/cpu.hpp>  // the default backend of host code
#endif
