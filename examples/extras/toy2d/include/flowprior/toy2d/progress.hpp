/// @file
/// A progress bar for long runs, on stderr by default. On a terminal it redraws one line at most
/// ten times a second ("label [=====>    ] 42% 4200/10000 12.3 it/s ETA 0:07 loss 1.2345");
/// elsewhere (a log file, CI) it prints a line every 10% so that logs stay short.
#pragma once

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <flowprior/core/types.hpp>
#include <string>

namespace flowprior {
namespace util {

class Progress {
 public:
  /// @param enabled  false silences it (e.g. a --quiet option)
  Progress(std::string label, Index total, bool enabled = true, std::FILE* out = stderr)
      : label_(std::move(label)),
        total_(total > 0 ? total : 1),
        enabled_(enabled),
        out_(out),
        tty_(::isatty(::fileno(out)) != 0),
        start_(clock::now()),
        last_(start_) {}

  /// Reports `done` of `total` units and a short status (e.g. the running loss).
  void update(Index done, const std::string& status = "") {
    if (!enabled_) return;
    const auto now = clock::now();
    const bool end = done >= total_;
    if (tty_) {
      if (!end && now - last_ < std::chrono::milliseconds(100)) return;
      last_ = now;
      std::fprintf(out_, "\r%s\033[K", line(done, status, now).c_str());
      std::fflush(out_);
    } else {
      const Index decile = done * 10 / total_;
      if (decile <= last_decile_ && !end) return;
      if (end && finished_) return;
      last_decile_ = decile;
      std::fprintf(out_, "%s\n", line(done, status, now).c_str());
      std::fflush(out_);
    }
    if (end) finished_ = true;
  }

  /// Completes the bar (a final line with the elapsed time).
  void finish(const std::string& status = "") {
    if (!enabled_) return;
    update(total_, status);
    if (tty_) std::fprintf(out_, "\n");
    std::fflush(out_);
    enabled_ = false;
  }

  double elapsed_seconds() const {
    return std::chrono::duration<double>(clock::now() - start_).count();
  }

 private:
  using clock = std::chrono::steady_clock;

  static std::string clock_string(double s) {
    const long t = long(s + 0.5);
    char b[32];
    std::snprintf(b, sizeof b, "%ld:%02ld", t / 60, t % 60);
    return b;
  }

  std::string line(Index done, const std::string& status, clock::time_point now) const {
    const double frac = double(done) / double(total_);
    const double el = std::chrono::duration<double>(now - start_).count();
    const int width = 24;
    const int fill = int(frac * width + 0.5);
    std::string bar(std::size_t(width), ' ');
    for (int i = 0; i < fill && i < width; ++i) bar[std::size_t(i)] = '=';
    if (fill < width && fill > 0) bar[std::size_t(fill)] = '>';
    const double rate = el > 0 ? double(done) / el : 0;
    const double eta = rate > 0 ? double(total_ - done) / rate : 0;
    char b[256];
    std::snprintf(
        b, sizeof b, "%s [%s] %3d%% %td/%td %.1f it/s %s %s", label_.c_str(), bar.c_str(),
        int(frac * 100 + 1e-9), done, total_, rate,
        done >= total_ ? ("in " + clock_string(el)).c_str() : ("ETA " + clock_string(eta)).c_str(),
        status.c_str());
    return b;
  }

  std::string label_;
  Index total_;
  bool enabled_;
  std::FILE* out_;
  bool tty_;
  clock::time_point start_, last_;
  Index last_decile_ = -1;
  bool finished_ = false;
};

}  // namespace util
}  // namespace flowprior
