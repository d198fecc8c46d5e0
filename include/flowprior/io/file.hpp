/// @file
/// File helpers of the I/O layer: reading a whole file, crash-safe (atomic) writes, and the
/// io_error messages that name the file, the byte offset and what was expected
/// (docs/formats.md "Errors" and "Atomic writes").
#pragma once

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include <unistd.h>

#include <flowprior/core/error.hpp>

namespace flowprior {
namespace io {

/// Throws io_error "[flowprior.io] <file> at byte <offset>: <what>".
[[noreturn]] inline FLOWPRIOR_COLD void fail(const std::string& file, std::uint64_t offset,
                                             const std::string& what) {
  detail::raise<io_error>("[flowprior.io] " + file + " at byte " + std::to_string(offset) + ": " +
                          what);
}

/// Throws io_error "[flowprior.io] <file>: <what>" (no meaningful offset).
[[noreturn]] inline FLOWPRIOR_COLD void fail(const std::string& file, const std::string& what) {
  detail::raise<io_error>("[flowprior.io] " + file + ": " + what);
}

/// Reads a whole file into memory.
inline std::vector<std::uint8_t> read_file(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) fail(path, std::string("cannot open for reading: ") + std::strerror(errno));
  std::vector<std::uint8_t> bytes;
  std::size_t used = 0, n;
  do {  // grow geometrically; works for pipes and files alike
    if (bytes.size() - used < (1u << 16)) bytes.resize(std::max<std::size_t>(1u << 16, 2 * bytes.size()));
    n = std::fread(bytes.data() + used, 1, bytes.size() - used, f);
    used += n;
  } while (n > 0);
  bytes.resize(used);
  const bool err = std::ferror(f) != 0;
  std::fclose(f);
  if (err) fail(path, bytes.size(), "read error");
  return bytes;
}

/// Test hook for crash-safety: a write that fails on purpose after `fail_after_bytes` bytes, as a
/// full disk or a crash would. -1 (the default) never fails.
struct WriteFaults {
  std::int64_t fail_after_bytes = -1;
};

/// Sink handed to the producer of an atomic write.
class Writer {
 public:
  Writer(std::FILE* f, std::string path, WriteFaults faults)
      : f_(f), path_(std::move(path)), faults_(faults) {}
  void write(const void* data, std::size_t n) {
    if (faults_.fail_after_bytes >= 0 &&
        written_ + n > static_cast<std::uint64_t>(faults_.fail_after_bytes))
      fail(path_, written_, "write failed (injected fault)");
    if (n > 0 && std::fwrite(data, 1, n, f_) != n)
      fail(path_, written_, std::string("write failed: ") + std::strerror(errno));
    written_ += n;
  }
  void write(const std::string& s) { write(s.data(), s.size()); }
  std::uint64_t written() const { return written_; }

 private:
  std::FILE* f_;
  std::string path_;
  WriteFaults faults_;
  std::uint64_t written_ = 0;
};

/// Writes `path` atomically: `produce(writer)` writes into `path.tmp-<pid>`, which is flushed,
/// synced and renamed over `path`. If anything fails (an exception from produce, a short write,
/// an injected fault), the temporary file is removed and the previous `path`, if any, is left
/// untouched.
inline void atomic_write(const std::string& path, const std::function<void(Writer&)>& produce,
                         WriteFaults faults = {}) {
  const std::string tmp = path + ".tmp-" + std::to_string(::getpid());
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f) fail(tmp, std::string("cannot open for writing: ") + std::strerror(errno));
  try {
    Writer w(f, tmp, faults);
    produce(w);
    if (std::fflush(f) != 0) fail(tmp, w.written(), std::string("flush failed: ") + std::strerror(errno));
    if (::fsync(::fileno(f)) != 0)
      fail(tmp, w.written(), std::string("fsync failed: ") + std::strerror(errno));
  } catch (...) {
    std::fclose(f);
    std::remove(tmp.c_str());
    throw;
  }
  if (std::fclose(f) != 0) {
    std::remove(tmp.c_str());
    fail(tmp, std::string("close failed: ") + std::strerror(errno));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const int e = errno;
    std::remove(tmp.c_str());
    fail(path, std::string("rename from temporary file failed: ") + std::strerror(e));
  }
}

// Little-endian helpers (the formats are little-endian; so is every supported host).
inline std::uint64_t load_u64_le(const std::uint8_t* p) {
  std::uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}
inline void store_u64_le(std::uint64_t v, std::uint8_t* p) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<std::uint8_t>(v >> (8 * i));
}

}  // namespace io
}  // namespace flowprior
