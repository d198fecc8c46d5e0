"""PyTorch side of flowprior's interoperability (docs/formats.md, "PyTorch interop").

Contents
  - SimpleMLPAdaLN: a PyTorch implementation of the released flow head (method.md section 4),
    whose state_dict names and order are those of flowprior::nn::AdaLNMlp.
  - read_safetensors / write_safetensors: a minimal safetensors reader and writer in pure Python
    (struct + json + torch), for machines without the `safetensors` package.
  - find_prefix / load_flowprior_state_dict: load a state dict saved by flowprior (or converted
    by tools/convert_checkpoint.py) into SimpleMLPAdaLN with load_state_dict(strict=True).
  - alignment_loss: the alignment loss in either time convention, as the released code and
    flowprior::loss::alignment_loss compute it (used to make reference fixtures).

Only torch (>= 1.10) and the standard library are needed.
"""

import json
import math
import struct
from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F

# ------------------------------------------------------------------------------------------------
# The released flow head


def modulate(x, shift, scale):
    return x * (1 + scale) + shift


class TimestepEmbedder(nn.Module):
    """Sinusoidal features of raw t in [0, 1] (NOT multiplied by 1000), then an MLP.

    e = [cos(t f), sin(t f)], f_i = exp(-ln(max_period) i / half), i = 0 .. half-1;
    c = Linear(W, W)(SiLU(Linear(freq_dim, W)(e))).
    """

    def __init__(self, width, freq_dim=256, max_period=10000.0):
        super().__init__()
        if freq_dim <= 0 or freq_dim % 2:
            raise ValueError("freq_dim must be positive and even, got %d" % freq_dim)
        self.mlp = nn.Sequential(nn.Linear(freq_dim, width, bias=True), nn.SiLU(),
                                 nn.Linear(width, width, bias=True))
        self.freq_dim = freq_dim
        self.max_period = float(max_period)

    def features(self, t):
        dtype = self.mlp[0].weight.dtype
        half = self.freq_dim // 2
        i = torch.arange(half, dtype=torch.float64, device=t.device)
        # Frequencies and arguments in float64, then cast (flowprior does the same).
        f = torch.exp(-math.log(self.max_period) * i / half)
        arg = t.to(torch.float64)[:, None] * f[None, :]
        return torch.cat([torch.cos(arg), torch.sin(arg)], dim=-1).to(dtype)

    def forward(self, t):
        return self.mlp(self.features(t))


class ResBlock(nn.Module):
    """h + gate * mlp(LN(h) * (1 + scale) + shift), [shift, scale, gate] = Linear(SiLU(c))."""

    def __init__(self, width, ln_eps=1e-6):
        super().__init__()
        self.in_ln = nn.LayerNorm(width, eps=ln_eps, elementwise_affine=True)
        self.mlp = nn.Sequential(nn.Linear(width, width, bias=True), nn.SiLU(),
                                 nn.Linear(width, width, bias=True))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 3 * width, bias=True))

    def forward(self, h, c):
        shift, scale, gate = self.adaLN_modulation(c).chunk(3, dim=-1)
        return h + gate * self.mlp(modulate(self.in_ln(h), shift, scale))


class FinalLayer(nn.Module):
    """Linear(LN_noaffine(h) * (1 + scale) + shift), [shift, scale] = Linear(SiLU(c))."""

    def __init__(self, width, out_dim, ln_eps=1e-6):
        super().__init__()
        self.norm_final = nn.LayerNorm(width, elementwise_affine=False, eps=ln_eps)
        self.linear = nn.Linear(width, out_dim, bias=True)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width, bias=True))

    def forward(self, h, c):
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final(h), shift, scale))


