/// @file
/// Backend-neutral tensor views. A batch of vectors is a column-major matrix of shape
/// (features, batch): one column is one sample (docs/conventions.md "layout"). Views do not own
/// memory; they are trivially copyable so that CUDA kernels can take them by value.
///
/// A view converts implicitly from any column-major matrix type that exposes data(), rows(),
/// cols(), outerStride() and innerStride() (Eigen matrices, maps and blocks; flowprior's own
/// device matrices), without this header including Eigen.
#pragma once

#include <cstddef>
#include <flowprior/config.hpp>
#include <flowprior/core/error.hpp>
#include <string>
#include <type_traits>
#include <utility>

namespace flowprior {

/// Signed index type used for all sizes (matches Eigen::Index).
using Index = std::ptrdiff_t;

namespace detail {

template <class M, class = void>
struct is_matrix_like : std::false_type {};
template <class M>
struct is_matrix_like<
    M, std::void_t<decltype(std::declval<M&>().data()), decltype(std::declval<M&>().rows()),
                   decltype(std::declval<M&>().cols()), decltype(std::declval<M&>().outerStride()),
                   decltype(std::declval<M&>().innerStride())>> : std::true_type {};

template <class M, class = void>
struct is_row_major : std::false_type {};
template <class M>
struct is_row_major<M, std::void_t<decltype(M::IsRowMajor)>>
    : std::integral_constant<bool, bool(M::IsRowMajor)> {};

template <class M, class = void>
struct is_vector_at_compile_time : std::false_type {};
template <class M>
struct is_vector_at_compile_time<M, std::void_t<decltype(M::IsVectorAtCompileTime)>>
    : std::integral_constant<bool, bool(M::IsVectorAtCompileTime)> {};

[[noreturn]] inline FLOWPRIOR_COLD void raise_strided() {
  raise<shape_error>(
      "[flowprior.shape] views need contiguous columns (inner stride 1); copy the expression "
      "into a plain matrix first");
}

}  // namespace detail

/// Column-major matrix view: element (i, j) is data[i + j * ld], ld >= rows.
template <class S>
struct MatrixView {
  S* data = nullptr;
  Index rows = 0;
  Index cols = 0;
  Index ld = 0;

  MatrixView() = default;  // host and device: defaulted
  FLOWPRIOR_HD MatrixView(S* d, Index r, Index c, Index l) : data(d), rows(r), cols(c), ld(l) {}
  FLOWPRIOR_HD MatrixView(S* d, Index r, Index c) : data(d), rows(r), cols(c), ld(r) {}

  /// From an Eigen-like column-major matrix (or a column vector).
  template <class M, std::enable_if_t<detail::is_matrix_like<std::remove_reference_t<M>>::value &&
                                          !std::is_same_v<std::decay_t<M>, MatrixView>,
                                      int> = 0>
  MatrixView(M&& m)  // NOLINT(google-explicit-constructor): views convert implicitly
      : data(m.data()), rows(m.rows()), cols(m.cols()), ld(m.outerStride()) {
    using D = std::decay_t<M>;
    static_assert(!detail::is_row_major<D>::value || detail::is_vector_at_compile_time<D>::value,
                  "flowprior views are column-major: (features, batch) with one column per sample");
    if (m.innerStride() != 1) detail::raise_strided();
    // A row-major type is a 1 x n row vector (static_assert above): consecutive columns.
    if (detail::is_row_major<D>::value || cols == 1 || ld < rows) ld = rows;
  }

  FLOWPRIOR_HD S& operator()(Index i, Index j) const { return data[i + j * ld]; }
  FLOWPRIOR_HD S* col(Index j) const { return data + j * ld; }
  FLOWPRIOR_HD Index size() const { return rows * cols; }
  FLOWPRIOR_HD bool empty() const { return rows == 0 || cols == 0; }
  /// Rows [r0, r0 + n) of every column.
  FLOWPRIOR_HD MatrixView row_block(Index r0, Index n) const { return {data + r0, n, cols, ld}; }
  /// Columns [c0, c0 + n).
  FLOWPRIOR_HD MatrixView col_block(Index c0, Index n) const {
    return {data + c0 * ld, rows, n, ld};
  }
  FLOWPRIOR_HD bool contiguous() const { return ld == rows || cols <= 1; }
};

/// Read-only column-major matrix view.
template <class S>
struct ConstMatrixView {
  const S* data = nullptr;
  Index rows = 0;
  Index cols = 0;
  Index ld = 0;

