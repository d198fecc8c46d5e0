#!/usr/bin/env python3
"""Writes tests/reference/data/tokenizer_reference.safetensors: PyTorch reference values of the
tokenizer autoencoder (tools/tokenizer_torch.py, the twin of flowprior::nn::TokenizerAE) for
tests/reference/test_tokenizer_reference.cpp. Called by tools/make_fixtures.py; also runs alone:

    /usr/bin/python3 tools/make_tokenizer_fixture.py [--out PATH]

Deterministic: fixed seed, one thread, float64 (a different BLAS or CPU may move the references
by an ulp, far below the tests' tolerances). Two cases, each under its own prefix <case>.:

  plain    image 8, 2 channels, patch 2, width 16, depth 2, dec_depth 1, heads 2, mlp_ratio 2,
           T 3, d 4, no qk-norm, ln_eps 1e-6; batch 2
  qknorm   image 6, 1 channel, patch 3, width 8, depth 1, dec_depth 2, heads 2, mlp_ratio 2.5,
           T 2, d 3, qk-norm, ln_eps 1e-5; batch 3

Tensors (all F64; the parameters and inputs are float32 values, so a float model reads exactly
what the double reference used):
  <case>.param.<name>     random non-degenerate parameters, in TokenizerAE::layout() order
  <case>.x                images (B, C, H, W)   == flowprior (C H W, B)
  <case>.y, <case>.recon  the outputs (B, T, d) == (d, B T), and (B, C, H, W)
  <case>.d_recon, <case>.d_y_extra   the given gradients, shapes of recon and y
  <case>.grad.<name>, <case>.d_x     autograd gradients of L = <d_recon, recon> + <d_y_extra, y>
Metadata: generator, torch version, seed and <case>.config / <case>.batch.
"""

import argparse
import json
import os
import sys
from collections import OrderedDict

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import flowprior_torch as fpt  # noqa: E402
import tokenizer_torch as tt  # noqa: E402

GENERATOR = "tools/make_tokenizer_fixture.py v1"
SEED = 20261130
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(ROOT, "tests", "reference", "data", "tokenizer_reference.safetensors")
MAX_BYTES = 200 * 1024

CASES = OrderedDict([
    ("plain", (dict(image_size=8, channels=2, patch=2, width=16, depth=2, dec_depth=1, heads=2,
                    mlp_ratio=2.0, latent_tokens=3, latent_dim=4, qk_norm=False, ln_eps=1e-6),
               2)),
    ("qknorm", (dict(image_size=6, channels=1, patch=3, width=8, depth=1, dec_depth=2, heads=2,
                     mlp_ratio=2.5, latent_tokens=2, latent_dim=3, qk_norm=True, ln_eps=1e-5),
                3)),
])

LEARNED_TOKENS = ("latent_tokens", "latent_pos_embed", "mask_token")


def f32_exact(t):
    """t rounded to float32 and back: a value float and double models read alike."""
    return t.to(torch.float32).to(torch.float64)


