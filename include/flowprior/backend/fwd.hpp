/// @file
/// Forward declarations of the backends, so that nn/ headers can name CpuBackend as their default
/// without including Eigen. On host compilers the CPU backend is included after them (see the
/// end of each nn/ field header); CUDA translation units never see Eigen.
#pragma once

namespace flowprior {
struct CpuBackend;
}  // namespace flowprior
