#!/usr/bin/env python3
"""The step-time model of data-parallel training (docs/scaling.md), fitted to bench_allreduce's
JSON and evaluated for the paper's settings. Standard library only.

  T_step(N)      = T_compute(B / N) + T_allreduce(N)                        scaling.md (1)
  T_allreduce(N) = 2 (N - 1) / N * bytes / bw + 2 (N - 1) * alpha           scaling.md (2)
  T_compute(b)   = c0 + c1 * rows(b)   (this machine's CPU ranks)           scaling.md (3)

Prints, as Markdown: the alpha-beta fits of the measured float all-reduce sizes (two regimes:
buffers up to --small-max bytes, and from --large-min bytes), predicted against measured times of every
size, the compute fit from two runs at different batches, predicted against measured steps, and
the 8-GPU tables of docs/scaling.md.

Usage: python3 tools/scaling_model.py RUN.json [RUN_SMALLER_BATCH.json]
           [--small-max 4.2e6] [--large-min 6e7]
Not part of the test command.
"""

import argparse
import json

# Per-GPU bus bandwidth (bytes/s) and per-step latency alpha (s) of each link class: the
# bandwidths are the nominal figures the issue names; the alphas are assumptions (they change
# the predictions below by less than 1 %: 14 alpha is at most 0.7 ms).
LINKS = [
    ("NVLink-class, 300 GB/s", 300e9, 5e-6),
    ("InfiniBand 200 Gb/s", 25e9, 5e-6),
    ("100 GbE", 12.5e9, 20e-6),
    ("10 GbE", 1.25e9, 50e-6),
]

# NVIDIA H200 SXM peak rates (datasheet; dense, i.e. half the "with sparsity" figures), and HBM3e.
H200_PEAK = [("FP32", 66.9e12), ("TF32 tensor", 494.7e12), ("BF16 tensor", 989.4e12)]
H200_HBM = 4.8e12

# The paper's autoencoder (ViT-L halves: 256 x 256 x 3 images, patch 16, width 1024, 24 + 24
# blocks, 16 heads, 64 latent tokens of 32): TokenizerAE<float>(that config).num_params().
PAPER_AE_PARAMS = 606461728
PAPER_AE_TOKENS = 256 + 64  # patch tokens + latent tokens, in each half
PAPER_AE_WIDTH, PAPER_AE_BLOCKS = 1024, 48


def allreduce_time(nbytes, n, bw, alpha):
    """scaling.md (2)."""
    return 2.0 * (n - 1) / n * nbytes / bw + 2.0 * (n - 1) * alpha


def fit_alpha_beta(points, n):
    """Least squares of the relative error of (2) over (bytes, seconds) points: alpha, bw."""
    a = 2.0 * (n - 1)
    b = 2.0 * (n - 1) / n
    rows = [(a / t, b * s / t) for s, t in points]
    a11 = sum(r[0] * r[0] for r in rows)
    a12 = sum(r[0] * r[1] for r in rows)
    a22 = sum(r[1] * r[1] for r in rows)
    b1 = sum(r[0] for r in rows)
    b2 = sum(r[1] for r in rows)
    det = a11 * a22 - a12 * a12
    alpha = (b1 * a22 - a12 * b2) / det
    beta = (a11 * b2 - a12 * b1) / det
    return alpha, 1.0 / beta


def fit_bw(points, n, alpha):
    """The bandwidth of (2) at a given alpha (relative least squares)."""
    b = 2.0 * (n - 1) / n
    q = [(b * s) / (t - 2.0 * (n - 1) * alpha) for s, t in points]
    return sum(x * x for x in q) / sum(q)


def paper_ae_flops_per_image():
    """Matrix-product FLOPs of one training step (forward + backward = 3 forwards) per image:
    per block and token 24 C^2 (qkv 6, proj 2, MLP 16) + 4 L C (scores and P v)."""
    c, l = PAPER_AE_WIDTH, PAPER_AE_TOKENS
    forward = PAPER_AE_BLOCKS * l * (24 * c * c + 4 * l * c)
    return 3.0 * forward


