// The CUDA instantiation of examples/05_device's run (device_run/run.hpp): the same template as
// the CPU's, on CudaBackend. Compiled by nvcc, without Eigen.
#include <flowprior/backend/cuda.cuh>

#include "run.hpp"

namespace example {

DeviceRunResult run_on_cuda(const DeviceRunConfig& cfg, const std::vector<float>& targets,
                            const DeviceProgress& progress) {
  if (flowprior::cuda_device_count() == 0)
    throw flowprior::device_error(
        "[flowprior.device] 05_device: --device cuda, but no CUDA device is visible "
        "(cudaGetDeviceCount)");
  return run_on<flowprior::CudaBackend>(cfg, targets, progress);
}

}  // namespace example
