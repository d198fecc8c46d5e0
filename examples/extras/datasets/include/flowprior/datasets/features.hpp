/// @file
/// Feature matrices from files (docs/data.md "Features"): embeddings a user exported (from
/// PyTorch, NumPy, another model) as alignment targets, read through the library's own readers
/// (io/npy.hpp, io/safetensors.hpp) into flowprior's layout, a (dim, N) float matrix with one
/// column per sample. Files hold one ROW per sample, (N, dim), as NumPy and PyTorch do; a 1-D
/// array is N samples of dimension 1 and a 3-D (batch, tokens, dim) array is batch x tokens
/// samples (sample b * tokens + t).
#pragma once

#include <Eigen/Core>
#include <cstdint>
#include <flowprior/core/error.hpp>
#include <flowprior/io/file.hpp>
#include <flowprior/io/npy.hpp>
#include <flowprior/io/safetensors.hpp>
#include <string>

namespace flowprior {
namespace datasets {

/// Reads the features of a .npy file into a (dim, N) matrix. Non-finite values are refused.
/// @throws io_error naming the file (io::read_npy_samples).
inline Eigen::MatrixXf read_npy_features(const std::string& path) {
  io::Samples<float> s = io::read_npy_samples<float>(path, /*allow_nonfinite=*/false);
  Eigen::MatrixXf m(s.dim, s.count);
  if (m.size() > 0) std::copy(s.data.begin(), s.data.end(), m.data());
  return m;
}

/// Reads tensor `tensor` of a safetensors file (or its only tensor when `tensor` is empty) into
/// a (dim, N) matrix; any dtype the reader converts (F64, F32, F16, BF16, integers). Non-finite
/// values, and F64 values beyond the float range, are refused.
/// @throws io_error naming the file: no such tensor, several tensors and no name, a 0-d tensor or
///         one of more than 3 dimensions, or any error of Safetensors::read.
inline Eigen::MatrixXf read_safetensors_features(const std::string& path,
                                                 const std::string& tensor = "") {
  const io::Safetensors st = io::Safetensors::read(path);
  std::string name = tensor;
  if (name.empty()) {
    if (st.tensors().size() != 1) {
      std::string names;
      for (const auto& t : st.tensors()) names += (names.empty() ? "'" : ", '") + t.name + "'";
      io::fail(path, "expected exactly one tensor when no name is given, found " +
                         std::to_string(st.tensors().size()) +
                         (names.empty() ? std::string() : " (" + names + ")"));
    }
    name = st.tensors().front().name;
  }
  const io::TensorEntry& t = st.at(name);
  if (t.shape.empty() || t.shape.size() > 3)
    io::fail(path, "tensor '" + name +
                       "': expected a 1-D (N,), 2-D (N, dim) or 3-D (batch, tokens, dim) tensor "
                       "of samples, found shape " +
                       io::shape_string(t.shape));
  const std::int64_t dim = t.shape.size() == 1 ? 1 : t.shape.back();
  const std::int64_t count = dim == 0 ? 0 : static_cast<std::int64_t>(t.numel()) / dim;
  Eigen::MatrixXf m(dim, count);
  // Row-major (N, dim) bytes are the (dim, N) column-major layout: a plain conversion.
  st.get<float>(name, m.data(), t.numel(), /*allow_nonfinite=*/false);
  return m;
}

/// Reads features by the file's extension: ".npy" (read_npy_features) or ".safetensors"
/// (read_safetensors_features, with `tensor`).
/// @throws config_error for another extension, or a tensor name given for a .npy file; io_error
///         from the readers.
inline Eigen::MatrixXf read_features(const std::string& path, const std::string& tensor = "") {
  auto ends_with = [&](const std::string& suffix) {
    return path.size() >= suffix.size() &&
           path.compare(path.size() - suffix.size(), suffix.size(), suffix) == 0;
  };
  if (ends_with(".npy")) {
    if (!tensor.empty())
      ::flowprior::detail::raise<config_error>("[flowprior.config] read_features: " + path +
                                               ": a .npy file holds one array; no tensor name "
                                               "applies, got '" +
                                               tensor + "'");
    return read_npy_features(path);
  }
  if (ends_with(".safetensors")) return read_safetensors_features(path, tensor);
  ::flowprior::detail::raise<config_error>("[flowprior.config] read_features: " + path +
                                           ": expected a file ending in .npy or .safetensors");
}

}  // namespace datasets
}  // namespace flowprior
