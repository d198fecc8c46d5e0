/// @file
/// The two time conventions of flow matching (docs/conventions.md "time conventions",
/// docs/math/flow_matching.md):
///
/// |                 | Convention::Paper          | Convention::Code (released PyTorch code) |
/// |-----------------|----------------------------|------------------------------------------|
/// | path            | x_t = (1 - t) eps + t x    | x_t = (1 - t) x + t eps                  |
/// | t = 0 is        | noise                      | data                                     |
/// | target velocity | u = x - eps                | u = eps - x                              |
/// | sampling        | integrate t: 0 -> 1        | integrate t: 1 -> 0                      |
///
/// Both are written as x_t = a(t) x + b(t) eps and u = c x + e eps with the coefficients below,
/// so that losses implement one formula. They are equivalent under t -> 1 - t, but a network
/// trained in one is wrong in the other: flowprior never guesses, every loss, sampler and ODE
/// routine takes a Convention and checks it against the prior's (convention_error otherwise).
#pragma once

#include <flowprior/config.hpp>
#include <flowprior/core/error.hpp>
#include <string>

namespace flowprior {

/// Which time convention a path, a prior or a set of draws uses. There is no default.
enum class Convention {
  Paper,  ///< t = 0 noise, t = 1 data, u = x - eps (the paper's text)
  Code    ///< t = 0 data, t = 1 noise, u = eps - x (the released code, MAR flow heads)
};

inline const char* to_string(Convention c) { return c == Convention::Paper ? "paper" : "code"; }

/// The other convention.
inline Convention flipped(Convention c) {
  return c == Convention::Paper ? Convention::Code : Convention::Paper;
}

/// A prior, draw set or loss was used in a convention other than its own.
class convention_error : public error {
 public:
  using error::error;
};

/// Throws convention_error unless `have` == `want`; `what` names the object.
inline void check_convention(const char* where, const char* what, Convention have,
                             Convention want) {
  if (have != want)
    detail::raise<convention_error>(std::string("[flowprior.convention] ") + where + ": " + what +
                                    " is in the " + to_string(have) +
                                    " convention but the caller asked for the " + to_string(want) +
                                    " convention (convert a prior with .as(Convention::...))");
}

/// Path and target coefficients: x_t = a x + b eps, u = c x + e eps.   flow_matching.md (1)-(2)
struct PathCoefficients {
  double a, b, c, e;
};

/// Coefficients of convention `conv` at time t (host and device: the loss primitives of a
/// backend evaluate them per column).
FLOWPRIOR_HD inline PathCoefficients path_coefficients(Convention conv, double t) {
  if (conv == Convention::Paper) return {t, 1.0 - t, 1.0, -1.0};
  return {1.0 - t, t, -1.0, 1.0};
}

/// Time at which the path is pure data (1 for Paper, 0 for Code).
inline double data_time(Convention conv) { return conv == Convention::Paper ? 1.0 : 0.0; }
/// Time at which the path is pure noise (0 for Paper, 1 for Code).
inline double noise_time(Convention conv) { return conv == Convention::Paper ? 0.0 : 1.0; }

}  // namespace flowprior
