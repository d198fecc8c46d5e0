// libFuzzer entry point for the IDX reader of flowprior::datasets (docs/testing.md "Fuzzing").
// Build and run by hand:
//   clang++ -std=c++17 -g -O1 -fsanitize=fuzzer,address,undefined -I include \
//       -I examples/extras/datasets/include -isystem /usr/include/eigen3 \
//       tests/fuzz/fuzz_idx.cpp -o /tmp/fuzz_idx -lz
//   /tmp/fuzz_idx /tmp/idx_corpus tests/fuzz/corpus/idx -max_total_time=600
#include "harness_data.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  fuzz::idx_one(data, size);
  return 0;
}
