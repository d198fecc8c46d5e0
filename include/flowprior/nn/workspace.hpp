/// @file
/// Arena: a growable block of backend memory from which a module carves its activation caches
/// and scratch tensors. A module lays out its tensors twice per new batch size: once without
/// memory to count, once with it. Calls with a batch size already seen allocate nothing.
#pragma once

#include <flowprior/core/types.hpp>

namespace flowprior {
namespace nn {

template <class S, class Backend>
class Arena {
 public:
  /// Starts a layout. With `count_only`, views get null data and only the size is computed.
  void begin(bool count_only) {
    count_only_ = count_only;
    used_ = 0;
  }
  /// Carves a (rows, cols) matrix; offsets are rounded to 64 bytes.
  MatrixView<S> take(Index rows, Index cols) {
    const Index n = rows * cols;
    S* p = count_only_ ? nullptr : data() + used_;
    used_ += round_up(n);
    return MatrixView<S>(p, rows, cols, rows > 0 ? rows : 1);
  }
  /// Ends a counting pass: makes sure the memory holds what was counted.
  void reserve_counted() { Backend::resize(mem_, used_); }
  Index used() const { return used_; }
  Index capacity() const { return Index(mem_.size()); }

 private:
  static Index round_up(Index n) {
    constexpr Index a = 64 / Index(sizeof(S)) > 0 ? 64 / Index(sizeof(S)) : 1;
    return (n + a - 1) / a * a;
  }
  S* data() { return mem_.data(); }

  typename Backend::template Buffer<S> mem_;
  Index used_ = 0;
  bool count_only_ = true;
};

}  // namespace nn
}  // namespace flowprior
