#!/usr/bin/env bash
# The README's main job: installs the dependencies, builds the examples with the `release` preset
# and runs the flagship demo. Extra arguments are passed to the demo.
# Usage: bash scripts/demo.sh [demo options]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

demo=10_toy2d

bash scripts/install-deps.sh
cmake --preset release >/dev/null
cmake --build --preset release --target "${demo}"
exec "./build/release/examples/${demo}" "$@"
