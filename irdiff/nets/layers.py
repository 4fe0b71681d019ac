"""Building blocks shared by the networks: noise-level embedding, norms, FiLM ResBlock, attention.

Everything here keeps the memory format of its input (NCHW or channels_last), so a model moved to
``channels_last`` and run under bf16 autocast stays on the fast oneDNN/AMX kernels on the CPU.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# ----------------------------------------------------------------------------------------------
# noise level


def format_noise_level(noise_level, batch: int, noise_level_dim: int, device=None) -> torch.Tensor:
    """Return the noise level as a float32 tensor of shape (batch, noise_level_dim).

    noise_level_dim == 1: a number, a 0-d tensor, (B,), (B, 1), (1,) or (1, 1).
    noise_level_dim > 1: (B, dim) or (1, dim) only; a 1-D tensor would be ambiguous when B == dim.
    Single values / rows are broadcast over the batch.
    """
    nl = torch.as_tensor(noise_level, dtype=torch.float32, device=device)
    shape = tuple(nl.shape)
    if noise_level_dim == 1 and nl.dim() <= 1:
        nl = nl.reshape(-1, 1)
    if nl.dim() != 2 or nl.shape[1] != noise_level_dim or nl.shape[0] not in (1, batch):
        expected = f"({batch},) or ({batch}, 1)" if noise_level_dim == 1 else f"({batch}, {noise_level_dim})"
        raise ValueError(
            f"noise_level has shape {shape}; expected {expected} for batch {batch}"
            f" and noise_level_dim {noise_level_dim}"
        )
    return nl.expand(batch, noise_level_dim)


def sinusoidal_embedding(values: torch.Tensor, dim: int, scale: float = 1000.0, max_period: float = 10000.0):
    """Sinusoidal features of ``scale * values`` (shape (B,)) -> (B, dim), cos then sin halves.

    The scale maps noise levels in [0, 1] onto the range of integer timesteps the classic
    transformer frequencies were designed for, while any real value stays valid.
    """
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=values.device) / half
    )
    args = scale * values.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def sinusoidal_sin_cos(t: torch.Tensor, dim: int) -> torch.Tensor:
    """(B,) -> (B, 2·(dim // 2)): sin then cos of t·10000^(−i/(half − 1)), i = 0..half − 1, half = dim // 2.

    The DDPM / lucidrains time embedding of the raw time value (no scaling), used by the official
    Cold Diffusion and RDDM U-Nets; the last frequency is exactly 1/10000 (denominator half − 1).
    """
    half = dim // 2
    freqs = torch.exp(torch.arange(half, device=t.device) * -(math.log(10000) / (half - 1)))
    args = t[:, None] * freqs[None, :]
    return torch.cat((args.sin(), args.cos()), dim=-1)


class NoiseLevelEmbedding(nn.Module):
    """(B,) or (B, k) continuous noise levels -> (B, emb_dim): sinusoids per component, then an MLP."""

    def __init__(self, noise_level_dim: int, emb_dim: int, freq_dim: int = 64, scale: float = 1000.0):
        super().__init__()
        if noise_level_dim < 1:
            raise ValueError(f"noise_level_dim must be >= 1, got {noise_level_dim}")
        self.noise_level_dim = noise_level_dim
        self.freq_dim = freq_dim
        self.scale = scale
        self.mlp = nn.Sequential(
            nn.Linear(freq_dim * noise_level_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )

    def forward(self, noise_level, batch: int, device=None) -> torch.Tensor:
        nl = format_noise_level(noise_level, batch, self.noise_level_dim, device)
        feats = torch.cat(
            [sinusoidal_embedding(nl[:, i], self.freq_dim, self.scale) for i in range(self.noise_level_dim)],
            dim=1,
        )
        return self.mlp(feats)


# ----------------------------------------------------------------------------------------------
# norms


def num_groups(channels: int, groups: int = 32) -> int:
    """The largest group count <= ``groups`` that divides ``channels``."""
    g = max(1, min(groups, channels))
    while channels % g:
        g -= 1
    return g


def group_norm(channels: int, groups: int = 32, eps: float = 1e-6) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups(channels, groups), channels, eps=eps)


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel dimension of an NCHW tensor (NAFNet), statistics in float32."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        mu = x.mean(1, keepdim=True)
        var = (x - mu).pow(2).mean(1, keepdim=True)
        y = (x - mu) * torch.rsqrt(var + self.eps)
        y = y * self.weight.float()[None, :, None, None] + self.bias.float()[None, :, None, None]
        return y.to(dtype)


# ----------------------------------------------------------------------------------------------
# blocks


def film(h: torch.Tensor, emb_out: torch.Tensor) -> torch.Tensor:
    """h * (1 + scale) + shift with (scale, shift) = chunks of emb_out (B, 2C)."""
    scale, shift = emb_out.to(h.dtype)[:, :, None, None].chunk(2, dim=1)
    return h * (1 + scale) + shift


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, with a FiLM scale-shift from the noise-level embedding in between."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_dim: int | None,
        dropout: float = 0.0,
        norm_groups: int = 32,
    ):
        super().__init__()
        self.norm1 = group_norm(in_channels, norm_groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, 2 * out_channels) if emb_dim else None
        self.norm2 = group_norm(out_channels, norm_groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.norm2(h)
        if self.emb_proj is not None and emb is not None:
            h = film(h, self.emb_proj(F.silu(emb)))
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over all pixels, via F.scaled_dot_product_attention.

    q/k/v are made contiguous before SDPA: with strided views the CPU silently takes the math path
    that materialises the full N x N matrix (26x slower, GBs of memory at 128x128 tokens).
    """

    def __init__(
        self, channels: int, num_heads: int | None = None, head_channels: int = 32, norm_groups: int = 32
    ):
        super().__init__()
        if num_heads is None:
            num_heads = max(1, channels // head_channels)
        if channels % num_heads:
            raise ValueError(f"attention: {channels} channels do not split into {num_heads} heads")
        self.num_heads = num_heads
        self.norm = group_norm(channels, norm_groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        b, c, h, w = x.shape
        heads, d = self.num_heads, c // self.num_heads
        qkv = self.qkv(self.norm(x))
        # (B, 3C, H, W) -> (3, B, heads, N, d); permute first so a channels_last tensor reshapes freely
        qkv = qkv.permute(0, 2, 3, 1).reshape(b, h * w, 3, heads, d).permute(2, 0, 3, 1, 4)
        q, k, v = (t.contiguous() for t in qkv.unbind(0))
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(1, 2).reshape(b, h, w, c).permute(0, 3, 1, 2)
        return x + self.proj(out)


class Downsample(nn.Module):
    """Stride-2 3x3 convolution (halves H and W; inputs are padded to even sizes by the nets)."""

    def __init__(self, in_channels: int, out_channels: int | None = None):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels or in_channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2 then a 3x3 convolution (no checkerboard artefacts of transposed convs)."""

    def __init__(self, in_channels: int, out_channels: int | None = None):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels or in_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


# ----------------------------------------------------------------------------------------------
# padding


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad H and W at the bottom/right up to a multiple (reflect, or replicate where reflect can't)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        mode = "reflect" if ph < h and pw < w else "replicate"
        channels_last = (
            x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        )
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
    return x, (h, w)


def to_memory_format_of(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Make x channels_last when ref (e.g. the first conv's weight) is channels_last."""
    if ref.dim() == 4 and ref.is_contiguous(memory_format=torch.channels_last) and not ref.is_contiguous():
        return x.contiguous(memory_format=torch.channels_last)
    return x
