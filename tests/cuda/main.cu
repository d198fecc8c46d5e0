// The main of the CUDA test executable: Catch2's session when a CUDA device is visible; without
// one (the machines of CI, which have nvcc but no GPU) it prints why and exits with 77, which
// CTest reports as skipped (SKIP_RETURN_CODE). Listing the tests needs no device.
#define CATCH_CONFIG_RUNNER
#include <cstdio>
#include <cstring>
#include <flowprior/backend/cuda.cuh>

#include "catch.hpp"

int main(int argc, char* argv[]) {
  bool listing = false;
  for (int i = 1; i < argc; ++i)
    if (std::strncmp(argv[i], "--list", 6) == 0) listing = true;
  if (!listing && flowprior::cuda_device_count() == 0) {
    std::printf(
        "SKIP: no CUDA device is visible (cudaGetDeviceCount failed or returned 0): the CUDA "
        "parity tests need a GPU; run scripts/gpu-check.sh on a machine with one.\n");
    return 77;
  }
  return Catch::Session().run(argc, argv);
}
