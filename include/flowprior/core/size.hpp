/// @file
/// Checked size arithmetic (docs/errors.md "Sizes"). Every product of sizes that user input can
/// reach (rows x K draws, width x width parameters, batch x width activations, grid x grid
/// points) goes through these helpers, so that an overflow or a request that cannot possibly fit
/// in memory is a config_error naming what was asked for, raised before anything is allocated,
/// never a wrapped size, an out-of-bounds write or a bare std::bad_alloc.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <new>
#include <sstream>
#include <stdexcept>
#include <string>

#if defined(__unix__) || defined(__APPLE__)
#include <unistd.h>
#endif

#include <flowprior/core/error.hpp>
#include <flowprior/core/types.hpp>

namespace flowprior {
namespace detail {

[[noreturn]] inline FLOWPRIOR_COLD void raise_size_config(const char* where,
                                                          const std::string& what) {
  raise<config_error>(std::string("[flowprior.config] ") + where + ": " + what);
}

}  // namespace detail

/// "12.5 GiB" (3 significant digits), for messages.
inline std::string gib_string(double bytes) {
  std::ostringstream os;
  os.precision(3);
  os << bytes / double(std::uint64_t(1) << 30) << " GiB";
  return os.str();
}

/// A number in short %g form for messages ("1e+30", "1.79769e+308", "nan"): never the 309
/// digits std::to_string gives DBL_MAX.
inline std::string short_number(double x) {
  char b[32];
  std::snprintf(b, sizeof b, "%g", x);
  return b;
}

/// a * b for sizes; throws config_error "<where>: <what> = a x b ..." when either is negative or
/// the product overflows Index.
inline Index checked_mul(const char* where, const char* what, Index a, Index b) {
  Index r = 0;
  if (a < 0 || b < 0 || __builtin_mul_overflow(a, b, &r))
    detail::raise_size_config(where, std::string(what) + " = " + std::to_string(a) + " x " +
                                         std::to_string(b) + " is not a representable size");
  return r;
}

/// a + b for sizes; throws config_error when either is negative or the sum overflows Index.
inline Index checked_add(const char* where, const char* what, Index a, Index b) {
  Index r = 0;
  if (a < 0 || b < 0 || __builtin_add_overflow(a, b, &r))
    detail::raise_size_config(where, std::string(what) + " = " + std::to_string(a) + " + " +
                                         std::to_string(b) + " is not a representable size");
  return r;
}

/// Bytes of physical memory of this machine (the bound of check_allocation), or the largest
/// size_t where the system does not say.
inline std::uint64_t physical_memory_bytes() {
#if defined(_SC_PHYS_PAGES) && defined(_SC_PAGE_SIZE)
  const long pages = ::sysconf(_SC_PHYS_PAGES), page = ::sysconf(_SC_PAGE_SIZE);
  if (pages > 0 && page > 0) return std::uint64_t(pages) * std::uint64_t(page);
#endif
  return std::numeric_limits<std::size_t>::max();
}

/// Throws config_error unless `count` elements of `elem_bytes` bytes each can possibly be held in
/// memory (count >= 0 and count * elem_bytes <= this machine's physical memory). `what` names
/// the request (an option, a tensor) so that the message says what to make smaller.
inline void check_allocation(const char* where, const std::string& what, Index count,
                             std::size_t elem_bytes) {
  if (count < 0)
    detail::raise_size_config(where, what + ": negative size " + std::to_string(count));
  const double bytes = double(count) * double(elem_bytes);
  const double limit = double(physical_memory_bytes());
  if (bytes > limit)
    detail::raise_size_config(where, what + " needs " + std::to_string(count) + " elements (" +
                                         gib_string(bytes) +
                                         "), more than this "
                                         "machine's memory (" +
                                         gib_string(limit) + ")");
}

namespace detail {
/// The elements a std::vector-like buffer holds without reallocating: capacity() where the type
/// has one, else size().
template <class Vec>
auto capacity_of(const Vec& v, int) -> decltype(static_cast<std::size_t>(v.capacity())) {
  return static_cast<std::size_t>(v.capacity());
}
template <class Vec>
std::size_t capacity_of(const Vec& v, long) {
  return static_cast<std::size_t>(v.size());
}
}  // namespace detail

/// Whether resizing `v` to `count` elements would reallocate (count beyond its capacity).
template <class Vec>
bool grows_storage(const Vec& v, Index count) {
  return count < 0 || static_cast<std::size_t>(count) > detail::capacity_of(v, 0);
}

/// Resizes a std::vector-like buffer to `count` elements. When it grows, check_allocation runs
/// first, and a std::bad_alloc or std::length_error from the allocation itself becomes a
/// config_error naming the request too. A call within the buffer's capacity allocates nothing,
/// also when it grows the size again after a smaller request (hot paths call this every step,
/// with batch sizes that may alternate).
template <class Vec>
void checked_resize(const char* where, const char* what, Vec& v, Index count) {
  using T = typename Vec::value_type;
  if (!grows_storage(v, count)) {  // within the capacity: no allocation, no check
    v.resize(static_cast<std::size_t>(count));
    return;
  }
  check_allocation(where, what, count, sizeof(T));
  try {
    v.resize(static_cast<std::size_t>(count));
  } catch (const std::bad_alloc&) {
    detail::raise_size_config(where, std::string(what) + ": cannot allocate " +
                                         std::to_string(count) + " elements (" +
                                         gib_string(double(count) * double(sizeof(T))) + ")");
  } catch (const std::length_error&) {
    detail::raise_size_config(where, std::string(what) + ": " + std::to_string(count) +
                                         " elements exceed the container's maximum size");
  }
}

}  // namespace flowprior
