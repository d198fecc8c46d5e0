/// @file
/// The activation kinds a field can use, switched once per layer call (never per element).
#pragma once

#include <flowprior/config.hpp>
#include <flowprior/core/math.hpp>
#include <string>

namespace flowprior {

/// Element-wise activation. The released flow head uses SiLU everywhere; the paper's text names
/// GELU. docs/math/activations.md.
enum class Activation { SiLU, GELU };

inline const char* to_string(Activation a) { return a == Activation::SiLU ? "silu" : "gelu"; }

namespace math {

/// Compile-time activation functor, so that backends can instantiate one kernel per kind.
template <Activation A>
struct Act;

template <>
struct Act<Activation::SiLU> {
  template <class S>
  FLOWPRIOR_HD static S f(S z) {
    return silu(z);
  }
  template <class S>
  FLOWPRIOR_HD static S df(S z) {
    return silu_grad(z);
  }
};

template <>
struct Act<Activation::GELU> {
  template <class S>
  FLOWPRIOR_HD static S f(S z) {
    return gelu(z);
  }
  template <class S>
  FLOWPRIOR_HD static S df(S z) {
    return gelu_grad(z);
  }
};

}  // namespace math
}  // namespace flowprior
