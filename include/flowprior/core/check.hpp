/// @file
/// Argument checks of public entry points (always on) and internal assertions (debug only).
/// See docs/errors.md.
#pragma once

#include <cmath>
#include <flowprior/config.hpp>
#include <flowprior/core/error.hpp>
#include <flowprior/core/types.hpp>
#include <sstream>
#include <string>

/// FLOWPRIOR_ASSERT(cond, msg): internal invariant. Throws flowprior::assert_error when enabled.
/// Define FLOWPRIOR_ASSERT yourself before including flowprior to route it elsewhere.
#ifndef FLOWPRIOR_ASSERT
#if FLOWPRIOR_ENABLE_ASSERTS
#define FLOWPRIOR_ASSERT(cond, msg)                                                      \
  do {                                                                                   \
    if (!(cond))                                                                         \
      ::flowprior::detail::raise<::flowprior::assert_error>(                             \
          std::string("[flowprior.assert] ") + (msg) + " (" #cond ") at " __FILE__ ":" + \
          std::to_string(__LINE__));                                                     \
  } while (0)
#else
#define FLOWPRIOR_ASSERT(cond, msg) \
  do {                              \
  } while (0)
#endif
#endif

namespace flowprior {
namespace detail {

inline std::string shape_str(Index rows, Index cols) {
  return "(" + std::to_string(rows) + ", " + std::to_string(cols) + ")";
}

[[noreturn]] inline FLOWPRIOR_COLD void raise_shape(const char* where, const char* name, Index rows,
                                                    Index cols, Index exp_rows, Index exp_cols) {
  raise<shape_error>(std::string("[flowprior.shape] ") + where + ": argument '" + name +
                     "' has shape " + shape_str(rows, cols) + ", expected " +
                     shape_str(exp_rows, exp_cols));
}

[[noreturn]] inline FLOWPRIOR_COLD void raise_size(const char* where, const char* name, Index n,
                                                   Index expected) {
  raise<shape_error>(std::string("[flowprior.shape] ") + where + ": argument '" + name +
                     "' has size " + std::to_string(n) + ", expected " + std::to_string(expected));
}

}  // namespace detail

/// Throws shape_error unless m has shape (rows, cols). `where` names the entry point.
template <class View>
inline void check_shape(const char* where, const char* name, const View& m, Index rows,
                        Index cols) {
  if (m.rows != rows || m.cols != cols)
    detail::raise_shape(where, name, m.rows, m.cols, rows, cols);
}

/// Throws shape_error unless v has `n` elements.
template <class View>
inline void check_size(const char* where, const char* name, const View& v, Index n) {
  if (v.size != n) detail::raise_size(where, name, v.size, n);
}

/// Throws numeric_error naming the tensor and the first bad index if m holds NaN or Inf.
/// (Eigen vectors convert to a one-column view.)
template <class S>
inline void check_finite(const char* where, const char* name, ConstMatrixView<S> m) {
  for (Index j = 0; j < m.cols; ++j) {
    const S* c = m.col(j);
    for (Index i = 0; i < m.rows; ++i) {
      if (!std::isfinite(c[i])) {
        std::ostringstream os;
        os << "[flowprior.numeric] " << where << ": argument '" << name
           << "' has a non-finite value " << c[i] << " at (" << i << ", " << j << ")";
        detail::raise<numeric_error>(os.str());
      }
    }
  }
}

/// check_finite for a view of backend memory (device memory on a device backend): the scan is
/// Backend::first_nonfinite_cols on ctx, and only on the error path is the bad element copied
/// to the host (one value, Backend::copy_to_host) to name it. Same message as check_finite.
template <class Backend, class S>
inline void check_finite_on(typename Backend::Context& ctx, const char* where, const char* name,
                            ConstMatrixView<S> m) {
  const Index k = Backend::first_nonfinite_cols(ctx, m);
  if (k < 0) return;
  const Index i = k % m.rows, j = k / m.rows;
  S value{};
  Backend::copy_to_host(ConstVectorView<S>(m.col(j) + i, 1), &value);
  std::ostringstream os;
  os << "[flowprior.numeric] " << where << ": argument '" << name << "' has a non-finite value "
     << value << " at (" << i << ", " << j << ")";
  detail::raise<numeric_error>(os.str());
}

/// Throws value_error unless every t lies in [0, 1] (NaN fails too).
template <class S>
inline void check_unit_interval(const char* where, const char* name, ConstVectorView<S> t) {
  for (Index i = 0; i < t.size; ++i) {
    if (!(t[i] >= S(0) && t[i] <= S(1))) {
      std::ostringstream os;
      os << "[flowprior.value] " << where << ": argument '" << name << "' must lie in [0, 1], got "
         << t[i] << " at index " << i;
      detail::raise<value_error>(os.str());
    }
  }
}

/// Throws flowprior::error unless a forward pass of `owner` has filled the workspace whose batch
/// and owner are given (gradient and JVP calls reuse the activations of that forward).
inline void check_forward_done(const char* where, Index ws_batch, const void* ws_owner,
                               const void* owner) {
  if (ws_batch < 0 || ws_owner != owner)
    detail::raise<error>(std::string("[flowprior.state] ") + where +
                         ": call forward() with this workspace first");
}

/// Throws flowprior::error unless the workspace was laid out for the field's current sizes: the
/// field was replaced (e.g. assigned a wider network) since the forward that filled it.
inline void check_layout_unchanged(const char* where, bool same_layout) {
  if (!same_layout)
    detail::raise<error>(std::string("[flowprior.state] ") + where +
                         ": the field changed since the last forward on this workspace; call "
                         "forward() again");
}

/// Throws config_error unless K (tangents per sample of a JVP) is positive.
inline void check_tangents(const char* where, Index K) {
  if (K <= 0)
    detail::raise<config_error>(std::string("[flowprior.config] ") + where +
                                ": K (tangents per sample) must be positive, got " +
                                std::to_string(K));
}

/// Throws config_error with a message naming the field and the violated constraint.
[[noreturn]] inline FLOWPRIOR_COLD void raise_config(const char* where, const std::string& what) {
  detail::raise<config_error>(std::string("[flowprior.config] ") + where + ": " + what);
}

}  // namespace flowprior
