// Test-only fixtures shared by several suites (tests/support, never installed).
#pragma once

#include <unistd.h>

#include <Eigen/Core>
#include <algorithm>
#include <filesystem>
#include <flowprior/analytic/gaussian_mixture.hpp>
#include <iterator>
#include <string>
#include <system_error>
#include <vector>

namespace fpt {

/// A 2-D mixture of three unequal components that overlap a little: the oracle of the loss,
/// ODE and training tests.
inline flowprior::analytic::GaussianMixture three_modes() {
  Eigen::MatrixXd means(2, 3);
  means << -1.0, 0.5, 1.5,  //
      0.5, -1.0, 1.0;
  return flowprior::analytic::GaussianMixture(means, {0.3, 0.5, 0.2}, {0.5, 0.3, 0.2});
}

/// A path in the system's temporary folder, unique to this process and `name`.
inline std::string temp_path(const std::string& name) {
  return (std::filesystem::temp_directory_path() /
          ("flowprior_test_" + std::to_string(::getpid()) + "_" + name))
      .string();
}

/// A fresh directory under the system temp dir, removed with its content at scope exit.
struct TempDir {
  std::filesystem::path dir;
  explicit TempDir(const std::string& tag = "tmp") {
    static int counter = 0;
    dir = std::filesystem::temp_directory_path() /
          ("flowprior_test_" + tag + "_" + std::to_string(::getpid()) + "_" +
           std::to_string(counter++));
    std::filesystem::remove_all(dir);
    std::filesystem::create_directories(dir);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::string operator/(const std::string& name) const { return (dir / name).string(); }
  /// File names in the directory, sorted.
  std::vector<std::string> entries() const {
    std::vector<std::string> names;
    for (const auto& e : std::filesystem::directory_iterator(dir))
      names.push_back(e.path().filename().string());
    std::sort(names.begin(), names.end());
    return names;
  }
  std::size_t count() const { return entries().size(); }
};

}  // namespace fpt
