#!/usr/bin/env python3
"""flowprior against PyTorch on this CPU, side by side (docs/benchmarks.md "Against PyTorch").

Runs, in interleaved rounds so that the drift of a shared machine hits every column alike:
  - flowprior's bench_model on every GEMM engine built (bench_model = the default engine,
    bench_model_<engine> the others): backend sgemm 1024 x 4096 x 1024, BM_AlignmentLoss and
    BM_TrainStep at the paper's size (one t per row, and time groups of 64) and the toy size;
  - tools/bench_torch.py, the same work written as the released PyTorch code, with the same
    thread count, its products forced onto OpenBLAS's OpenMP build when installed;
then prints a markdown table of medians: rows/s, GFLOP/s, the share of the fastest sgemm measured
in the run, and the ratio to PyTorch, with the CPU and its SIMD flags.

Usage (after `cmake --workflow --preset release` or `cmake --build build/release`):
  python3 tools/compare_torch.py [--build build/release] [--rounds 5] [--threads N]
Needs python3-torch (Debian) and, for the OpenBLAS column of PyTorch, libopenblas0-openmp.
Not part of the test command.
"""

import argparse
import glob
import json
import os
import platform
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

# (key, bench_model benchmark name, bench_torch case, rows per call)
CASES = [
    ("sgemm", "BM_BackendSgemm/m:1024/n:4096/k:1024/ta:0/tb:0", "sgemm", None),
    ("align_paper", "BM_AlignmentLoss/dim:32/width:1024/depth:6/rows:4096/group:1", "align_paper", 4096),
    ("align_paper_g64", "BM_AlignmentLoss/dim:32/width:1024/depth:6/rows:4096/group:64", "align_paper", 4096),
    ("train_paper", "BM_TrainStep/dim:32/width:1024/depth:6/batch:4096/group:1", "train_paper", 4096),
    ("train_paper_g64", "BM_TrainStep/dim:32/width:1024/depth:6/batch:4096/group:64", "train_paper", 4096),
    ("align_toy", "BM_AlignmentLoss/dim:2/width:512/depth:4/rows:1000/group:1", "align_toy", 1000),
    ("align_toy_g40", "BM_AlignmentLoss/dim:2/width:512/depth:4/rows:1000/group:40", "align_toy", 1000),
    ("train_toy", "BM_TrainStep/dim:2/width:512/depth:4/batch:256/group:1", "train_toy", 256),
]
LABELS = {
    "sgemm": "sgemm 1024 x 4096 x 1024",
    "align_paper": "alignment + dL/dy, 32/1024/6, 4096 rows, one t per row",
    "align_paper_g64": "alignment + dL/dy, 32/1024/6, 4096 rows, time groups of 64",
    "train_paper": "training step, 32/1024/6, batch 4096, one t per row",
    "train_paper_g64": "training step, 32/1024/6, batch 4096, time groups of 64",
    "align_toy": "alignment + dL/dy, 2/512/4, 1000 rows",
    "align_toy_g40": "alignment + dL/dy, 2/512/4, 1000 rows, time groups of 40",
    "train_toy": "training step, 2/512/4, batch 256",
}


def cpu_description():
    model, flags = platform.processor() or "?", []
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model in ("?", "", "x86_64"):
                    model = line.split(":", 1)[1].strip()
                if line.startswith("flags"):
                    have = line.split(":", 1)[1].split()
                    flags = sorted(x for x in have if x.startswith("avx") or x in ("fma", "amx_tile"))
                    break
    except OSError:
        pass
    return model, flags


def run_bench(binary, names, threads, min_time):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    filt = "^(" + "|".join(names) + ")(/real_time)?$"
    out = subprocess.run([binary, "--benchmark_filter=" + filt, "--benchmark_format=json",
                          "--benchmark_min_time=%g" % min_time], env=env, check=True,
                         capture_output=True, text=True).stdout
    data = json.loads(out)
    res = {}
    for b in data["benchmarks"]:
        name = b["run_name"] if "run_name" in b else b["name"]
        name = name.replace("/real_time", "")
        res[name] = dict(rows_per_s=b.get("items_per_second"), gflops=b.get("FLOP", 0) / 1e9)
    ctx = data.get("context", {})
    engine = ctx.get("gemm_engine", "?")
    if "openblas_core" in ctx:
        engine += " (" + ctx["openblas_core"] + ")"
    return engine, res


