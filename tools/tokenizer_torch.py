"""PyTorch twin of flowprior::nn::TokenizerAE (include/flowprior/nn/tokenizer.hpp,
docs/math/tokenizer.md): a TiTok-style 1-D tokenizer autoencoder.

Same parameter names, shapes and state_dict order as TokenizerAE::layout(), same equations:

  encoder  s = [W_pe patch_t(x) + b_pe + pos_t  (t < Np),  latent_tokens_j + latent_pos_embed_j]
           s = Block(... Block(s)),   y_j = to_latent(LN(s[Np + j]))            tokenizer.md (1)
  decoder  u = [mask_token + pos_t  (t < Np),  from_latent(y_j) + latent_pos_embed_j]
           u = Block(... Block(u)),   recon = unpatchify(pixel_head(LN(u[t])), t < Np)    (2)

With posterior="gaussian" (tokenizer.md "Gaussian posterior") to_latent outputs 2 d moments per
token, mu and the log-variance clamped to [-30, 20], and the decoder reads
z = mu + exp(logvar / 2) eps (7)-(8); encode() returns mu, kl() the KL of (9) averaged over the
latent elements as the trainer's (11).

with timm-style pre-norm blocks (transformer.md: LN, attention with qkv as one Linear and
optional per-head qk LayerNorm, LN, Linear-GELU(erf)-Linear), the fixed 2-D sine-cosine table of
patches.md (4) as a non-persistent buffer (not in the state dict), the patch embedding as a
Conv2d(C, D, p, stride p), and unpatchify as the inverse of patches.md (1).

Layouts: a contiguous (B, C, H, W) image tensor is flowprior's (C H W, B) matrix, a contiguous
(B, T, d) latent tensor its (d, B T) matrix (the same memory), so tensors pass between the two
unchanged. Only torch is needed; this module is not used by the build or the tests (the C++
tests read a fixture written by tools/make_tokenizer_fixture.py).
"""

import math
from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F


class TokenizerConfig:
    """The fields and defaults of flowprior::nn::TokenizerConfig."""

    FIELDS = OrderedDict([
        ("image_size", 32), ("channels", 3), ("patch", 4), ("width", 256), ("depth", 4),
        ("dec_depth", -1), ("heads", 4), ("mlp_ratio", 4.0), ("latent_tokens", 32),
        ("latent_dim", 16), ("qk_norm", False), ("ln_eps", 1e-6), ("learned_pos_embed", False),
        ("posterior", "deterministic"),
    ])

    def __init__(self, **kw):
        for k, v in self.FIELDS.items():
            setattr(self, k, kw.pop(k, v))
        if kw:
            raise TypeError("unknown TokenizerConfig fields: %s" % sorted(kw))
        self.validate()

    def decoder_depth(self):
        return self.depth if self.dec_depth < 0 else self.dec_depth

    def mlp_hidden(self):
        return int(float(self.width) * self.mlp_ratio)  # C++: static_cast<Index>(double(W) r)

    def grid(self):
        return self.image_size // self.patch

    def num_patches(self):
        return self.grid() ** 2

    def patch_dim(self):
        return self.channels * self.patch * self.patch

    def validate(self):
        for k in ("image_size", "channels", "patch", "width", "depth", "heads", "latent_tokens",
                  "latent_dim"):
            if getattr(self, k) < 1:
                raise ValueError("%s must be >= 1, got %r" % (k, getattr(self, k)))
        if self.dec_depth != -1 and self.dec_depth < 1:
            raise ValueError("dec_depth must be -1 or >= 1, got %r" % self.dec_depth)
        if self.image_size % self.patch:
            raise ValueError("patch must divide image_size")
        if self.width % self.heads:
            raise ValueError("heads must divide width")
        if self.width % 4:
            raise ValueError("width must be a multiple of 4 (the 2-D sine-cosine table)")
        if not self.mlp_ratio > 0 or self.mlp_hidden() < 1:
            raise ValueError("mlp_ratio must give an MLP hidden width >= 1")
        if not self.ln_eps > 0:
            raise ValueError("ln_eps must be > 0")
        if self.posterior not in ("deterministic", "gaussian"):
            raise ValueError("posterior must be 'deterministic' or 'gaussian', got %r"
                             % (self.posterior,))

    def gaussian(self):
        return self.posterior == "gaussian"

    def as_dict(self):
        return OrderedDict((k, getattr(self, k)) for k in self.FIELDS)

    def __repr__(self):
        return "TokenizerConfig(%s)" % ", ".join("%s=%r" % kv for kv in self.as_dict().items())