  ConstMatrixView() = default;  // host and device: defaulted
  FLOWPRIOR_HD ConstMatrixView(const S* d, Index r, Index c, Index l)
      : data(d), rows(r), cols(c), ld(l) {}
  FLOWPRIOR_HD ConstMatrixView(const S* d, Index r, Index c) : data(d), rows(r), cols(c), ld(r) {}
  FLOWPRIOR_HD ConstMatrixView(MatrixView<S> m)  // NOLINT: mutable -> const is implicit
      : data(m.data), rows(m.rows), cols(m.cols), ld(m.ld) {}

  template <class M, std::enable_if_t<detail::is_matrix_like<std::remove_reference_t<M>>::value &&
                                          !std::is_same_v<std::decay_t<M>, ConstMatrixView> &&
                                          !std::is_same_v<std::decay_t<M>, MatrixView<S>>,
                                      int> = 0>
  ConstMatrixView(const M& m)  // NOLINT(google-explicit-constructor)
      : data(m.data()), rows(m.rows()), cols(m.cols()), ld(m.outerStride()) {
    using D = std::decay_t<M>;
    static_assert(!detail::is_row_major<D>::value || detail::is_vector_at_compile_time<D>::value,
                  "flowprior views are column-major: (features, batch) with one column per sample");
    if (m.innerStride() != 1) detail::raise_strided();
    if (detail::is_row_major<D>::value || cols == 1 || ld < rows) ld = rows;
  }

  FLOWPRIOR_HD const S& operator()(Index i, Index j) const { return data[i + j * ld]; }
  FLOWPRIOR_HD const S* col(Index j) const { return data + j * ld; }
  FLOWPRIOR_HD Index size() const { return rows * cols; }
  FLOWPRIOR_HD bool empty() const { return rows == 0 || cols == 0; }
  FLOWPRIOR_HD ConstMatrixView row_block(Index r0, Index n) const {
    return {data + r0, n, cols, ld};
  }
  FLOWPRIOR_HD ConstMatrixView col_block(Index c0, Index n) const {
    return {data + c0 * ld, rows, n, ld};
  }
  FLOWPRIOR_HD bool contiguous() const { return ld == rows || cols <= 1; }
};

/// Contiguous vector view (one value per sample, e.g. the times t of a batch).
template <class S>
struct VectorView {
  S* data = nullptr;
  Index size = 0;

  VectorView() = default;  // host and device: defaulted
  FLOWPRIOR_HD VectorView(S* d, Index n) : data(d), size(n) {}
  template <class M, std::enable_if_t<detail::is_matrix_like<std::remove_reference_t<M>>::value &&
                                          !std::is_same_v<std::decay_t<M>, VectorView>,
                                      int> = 0>
  VectorView(M&& m) : data(m.data()), size(m.size()) {  // NOLINT
    if (m.innerStride() != 1) detail::raise_strided();
    if (m.rows() != 1 && m.cols() != 1 && m.size() != 0) {
      detail::raise<shape_error>("[flowprior.shape] expected a vector, got a " +
                                 std::to_string(m.rows()) + "x" + std::to_string(m.cols()) +
                                 " matrix");
    }
  }
  FLOWPRIOR_HD S& operator[](Index i) const { return data[i]; }
};

/// Read-only contiguous vector view.
template <class S>
struct ConstVectorView {
  const S* data = nullptr;
  Index size = 0;

  ConstVectorView() = default;  // host and device: defaulted
  FLOWPRIOR_HD ConstVectorView(const S* d, Index n) : data(d), size(n) {}
  FLOWPRIOR_HD ConstVectorView(VectorView<S> v) : data(v.data), size(v.size) {}  // NOLINT
  template <class M, std::enable_if_t<detail::is_matrix_like<std::remove_reference_t<M>>::value &&
                                          !std::is_same_v<std::decay_t<M>, ConstVectorView> &&
                                          !std::is_same_v<std::decay_t<M>, VectorView<S>>,
                                      int> = 0>
  ConstVectorView(const M& m) : data(m.data()), size(m.size()) {  // NOLINT
    if (m.innerStride() != 1) detail::raise_strided();
    if (m.rows() != 1 && m.cols() != 1 && m.size() != 0) {
      detail::raise<shape_error>("[flowprior.shape] expected a vector, got a " +
                                 std::to_string(m.rows()) + "x" + std::to_string(m.cols()) +
                                 " matrix");
    }
  }
  FLOWPRIOR_HD const S& operator[](Index i) const { return data[i]; }
};

}  // namespace flowprior
