/// @file
/// Arena: a growable block of backend memory from which a module carves its activation caches
/// and scratch tensors. A module lays out its tensors twice per new batch size: once without
/// memory to count, once with it. Calls with a batch size already seen allocate nothing.
#pragma once

#include <array>
#include <flowprior/core/size.hpp>
#include <flowprior/core/types.hpp>
#include <string>

namespace flowprior {
namespace nn {

/// The sizes a field's workspace layout depends on besides the batch (the parameter count and
/// every configured extent). A workspace records the key of the field it was laid out for and
/// lays itself out again when the key differs, so a field replaced at the same address by a
/// different network (a wider one, say) never reads or writes past the old layout
/// (docs/errors.md "Workspaces").
struct LayoutKey {
  std::array<Index, 8> sizes{{-1, -1, -1, -1, -1, -1, -1, -1}};
  bool operator==(const LayoutKey& o) const { return sizes == o.sizes; }
  bool operator!=(const LayoutKey& o) const { return !(*this == o); }
};

template <class S, class Backend>
class Arena {
 public:
  /// Starts a layout. With `count_only`, views get null data and only the size is computed.
  void begin(bool count_only) {
    count_only_ = count_only;
    used_ = 0;
  }
  /// Carves a (rows, cols) matrix; offsets are rounded to 64 bytes. Sizes are checked: an
  /// overflowing request is a config_error (docs/errors.md "Sizes").
  MatrixView<S> take(Index rows, Index cols) {
    const Index n = checked_mul("workspace", "tensor size", rows, cols);
    S* p = count_only_ ? nullptr : data() + used_;
    used_ = checked_add("workspace", "workspace size", used_, round_up(n));
    return MatrixView<S>(p, rows, cols, rows > 0 ? rows : 1);
  }
  /// Ends a counting pass: makes sure the memory holds what was counted. `where` and `batch`
  /// name the request in the config_error raised when it cannot fit in memory.
  void reserve_counted(const char* where = "workspace", Index batch = -1) {
    if (Index(mem_.size()) >= used_) return;
    const std::string what =
        batch >= 0 ? "the workspace for a batch of " + std::to_string(batch) : "the workspace";
    check_allocation(where, what, used_, sizeof(S));
    try {
      Backend::resize(mem_, used_);
    } catch (const std::bad_alloc&) {
      flowprior::detail::raise_size_config(where, what + ": cannot allocate " +
                                                      std::to_string(used_) + " elements (" +
                                                      gib_string(double(used_) * sizeof(S)) + ")");
    }
  }
  Index used() const { return used_; }
  Index capacity() const { return Index(mem_.size()); }

 private:
  static Index round_up(Index n) {
    constexpr Index a = 64 / Index(sizeof(S)) > 0 ? 64 / Index(sizeof(S)) : 1;
    return checked_add("workspace", "tensor size", n, a - 1) / a * a;
  }
  S* data() { return mem_.data(); }

  typename Backend::template Buffer<S> mem_;
  Index used_ = 0;
  bool count_only_ = true;
};

}  // namespace nn
}  // namespace flowprior
