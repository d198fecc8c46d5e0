// libFuzzer entry point for the safetensors reader and load_state_dict (docs/testing.md
// "Fuzzing"). Build and run by hand:
//   clang++ -std=c++17 -g -O1 -fsanitize=fuzzer,address,undefined -I include \
//       -isystem /usr/include/eigen3 tests/fuzz/fuzz_safetensors.cpp -o /tmp/fuzz_safetensors
//   /tmp/fuzz_safetensors /tmp/st_corpus tests/fuzz/corpus/safetensors -max_total_time=600
#include "harness.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  fuzz::safetensors_one(data, size);
  return 0;
}
