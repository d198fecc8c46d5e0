#!/usr/bin/env python3
"""Generate tests/reference/data/adaln_reference.safetensors: PyTorch reference values for
flowprior's AdaLNMlp and alignment loss (tests/reference/test_reference.cpp), and
tests/reference/data/tokenizer_reference.safetensors: those of the tokenizer autoencoder
(tools/make_tokenizer_fixture.py, tests/reference/test_tokenizer_reference.cpp).

    python3 tools/make_fixtures.py [--fixture all|adaln|tokenizer] [--out PATH]
                                   [--tokenizer-out PATH]
    python3 tools/make_fixtures.py --verify-saved FILE [FILE ...]

The first form writes the fixtures (all by default; deterministic: fixed seeds) and checks that
the AdaLN one reads back and loads into SimpleMLPAdaLN with strict=True (the tokenizer one checks
itself likewise, docs in its script). The second form checks state dicts written by
flowprior::io::save_state_dict (e.g. by the reference test with FLOWPRIOR_REFERENCE_SAVE=path):
each is loaded into PyTorch with strict=True and evaluated on the fixture's inputs.

Contents (PyTorch layout (batch, dim) in C order == flowprior's (dim, batch) column-major):
  model.*            head A: dim 4, width 16, depth 2, unconditioned (F32 weights)
  ema.net.*          head B: dim 4, width 16, depth 1, cond_dim 3 (F32 weights)
  x (5,4) t (5,)     inputs of head A (F32);  v (5,4): head A's output (F64)
  cond.x cond.t cond.cond (5,3)  inputs of head B (F32);  cond.v (5,4) (F64)
  y (5,4), t_draws (10,), eps (10,4): latents and K=2 draws per row, draw k of row b at b*K+k
  align_code.loss (), align_code.d_y (5,4): code convention, mse_loss(mean) * 0.01, head A
  align_code_detach.*: the same with detach_pred_v
  align_paper_sum.*: paper convention (head A taken as trained in it), sum over channels, weight 1
References are computed in float64 from the float32 weights and inputs (cast exactly).
"""

import argparse
import copy
import os
import sys
from collections import OrderedDict

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import flowprior_torch as fpt  # noqa: E402
import make_tokenizer_fixture  # noqa: E402

GENERATOR = "tools/make_fixtures.py v1"
SEED = 20260611
N, K, DIM, WIDTH = 5, 2, 4, 16
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(ROOT, "tests", "reference", "data", "adaln_reference.safetensors")


def randomize(net, g):
    """Random non-degenerate parameters (the released zero init would hide bugs): Linear
    weights N(0, 1/fan_in), biases 0.2 N(0, 1), LayerNorm gains 1 + 0.2 N(0, 1)."""
    with torch.no_grad():
        for name, p in net.named_parameters():
            z = torch.randn(p.shape, generator=g, dtype=torch.float64)
            if name.endswith("in_ln.weight"):
                p.copy_(1 + 0.2 * z)
            elif p.dim() == 2:
                p.copy_(z / p.shape[1] ** 0.5)
            else:
                p.copy_(0.2 * z)
    return net


def build(g):
    a = randomize(fpt.SimpleMLPAdaLN(DIM, WIDTH, depth=2, cond_dim=0), g).float()
    b = randomize(fpt.SimpleMLPAdaLN(DIM, WIDTH, depth=1, cond_dim=3), g).float()
    return a, b


def f32(t):
    return t.to(torch.float32)


