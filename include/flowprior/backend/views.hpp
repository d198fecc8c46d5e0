/// @file
/// The read-only view aliases of the backend primitives' signatures, shared by every backend
/// (CpuBackend in cpu.hpp, KernelBackend in kernel_backend.hpp). No Eigen, no CUDA: compiles
/// with the host compiler and with nvcc.
#pragma once

#include <flowprior/core/types.hpp>

namespace flowprior {

namespace detail {
template <class T>
struct type_identity {
  using type = T;
};
}  // namespace detail

/// Read-only views in a non-deduced context: primitives deduce S from their mutable arguments,
/// so a MatrixView<S> can be passed where a read-only view is expected.
template <class S>
using CView = typename detail::type_identity<ConstMatrixView<S>>::type;
template <class S>
using CVec = typename detail::type_identity<ConstVectorView<S>>::type;

}  // namespace flowprior
