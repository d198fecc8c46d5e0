// libFuzzer entry point for the .npy reader (docs/testing.md "Fuzzing"). Build and run by hand:
//   clang++ -std=c++17 -g -O1 -fsanitize=fuzzer,address,undefined -I include \
//       -isystem /usr/include/eigen3 tests/fuzz/fuzz_npy.cpp -o /tmp/fuzz_npy
//   /tmp/fuzz_npy /tmp/npy_corpus tests/fuzz/corpus/npy -max_total_time=600
#include "harness.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  fuzz::npy_one(data, size);
  return 0;
}