class SimpleMLPAdaLN(nn.Module):
    """The released flow head v(x, t [, cond]); x is (batch, dim), t is (batch,).

    Registration order (= state_dict order) is that of flowprior::nn::AdaLNMlp:
    time_embed, cond_embed (if cond_dim > 0), input_proj, res_blocks, final_layer.
    The module is convention-free: it evaluates whatever it was trained on.
    """

    def __init__(self, dim=32, width=1024, depth=6, cond_dim=0, freq_dim=256,
                 max_period=10000.0, ln_eps=1e-6):
        super().__init__()
        self.dim, self.width, self.depth, self.cond_dim = dim, width, depth, cond_dim
        self.time_embed = TimestepEmbedder(width, freq_dim, max_period)
        if cond_dim > 0:
            self.cond_embed = nn.Linear(cond_dim, width)
        else:
            self.cond_embed = None
        self.input_proj = nn.Linear(dim, width)
        self.res_blocks = nn.ModuleList([ResBlock(width, ln_eps) for _ in range(depth)])
        self.final_layer = FinalLayer(width, dim, ln_eps)

    def config(self):
        return dict(dim=self.dim, width=self.width, depth=self.depth, cond_dim=self.cond_dim,
                    freq_dim=self.time_embed.freq_dim, max_period=self.time_embed.max_period)

    def init_released(self):
        """The released initialisation: v == 0 afterwards (method.md section 4)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.time_embed.mlp[0].weight, std=0.02)
        nn.init.normal_(self.time_embed.mlp[2].weight, std=0.02)
        for b in self.res_blocks:
            nn.init.zeros_(b.adaLN_modulation[-1].weight)
            nn.init.zeros_(b.adaLN_modulation[-1].bias)
        for p in (self.final_layer.adaLN_modulation[-1].weight,
                  self.final_layer.adaLN_modulation[-1].bias,
                  self.final_layer.linear.weight, self.final_layer.linear.bias):
            nn.init.zeros_(p)
        return self

    def forward(self, x, t, cond=None):
        c = self.time_embed(t)
        if self.cond_embed is not None:
            if cond is None:
                raise ValueError("this SimpleMLPAdaLN is conditioned: pass cond (batch, %d)"
                                 % self.cond_dim)
            c = c + self.cond_embed(cond)
        elif cond is not None:
            raise ValueError("this SimpleMLPAdaLN is unconditioned: cond must be None")
        h = self.input_proj(x)
        for block in self.res_blocks:
            h = block(h, c)
        return self.final_layer(h, c)


def infer_config(sd):
    """SimpleMLPAdaLN keyword arguments from the shapes of a (prefix-free) state dict."""
    w = sd["input_proj.weight"]
    depth = 0
    while ("res_blocks.%d.in_ln.weight" % depth) in sd:
        depth += 1
    cond = sd.get("cond_embed.weight")
    return dict(dim=int(w.shape[1]), width=int(w.shape[0]), depth=depth,
                cond_dim=int(cond.shape[1]) if cond is not None else 0,
                freq_dim=int(sd["time_embed.mlp.0.weight"].shape[1]))


# ------------------------------------------------------------------------------------------------
# safetensors: [u64 LE header length N][N bytes JSON header][data]

_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
}
_NAMES = {v: k for k, v in _DTYPES.items()}
_WRITABLE = ("F64", "F32", "F16", "BF16")


class SafetensorsError(ValueError):
    pass


def read_safetensors(path, with_metadata=False):
    """Reads a safetensors file into an OrderedDict name -> tensor (file order of the offsets).

    Reads F64, F32, F16, BF16 (and I64/I32/I16/I8/U8/BOOL). Validates the header length, the
    shapes against the offsets and that the tensors tile the data. Returns (tensors, metadata)
    when with_metadata.
    """
    with open(path, "rb") as f:
        blob = f.read()
    if len(blob) < 8:
        raise SafetensorsError("%s: file too short (%d bytes)" % (path, len(blob)))
    (n,) = struct.unpack("<Q", blob[:8])
    if n > len(blob) - 8:
        raise SafetensorsError("%s: header length %d runs past the end of the file" % (path, n))
    try:
        header = json.loads(blob[8:8 + n].decode("utf-8"))
    except ValueError as e:
        raise SafetensorsError("%s: malformed header: %s" % (path, e))
    if not isinstance(header, dict):
        raise SafetensorsError("%s: the header is not a JSON object" % path)
    meta = header.pop("__metadata__", {}) or {}
    data = memoryview(blob)[8 + n:]
    entries = sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0])
    pos = 0
    out = OrderedDict()
    for name, e in entries:
        dt = _DTYPES.get(e.get("dtype"))
        if dt is None:
            raise SafetensorsError("%s: tensor '%s' has unsupported dtype %r"
                                   % (path, name, e.get("dtype")))
        shape = [int(s) for s in e["shape"]]
        begin, end = (int(o) for o in e["data_offsets"])
        numel = 1
        for s in shape:
            numel *= s
        size = numel * torch.empty((), dtype=dt).element_size()
        if begin != pos or end - begin != size or end > len(data):
            raise SafetensorsError("%s: tensor '%s' has data_offsets [%d, %d], expected [%d, %d]"
                                   % (path, name, begin, end, pos, pos + size))
        pos = end
        if numel == 0:
            t = torch.empty(shape, dtype=dt)
        else:
            t = torch.frombuffer(bytearray(data[begin:end]), dtype=dt).reshape(shape)
        out[name] = t
    if pos != len(data):
        raise SafetensorsError("%s: %d trailing data bytes belong to no tensor"
                               % (path, len(data) - pos))
    return (out, dict(meta)) if with_metadata else out


def _to_bytes(t, dtype_name):
    t = t.detach().to("cpu").contiguous().to(_DTYPES[dtype_name])
    if dtype_name in ("F16", "BF16"):
        t = t.view(torch.int16)  # numpy has no bfloat16: write the raw 16-bit patterns
    return t.numpy().tobytes()


def write_safetensors(path, tensors, metadata=None, dtype=None):
    """Writes name -> tensor (insertion order) as safetensors.

    dtype: None keeps F64 tensors F64 and writes every other floating tensor as F32; or one of
    'F64', 'F32', 'F16', 'BF16' for all. Non-floating tensors are rejected. The JSON header is
    padded with spaces so that the data starts at a multiple of 8 bytes. metadata: str -> str.
    """
    if dtype is not None and dtype not in _WRITABLE:
        raise ValueError("dtype must be one of %s, got %r" % (_WRITABLE, dtype))
    header = OrderedDict()
    if metadata:
        header["__metadata__"] = OrderedDict((str(k), str(v)) for k, v in metadata.items())
    chunks, pos = [], 0
    for name, t in tensors.items():
        if name == "__metadata__" or not name:
            raise ValueError("invalid tensor name %r" % name)
        if not torch.is_tensor(t) or not t.is_floating_point():
            raise ValueError("tensor '%s' is not a floating tensor" % name)
        dn = dtype or ("F64" if t.dtype == torch.float64 else "F32")
        b = _to_bytes(t, dn)
        header[name] = OrderedDict([("dtype", dn), ("shape", list(t.shape)),
                                    ("data_offsets", [pos, pos + len(b)])])
        chunks.append(b)
        pos += len(b)
    h = json.dumps(header, separators=(",", ":")).encode("utf-8")
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in chunks:
            f.write(b)


# ------------------------------------------------------------------------------------------------
# Loading flowprior state dicts into PyTorch


def candidate_prefixes():
    """The prefixes tried by flowprior::io::load_state_dict(prefix='auto'), in its order."""
    out = [o + i for o in ("", "ema.", "model.", "state_dict.")
           for i in ("", "net.", "flow_loss.", "flow_loss.net.")]
    return [p for p in out if p.startswith("ema.")] + [p for p in out if not p.startswith("ema.")]


def find_prefix(names, required=("input_proj.weight", "time_embed.mlp.0.weight",
                                 "final_layer.linear.weight")):
    """First candidate prefix under which every `required` name exists (EMA first)."""
    names = set(names)
    for p in candidate_prefixes():
        if all(p + r in names for r in required):
            return p
    raise KeyError("no flow head found: none of the prefixes %s holds %s"
                   % (candidate_prefixes(), list(required)))


def load_flowprior_state_dict(path, prefix="auto", dtype=torch.float64, **config):
    """Builds a SimpleMLPAdaLN from a safetensors state dict (saved by flowprior or converted by
    tools/convert_checkpoint.py) and loads it with load_state_dict(strict=True).

    The configuration is inferred from the tensor shapes unless given (max_period, ln_eps are
    not stored: pass them if they differ from 10000 and 1e-6). Returns (module, prefix).
    """
    tensors = read_safetensors(path)
    if prefix == "auto":
        prefix = find_prefix(tensors.keys())
    sd = OrderedDict((k[len(prefix):], v) for k, v in tensors.items() if k.startswith(prefix))
    if prefix == "":  # leave other top-level groups alone, as flowprior does
        sd = OrderedDict((k, v) for k, v in sd.items()
                         if not k.startswith(("ema.", "model.", "state_dict.", "optim.",
                                              "trainer.")))
    cfg = infer_config(sd)
    cfg.update(config)
    net = SimpleMLPAdaLN(**cfg).to(dtype)
    net.load_state_dict(OrderedDict((k, v.to(dtype)) for k, v in sd.items()), strict=True)
    return net, prefix


# ------------------------------------------------------------------------------------------------
# The alignment loss (method.md sections 2-3)


def path(convention, y, eps, t):
    """x_t and the target velocity u for rows y (M, d), noise eps (M, d), times t (M,)."""
    t = t[:, None]
    if convention == "code":  # x_t = (1 - t) y + t eps, u = eps - y
        return (1 - t) * y + t * eps, eps - y
    if convention == "paper":  # x_t = (1 - t) eps + t y, u = y - eps
        return (1 - t) * eps + t * y, y - eps
    raise ValueError("convention must be 'code' or 'paper', got %r" % convention)


def alignment_loss(net, y, t, eps, K, convention="code", reduction="mean", weight=1.0,
                   detach_pred_v=False, cond=None):
    """weight * loss of latents y (N, d); t (N*K,), eps (N*K, d), draw k of row b at b*K + k.

    reduction 'mean': mse_loss(reduction='mean') over rows*K and channels (released code);
    'sum': sum over channels, mean over rows*K (the paper's L_align). Gradients reach y through
    both x_t and u; detach_pred_v cuts the path through the network input.
    """
    Y = y.repeat_interleave(K, dim=0)
    xt, u = path(convention, Y, eps, t)
    v = net(xt.detach() if detach_pred_v else xt, t,
            None if cond is None else cond.repeat_interleave(K, dim=0))
    if reduction == "mean":
        return F.mse_loss(v, u, reduction="mean") * weight
    if reduction == "sum":
        return ((v - u) ** 2).sum(dim=-1).mean() * weight
    raise ValueError("reduction must be 'mean' or 'sum', got %r" % reduction)
