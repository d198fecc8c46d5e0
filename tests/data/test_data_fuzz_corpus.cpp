// Regression tests from fuzzing flowprior::datasets: every input of tests/fuzz/corpus/idx/ and
// tests/fuzz/corpus/image/ goes through the same harness as the fuzzers (harness_data.hpp).
// Under the asan preset this replays them with AddressSanitizer and UBSan.
#include <filesystem>
#include <flowprior/io/file.hpp>

#include "../fuzz/harness_data.hpp"
#include "catch.hpp"

namespace {

std::size_t replay(const std::string& format, void (*one)(const std::uint8_t*, std::size_t)) {
  const std::filesystem::path dir =
      std::filesystem::path(FLOWPRIOR_TEST_SOURCE_DIR) / "fuzz" / "corpus" / format;
  std::size_t n = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    if (!e.is_regular_file()) continue;
    const auto bytes = flowprior::io::read_file(e.path().string());
    INFO(e.path().string());
    REQUIRE_NOTHROW(one(bytes.data(), bytes.size()));
    ++n;
  }
  return n;
}

}  // namespace

TEST_CASE("fuzz corpus: every idx input parses or is rejected with io_error", "[data]") {
  REQUIRE(replay("idx", fuzz::idx_one) >= 3);
}

TEST_CASE("fuzz corpus: every image input decodes or is rejected with io_error", "[data]") {
  REQUIRE(replay("image", fuzz::image_one) >= 3);
}
