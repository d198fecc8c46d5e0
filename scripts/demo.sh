#!/usr/bin/env bash
# The README's main job: installs the dependencies (Debian's Fashion-MNIST included), builds the
# examples with the `release` preset and runs the flagship demo, the image latent-alignment
# pipeline (examples/30_image_pipeline, docs/image_pipeline.md: about 8 minutes on 2 cores).
# Extra arguments are passed to it; `--toy2d` as the first argument runs the paper's 2-D proof of
# concept instead (examples/10_toy2d, docs/proof_of_concept.md), with the rest of the arguments.
# Usage: bash scripts/demo.sh [pipeline options]
#        bash scripts/demo.sh --toy2d [toy2d options]
# An interrupted pipeline continues from its stages' outputs and checkpoints when the same
# command is run again; an interrupted 2-D demo with: bash scripts/demo.sh --toy2d --resume.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

demo=30_image_pipeline
if [ "${1:-}" = "--toy2d" ]; then
  demo=10_toy2d
  shift
fi

bash scripts/install-deps.sh
cmake --preset release >/dev/null
cmake --build --preset release --target "${demo}"
exec "./build/release/examples/${demo}" "$@"
