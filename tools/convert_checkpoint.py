#!/usr/bin/env python3
"""Convert a released PyTorch checkpoint (.pt / .pth) to a safetensors state dict for flowprior.

    python3 tools/convert_checkpoint.py in.pt out.safetensors [--key ema|model|state_dict|all]
        [--dtype f32|f64] [--check]

The checkpoint may be a plain state dict or a dict with 'ema' / 'model' / 'state_dict' entries
(possibly nested, possibly with 'flow_loss.' and/or 'net.' key prefixes). Nested dicts are
flattened with '.' joins, so the flow head's weights get names such as
'ema.net.input_proj.weight' or 'ema.flow_loss.net.input_proj.weight', which
flowprior::io::load_state_dict (prefix "auto") finds by itself, EMA weights first.

Only floating-point tensors are written. Optimizer and scheduler states, step counters and any
other non-tensor (or integer) entries are skipped with a note. --key keeps only that top-level
entry (names keep their 'ema.' etc. prefix); 'all' (default) keeps every weight entry.
--check re-reads the written file and compares every tensor with the checkpoint (after the
dtype cast) bit for bit. Needs only torch (tools/flowprior_torch.py).
"""

import argparse
import os
import sys
from collections import OrderedDict
from collections.abc import Mapping

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import flowprior_torch as fpt  # noqa: E402

SKIP_TOP = ("optimizer", "optimizers", "optim", "opt", "scheduler", "lr_scheduler", "scaler",
            "grad_scaler", "amp", "rng_state", "args", "config")
OUTER_KEYS = ("ema", "model", "state_dict")


def flatten(obj, prefix, out, notes):
    """Appends name -> tensor for every floating tensor under obj; notes what it skips."""
    if torch.is_tensor(obj):
        name = prefix[:-1]
        if not obj.is_floating_point():
            notes.append("skipped '%s': %s tensor (not a weight)" % (name, obj.dtype))
        elif name in out:
            raise SystemExit("error: two entries flatten to the same name '%s'" % name)
        else:
            out[name] = obj
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            flatten(v, prefix + str(k) + ".", out, notes)
    elif isinstance(obj, torch.nn.Module):
        flatten(obj.state_dict(), prefix, out, notes)
    else:
        notes.append("skipped '%s': %s" % (prefix[:-1] or "<root>", type(obj).__name__))


def is_plain_state_dict(ckpt):
    return isinstance(ckpt, Mapping) and len(ckpt) > 0 and all(
        torch.is_tensor(v) for v in ckpt.values())


def convert(ckpt, key="all"):
    """Returns (OrderedDict name -> tensor, notes)."""
    out, notes = OrderedDict(), []
    if isinstance(ckpt, torch.nn.Module):
        ckpt = ckpt.state_dict()
    if not isinstance(ckpt, Mapping):
        raise SystemExit("error: the checkpoint is a %s, not a dict" % type(ckpt).__name__)
    if is_plain_state_dict(ckpt):
        if key != "all":
            notes.append("the checkpoint is a plain state dict: --key %s ignored" % key)
        flatten(ckpt, "", out, notes)
        return out, notes
    if key != "all":
        if key not in ckpt:
            raise SystemExit("error: the checkpoint has no '%s' entry (top-level keys: %s)"
                             % (key, ", ".join(map(str, ckpt.keys()))))
        for k in ckpt:
            if k != key:
                notes.append("skipped '%s': not selected by --key %s" % (k, key))
        flatten(ckpt[key], key + ".", out, notes)
        return out, notes
    for k, v in ckpt.items():
        if str(k) in SKIP_TOP or "optim" in str(k).lower():
            notes.append("skipped '%s': optimizer or training state, not weights" % k)
            continue
        flatten(v, str(k) + ".", out, notes)
    return out, notes


def describe_heads(names):
    """Prefixes under which a flow head (input_proj.weight ...) lives, for the user's benefit."""
    heads = []
    for n in names:
        if n.endswith("input_proj.weight"):
            p = n[: -len("input_proj.weight")]
            if p + "final_layer.linear.weight" in names:
                heads.append(p)
    return heads


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("input", help="PyTorch checkpoint (torch.load)")
    ap.add_argument("output", help="safetensors file to write")
    ap.add_argument("--key", choices=("ema", "model", "state_dict", "all"), default="all",
                    help="top-level entry to keep (default: all weight entries)")
    ap.add_argument("--dtype", choices=("f32", "f64"), default="f32",
                    help="dtype of the written tensors (default f32)")
    ap.add_argument("--check", action="store_true",
                    help="re-read the written file and compare every tensor")
    a = ap.parse_args(argv)

    ckpt = torch.load(a.input, map_location="cpu")
    tensors, notes = convert(ckpt, a.key)
    for n in notes:
        print("note: " + n)
    if not tensors:
        raise SystemExit("error: no floating-point tensors to write")
    dt = {"f32": "F32", "f64": "F64"}[a.dtype]
    meta = {"format": "pt", "converted_by": "flowprior tools/convert_checkpoint.py",
            "source": os.path.basename(a.input), "key": a.key}
    fpt.write_safetensors(a.output, tensors, metadata=meta, dtype=dt)
    n = sum(t.numel() for t in tensors.values())
    print("wrote %s: %d tensors, %d values, %s" % (a.output, len(tensors), n, dt))
    names = set(tensors.keys())
    heads = describe_heads(names)
    order = [p for p in fpt.candidate_prefixes() if p in heads]
    for p in heads:
        sd = {k[len(p):]: v for k, v in tensors.items() if k.startswith(p)}
        try:
            cfg = fpt.infer_config(sd)
        except KeyError:
            cfg = "?"
        mark = " <- flowprior's auto prefix" if order and p == order[0] else ""
        print("flow head under '%s': %s%s" % (p, cfg, mark))
    if a.check:
        back = fpt.read_safetensors(a.output)
        torch_dt = {"F32": torch.float32, "F64": torch.float64}[dt]
        bad = [k for k, v in tensors.items()
               if k not in back or back[k].shape != v.shape or back[k].dtype != torch_dt
               or not torch.equal(back[k], v.detach().cpu().to(torch_dt))]
        if bad or len(back) != len(tensors):
            print("check FAILED: %d mismatching tensors (%s)" % (len(bad), ", ".join(bad[:5])))
            return 1
        print("check passed: %d tensors equal after the %s cast" % (len(back), dt))
    return 0


if __name__ == "__main__":
    sys.exit(main())