# ------------------------------------------------------------------------------------------------
# Patches and the fixed table (docs/math/patches.md)


def sincos_pos_embed_2d(dim, grid_h, grid_w):
    """(grid_h grid_w, dim) float64: row t = gy grid_w + gx holds, with q = dim / 4 and
    omega_k = 10000^(-k / q), [sin(gx omega), cos(gx omega), sin(gy omega), cos(gy omega)]
    (patches.md (4): MAE's table, the column coordinate first)."""
    if dim <= 0 or dim % 4:
        raise ValueError("dim must be a positive multiple of 4, got %d" % dim)
    q = dim // 4
    omega = torch.pow(torch.tensor(10000.0, dtype=torch.float64),
                      -torch.arange(q, dtype=torch.float64) / q)
    gy, gx = torch.meshgrid(torch.arange(grid_h, dtype=torch.float64),
                            torch.arange(grid_w, dtype=torch.float64), indexing="ij")
    ax = gx.reshape(-1, 1) * omega  # (Np, q)
    ay = gy.reshape(-1, 1) * omega
    return torch.cat([ax.sin(), ax.cos(), ay.sin(), ay.cos()], dim=1)


def patchify(x, p):
    """(B, C, H, W) -> (B, Np, C p p): token gy (W/p) + gx, element (c, i, j) = pixel
    (c, gy p + i, gx p + j) (patches.md (1))."""
    B, C, H, W = x.shape
    t = x.reshape(B, C, H // p, p, W // p, p).permute(0, 2, 4, 1, 3, 5)
    return t.reshape(B, (H // p) * (W // p), C * p * p)


def unpatchify(t, channels, image_size, p):
    """(B, Np, C p p) -> (B, C, H, W), the inverse of patchify (patches.md (2))."""
    B, g = t.shape[0], image_size // p
    x = t.reshape(B, g, g, channels, p, p).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(B, channels, image_size, image_size)


# ------------------------------------------------------------------------------------------------
# The transformer block (docs/math/transformer.md, attention.md)


class Attention(nn.Module):
    """timm-style multi-head self-attention: qkv one Linear(C, 3C) (rows q | k | v, head h at
    rows h dh .. h dh + dh - 1 of each), optional LayerNorm(dh) on q and k shared by the heads
    (q_norm, k_norm; without qk-norm they hold no parameters), softmax(q k^T / sqrt(dh)) v,
    proj Linear(C, C)."""

    def __init__(self, width, heads, qk_norm, ln_eps):
        super().__init__()
        self.heads, self.head_dim = heads, width // heads
        self.qkv = nn.Linear(width, 3 * width)
        if qk_norm:
            self.q_norm = nn.LayerNorm(self.head_dim, eps=ln_eps)
            self.k_norm = nn.LayerNorm(self.head_dim, eps=ln_eps)
        else:
            self.q_norm = nn.Identity()
            self.k_norm = nn.Identity()
        self.proj = nn.Linear(width, width)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, H, N, dh) each
        q, k = self.q_norm(q), self.k_norm(k)
        scores = torch.matmul(q, k.transpose(-2, -1)) * (1.0 / math.sqrt(self.head_dim))
        o = torch.matmul(scores.softmax(dim=-1), v)  # (B, H, N, dh)
        return self.proj(o.transpose(1, 2).reshape(B, N, C))


class Mlp(nn.Module):
    def __init__(self, width, hidden):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))  # exact GELU (erf), nn.GELU()'s default


