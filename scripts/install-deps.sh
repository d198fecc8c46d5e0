#!/usr/bin/env bash
# Install flowprior's build and test dependencies from Debian 12 packages (no other downloads).
# Idempotent: does nothing when every package is already installed. Uses sudo only when not root.
set -euo pipefail

packages=(
  cmake g++ ninja-build make
  libeigen3-dev catch2 libbenchmark-dev
  libcli11-dev nlohmann-json3-dev libstb-dev zlib1g-dev
  # GEMM engines of the CPU backend (flowprior::blas), in the builds that flowprior can call from
  # its own thread team (docs/backends.md "GEMM engines"); the tests run on each.
  libopenblas-openmp-dev libblis-serial-dev
  # Fashion-MNIST, the default data set of the image examples and tests (IDX files under
  # /usr/share/datasets/fashion-mnist).
  dataset-fashion-mnist
  # MPI for data-parallel training (flowprior::mpi) and its tests under mpirun
  # (docs/distributed.md).
  libopenmpi-dev openmpi-bin
  # The format gate of the test command (tests/gates; the header gate's nvcc is /usr/local/cuda).
  clang-format
)

missing=()
for pkg in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "${pkg}" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("${pkg}")
  fi
done

if ((${#missing[@]} == 0)); then
  echo "install-deps: all ${#packages[@]} packages already installed"
  exit 0
fi

as_root() {
  if [[ "$(id -u)" -eq 0 ]]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    echo "install-deps: need root (or sudo) to install: ${missing[*]}" >&2
    exit 1
  fi
}

echo "install-deps: installing ${missing[*]}"
as_root env DEBIAN_FRONTEND=noninteractive apt-get update
as_root env DEBIAN_FRONTEND=noninteractive \
  apt-get install -y --no-install-recommends "${missing[@]}"
