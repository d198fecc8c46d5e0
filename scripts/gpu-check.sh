#!/usr/bin/env bash
# The CUDA backend's checks on a machine with an NVIDIA GPU (docs/cuda.md "gpu-check"): builds the
# CUDA tests and benchmarks for that GPU's architecture, runs the parity tests (CudaBackend
# against the kernel bodies on the host), the GPU benchmarks, and -- where PyTorch with CUDA is
# importable -- the same work in PyTorch eager on the same GPU; prints a short report. Needs the
# build dependencies already installed (scripts/install-deps.sh) and nvcc; about 5 minutes on one
# H200.
#
# Usage: bash scripts/gpu-check.sh [--arch 90] [--build-dir build/gpu-check] [--out DIR]
#   --arch       CUDA architecture (default: the first GPU's compute capability, else 90)
#   --out        where the logs and JSON results go (default: <build-dir>/report)
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
arch=""
build=build/gpu-check
out=""
while (($#)); do
  case "$1" in
    --arch) arch="$2"; shift 2 ;;
    --build-dir) build="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "gpu-check: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
done
out="${out:-$build/report}"
mkdir -p "$out"
nvcc="${CUDACXX:-/usr/local/cuda/bin/nvcc}"
start=$(date +%s)
section() { printf '\n==================== %s (%ds) ====================\n' "$*" $(( $(date +%s) - start )); }

section "machine"
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L; then
  echo "gpu-check: no NVIDIA GPU visible (nvidia-smi); nothing to check" >&2
  exit 3
fi
nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv
"$nvcc" --version | tail -2
lscpu | grep -m1 "Model name" || true
if [[ -z "$arch" ]]; then
  arch=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d '. ')
  arch="${arch:-90}"
fi
echo "architecture: sm_$arch"

section "build (test_cuda, bench_cuda)"
gen=()
command -v ninja >/dev/null 2>&1 && gen=(-G Ninja)
cmake -S . -B "$build" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release -DFLOWPRIOR_CUDA=ON \
  -DCMAKE_CUDA_COMPILER="$nvcc" -DCMAKE_CUDA_ARCHITECTURES="$arch" \
  -DFLOWPRIOR_BUILD_TESTS=ON -DFLOWPRIOR_BUILD_EXAMPLES=OFF -DFLOWPRIOR_BUILD_BENCHMARKS=ON \
  -DFLOWPRIOR_TEST_GATES=OFF -DFLOWPRIOR_TEST_ENGINES=OFF >"$out/configure.log" 2>&1 \
  || { tail -30 "$out/configure.log"; echo "gpu-check: configure failed" >&2; exit 4; }
cmake --build "$build" --target test_cuda bench_cuda -j "$(nproc)" >"$out/build.log" 2>&1 \
  || { grep -m20 -i "error" "$out/build.log"; echo "gpu-check: build failed" >&2; exit 5; }
echo "built in $(( $(date +%s) - start )) s"

section "parity tests (tests/cuda)"
timeout 240 "$build/tests/test_cuda" --rng-seed 20261129 --durations yes >"$out/test_cuda.log" 2>&1
tests_rc=$?
grep -E "^(All tests passed|test cases:)|FAILED|SKIP" "$out/test_cuda.log" | head -40
echo "test_cuda exit status: $tests_rc"

section "benchmarks (bench_cuda)"
timeout 240 "$build/benchmarks/bench_cuda" --benchmark_min_time=0.2 \
  --benchmark_out="$out/bench_cuda.json" --benchmark_out_format=json 2>&1 | tee "$out/bench_cuda.log" \
  | grep -E "^(BM_|---|Benchmark)" 
bench_rc=${PIPESTATUS[0]}

section "PyTorch eager on the same GPU"
torch_rc=0
if python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  timeout 150 python3 tools/bench_torch.py --device cuda --repetitions 3 --min-time 0.2 \
    | tee "$out/torch_cuda.jsonl"
  torch_rc=${PIPESTATUS[0]}
else
  echo "PyTorch with CUDA is not importable here: no side-by-side numbers"
fi

section "summary"
echo "parity tests: $([[ $tests_rc -eq 0 ]] && echo passed || echo "FAILED (exit $tests_rc, $out/test_cuda.log)")"
echo "benchmarks:   $([[ $bench_rc -eq 0 ]] && echo ran || echo "FAILED (exit $bench_rc)")"
echo "pytorch:      $([[ $torch_rc -eq 0 ]] && echo ok || echo "failed (exit $torch_rc)")"
echo "results in $out (bench_cuda.json, torch_cuda.jsonl, logs); $(( $(date +%s) - start )) s in all"
[[ $tests_rc -eq 0 && $bench_rc -eq 0 ]]
