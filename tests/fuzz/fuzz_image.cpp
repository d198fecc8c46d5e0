// libFuzzer entry point for the image decode path of flowprior::datasets: stb_image's PNG and
// JPEG decoders behind decode_image's checks and limits, then the resize and crops
// (docs/testing.md "Fuzzing"). Unlike the library's users, this program compiles stb_image's
// implementation into itself (and does not link libstb), so that the decoder is instrumented and
// the coverage guidance reaches it. UBSan's nonnull-attribute check is off: stb_image 2.27 copies
// zero bytes to a null buffer for an empty IDAT chunk (memcpy(NULL, p, 0), harmless;
// corpus/image/png-empty-idat-memcpy-null). Build and run by hand:
//   clang++ -std=c++17 -g -O1 -fsanitize=fuzzer,address,undefined \
//       -fno-sanitize=nonnull-attribute -I include \
//       -I examples/extras/datasets/include -isystem /usr/include/eigen3 \
//       tests/fuzz/fuzz_image.cpp -o /tmp/fuzz_image -lz
//   /tmp/fuzz_image /tmp/image_corpus tests/fuzz/corpus/image -max_total_time=600
#include "harness_data.hpp"

// After the harness: its headers included stb_image.h's declarations; this adds the
// implementation once (stb's usual pattern).
#define STB_IMAGE_IMPLEMENTATION
#include <stb/stb_image.h>  // NOLINT(build/include_order)

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  fuzz::image_one(data, size);
  return 0;
}
