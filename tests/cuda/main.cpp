// The main of the CUDA test executable: Catch2's session when a CUDA device is visible; without
// one (the machines of CI, which have nvcc but no GPU) it prints why and exits with 77, which
// CTest reports as skipped (SKIP_RETURN_CODE). Listing the tests needs no device. A host C++
// file (the CUDA runtime's C API only): Catch2's implementation is compiled once, by the host
// compiler, not for every CUDA architecture.
#define CATCH_CONFIG_RUNNER
#include <cuda_runtime_api.h>

#include <cstdio>
#include <cstring>

#include "catch.hpp"

int main(int argc, char* argv[]) {
  bool listing = false;
  for (int i = 1; i < argc; ++i)
    if (std::strncmp(argv[i], "--list", 6) == 0) listing = true;
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess) devices = 0;
  if (!listing && devices == 0) {
    std::printf(
        "SKIP: no CUDA device is visible (cudaGetDeviceCount failed or returned 0): the CUDA "
        "parity tests need a GPU; run scripts/gpu-check.sh on a machine with one.\n");
    return 77;
  }
  return Catch::Session().run(argc, argv);
}
