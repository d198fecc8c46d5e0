#!/usr/bin/env python3
"""PyTorch (CPU) side of bench_model's tokenizer cases (docs/benchmarks.md "Transformer and
tokenizer"): the same work in float32 on tools/tokenizer_torch.py, PyTorch's ordinary way.

  ae_step     one autoencoder training step of TokenizerAE: forward, mse_loss(recon, x),
              zero_grad(set_to_none), backward, clip_grad_norm_(1.0), AdamW (lr 1e-4, betas
              0.9 / 0.95, weight decay 1e-4), EMA 0.999 of the weights (torch._foreach_lerp_,
              or _foreach_mul_ + _foreach_add_ where torch lacks it)       (BM_TokenizerStep)
  ae_forward  TokenizerAE forward (y and recon) under torch.no_grad()     (BM_TokenizerForward)
  block       one pre-norm transformer block forward + backward (every parameter gradient and
              the input gradient), width 256, 4 heads, 80 tokens, batch 64  (BM_TransformerBlock)

Default model: Fashion-MNIST size (image 28, 1 channel, patch 4, width 128, depth 2, dec_depth 2,
4 heads, mlp_ratio 4, 16 latent tokens of 8, batch 64), at TokenizerAE::init's distributions.
GFLOP/s counts 2 m n k for every matrix product computed (attention's q k^T and P v included),
forward and backward, as bench_model does. Prints one JSON object per case on stdout:
  {"case", "images_per_s" (ae_*) or "sequences_per_s" (block), "gflops", "seconds", "threads"}
where seconds are the per-call times of the repetitions. --profile prints, on stderr, a
torch.profiler table of the ops that take the training step's time.

Usage: /usr/bin/python3 tools/bench_tokenizer_torch.py [--threads 2] [--repetitions 5]
           [--min-time 0.5] [--cases ae_step ae_forward block] [--profile] [size options]
Not part of the test command; needs Debian's python3-torch.
"""

import argparse
import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tokenizer_torch as tt  # noqa: E402
from bench_torch import timed  # noqa: E402  (the same timing loop as the flow-head benchmark)


def block_flops(C, F_, T, n):
    """(forward, backward) matrix-product FLOPs of one block on n tokens, T per sequence:
    bench_model's block_flops (benchmarks/bench_model/tokenizer.cpp)."""
    linear = 8 * n * C * C + 4 * n * C * F_
    attention = 4 * n * T * C
    return linear + attention, 2 * linear + 2 * attention


def tokenizer_flops(cfg):
    """(forward, backward) matrix-product FLOPs per image of TokenizerAE; the backward of the
    training step does not compute dL/dx (bench_model's tokenizer_flops)."""
    D, F_, Np = cfg.width, cfg.mlp_hidden(), cfg.num_patches()
    T, d, cpp = cfg.latent_tokens, cfg.latent_dim, cfg.patch_dim()
    L = Np + T
    bf, bb = block_flops(D, F_, L, L)
    blocks = cfg.depth + cfg.decoder_depth()
    patch_embed, pixel_head, latent = 2 * Np * cpp * D, 2 * Np * D * cpp, 2 * T * D * d * 2
    fwd = patch_embed + latent + pixel_head + blocks * bf
    bwd = patch_embed + 2 * latent + 2 * pixel_head + blocks * bb
    return fwd, bwd


def make_config(a):
    return tt.TokenizerConfig(image_size=a.image, channels=a.channels, patch=a.patch,
                              width=a.width, depth=a.depth, dec_depth=a.dec_depth, heads=a.heads,
                              mlp_ratio=4.0, latent_tokens=a.latent_tokens,
                              latent_dim=a.latent_dim)


def make_model(cfg):
    g = torch.Generator().manual_seed(5)
    return tt.TokenizerAE(cfg).init_weights(g), g


def ema_update(ema, params, decay):
    if hasattr(torch, "_foreach_lerp_"):
        torch._foreach_lerp_(ema, params, 1.0 - decay)
    else:
        torch._foreach_mul_(ema, decay)
        torch._foreach_add_(ema, params, alpha=1.0 - decay)


