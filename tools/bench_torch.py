#!/usr/bin/env python3
"""PyTorch (CPU) side of the side-by-side benchmark (docs/benchmarks.md "Against PyTorch").

Times, in float32 on the CPU, the same work as flowprior's bench_model cases, written the way the
released PyTorch code does it (tools/flowprior_torch.py: the AdaLN flow head, the alignment loss):

  sgemm       torch.mm, 1024 x 4096 x 1024                            (BM_BackendSgemm)
  align       alignment loss + dL/dy, frozen prior, N latents x K = 4 draws, one t per draw
                                                                      (BM_AlignmentLoss, group 1)
  train       one flow-matching step: loss, backward, clip_grad_norm_(1.0), AdamW (weight decay
              0.01, betas 0.9 / 0.95), EMA of the weights                (BM_TrainStep, group 1)

at the paper's size (dim 32, width 1024, depth 6; 4096 rows) and the toy size (dim 2, width 512,
depth 4; 1000 alignment rows, batch 256). Rows are network evaluations (latents x K), as in
bench_model's items_per_second. Prints one JSON object per case on stdout:
  {"case": ..., "rows_per_s": ..., "gflops": ..., "seconds": [...], "threads": ..., "blas": ...}

With --device cuda (scripts/gpu-check.sh) every tensor lives on the GPU, each call ends with
torch.cuda.synchronize(), and the GPU cases of bench_cuda are added: align_paper_65k (65,536
rows) and train_paper (batch 4096), PyTorch eager in float32 (TF32 off: torch's default for
matmul), to set beside BM_CudaAlignmentLoss and BM_CudaTrainStep.

Usage: python3 tools/bench_torch.py [--threads N] [--repetitions R] [--min-time S] [--cases ...]
                                    [--device cpu|cuda]
Not part of the test command; needs Debian's python3-torch (which multiplies through whatever
libblas.so.3 the alternatives name: tools/compare_torch.sh points it at OpenBLAS).
"""

import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from flowprior_torch import SimpleMLPAdaLN, alignment_loss  # noqa: E402


def loaded_blas():
    """The BLAS libraries mapped into this process (what torch.mm really calls)."""
    names = set()
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                p = line.split()[-1]
                base = os.path.basename(p)
                if any(k in base for k in ("blas", "blis", "mkl")):
                    names.add(p)
    except OSError:
        pass
    return sorted(names)


DEVICE = "cpu"


def sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def timed(fn, repetitions, min_time):
    """Median-ready list of seconds per call: each repetition runs fn until min_time has passed."""
    inner = fn

    def fn():  # noqa: F811  every call waits for the device
        inner()
        sync()

    fn()  # warm-up
    fn()
    out = []
    for _ in range(repetitions):
        n, t0 = 0, time.perf_counter()
        while True:
            fn()
            n += 1
            el = time.perf_counter() - t0
            if el >= min_time:
                break
        out.append(el / n)
    return out


def matmul_flops_per_row(dim, width, depth, freq=256):
    """(forward, vjp_x, backward) products per row, 2 m n k each: AdaLNMlp::matmul_flops_per_row()."""
    W, d, F, L = float(width), float(dim), float(freq), float(depth)
    fwd = 2 * (F * W + W * W + d * W + L * 5 * W * W + 2 * W * W + W * d)
    vjp = 2 * (W * d + L * 2 * W * W + d * W)
    bwd = fwd + 2 * (W * d + L * 5 * W * W + 2 * W * W + d * W + W * W)
    return fwd, vjp, bwd


def make_net(dim, width, depth, seed=0):
    torch.manual_seed(seed)
    net = SimpleMLPAdaLN(dim=dim, width=width, depth=depth).float().to(DEVICE)
    with torch.no_grad():  # non-degenerate weights (the released init zeroes the last layers)
        for p in net.parameters():
            p.normal_(0.0, 0.02)
    return net


