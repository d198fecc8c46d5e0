/// @file
/// CRC-32 for file integrity checks (docs/formats.md "Checksums"): the ISO-HDLC polynomial
/// 0xEDB88320 (reflected), initial value and final xor 0xFFFFFFFF -- the CRC of zlib's crc32(),
/// PNG, gzip and Python's zlib.crc32, so a file can be checked without flowprior. Table-driven,
/// slicing by 8 bytes; our own implementation, because the core target links nothing but Eigen
/// (zlib is a dependency of flowprior::plot only).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace flowprior {
namespace io {

namespace detail {

struct Crc32Tables {
  std::uint32_t t[8][256];
  Crc32Tables() {
    for (std::uint32_t i = 0; i < 256; ++i) {
      std::uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      t[0][i] = c;
    }
    for (int k = 1; k < 8; ++k)
      for (std::uint32_t i = 0; i < 256; ++i)
        t[k][i] = (t[k - 1][i] >> 8) ^ t[0][t[k - 1][i] & 0xFF];
  }
};

inline const Crc32Tables& crc32_tables() {
  static const Crc32Tables tables;
  return tables;
}

}  // namespace detail

/// Continues a CRC-32: crc32_update(crc32_update(0, a, n), b, m) == crc32 of a followed by b.
inline std::uint32_t crc32_update(std::uint32_t crc, const void* data, std::size_t n) {
  const auto& T = detail::crc32_tables().t;
  const auto* p = static_cast<const std::uint8_t*>(data);
  std::uint32_t c = ~crc;
  for (; n >= 8; n -= 8, p += 8) {
    std::uint32_t lo, hi;  // little-endian host (static_assert in safetensors.hpp)
    std::memcpy(&lo, p, 4);
    std::memcpy(&hi, p + 4, 4);
    lo ^= c;
    c = T[7][lo & 0xFF] ^ T[6][(lo >> 8) & 0xFF] ^ T[5][(lo >> 16) & 0xFF] ^ T[4][lo >> 24] ^
        T[3][hi & 0xFF] ^ T[2][(hi >> 8) & 0xFF] ^ T[1][(hi >> 16) & 0xFF] ^ T[0][hi >> 24];
  }
  for (; n > 0; --n, ++p) c = T[0][(c ^ *p) & 0xFF] ^ (c >> 8);
  return ~c;
}

/// CRC-32 of n bytes (0 for none).
inline std::uint32_t crc32(const void* data, std::size_t n) { return crc32_update(0, data, n); }

}  // namespace io
}  // namespace flowprior