def ae_step_fn(a):
    cfg = make_config(a)
    model, g = make_model(cfg)
    x = torch.rand(a.batch, cfg.channels, cfg.image_size, cfg.image_size, generator=g)
    params = list(model.parameters())
    opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), weight_decay=1e-4)
    ema = [p.detach().clone() for p in params]

    def step():
        _, recon = model(x)
        loss = F.mse_loss(recon, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            ema_update(ema, [p.detach() for p in params], 0.999)
        return loss

    return cfg, step


def case_ae_step(a):
    cfg, step = ae_step_fn(a)
    secs = timed(step, a.repetitions, a.min_time)
    med = statistics.median(secs)
    fwd, bwd = tokenizer_flops(cfg)
    return dict(images_per_s=a.batch / med, gflops=(fwd + bwd) * a.batch / med / 1e9,
                seconds=secs)


def case_ae_forward(a):
    cfg = make_config(a)
    model, g = make_model(cfg)
    x = torch.rand(a.batch, cfg.channels, cfg.image_size, cfg.image_size, generator=g)

    def fwd():
        with torch.no_grad():
            return model(x)

    secs = timed(fwd, a.repetitions, a.min_time)
    med = statistics.median(secs)
    f, _ = tokenizer_flops(cfg)
    return dict(images_per_s=a.batch / med, gflops=f * a.batch / med / 1e9, seconds=secs)


def case_block(a):
    C, H, T, B = a.block_width, a.block_heads, a.block_tokens, a.block_batch
    g = torch.Generator().manual_seed(11)
    blk = tt.Block(C, H, 4 * C, qk_norm=False, ln_eps=1e-6)
    with torch.no_grad():  # as bench_model: U(-0.05, 0.05), LayerNorm gains around 1
        for name, p in blk.named_parameters():
            p.copy_(torch.rand(p.shape, generator=g) * 0.1 - 0.05)
            if name in ("norm1.weight", "norm2.weight"):
                p.add_(1.0)
    x = (torch.rand(B, T, C, generator=g) * 2 - 1).requires_grad_(True)
    d_out = torch.rand(B, T, C, generator=g) * 2 - 1

    def step():
        blk.zero_grad(set_to_none=True)
        x.grad = None
        blk(x).backward(d_out)

    secs = timed(step, a.repetitions, a.min_time)
    med = statistics.median(secs)
    fwd, bwd = block_flops(C, 4 * C, T, B * T)
    return dict(sequences_per_s=B / med, gflops=(fwd + bwd) / med / 1e9, seconds=secs,
                size=dict(width=C, heads=H, tokens=T, batch=B))


def profile_ae_step(a, steps=5):
    """A torch.profiler table (top ops by self CPU time) of `steps` training steps, on stderr."""
    from torch.profiler import ProfilerActivity, profile
    _, step = ae_step_fn(a)
    step()
    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    print("torch.profiler, %d training steps (ae_step), top ops by self CPU time:" % steps,
          file=sys.stderr)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20),
          file=sys.stderr)


CASES = {"ae_step": case_ae_step, "ae_forward": case_ae_forward, "block": case_block}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    ap.add_argument("--repetitions", type=int, default=5)
    ap.add_argument("--min-time", type=float, default=0.5, help="seconds per repetition")
    ap.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    ap.add_argument("--profile", action="store_true",
                    help="also print a torch.profiler table of the training step (stderr)")
    s = ap.add_argument_group("tokenizer size (bench_model's Args)")
    s.add_argument("--image", type=int, default=28)
    s.add_argument("--channels", type=int, default=1)
    s.add_argument("--patch", type=int, default=4)
    s.add_argument("--width", type=int, default=128)
    s.add_argument("--depth", type=int, default=2)
    s.add_argument("--dec-depth", type=int, default=2)
    s.add_argument("--heads", type=int, default=4)
    s.add_argument("--latent-tokens", type=int, default=16)
    s.add_argument("--latent-dim", type=int, default=8)
    s.add_argument("--batch", type=int, default=64)
    b = ap.add_argument_group("block size")
    b.add_argument("--block-width", type=int, default=256)
    b.add_argument("--block-heads", type=int, default=4)
    b.add_argument("--block-tokens", type=int, default=80)
    b.add_argument("--block-batch", type=int, default=64)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    for name in a.cases:
        r = CASES[name](a)
        out = dict(case=name)
        out.update(r)
        out.update(threads=torch.get_num_threads(), torch=torch.__version__)
        print(json.dumps(out), flush=True)
    if a.profile:
        profile_ae_step(a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
