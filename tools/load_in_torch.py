#!/usr/bin/env python3
"""Load a flowprior-saved (or converted) safetensors state dict into PyTorch's SimpleMLPAdaLN.

    python3 tools/load_in_torch.py prior.safetensors [--prefix auto|ema.net.|...]
        [--inputs io.safetensors [--input-prefix cond.]] [--float32] [--tol 1e-10]

Loads with load_state_dict(strict=True) (the configuration is inferred from the shapes) and
prints it. With --inputs, evaluates the module on the file's `x` (batch, dim), `t` (batch,) and
optional `cond` (batch, cond_dim), and prints max |v_torch - v| against its `v` (batch, dim);
exits 1 if that exceeds --tol. Needs only torch (tools/flowprior_torch.py).
"""

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import flowprior_torch as fpt  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("state_dict", help="safetensors file written by flowprior or the converter")
    ap.add_argument("--prefix", default="auto", help="tensor name prefix (default: auto)")
    ap.add_argument("--inputs", help="safetensors file with x, t [, cond] and v to compare")
    ap.add_argument("--input-prefix", default="", help="prefix of x/t/cond/v in --inputs")
    ap.add_argument("--float32", action="store_true", help="evaluate in float32 (default f64)")
    ap.add_argument("--tol", type=float, default=None,
                    help="fail above this max abs error (default 1e-10 f64, 1e-5 f32)")
    a = ap.parse_args(argv)

    dtype = torch.float32 if a.float32 else torch.float64
    net, prefix = fpt.load_flowprior_state_dict(a.state_dict, a.prefix, dtype=dtype)
    n = sum(p.numel() for p in net.parameters())
    print("loaded %s (prefix '%s', strict=True): %s, %d parameters"
          % (a.state_dict, prefix, net.config(), n))
    if not a.inputs:
        return 0
    io = fpt.read_safetensors(a.inputs)
    p = a.input_prefix
    x, t, v = io[p + "x"].to(dtype), io[p + "t"].to(dtype), io[p + "v"].to(torch.float64)
    cond = io[p + "cond"].to(dtype) if (p + "cond") in io else None
    with torch.no_grad():
        vt = net(x, t, cond).to(torch.float64)
    err = (vt - v).abs().max().item()
    scale = v.abs().max().item()
    tol = a.tol if a.tol is not None else (1e-5 if a.float32 else 1e-10) * max(1.0, scale)
    print("max |v_torch - v| = %.3e over %d samples (max |v| = %.3e, tol %.1e)"
          % (err, x.shape[0], scale, tol))
    return 0 if err <= tol else 1


if __name__ == "__main__":
    sys.exit(main())
