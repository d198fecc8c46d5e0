/// @file
/// The exception hierarchy of flowprior (docs/errors.md). The library never calls exit() or
/// abort(); every failure a caller can cause is reported by one of these types. Messages start
/// with a stable prefix such as "[flowprior.shape]"; tests and callers match on the type.
#pragma once

#include <stdexcept>
#include <string>

namespace flowprior {

/// Base of every exception thrown by flowprior.
class error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// A tensor argument has the wrong shape. The message names the argument and both shapes.
class shape_error : public error {
 public:
  using error::error;
};

/// A configuration or option value is invalid (width 0, odd embedding size, K = 0, ...).
class config_error : public error {
 public:
  using error::error;
};

/// A value is outside its valid domain (t outside [0, 1], a negative standard deviation, ...).
class value_error : public error {
 public:
  using error::error;
};

/// A tensor holds NaN or Inf where finite values are required. The message names the tensor.
class numeric_error : public value_error {
 public:
  using value_error::value_error;
};

/// A file could not be read or written, or its content is malformed.
class io_error : public error {
 public:
  using error::error;
};

/// A device runtime or library call failed (CUDA, cuBLAS: a launch, an allocation, a copy, no
/// device present). The message names the call and the runtime's own error text.
class device_error : public error {
 public:
  using error::error;
};

/// A collective operation between processes failed (docs/distributed.md): an MPI call returned an
/// error, another rank failed or stopped answering within the deadline. The message names the
/// call and the rank that reports it.
class distributed_error : public error {
 public:
  using error::error;
};

/// An internal invariant failed (only thrown when FLOWPRIOR_ASSERT is enabled).
class assert_error : public error {
 public:
  using error::error;
};

namespace detail {

#if defined(__GNUC__)
#define FLOWPRIOR_COLD __attribute__((noinline, cold))
#else
#define FLOWPRIOR_COLD
#endif

/// Throws E with the given message; kept out of line so that the check sites stay small.
template <class E>
[[noreturn]] FLOWPRIOR_COLD void raise(const std::string& message) {
  throw E(message);
}

}  // namespace detail
}  // namespace flowprior
