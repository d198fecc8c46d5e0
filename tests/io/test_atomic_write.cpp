// Atomic writes (docs/formats.md "Atomic writes"): unique temporaries, so that threads saving
// to one path never collide and readers always see a whole file; stale temporaries of dead
// writers are removed by the next write to the same path, those of live writers are kept.
#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <filesystem>
#include <flowprior/flowprior.hpp>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "catch.hpp"
#include "fixtures.hpp"

namespace io = flowprior::io;

namespace {

void touch(const std::string& path, const std::string& text = "partial") {
  std::FILE* f = std::fopen(path.c_str(), "wb");
  REQUIRE(f);
  std::fwrite(text.data(), 1, text.size(), f);
  std::fclose(f);
}

// A process id that belonged to a process that has exited (and been reaped).
pid_t dead_pid() {
  const pid_t child = ::fork();
  if (child == 0) ::_exit(0);
  REQUIRE(child > 0);
  int status = 0;
  REQUIRE(::waitpid(child, &status, 0) == child);
  return child;
}

}  // namespace

TEST_CASE("atomic writes: concurrent saves to one path never collide and readers see whole files",
          "[io]") {
  fpt::TempDir dir("concurrent");
  const std::string path = dir / "shared.safetensors";
  const int writers = 4, saves = 30;
  const std::size_t n = 20000;  // 80 KB of F32 per file: many write() calls per save
  auto content = [&](int writer, int save) {
    io::SafetensorsWriter w;
    std::vector<float> x(n, float(writer * 1000 + save));
    w.set_metadata("stamp", std::to_string(writer * 1000 + save));
    w.add("x", x.data(), {std::int64_t(n)}, io::Dtype::F32);
    return w;
  };
  content(0, 0).write(path);
  std::atomic<int> save_failures{0}, running{writers};
  std::atomic<int> reads{0}, bad_reads{0};
  std::vector<std::string> errors;
  std::mutex errors_mutex;
  auto record = [&](const std::string& e) {
    std::lock_guard<std::mutex> lock(errors_mutex);
    if (errors.size() < 5) errors.push_back(e);
  };
  std::vector<std::thread> threads;
  for (int t = 0; t < writers; ++t)
    threads.emplace_back([&, t] {
      for (int s = 0; s < saves; ++s) {
        try {
          content(t, s).write(path);
        } catch (const std::exception& e) {
          ++save_failures;
          record(std::string("save: ") + e.what());
        }
      }
      --running;
    });
  threads.emplace_back([&] {
    while (running > 0 || reads < 10) {
      try {
        const auto st = io::Safetensors::read(path);
        const float stamp = std::stof(st.metadata().at("stamp"));
        const auto x = st.get<float>("x");
        if (x.size() != n || !std::all_of(x.begin(), x.end(), [&](float v) { return v == stamp; }))
          throw std::runtime_error("mixed content");
      } catch (const std::exception& e) {
        ++bad_reads;
        record(std::string("read: ") + e.what());
      }
      ++reads;
    }
  });
  for (auto& th : threads) th.join();
  CAPTURE(errors);
  REQUIRE(save_failures == 0);
  REQUIRE(bad_reads == 0);
  REQUIRE(reads >= 10);
  // The last file is one of the written versions, and no temporary is left.
  const auto st = io::Safetensors::read(path);
  const int stamp = std::stoi(st.metadata().at("stamp"));
  REQUIRE(stamp % 1000 == saves - 1);
  REQUIRE(dir.entries() == std::vector<std::string>{"shared.safetensors"});
}

