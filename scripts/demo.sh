#!/usr/bin/env bash
# The README's main job: installs the dependencies, builds the examples with the `release` preset
# and runs the flagship demo. Extra arguments are passed to the demo.
# Usage: bash scripts/demo.sh [demo options]
# An interrupted demo continues from its last checkpoint with: bash scripts/demo.sh --resume
# (with the same options). The demo's exit status is non-zero on an invalid option, an unwritable
# output folder or a diverged training (docs/proof_of_concept.md "Checks, divergence and
# resuming").
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

demo=10_toy2d

bash scripts/install-deps.sh
cmake --preset release >/dev/null
cmake --build --preset release --target "${demo}"
exec "./build/release/examples/${demo}" "$@"
