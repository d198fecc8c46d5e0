// compare_metrics: whether two metrics.json files hold the same results within a tolerance, for
// the tests that compare a data-parallel run with one process (examples/CMakeLists.txt,
// docs/distributed.md "Examples"). No Python: a test's only needs are CMake and this program.
//
//   compare_metrics A.json B.json [--rtol R] [--atol A] [--ignore KEY]...
//
// The two documents must have the same structure: the same keys in every object, the same
// length in every array, equal strings, booleans and nulls. Integers (counts, evaluations) must
// be equal; other numbers must satisfy |a - b| <= atol + rtol * max(|a|, |b|). Keys named by
// --ignore (at any depth) and keys ending in "seconds" (timings) are skipped. Prints every
// difference with its JSON pointer, then a one-line verdict; exits 0 when equal, 1 when not, 2 on
// bad arguments or unreadable files.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>

namespace {

using json = nlohmann::json;

struct Comparison {
  double rtol = 1e-10, atol = 1e-12;
  std::set<std::string> ignored;
  int differences = 0;
  long numbers = 0;
  double worst = 0;  // the largest |a - b| / max(|a|, |b|) among the non-integer numbers
  std::string worst_at;

  bool skipped(const std::string& key) const {
    const std::string tail = "seconds";
    return ignored.count(key) > 0 ||
           (key.size() >= tail.size() &&
            key.compare(key.size() - tail.size(), tail.size(), tail) == 0);
  }

  void report(const std::string& at, const std::string& what) {
    ++differences;
    std::printf("%s: %s\n", at.empty() ? "/" : at.c_str(), what.c_str());
  }

  void walk(const json& a, const json& b, const std::string& at) {
    if (a.is_number() && b.is_number()) {
      ++numbers;
      if (a.is_number_integer() && b.is_number_integer()) {
        if (a != b) report(at, "integers differ: " + a.dump() + " and " + b.dump());
        return;
      }
      const double x = a.get<double>(), y = b.get<double>();
      const double scale = std::max(std::fabs(x), std::fabs(y));
      const double diff = std::fabs(x - y);
      if (scale > 0 && diff / scale > worst) {
        worst = diff / scale;
        worst_at = at;
      }
      if (!(diff <= atol + rtol * scale))
        report(at, "numbers differ: " + a.dump() + " and " + b.dump());
      return;
    }
    if (a.type() != b.type()) {
      report(at, "different kinds: " + a.dump() + " and " + b.dump());
      return;
    }
    if (a.is_object()) {
      for (auto it = a.begin(); it != a.end(); ++it) {
        if (skipped(it.key())) continue;
        if (!b.contains(it.key()))
          report(at + "/" + it.key(), "only in the first file");
        else
          walk(it.value(), b.at(it.key()), at + "/" + it.key());
      }
      for (auto it = b.begin(); it != b.end(); ++it)
        if (!skipped(it.key()) && !a.contains(it.key()))
          report(at + "/" + it.key(), "only in the second file");
    } else if (a.is_array()) {
      if (a.size() != b.size()) {
        report(at, "arrays of " + std::to_string(a.size()) + " and " + std::to_string(b.size()) +
                       " elements");
        return;
      }
      for (std::size_t i = 0; i < a.size(); ++i) walk(a[i], b[i], at + "/" + std::to_string(i));
    } else if (a != b) {
      report(at, "values differ: " + a.dump() + " and " + b.dump());
    }
  }
};

bool read_json(const char* path, json& out) {
  std::ifstream f(path, std::ios::binary);
  if (!f) {
    std::fprintf(stderr, "compare_metrics: cannot open %s\n", path);
    return false;
  }
  std::stringstream text;
  text << f.rdbuf();
  out = json::parse(text.str(), nullptr, false);
  if (out.is_discarded()) {
    std::fprintf(stderr, "compare_metrics: %s is not valid JSON\n", path);
    return false;
  }
  return true;
}

bool parse_tolerance(const char* text, double& out) {
  char* end = nullptr;
  const double v = std::strtod(text, &end);
  if (end == text || *end != '\0' || !(v >= 0) || !std::isfinite(v)) return false;
  out = v;
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  Comparison c;
  const char* files[2] = {nullptr, nullptr};
  int n_files = 0;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if ((arg == "--rtol" || arg == "--atol" || arg == "--ignore") && i + 1 < argc) {
      const char* v = argv[++i];
      if (arg == "--ignore") {
        c.ignored.insert(v);
      } else if (!parse_tolerance(v, arg == "--rtol" ? c.rtol : c.atol)) {
        std::fprintf(stderr, "compare_metrics: %s must be a finite number >= 0, got '%s'\n",
                     arg.c_str(), v);
        return 2;
      }
    } else if (n_files < 2 && arg.rfind("--", 0) != 0) {
      files[n_files++] = argv[i];
    } else {
      std::fprintf(
          stderr, "usage: compare_metrics A.json B.json [--rtol R] [--atol A] [--ignore KEY]...\n");
      return 2;
    }
  }
  if (n_files != 2) {
    std::fprintf(stderr,
                 "usage: compare_metrics A.json B.json [--rtol R] [--atol A] [--ignore KEY]...\n");
    return 2;
  }
  json a, b;
  if (!read_json(files[0], a) || !read_json(files[1], b)) return 2;
  c.walk(a, b, "");
  std::printf(
      "%s: %ld numbers compared (rtol %g, atol %g), %d difference(s); largest relative "
      "difference %.3g at %s\n",
      c.differences == 0 ? "equal" : "DIFFERENT", c.numbers, c.rtol, c.atol, c.differences, c.worst,
      c.worst_at.empty() ? "-" : c.worst_at.c_str());
  return c.differences == 0 ? 0 : 1;
}