def make(out):
    torch.manual_seed(SEED)
    g = torch.Generator().manual_seed(SEED)
    net_a, net_b = build(g)
    # Inputs, rounded to float32 once: float and double C++ read exactly these values.
    x = f32(torch.randn(N, DIM, generator=g, dtype=torch.float64))
    t = f32(0.02 + 0.96 * torch.rand(N, generator=g, dtype=torch.float64))
    cx = f32(torch.randn(N, DIM, generator=g, dtype=torch.float64))
    ct = f32(0.02 + 0.96 * torch.rand(N, generator=g, dtype=torch.float64))
    cc = f32(torch.randn(N, 3, generator=g, dtype=torch.float64))
    y = f32(torch.randn(N, DIM, generator=g, dtype=torch.float64))
    td = f32(torch.rand(N * K, generator=g, dtype=torch.float64))
    eps = f32(torch.randn(N * K, DIM, generator=g, dtype=torch.float64))

    # References in float64 from the float32 values.
    a64, b64 = copy.deepcopy(net_a).double(), copy.deepcopy(net_b).double()
    with torch.no_grad():
        v = a64(x.double(), t.double())
        cv = b64(cx.double(), ct.double(), cc.double())

    def align(convention, reduction, weight, detach):
        yy = y.double().clone().requires_grad_(True)
        for p in a64.parameters():
            p.requires_grad_(False)  # the prior is frozen: gradients reach y only
        loss = fpt.alignment_loss(a64, yy, td.double(), eps.double(), K, convention, reduction,
                                  weight, detach_pred_v=detach)
        (dy,) = torch.autograd.grad(loss, yy)
        return loss.detach(), dy

    data = OrderedDict()
    for k, p in net_a.state_dict().items():
        data["model." + k] = p
    for k, p in net_b.state_dict().items():
        data["ema.net." + k] = p
    data.update([("x", x), ("t", t), ("v", v),
                 ("cond.x", cx), ("cond.t", ct), ("cond.cond", cc), ("cond.v", cv),
                 ("y", y), ("t_draws", td), ("eps", eps)])
    for tag, args in (("align_code", ("code", "mean", 0.01, False)),
                      ("align_code_detach", ("code", "mean", 0.01, True)),
                      ("align_paper_sum", ("paper", "sum", 1.0, False))):
        loss, dy = align(*args)
        data[tag + ".loss"] = loss
        data[tag + ".d_y"] = dy
    meta = {
        "generator": GENERATOR, "torch": torch.__version__, "seed": str(SEED),
        "head_model": "SimpleMLPAdaLN dim=4 width=16 depth=2 cond_dim=0 freq=256 ln_eps=1e-6",
        "head_ema_net": "SimpleMLPAdaLN dim=4 width=16 depth=1 cond_dim=3 freq=256 ln_eps=1e-6",
        "shapes": "x,y,v,cond.x,cond.v (5,4); t,cond.t (5,); cond.cond (5,3); "
                  "t_draws (10,); eps (10,4); *.loss (); *.d_y (5,4)",
        "layout": "PyTorch (batch, dim) C order == flowprior (dim, batch) column-major; "
                  "draw k of row b is row b*K+k, K=2",
        "losses": "align_code: code convention, mse_loss mean * 0.01; align_code_detach: same, "
                  "detach_pred_v; align_paper_sum: paper convention, sum over channels, weight 1",
        "precision": "weights and inputs F32; references F64 computed from them in float64",
    }
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fpt.write_safetensors(out, data, metadata=meta)
    size = os.path.getsize(out)
    print("wrote %s (%d bytes, %d tensors)" % (out, size, len(data)))
    for tag in ("align_code", "align_code_detach", "align_paper_sum"):
        print("  %s.loss = %.17g" % (tag, data[tag + ".loss"].item()))
    print("  max |v| = %.4f, max |cond.v| = %.4f" % (v.abs().max(), cv.abs().max()))
    assert size < 200 * 1024, "fixture too large"

    # Self-check: read back, load with strict=True, reproduce the references.
    back, meta_back = fpt.read_safetensors(out, with_metadata=True)
    assert meta_back == meta
    for k, t0 in data.items():
        assert torch.equal(back[k], t0.to(back[k].dtype)), k
    ra, pa = fpt.load_flowprior_state_dict(out, "model.")
    rb, pb = fpt.load_flowprior_state_dict(out, "ema.net.")
    assert fpt.infer_config({k[6:]: v for k, v in back.items() if k.startswith("model.")}) \
        == dict(dim=4, width=16, depth=2, cond_dim=0, freq_dim=256)
    with torch.no_grad():
        ea = (ra(back["x"].double(), back["t"].double()) - back["v"]).abs().max().item()
        eb = (rb(back["cond.x"].double(), back["cond.t"].double(), back["cond.cond"].double())
              - back["cond.v"]).abs().max().item()
    print("self-check: read back equal; reloaded heads reproduce v (%.1e) and cond.v (%.1e)"
          % (ea, eb))
    assert ea == 0 and eb == 0
    return 0


def verify_saved(paths, fixture):
    """Loads flowprior-written state dicts into PyTorch (strict=True) and evaluates them on the
    fixture's inputs; head A (unconditioned) against v, head B (conditioned) against cond.v."""
    io = fpt.read_safetensors(fixture)
    worst = 0.0
    for path in paths:
        net, prefix = fpt.load_flowprior_state_dict(path)
        cfg = net.config()
        p = "cond." if cfg["cond_dim"] > 0 else ""
        cond = io["cond.cond"].double() if p else None
        with torch.no_grad():
            v = net(io[p + "x"].double(), io[p + "t"].double(), cond)
        err = (v - io[p + "v"]).abs().max().item()
        worst = max(worst, err)
        print("%s: loaded in PyTorch with strict=True (prefix '%s', %s); max |v_torch - v| = %.3e"
              % (path, prefix, cfg, err))
    return 0 if worst <= 1e-10 else 1


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=DEFAULT_OUT,
                    help="AdaLN fixture path (default: %(default)s)")
    ap.add_argument("--tokenizer-out", default=make_tokenizer_fixture.DEFAULT_OUT,
                    help="tokenizer fixture path (default: %(default)s)")
    ap.add_argument("--fixture", choices=("all", "adaln", "tokenizer"), default="all",
                    help="which fixtures to write (default: all)")
    ap.add_argument("--verify-saved", nargs="+", metavar="FILE",
                    help="check flowprior-written state dicts against the fixture instead")
    a = ap.parse_args(argv)
    if a.verify_saved:
        return verify_saved(a.verify_saved, a.out)
    rc = 0
    if a.fixture in ("all", "adaln"):
        rc |= make(a.out)
    if a.fixture in ("all", "tokenizer"):
        rc |= make_tokenizer_fixture.make(a.tokenizer_out)
    return rc


if __name__ == "__main__":
    sys.exit(main())