class Block(nn.Module):
    """Pre-norm block: h + Attn(LN1(h)), then + fc2(GELU(fc1(LN2(h)))) (transformer.md (1))."""

    def __init__(self, width, heads, hidden, qk_norm, ln_eps):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=ln_eps)
        self.attn = Attention(width, heads, qk_norm, ln_eps)
        self.norm2 = nn.LayerNorm(width, eps=ln_eps)
        self.mlp = Mlp(width, hidden)

    def forward(self, h):
        h = h + self.attn(self.norm1(h))
        return h + self.mlp(self.norm2(h))


class PatchEmbed(nn.Module):
    """Conv2d(C, D, p, stride p), tokens in flatten(2).transpose(1, 2) order (timm's)."""

    def __init__(self, channels, width, patch):
        super().__init__()
        self.proj = nn.Conv2d(channels, width, kernel_size=patch, stride=patch)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


# ------------------------------------------------------------------------------------------------
# The two halves and the autoencoder (docs/math/tokenizer.md)


def _blocks(cfg, n):
    return nn.ModuleList(Block(cfg.width, cfg.heads, cfg.mlp_hidden(), cfg.qk_norm, cfg.ln_eps)
                         for _ in range(n))


def _positions(half, cfg):
    """The patch positions of a half: the fixed 2-D sine-cosine table as a non-persistent buffer
    `pos`, or with cfg.learned_pos_embed the parameter `pos_embed` (1, Np, D) started at it,
    registered here, right after latent_pos_embed (the C++ state_dict order)."""
    table = sincos_pos_embed_2d(cfg.width, cfg.grid(), cfg.grid()).float()
    if cfg.learned_pos_embed:
        half.pos_embed = nn.Parameter(table.unsqueeze(0).clone())
    else:
        half.register_buffer("pos", table, persistent=False)


def _pos(half):
    return half.pos_embed[0] if half.cfg.learned_pos_embed else half.pos


