// Test-only fixtures shared by several suites (tests/support, never installed).
#pragma once

#include <Eigen/Core>
#include <filesystem>
#include <string>

#include <unistd.h>

#include <flowprior/analytic/gaussian_mixture.hpp>

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

}  // namespace fpt
