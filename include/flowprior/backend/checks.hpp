/// @file
/// Argument checks of tensors in backend memory: the scan is a backend primitive, which returns
/// the offending value with its position (find_nonfinite), or whose value is copied to the host on
/// the error path only (first_outside_unit). The messages are
/// those of the host checks of core/check.hpp (docs/errors.md).
///
/// Includes no backend: the checks name `Backend` only when instantiated, so this header
/// compiles with the host compiler and with nvcc.
#pragma once

#include <flowprior/backend/ode_args.hpp>
#include <flowprior/core/check.hpp>
#include <flowprior/core/types.hpp>

namespace flowprior {

/// Throws numeric_error naming `name` and the (i, j) and value of the first NaN or Inf of m
/// (backend memory, scanned on ctx by Backend::find_nonfinite).
template <class Backend, class S>
void check_finite_on(typename Backend::Context& ctx, const char* where, const char* name,
                     ConstMatrixView<S> m) {
  const NonFinite bad = Backend::find_nonfinite(ctx, m);
  if (bad.found()) detail::raise_nonfinite(where, name, bad.value, bad.i, bad.j);
}

/// Throws value_error unless every t (backend memory) lies in [0, 1], naming `name`, the index
/// and the value of the first that does not (scanned on ctx by Backend::first_outside_unit).
template <class Backend, class S>
void check_unit_interval_on(typename Backend::Context& ctx, const char* where, const char* name,
                            ConstVectorView<S> t) {
  const Index bad = Backend::first_outside_unit(ctx, t);
  if (bad < 0) return;
  S value{};
  Backend::copy_to_host(t.data + bad, 1, &value);
  detail::raise_outside_unit(where, name, value, bad);
}

}  // namespace flowprior
