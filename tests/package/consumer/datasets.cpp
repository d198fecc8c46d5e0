// The optional component flowprior::datasets builds and links on its own: stb_image from libstb,
// zlib's inflate, Threads.
#include <cstdint>
#include <flowprior/datasets/datasets.hpp>
#include <iostream>
#include <vector>

int main() {
  namespace ds = flowprior::datasets;
  const std::vector<std::uint8_t> junk = {0xff, 0xd8, 0xff, 0xe0, 0x00};
  int refused = 0;
  try {
    (void)ds::decode_image(junk.data(), junk.size(), "junk.jpg");
  } catch (const flowprior::io_error&) {
    ++refused;
  }
  const std::vector<std::uint8_t> gz = {0x1f, 0x8b, 0x08};
  try {
    (void)ds::parse_idx_file(gz.data(), gz.size(), "junk.gz");
  } catch (const flowprior::io_error&) {
    ++refused;
  }
  std::cout << "flowprior::datasets ok, " << refused << " malformed inputs refused\n";
  return refused == 2 ? 0 : 1;
}
