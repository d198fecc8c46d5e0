/// @file
/// KernelBackend's the ODE primitives of the solvers and the likelihood (docs/math/ode.md). The semantics of each primitive are those of the CpuBackend
/// primitive of the same name (docs/backends.md). No Eigen, no CUDA header.
#pragma once

#include <flowprior/backend/kernel_common.hpp>
#include <flowprior/core/types.hpp>

namespace flowprior {
namespace kernel {

template <class Exec>
struct OdeOps {
  using Context = typename Exec::Context;
  using K = Core<Exec>;
};

}  // namespace kernel
}  // namespace flowprior
