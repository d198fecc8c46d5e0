/// @file
/// KernelBackend's activations, time features, LayerNorm + modulation, gated residual (docs/math/activations.md, time_embedding.md, layer_norm.md, adaln.md). The semantics of each primitive are those of the CpuBackend
/// primitive of the same name (docs/backends.md). No Eigen, no CUDA header.
#pragma once

#include <flowprior/backend/kernel_common.hpp>
#include <flowprior/core/types.hpp>

namespace flowprior {
namespace kernel {

template <class Exec>
struct LayerOps {
  using Context = typename Exec::Context;
  using K = Core<Exec>;
};

}  // namespace kernel
}  // namespace flowprior