def run_torch(threads, min_time):
    env = dict(os.environ)
    multiarch = subprocess.run(["gcc", "-print-multiarch"], capture_output=True,
                               text=True).stdout.strip() or "x86_64-linux-gnu"
    ob = "/usr/lib/%s/openblas-openmp" % multiarch
    if os.path.isdir(ob):  # whatever the alternatives say, PyTorch multiplies on OpenBLAS (OpenMP)
        env["LD_LIBRARY_PATH"] = ob + (":" + env["LD_LIBRARY_PATH"] if "LD_LIBRARY_PATH" in env else "")
    env["OMP_NUM_THREADS"] = str(threads)
    out = subprocess.run([sys.executable, os.path.join(HERE, "bench_torch.py"), "--threads",
                          str(threads), "--repetitions", "1", "--min-time", str(min_time)],
                         env=env, check=True, capture_output=True, text=True).stdout
    rows = [json.loads(l) for l in out.splitlines() if l.startswith("{")]
    return {r["case"]: r for r in rows}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default="build/release")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--min-time", type=float, default=0.5)
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--openblas-coretype", default=None,
                    help="set OPENBLAS_CORETYPE for every run (flowprior's OpenBLAS engine and "
                         "PyTorch alike), e.g. SkylakeX where OpenBLAS does not recognise the CPU")
    args = ap.parse_args()
    if args.openblas_coretype:
        os.environ["OPENBLAS_CORETYPE"] = args.openblas_coretype

    binaries = sorted(glob.glob(os.path.join(args.build, "benchmarks", "bench_model*")))
    binaries = [b for b in binaries if os.access(b, os.X_OK) and not b.endswith(".json")]
    if not binaries:
        sys.exit("no bench_model* in %s/benchmarks: build the release preset first" % args.build)
    names = [c[1] for c in CASES]
    samples = {}  # (column, key) -> list of (rows_per_s, gflops)
    columns = []
    for r in range(args.rounds):
        for b in binaries:
            engine, res = run_bench(b, names, args.threads, args.min_time)
            col = "flowprior " + engine
            if col not in columns:
                columns.append(col)
            for key, bname, _, _ in CASES:
                if bname in res:
                    samples.setdefault((col, key), []).append(res[bname])
        if not args.no_torch:
            tr = run_torch(args.threads, args.min_time)
            col = "pytorch"
            if col not in columns:
                columns.append(col)
            for key, _, tcase, _ in CASES:
                if key.endswith(("_g64", "_g40")) or tcase not in tr:
                    continue  # the PyTorch code has no time groups: compared with its one-t rows
                samples.setdefault((col, key), []).append(tr[tcase])
            blas = tr.get("sgemm", {}).get("blas", [])
        print("round %d/%d done" % (r + 1, args.rounds), file=sys.stderr, flush=True)

    def med(col, key, field):
        v = [s[field] for s in samples.get((col, key), []) if s.get(field)]
        return statistics.median(v) if v else None

    best_sgemm = max((med(c, "sgemm", "gflops") or 0) for c in columns)
    model, flags = cpu_description()
    print("CPU: %s; %d threads; SIMD: %s" % (model, args.threads, " ".join(flags)))
    if not args.no_torch:
        print("PyTorch BLAS: %s" % ", ".join(blas))
    print("OPENBLAS_CORETYPE: %s" % os.environ.get("OPENBLAS_CORETYPE", "(unset: OpenBLAS detects)"))
    print("Medians of %d interleaved rounds; %% sgemm = GFLOP/s / the fastest sgemm of the run "
          "(%.1f GFLOP/s).\n" % (args.rounds, best_sgemm))
    head = "| case | " + " | ".join(columns) + " |"
    print(head)
    print("|" + "---|" * (len(columns) + 1))
    for key, _, _, rows in CASES:
        cells = []
        torch_rows = med("pytorch", key.replace("_g64", "").replace("_g40", ""), "rows_per_s")
        for c in columns:
            g = med(c, key, "gflops")
            if rows is None:
                cells.append("%.1f GFLOP/s" % g if g else "")
                continue
            rps = med(c, key, "rows_per_s")
            if rps is None:
                cells.append("")
                continue
            cell = "%.0f rows/s, %.1f GFLOP/s (%.0f%%)" % (rps, g, 100 * g / best_sgemm)
            if c != "pytorch" and torch_rows:
                cell += ", %.2fx" % (rps / torch_rows)
            cells.append(cell)
        print("| %s | %s |" % (LABELS[key], " | ".join(cells)))


if __name__ == "__main__":
    main()
