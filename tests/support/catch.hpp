// Test-only shim: every test includes this instead of Catch2 directly, so that a move to Catch2 v3
// is one change here (CLI11 tests/catch.hpp pattern).
#pragma once
#include <catch2/catch.hpp>