class Encoder(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        T, D = cfg.latent_tokens, cfg.width
        self.cfg = cfg
        self.latent_tokens = nn.Parameter(torch.zeros(T, D))
        self.latent_pos_embed = nn.Parameter(torch.zeros(T, D))
        _positions(self, cfg)
        self.patch_embed = PatchEmbed(cfg.channels, D, cfg.patch)
        self.blocks = _blocks(cfg, cfg.depth)
        self.norm = nn.LayerNorm(D, eps=cfg.ln_eps)
        # Gaussian posterior: the moments, mu then the raw log-variance (LDM's chunk order).
        self.to_latent = nn.Linear(D, 2 * cfg.latent_dim if cfg.gaussian() else cfg.latent_dim)

    def forward(self, x):
        """x (B, C, H, W) -> y (B, T, d), tokenizer.md (1); Gaussian: the moments (B, T, 2 d)."""
        s = self.patch_embed(x) + _pos(self)  # (B, Np, D)
        lat = (self.latent_tokens + self.latent_pos_embed).expand(x.shape[0], -1, -1)
        s = torch.cat([s, lat], dim=1)  # patch tokens first, then the T latent tokens
        for blk in self.blocks:
            s = blk(s)
        return self.to_latent(self.norm(s[:, self.cfg.num_patches():]))


class Decoder(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        T, D = cfg.latent_tokens, cfg.width
        self.cfg = cfg
        self.mask_token = nn.Parameter(torch.zeros(1, D))
        self.latent_pos_embed = nn.Parameter(torch.zeros(T, D))
        _positions(self, cfg)
        self.from_latent = nn.Linear(cfg.latent_dim, D)
        self.blocks = _blocks(cfg, cfg.decoder_depth())
        self.norm = nn.LayerNorm(D, eps=cfg.ln_eps)
        self.pixel_head = nn.Linear(D, cfg.patch_dim())

    def forward(self, y):
        """y (B, T, d) -> recon (B, C, H, W), tokenizer.md (2)."""
        c = self.cfg
        q = (self.mask_token + _pos(self)).expand(y.shape[0], -1, -1)  # (B, Np, D)
        u = torch.cat([q, self.from_latent(y) + self.latent_pos_embed], dim=1)
        for blk in self.blocks:
            u = blk(u)
        t = self.pixel_head(self.norm(u[:, :c.num_patches()]))
        return unpatchify(t, c.channels, c.image_size, c.patch)


class TokenizerAE(nn.Module):
    """encoder.* and decoder.*: the state_dict of flowprior::nn::TokenizerAE, in its order."""

    def __init__(self, cfg=None, **kw):
        super().__init__()
        self.cfg = cfg if cfg is not None else TokenizerConfig(**kw)
        self.encoder = Encoder(self.cfg)
        self.decoder = Decoder(self.cfg)

    def moments(self, x):
        """Gaussian posterior: (mu, logvar) (B, T, d) each, logvar clamped to [-30, 20] (7)."""
        m = self.encoder(x)
        mu, raw = torch.chunk(m, 2, dim=-1)
        return mu, torch.clamp(raw, -30.0, 20.0)

    def encode(self, x):
        """The latents y (B, T, d); with a Gaussian posterior its mean mu."""
        if self.cfg.gaussian():
            return self.moments(x)[0]
        return self.encoder(x)

    def decode(self, y):
        return self.decoder(y)

    def forward(self, x, eps=None):
        """(y, recon) for images x (B, C, H, W). Gaussian posterior: y is the decoder's input
        z = mu + exp(logvar / 2) eps (8) for eps (B, T, d), or mu when eps is None."""
        if not self.cfg.gaussian():
            if eps is not None:
                raise ValueError("eps given to a model with a deterministic posterior")
            y = self.encoder(x)
            return y, self.decoder(y)
        mu, logvar = self.moments(x)
        z = mu if eps is None else mu + torch.exp(0.5 * logvar) * eps
        return z, self.decoder(z)

    @staticmethod
    def kl(mu, logvar):
        """The trainer's KL (11): the mean over every latent element of
        (mu^2 + exp(logvar) - 1 - logvar) / 2 (LDM sums per image instead)."""
        return (0.5 * (mu.pow(2) + torch.exp(logvar) - 1.0 - logvar)).mean()

    def init_weights(self, generator=None):
        """TokenizerAE::init's distributions (not its draws): Xavier-uniform Linear weights (the
        patch embedding's as its (D, C p p) matrix, qkv as one (3D, D) matrix), zero biases,
        LayerNorm weight 1 and bias 0, latent_tokens, both latent_pos_embed and mask_token
        ~ N(0, 0.02^2)."""
        g = generator
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, (nn.Linear, nn.Conv2d)):
                    w = m.weight.view(m.weight.shape[0], -1)
                    bound = math.sqrt(6.0 / (w.shape[0] + w.shape[1]))
                    w.copy_(torch.rand(w.shape, generator=g, dtype=w.dtype) * 2 * bound - bound)
                    m.bias.zero_()
                elif isinstance(m, nn.LayerNorm):
                    m.weight.fill_(1.0)
                    m.bias.zero_()
            for p in (self.encoder.latent_tokens, self.encoder.latent_pos_embed,
                      self.decoder.mask_token, self.decoder.latent_pos_embed):
                p.copy_(0.02 * torch.randn(p.shape, generator=g, dtype=p.dtype))
            if self.cfg.learned_pos_embed:  # the table, no draw (as TokenizerAE::init)
                c = self.cfg
                for half in (self.encoder, self.decoder):
                    half.pos_embed.copy_(sincos_pos_embed_2d(c.width, c.grid(), c.grid())[None])
        return self

    def _apply(self, fn, *args, **kwargs):
        # .double() / .float() / .to(): the fixed table follows, recomputed in float64 and rounded
        # once (as flowprior evaluates it in double and rounds to S), not rounded twice.
        out = super()._apply(fn, *args, **kwargs)
        for half in (self.encoder, self.decoder):
            c = half.cfg
            if c.learned_pos_embed:
                continue  # a parameter: converted like the others
            exact = sincos_pos_embed_2d(c.width, c.grid(), c.grid())
            half.pos = exact.to(dtype=half.pos.dtype, device=half.pos.device)
        return out
