/// @file
/// File helpers of the I/O layer: reading a whole file, crash-safe (atomic) writes, and the
/// io_error messages that name the file, the byte offset and what was expected
/// (docs/formats.md "Errors" and "Atomic writes").
#pragma once

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <flowprior/core/error.hpp>
#include <functional>
#include <limits>
#include <string>
#include <vector>

namespace flowprior {
namespace io {

/// Throws io_error "[flowprior.io] <file> at byte <offset>: <what>".
[[noreturn]] inline FLOWPRIOR_COLD void fail(const std::string& file, std::uint64_t offset,
                                             const std::string& what) {
  ::flowprior::detail::raise<io_error>("[flowprior.io] " + file + " at byte " +
                                       std::to_string(offset) + ": " + what);
}

/// Throws io_error "[flowprior.io] <file>: <what>" (no meaningful offset).
[[noreturn]] inline FLOWPRIOR_COLD void fail(const std::string& file, const std::string& what) {
  ::flowprior::detail::raise<io_error>("[flowprior.io] " + file + ": " + what);
}

/// Largest file the readers accept: 16 GiB. A larger file (or one that grows past the limit
/// while it is read) is an io_error before more than the limit is held in memory.
constexpr std::uint64_t kMaxFileBytes = std::uint64_t(1) << 34;

namespace detail {

inline const char* file_kind(mode_t m) {
  if (S_ISDIR(m)) return "a directory";
  if (S_ISFIFO(m)) return "a FIFO";
  if (S_ISCHR(m)) return "a character device";
  if (S_ISBLK(m)) return "a block device";
  if (S_ISSOCK(m)) return "a socket";
  return "not a plain file";
}

struct FdCloser {
  int fd;
  ~FdCloser() {
    if (fd >= 0) ::close(fd);
  }
};

}  // namespace detail

/// Reads a whole regular file into memory. Refused with an io_error naming the file: anything
/// that is not a regular file (a FIFO, which would block; a device such as /dev/zero, which never
/// ends; a directory), checked with fstat before anything is read (the file is opened with
/// O_NONBLOCK, so opening a FIFO does not wait for a writer), and a file larger than `max_bytes`
/// (default kMaxFileBytes), checked before reading and again while reading.
inline std::vector<std::uint8_t> read_file(const std::string& path,
                                           std::uint64_t max_bytes = kMaxFileBytes) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) fail(path, std::string("cannot open for reading: ") + std::strerror(errno));
  const detail::FdCloser closer{fd};
  struct stat sb;
  if (::fstat(fd, &sb) != 0) fail(path, std::string("cannot stat: ") + std::strerror(errno));
  if (!S_ISREG(sb.st_mode))
    fail(path, std::string("not a regular file (") + detail::file_kind(sb.st_mode) +
                   "): flowprior reads only regular files");
  const auto limit = static_cast<std::uint64_t>(
      std::min<std::uint64_t>(max_bytes, std::numeric_limits<std::size_t>::max() - 1));
  auto too_large = [&](std::uint64_t found) {
    fail(path, "file of " + std::to_string(found) + (found > std::uint64_t(sb.st_size) ? "+" : "") +
                   " bytes exceeds the limit of " + std::to_string(limit) +
                   " bytes (io::kMaxFileBytes)");
  };
  if (static_cast<std::uint64_t>(sb.st_size) > limit) too_large(std::uint64_t(sb.st_size));
  // One byte more than the size, to notice a file that grew; never more than limit + 1.
  std::vector<std::uint8_t> bytes(static_cast<std::size_t>(sb.st_size) + 1);
  std::size_t used = 0;
  for (;;) {
    if (used == bytes.size()) {
      if (used > limit) too_large(used);
      bytes.resize(static_cast<std::size_t>(
          std::min<std::uint64_t>(limit + 1, std::uint64_t(used) * 2 + (1u << 16))));
    }
    const ssize_t n = ::read(fd, bytes.data() + used, bytes.size() - used);
    if (n < 0) {
      if (errno == EINTR) continue;
      fail(path, used, std::string("read error: ") + std::strerror(errno));
    }
    if (n == 0) break;
    used += static_cast<std::size_t>(n);
  }
  if (used > limit) too_large(used);
  bytes.resize(used);
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

namespace detail {

inline std::uint64_t splitmix64(std::uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

/// 16 hex digits unique to this call within the process (a counter), mixed with the clock so
/// that names differ across runs that reuse a pid.
inline std::string unique_token() {
  static std::atomic<std::uint64_t> counter{0};
  const std::uint64_t c = counter.fetch_add(1, std::memory_order_relaxed);
  const auto t =
      static_cast<std::uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
  const std::uint64_t r = splitmix64(c ^ splitmix64(t ^ (std::uint64_t(::getpid()) << 32)));
  char b[17];
  std::snprintf(b, sizeof b, "%016llx", static_cast<unsigned long long>(r));
  return b;
}

/// Splits a path into its directory ("." for none) and its last component.
inline void split_path(const std::string& path, std::string& dir, std::string& base) {
  const std::size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) {
    dir = ".";
    base = path;
  } else {
    dir = slash == 0 ? "/" : path.substr(0, slash);
    base = path.substr(slash + 1);
  }
}

/// The pid in a temporary's name "<base>.tmp-<pid>" or "<base>.tmp-<pid>-<anything>", or -1.
inline long long temp_owner(const std::string& name, const std::string& base) {
  const std::string prefix = base + ".tmp-";
  if (name.size() <= prefix.size() || name.compare(0, prefix.size(), prefix) != 0) return -1;
  std::size_t i = prefix.size();
  long long pid = 0;
  while (i < name.size() && name[i] >= '0' && name[i] <= '9') {
    pid = pid * 10 + (name[i] - '0');
    if (pid > 0x7fffffffLL) return -1;
    ++i;
  }
  if (i == prefix.size() || (i < name.size() && name[i] != '-') || pid <= 0) return -1;
  return pid;
}

}  // namespace detail

/// Removes the temporaries that dead writers left next to `path` (a crash or a kill between
/// creating the temporary and renaming it): every "<path>.tmp-<pid>[-<token>]" whose pid is not
/// a live process (kill(pid, 0) fails with ESRCH) and which no process holds locked (every
/// writer holds an flock on its temporary until it is renamed, which also protects writers in
/// another pid namespace). This process's own temporaries (other threads') are never touched.
/// Best effort: nothing here throws. atomic_write calls it before every write.
inline void remove_stale_temporaries(const std::string& path) {
  std::string dir, base;
  detail::split_path(path, dir, base);
  if (base.empty()) return;
  DIR* d = ::opendir(dir.c_str());
  if (!d) return;
  const long long self = ::getpid();
  while (const dirent* e = ::readdir(d)) {
    const std::string name = e->d_name;
    const long long pid = detail::temp_owner(name, base);
    if (pid < 0 || pid == self) continue;
    if (::kill(static_cast<pid_t>(pid), 0) == 0 || errno != ESRCH) continue;  // alive (or EPERM)
    const std::string full = (dir == "/" ? "" : dir) + "/" + name;
    const int fd = ::open(full.c_str(), O_RDONLY | O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) continue;
    const detail::FdCloser closer{fd};
    struct stat sb;
    if (::fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) continue;
    if (::flock(fd, LOCK_EX | LOCK_NB) != 0 && errno == EWOULDBLOCK) continue;  // a live writer
    struct stat now;
    if (::lstat(full.c_str(), &now) != 0 || now.st_ino != sb.st_ino || now.st_dev != sb.st_dev)
      continue;
    ::unlink(full.c_str());
  }
  ::closedir(d);
}

/// Writes `path` atomically: `produce(writer)` writes into a temporary
/// "<path>.tmp-<pid>-<16 hex digits>", unique to this write (created with O_EXCL, so that threads
/// and processes saving to the same path never share one) and flock'ed while it is written. It
/// is flushed, fsynced and renamed over `path`; then the directory is fsynced. A reader of
/// `path` sees the previous file or the new one, whole. If anything fails (an exception from
/// produce, a short write, an injected fault), the temporary is removed and the previous `path`,
/// if any, is left untouched. Before writing, stale temporaries of dead writers of the same path
/// are removed (remove_stale_temporaries).
inline void atomic_write(const std::string& path, const std::function<void(Writer&)>& produce,
                         WriteFaults faults = {}) {
  remove_stale_temporaries(path);
  const std::string stem = path + ".tmp-" + std::to_string(::getpid()) + "-";
  std::string tmp;
  int fd = -1;
  for (int attempt = 0; fd < 0; ++attempt) {
    tmp = stem + detail::unique_token();
    fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd < 0 && (errno != EEXIST || attempt >= 16))
      fail(tmp, std::string("cannot open for writing: ") + std::strerror(errno));
  }
  // Marks the temporary as in use (remove_stale_temporaries skips locked files). Filesystems
  // without flock support simply leave it unlocked.
  (void)::flock(fd, LOCK_EX | LOCK_NB);
  std::FILE* f = ::fdopen(fd, "wb");
  if (!f) {
    const int e = errno;
    ::close(fd);
    ::unlink(tmp.c_str());
    fail(tmp, std::string("cannot open for writing: ") + std::strerror(e));
  }
  try {
    Writer w(f, tmp, faults);
    produce(w);
    if (std::fflush(f) != 0)
      fail(tmp, w.written(), std::string("flush failed: ") + std::strerror(errno));
    if (::fsync(::fileno(f)) != 0)
      fail(tmp, w.written(), std::string("fsync failed: ") + std::strerror(errno));
  } catch (...) {
    std::fclose(f);
    ::unlink(tmp.c_str());
    throw;
  }
  if (std::fclose(f) != 0) {
    const int e = errno;
    ::unlink(tmp.c_str());
    fail(tmp, std::string("close failed: ") + std::strerror(e));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const int e = errno;
    ::unlink(tmp.c_str());
    fail(path, std::string("rename from temporary file failed: ") + std::strerror(e));
  }
  // Make the rename itself durable (best effort: some filesystems refuse fsync on a directory).
  std::string dir, base;
  detail::split_path(path, dir, base);
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    (void)::fsync(dfd);
    ::close(dfd);
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