TEST_CASE("atomic writes: stale temporaries of dead writers are removed, live ones kept", "[io]") {
  fpt::TempDir dir("stale");
  const std::string path = dir / "ckpt.safetensors";
  const std::string dead = std::to_string(dead_pid());
  // Left by killed runs: the current naming and the old one (<path>.tmp-<pid>).
  touch(path + ".tmp-" + dead + "-0123456789abcdef");
  touch(path + ".tmp-" + dead);
  // Not ours to remove: a live process's temporary (this one's, e.g. another thread's), another
  // file's temporary, names that only look similar, and a dead pid's file that is still locked
  // (a writer in another pid namespace).
  const std::string mine = path + ".tmp-" + std::to_string(::getpid()) + "-live";
  touch(mine);
  struct Sleeper {  // a live process, killed and reaped whatever happens
    pid_t pid = ::fork();
    Sleeper() {
      if (pid == 0) {
        ::pause();
        ::_exit(0);
      }
    }
    void stop() {
      if (pid > 0) {
        ::kill(pid, SIGKILL);
        int status = 0;
        ::waitpid(pid, &status, 0);
        pid = -1;
      }
    }
    ~Sleeper() { stop(); }
  } live;
  const pid_t sleeper = live.pid;
  REQUIRE(sleeper > 0);
  const std::string other_live = path + ".tmp-" + std::to_string(sleeper) + "-1";
  touch(other_live);
  touch(dir / ("other.safetensors.tmp-" + dead + "-1"));
  touch(path + ".tmp-x" + dead);
  touch(path + ".tmp-" + dead + "x");
  touch(path + ".tmpl-" + dead);
  const std::string locked = path + ".tmp-" + dead + "-locked";
  touch(locked);
  const int lock_fd = ::open(locked.c_str(), O_RDONLY);
  REQUIRE(lock_fd >= 0);
  REQUIRE(::flock(lock_fd, LOCK_EX | LOCK_NB) == 0);

  const std::vector<double> x = {1, 2, 3};
  io::SafetensorsWriter w;
  w.add("x", x.data(), {3});
  w.write(path);

  auto names = dir.entries();
  auto has = [&](const std::string& p) {
    const std::string base = std::filesystem::path(p).filename().string();
    return std::find(names.begin(), names.end(), base) != names.end();
  };
  CAPTURE(names);
  REQUIRE(has(path));
  REQUIRE_FALSE(has(path + ".tmp-" + dead + "-0123456789abcdef"));
  REQUIRE_FALSE(has(path + ".tmp-" + dead));
  REQUIRE(has(mine));
  REQUIRE(has(other_live));
  REQUIRE(has(dir / ("other.safetensors.tmp-" + dead + "-1")));
  REQUIRE(has(path + ".tmp-x" + dead));
  REQUIRE(has(path + ".tmp-" + dead + "x"));
  REQUIRE(has(path + ".tmpl-" + dead));
  REQUIRE(has(locked));
  // Once the lock is released (its writer died), the next write removes it.
  ::close(lock_fd);
  live.stop();
  w.write(path);
  names = dir.entries();
  REQUIRE_FALSE(has(locked));
  REQUIRE_FALSE(has(other_live));
  REQUIRE(has(mine));
  REQUIRE(io::Safetensors::read(path).get<double>("x") == x);
}

TEST_CASE("atomic writes: every write uses a fresh temporary name", "[io]") {
  fpt::TempDir dir("names");
  const std::string path = dir / "f.json";
  std::vector<std::string> seen;
  for (int i = 0; i < 3; ++i)
    io::atomic_write(path, [&](io::Writer& w) {
      for (const auto& e : dir.entries())
        if (e.find(".tmp-") != std::string::npos) seen.push_back(e);
      w.write("{}");
    });
  REQUIRE(seen.size() == 3);
  const std::string prefix = "f.json.tmp-" + std::to_string(::getpid()) + "-";
  for (const auto& s : seen) REQUIRE(s.rfind(prefix, 0) == 0);
  REQUIRE(seen[0] != seen[1]);
  REQUIRE(seen[1] != seen[2]);
  REQUIRE(seen[0] != seen[2]);
  REQUIRE(dir.entries() == std::vector<std::string>{"f.json"});
}
