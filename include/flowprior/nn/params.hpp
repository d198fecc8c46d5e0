/// @file
/// Named parameter layout. Every field stores all its parameters in one flat vector; each tensor
/// is a slice of it, named exactly as in the PyTorch state_dict of the reference module, with the
/// PyTorch shape (Linear weights are (out, in), row-major). The packing order is the module's
/// registration order (docs/conventions.md "parameter packing").
#pragma once

#include <flowprior/core/error.hpp>
#include <flowprior/core/size.hpp>
#include <flowprior/core/types.hpp>
#include <string>
#include <vector>

namespace flowprior {
namespace nn {

/// One named tensor inside a flat parameter vector.
struct TensorInfo {
  std::string name;
  Index offset = 0;
  std::vector<Index> shape;  ///< PyTorch shape, e.g. {out, in} for a Linear weight.
  Index size() const {
    Index n = 1;
    for (Index s : shape) n *= s;
    return n;
  }
};

/// Matrix-product FLOPs per sample (row) of a field's passes, counting 2 m n k per product
/// (docs/benchmarks.md): what the benchmarks divide by to report GFLOP/s.
struct MatmulFlops {
  double forward = 0;   ///< forward pass
  double vjp_x = 0;     ///< input-gradient products only (after a forward)
  double backward = 0;  ///< parameter- and input-gradient products (after a forward)
  double jvp_x = 0;     ///< one tangent (after a forward)
};

/// The ordered list of named tensors of a module and their offsets.
class ParamLayout {
 public:
  /// Appends a tensor and returns its offset. Throws config_error naming the tensor when an
  /// extent is negative or its size or the running total overflows Index (docs/errors.md
  /// "Sizes"); the layout is unchanged then.
  Index add(std::string name, std::vector<Index> shape) {
    const std::string what = "size of parameter '" + name + "'";
    Index n = 1;
    for (Index s : shape) n = checked_mul("ParamLayout::add", what.c_str(), n, s);
    const Index total = checked_add("ParamLayout::add", "parameter count", total_, n);
    TensorInfo t{std::move(name), total_, std::move(shape)};
    tensors_.push_back(std::move(t));
    total_ = total;
    return tensors_.back().offset;
  }
  Index total() const { return total_; }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  /// Returns the tensor called `name`, or nullptr.
  const TensorInfo* find(const std::string& name) const {
    for (const auto& t : tensors_)
      if (t.name == name) return &t;
    return nullptr;
  }
  /// Returns the tensor called `name`; throws flowprior::error naming it if absent.
  const TensorInfo& at(const std::string& name) const {
    if (const auto* t = find(name)) return *t;
    flowprior::detail::raise<error>("[flowprior.param] no parameter named '" + name + "'");
  }

 private:
  std::vector<TensorInfo> tensors_;
  Index total_ = 0;
};

}  // namespace nn
}  // namespace flowprior
