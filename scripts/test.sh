#!/usr/bin/env bash
# Full local/CI check: dependencies, then the `ci` and `asan` CMake workflow presets
# (configure -> build -> test each). Usage: bash scripts/test.sh
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

section() {
  printf '\n==================== %s ====================\n' "$*"
}

section "dependencies (scripts/install-deps.sh)"
bash scripts/install-deps.sh

section "workflow ci: RelWithDebInfo, -Werror, tests + examples + benchmarks"
cmake --workflow --preset ci

section "workflow asan: Debug, address + undefined sanitizers"
cmake --workflow --preset asan

section "all checks passed"