def randomize(model, g):
    """Perturbs every tensor away from the initialisation (which would hide bugs: unit LayerNorm
    gains, zero biases): LayerNorm weights 1 + 0.3 N(0, 1), Linear and Conv2d weights
    N(0, 1 / fan_in), biases 0.2 N(0, 1), learned tokens and embeddings 0.5 N(0, 1)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            z = torch.randn(p.shape, generator=g, dtype=torch.float64)
            leaf = name.rsplit(".", 1)[-1]
            if leaf in LEARNED_TOKENS:
                v = 0.5 * z
            elif leaf == "weight" and p.dim() == 1:  # a LayerNorm's gain
                v = 1 + 0.3 * z
            elif leaf == "weight":
                v = z / (p[0].numel() ** 0.5)
            else:
                v = 0.2 * z
            p.copy_(f32_exact(v))
    return model


def make_case(tag, kw, batch, g):
    cfg = tt.TokenizerConfig(**kw)
    model = randomize(tt.TokenizerAE(cfg).double(), g)
    C, H, T, d = cfg.channels, cfg.image_size, cfg.latent_tokens, cfg.latent_dim
    x = f32_exact(torch.randn(batch, C, H, H, generator=g, dtype=torch.float64))
    d_recon = f32_exact(torch.randn(batch, C, H, H, generator=g, dtype=torch.float64))
    d_y = f32_exact(torch.randn(batch, T, d, generator=g, dtype=torch.float64))

    names = [n for n, _ in model.named_parameters()]
    params = [p for _, p in model.named_parameters()]
    xg = x.clone().requires_grad_(True)
    y, recon = model(xg)
    grads = torch.autograd.grad((recon, y), params + [xg], grad_outputs=(d_recon, d_y))

    out = OrderedDict()
    for k, v in model.state_dict().items():
        out["%s.param.%s" % (tag, k)] = v.detach().clone()
    out[tag + ".x"] = x
    out[tag + ".y"] = y.detach()
    out[tag + ".recon"] = recon.detach()
    out[tag + ".d_recon"] = d_recon
    out[tag + ".d_y_extra"] = d_y
    for n, gr in zip(names, grads[:-1]):
        out["%s.grad.%s" % (tag, n)] = gr
    out[tag + ".d_x"] = grads[-1]
    meta = {tag + ".config": json.dumps(cfg.as_dict()), tag + ".batch": str(batch)}
    # The state dict and named_parameters() agree on names and order (no buffer is persistent).
    assert list(model.state_dict().keys()) == names
    return out, meta, model


def make(out_path=DEFAULT_OUT):
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(SEED)
    data, meta = OrderedDict(), OrderedDict()
    meta["generator"] = GENERATOR
    meta["torch"] = torch.__version__
    meta["seed"] = str(SEED)
    meta["layout"] = ("PyTorch (B, C, H, W) and (B, T, d) in C order == flowprior (C H W, B) and "
                      "(d, B T) column-major; parameters in state_dict (= layout()) order")
    meta["loss"] = "L = <d_recon, recon> + <d_y_extra, y>; grad.* and d_x by torch.autograd"
    meta["precision"] = "parameters and inputs are float32 values stored as F64; references F64"
    models = {}
    for tag, (kw, batch) in CASES.items():
        d, m, model = make_case(tag, kw, batch, g)
        data.update(d)
        meta.update(m)
        models[tag] = model
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    fpt.write_safetensors(out_path, data, metadata=meta)
    size = os.path.getsize(out_path)
    print("wrote %s (%d bytes, %d tensors)" % (out_path, size, len(data)))
    assert size < MAX_BYTES, "fixture too large"

    # Self-check: read back; a fresh twin loads each case's parameters with strict=True and
    # reproduces its outputs bit for bit.
    back, meta_back = fpt.read_safetensors(out_path, with_metadata=True)
    assert meta_back == meta
    for k, t0 in data.items():
        assert back[k].dtype == torch.float64 and torch.equal(back[k], t0), k
    for tag in CASES:
        cfg = tt.TokenizerConfig(**json.loads(meta_back[tag + ".config"]))
        fresh = tt.TokenizerAE(cfg).double()
        prefix = tag + ".param."
        fresh.load_state_dict(OrderedDict((k[len(prefix):], v) for k, v in back.items()
                                          if k.startswith(prefix)), strict=True)
        with torch.no_grad():
            y, recon = fresh(back[tag + ".x"])
        assert torch.equal(y, back[tag + ".y"]) and torch.equal(recon, back[tag + ".recon"]), tag
        n = sum(p.numel() for p in fresh.parameters())
        print("  %s: %d parameters, |y| max %.3f, |recon| max %.3f, |d_x| max %.3f"
              % (tag, n, y.abs().max(), recon.abs().max(), back[tag + ".d_x"].abs().max()))
    print("self-check: read back equal; reloaded twins reproduce y and recon exactly")
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=DEFAULT_OUT, help="fixture path (default: %(default)s)")
    a = ap.parse_args(argv)
    return make(a.out)


if __name__ == "__main__":
    sys.exit(main())