def case_sgemm(args):
    a = torch.randn(1024, 1024, device=DEVICE)
    b = torch.randn(1024, 4096, device=DEVICE)
    c = torch.empty(1024, 4096, device=DEVICE)
    secs = timed(lambda: torch.mm(a, b, out=c), args.repetitions, args.min_time)
    return dict(rows_per_s=None, gflops=2 * 1024 * 4096 * 1024 / statistics.median(secs) / 1e9,
                seconds=secs)


def case_align(args, dim, width, depth, rows):
    K = 4
    N = rows // K
    net = make_net(dim, width, depth)
    for p in net.parameters():
        p.requires_grad_(False)  # frozen prior: only dL/dy
    y = (torch.rand(N, dim, device=DEVICE) * 2 - 1).requires_grad_(True)
    t = torch.rand(N * K, device=DEVICE)
    eps = torch.randn(N * K, dim, device=DEVICE)

    def step():
        y.grad = None
        loss = alignment_loss(net, y, t, eps, K, "code", "mean", 0.01)
        loss.backward()
        return loss

    secs = timed(step, args.repetitions, args.min_time)
    fwd, vjp, _ = matmul_flops_per_row(dim, width, depth)
    med = statistics.median(secs)
    return dict(rows_per_s=rows / med, gflops=(fwd + vjp) * rows / med / 1e9, seconds=secs)


def case_train(args, dim, width, depth, batch):
    net = make_net(dim, width, depth)
    targets = torch.rand(8192, dim, device=DEVICE) * 4 - 2
    opt = torch.optim.AdamW(net.parameters(), lr=1e-5, betas=(0.9, 0.95), weight_decay=0.01)
    ema = [p.detach().clone() for p in net.parameters()]
    gen = torch.Generator(device=DEVICE).manual_seed(1)

    def step():
        idx = torch.randint(0, targets.shape[0], (batch,), generator=gen, device=DEVICE)
        x = targets[idx]
        t = (torch.arange(batch, dtype=torch.float32, device=DEVICE)
             + torch.rand(batch, device=DEVICE)) / batch  # stratified
        eps = torch.randn(batch, dim, device=DEVICE)
        xt, u = (1 - t[:, None]) * x + t[:, None] * eps, eps - x
        loss = torch.nn.functional.mse_loss(net(xt, t), u)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            torch._foreach_mul_(ema, 0.9999)
            torch._foreach_add_(ema, [p.detach() for p in net.parameters()], alpha=1e-4)
        return loss

    secs = timed(step, args.repetitions, args.min_time)
    fwd, _, bwd = matmul_flops_per_row(dim, width, depth)
    med = statistics.median(secs)
    return dict(rows_per_s=batch / med, gflops=(fwd + bwd) * batch / med / 1e9, seconds=secs)


CASES = {
    "sgemm": case_sgemm,
    "align_paper": lambda a: case_align(a, 32, 1024, 6, 4096),
    "train_paper": lambda a: case_train(a, 32, 1024, 6, 4096),
    "align_toy": lambda a: case_align(a, 2, 512, 4, 1000),
    "train_toy": lambda a: case_train(a, 2, 512, 4, 256),
    "align_paper_65k": lambda a: case_align(a, 32, 1024, 6, 65536),
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--repetitions", type=int, default=5)
    ap.add_argument("--min-time", type=float, default=0.5)
    ap.add_argument("--cases", nargs="*", default=None, choices=list(CASES))
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    args = ap.parse_args()
    global DEVICE
    DEVICE = args.device
    if args.cases is None:
        args.cases = ["sgemm", "align_paper_65k", "train_paper"] if DEVICE == "cuda" else [
            c for c in CASES if c != "align_paper_65k"]
    torch.set_num_threads(args.threads)
    blas = loaded_blas()
    for name in args.cases:
        with torch.enable_grad():
            r = CASES[name](args)
        r.update(case=name, threads=torch.get_num_threads(), torch=torch.__version__,
                 blas=loaded_blas() or blas, device=DEVICE)
        print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