def ms(x):
    return "%.3g" % (x * 1e3) if x < 1e-2 else "%.1f" % (x * 1e3)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run")
    p.add_argument("run_small", nargs="?")
    p.add_argument("--small-max", type=float, default=4.2e6)
    p.add_argument("--large-min", type=float, default=6e7)
    o = p.parse_args()
    run = json.load(open(o.run))
    n = run["ranks"]
    pts = [(r["type"], r["bytes"], r["median_s"]) for r in run["allreduce"]]

    small = [(s, t) for ty, s, t in pts if ty == "float" and s <= o.small_max]
    if len(small) < 2:
        p.error("%s: the fit needs at least two float sizes of at most --small-max = %g bytes"
                % (o.run, o.small_max))
    alpha, bw_small = fit_alpha_beta(small, n)
    large = [(s, t) for ty, s, t in pts if ty == "float" and s >= o.large_min]
    if not large:
        p.error("%s: the fit needs a float size of at least --large-min = %g bytes"
                % (o.run, o.large_min))
    bw_large = fit_bw(large, n, alpha)
    print("## fit (%d ranks)\n" % n)
    print("alpha = %.2f us; bw = %.3f GB/s (<= %.3g B); bw = %.3f GB/s (>= %.3g B, at that alpha)\n"
          % (alpha * 1e6, bw_small * 1e-9, o.small_max, bw_large * 1e-9, o.large_min))
    print("| type | elements | bytes | measured ms | predicted ms | ratio |")
    print("|---|---|---|---|---|---|")
    for r in run["allreduce"]:
        s = r["bytes"]
        bw = bw_small if s <= o.small_max else bw_large if s >= o.large_min else None
        pred = allreduce_time(s, n, bw, alpha) if bw else None
        print("| %s | %d | %d | %s | %s | %s |" % (
            r["type"], r["elements"], s, ms(r["median_s"]), ms(pred) if pred else "-",
            "%.2f" % (r["median_s"] / pred) if pred else "(between)"))

    def ar_pred(nbytes):
        bw = bw_small if nbytes <= o.small_max else bw_large
        return allreduce_time(nbytes, n, bw, alpha)

    runs = [run] + ([json.load(open(o.run_small))] if o.run_small else [])
    print("\n## steps: T_compute + T_allreduce(predicted) against the measured sequential step\n")
    print("| model | batch/rank | compute ms | allreduce ms (measured / predicted) |"
          " predicted step ms | measured step ms | ratio | overlapped ms |")
    print("|---|---|---|---|---|---|---|---|")
    for rr in runs:
        for s in rr["steps"]:
            pa = ar_pred(4.0 * s["params"])
            pred = s["compute_s"] + pa
            print("| %s | %d | %s | %s / %s | %s | %s | %.3f | %s |" % (
                s["name"], s["batch_per_rank"], ms(s["compute_s"]), ms(s["allreduce_s"]),
                ms(pa), ms(pred), ms(s["sequential_s"]), s["sequential_s"] / pred,
                ms(s["overlapped_s"])))
    if o.run_small:
        print("\n## compute fit T_compute(b) = c0 + c1 rows\n")
        small_run = runs[1]
        for a, b in zip(run["steps"], small_run["steps"]):
            c1 = (a["compute_s"] - b["compute_s"]) / (a["rows_per_rank"] - b["rows_per_rank"])
            c0 = a["compute_s"] - c1 * a["rows_per_rank"]
            rate = a["flops"] / a["rows_per_rank"] / c1 if a["flops"] else 0
            print("%s: c0 = %.1f ms, c1 = %.3f ms/row%s" % (
                a["name"], c0 * 1e3, c1 * 1e3,
                ", per-row matrix rate %.1f GFLOP/s" % (rate * 1e-9) if rate else ""))

    prior = next(s for s in run["steps"] if s["name"] == "prior")
    flops_row = prior["flops"] / prior["rows_per_rank"]
    k = prior["rows_per_rank"] // prior["batch_per_rank"]
    models = [("flow prior (%d params, batch 256, K = %d)" % (prior["params"], k),
               prior["params"], 256 // 8 * k * flops_row),
              ("paper autoencoder (%d params, batch 256)" % PAPER_AE_PARAMS, PAPER_AE_PARAMS,
               256 // 8 * paper_ae_flops_per_image())]
    print("\n## 8 GPUs: all-reduce of the float gradients\n")
    print("| model | bytes | " + " | ".join(l[0] for l in LINKS) + " |")
    print("|---|---|" + "---|" * len(LINKS))
    for name, params, _ in models:
        print("| %s | %d | " % (name, 4 * params) + " | ".join(
            ms(allreduce_time(4.0 * params, 8, bw, a)) + " ms" for _, bw, a in LINKS) + " |")
    print("\n## 8 GPUs: per-GPU compute at the H200's peak (a lower bound on the time)\n")
    print("| model | FLOP per GPU and step | " + " | ".join(x[0] for x in H200_PEAK) +
          " | optimizer traffic at 4.8 TB/s |")
    print("|---|---|" + "---|" * (len(H200_PEAK) + 1))
    for name, params, flops in models:
        opt = 11 * 4.0 * params / H200_HBM  # AdamW + clip + EMA: about 11 float accesses each
        print("| %s | %.3g | " % (name, flops) + " | ".join(
            ms(flops / r) + " ms" for _, r in H200_PEAK) + " | %s ms |" % ms(opt))
    print("\n## 8 GPUs: T_step = T_compute + T_allreduce (sequential) | max of the two (ideal"
          " overlap), ms\n")
    for name, params, _ in models:
        print("%s\n" % name)
        print("| T_compute per GPU | " + " | ".join(l[0] for l in LINKS) + " |")
        print("|---|" + "---|" * len(LINKS))
        for tc in [1e-3, 3e-3, 10e-3, 30e-3, 100e-3, 300e-3, 1.0]:
            cells = []
            for _, bw, a in LINKS:
                tar = allreduce_time(4.0 * params, 8, bw, a)
                cells.append("%s \\| %s (%d%%)" % (ms(tc + tar), ms(max(tc, tar)),
                                                   round(100 * tar / (tc + tar))))
            print("| %g ms | " % (tc * 1e3) + " | ".join(cells) + " |")
        print()


if __name__ == "__main__":
    main()
