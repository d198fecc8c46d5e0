/// @file
/// Forward declarations of the backends, so that nn/ headers can name CpuBackend as their default
/// without including Eigen. On host compilers the CPU backend is included after them (see the
/// end of each nn/ field header); CUDA translation units never see Eigen.
#pragma once

#include <type_traits>

namespace flowprior {
struct CpuBackend;

/// The backend an object (a field, a layer) runs on: T::BackendType when it names one (the
/// fields on nn::FieldBase do), else CpuBackend (host memory). nn::field_backend is this trait.
template <class T, class = void>
struct backend_of {
  using type = CpuBackend;
};
template <class T>
struct backend_of<T, std::void_t<typename T::BackendType>> {
  using type = typename T::BackendType;
};
template <class T>
using backend_of_t = typename backend_of<T>::type;
}  // namespace flowprior
