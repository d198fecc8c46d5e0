// Command-line helpers shared by the examples (CLI11, libcli11-dev); not part of the library,
// which never parses argv.
#pragma once

#include <CLI/CLI.hpp>
#include <string>

namespace example {

/// CLI11 reads "-1" into an unsigned seed as 2^64 - 1: refuse any sign instead.
inline const CLI::Validator kNonNegativeInteger(
    [](std::string& s) {
      return s.find('-') == std::string::npos
                 ? std::string()
                 : "must be a non-negative integer (0 to 18446744073709551615), got " + s;
    },
    "NON-NEGATIVE");

}  // namespace example
