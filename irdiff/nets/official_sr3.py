"""The SR3 U-Net of Janspiry's "Image Super-Resolution via Iterative Refinement" (model/sr3_modules/unet.py),
re-implemented from the architecture, for checkpoints imported with ``irdiff import --format sr3``.

Mapping to irdiff's contract (the official forward is ``UNet(cat[condition, noisy], sqrt_gamma)``)::

    ours(x_t, sqrt_gamma, cond) = official(cat[cond, x_t], sqrt_gamma)

The condition comes FIRST in the official concatenation (ours is ``[x, cond]`` in the generic UNet).
The noise level is √γ (the SR3 repo's ``continuous_sqrt_alpha_cumprod``), embedded by WaveGrad's
sinusoids (sin half, then cos half) of the raw value, *without* WaveGrad's 5000x scale, then an MLP
Linear(C, 4C) - SiLU - Linear(4C, C). The SR3 method feeds it with ``noise_level_input: sqrt_gamma``.

Architecture (what differs from irdiff's own UNet): the level embedding is *added* after the first
conv of each residual block (no scale/shift, no activation on the embedding); GroupNorm uses torch's
eps 1e-5; attention is single-head, its qkv conv has no bias; the attention levels are chosen by
resolution (``image_size / 2**level in attn_res``, the training image size, whatever the input size);
the middle block always has attention; the last layer is GroupNorm-SiLU-conv.

``rename_official`` maps the official state_dict keys onto this module's (descriptive) names.
Inputs of any size are reflect-padded to a multiple of 2**(levels-1) and cropped back: on sizes that are
already multiples (the only ones the official net accepts) nothing changes.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

from irdiff.nets.layers import Downsample, Upsample, format_noise_level, pad_to_multiple, sinusoidal_embedding

# torch's GroupNorm default, which the official blocks use (irdiff's own blocks use 1e-6)
_GN_EPS = 1e-5


def sqrt_gamma_embedding(level: torch.Tensor, dim: int) -> torch.Tensor:
    """WaveGrad's encoding of the official PositionalEncoding: [sin(l·f_k), cos(l·f_k)], f_k = 1e4^(−k/(dim/2)),
    the raw level (no scale). Our sinusoidal_embedding gives [cos, sin] of the same arguments."""
    half = dim // 2
    emb = sinusoidal_embedding(level, 2 * half, scale=1.0, max_period=1e4)
    return torch.cat([emb[:, half:], emb[:, :half]], dim=1)


class SR3ResBlock(nn.Module):
    """GN-SiLU-conv, + Linear(level embedding), GN-SiLU-dropout-conv, + skip (1x1 conv when widths differ)."""

    def __init__(self, cin: int, cout: int, emb_dim: int, groups: int, dropout: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin, eps=_GN_EPS)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.level_proj = nn.Linear(emb_dim, cout)
        self.norm2 = nn.GroupNorm(groups, cout, eps=_GN_EPS)
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.level_proj(emb)[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return h + self.skip(x)


class SR3Attention(nn.Module):
    """Single-head self-attention over all pixels, softmax(q·k / √C), qkv without bias, residual."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps=_GN_EPS)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1, bias=False)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).transpose(-1, -2).unbind(1)  # (B, N, C) each
        out = F.scaled_dot_product_attention(q[:, None].contiguous(), k[:, None].contiguous(), v[:, None].contiguous())
        return x + self.proj(out[:, 0].transpose(1, 2).reshape(b, c, h, w))


class SR3Stage(nn.Module):
    """One residual block, optionally followed by attention (the official ResnetBlocWithAttn)."""

    def __init__(self, cin: int, cout: int, emb_dim: int, groups: int, dropout: float, attention: bool):
        super().__init__()
        self.res = SR3ResBlock(cin, cout, emb_dim, groups, dropout)
        self.attn = SR3Attention(cout, groups) if attention else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        x = self.res(x, emb)
        return x if self.attn is None else self.attn(x)


class OfficialSR3UNet(nn.Module):
    """net(x_t, √γ, cond) = SR3's UNet(cat[cond, x_t], √γ). Arguments carry the official names
    (``in_channels`` / ``out_channels`` are set by the method: x and cond together, as the official in_channel)."""

    def __init__(self, in_channels: int = 6, out_channels: int = 3, noise_level_dim: int = 1, inner_channel: int = 64,
                 norm_groups: int = 32, channel_mults: tuple[int, ...] = (1, 2, 4, 8, 8),
                 attn_res: tuple[int, ...] = (16,), res_blocks: int = 2, dropout: float = 0.0, image_size: int = 128):
        super().__init__()
        if noise_level_dim != 1:
            raise ValueError(f"official_sr3 takes one noise level (√γ), got noise_level_dim {noise_level_dim}")
        if isinstance(attn_res, int):  # the official default (8) is an int; treat it as one resolution
            attn_res = (attn_res,)
        channel_mults, attn_res = tuple(channel_mults), tuple(attn_res)
        self.in_channels, self.out_channels, self.inner_channel = in_channels, out_channels, inner_channel
        self.multiple = 2 ** (len(channel_mults) - 1)
        c = inner_channel
        self.level_mlp = nn.Sequential(nn.Linear(c, 4 * c), nn.SiLU(), nn.Linear(4 * c, c))

        def stage(cin: int, cout: int, attention: bool) -> SR3Stage:
            return SR3Stage(cin, cout, c, norm_groups, dropout, attention)

        # downs[0] is the input conv; every entry's output is a skip (as in the official list)
        downs: list[nn.Module] = [nn.Conv2d(in_channels, c, 3, padding=1)]
        skips, ch, res = [c], c, image_size
        for level, mult in enumerate(channel_mults):
            for _ in range(res_blocks):
                downs.append(stage(ch, c * mult, res in attn_res))
                ch = c * mult
                skips.append(ch)
            if level < len(channel_mults) - 1:
                downs.append(Downsample(ch))
                skips.append(ch)
                res //= 2
        self.downs = nn.ModuleList(downs)
        self.mid = nn.ModuleList([stage(ch, ch, True), stage(ch, ch, False)])
        ups: list[nn.Module] = []
        for level in reversed(range(len(channel_mults))):
            for _ in range(res_blocks + 1):
                ups.append(stage(ch + skips.pop(), c * channel_mults[level], res in attn_res))
                ch = c * channel_mults[level]
            if level > 0:
                ups.append(Upsample(ch))
                res *= 2
        self.ups = nn.ModuleList(ups)
        self.out_norm = nn.GroupNorm(norm_groups, ch, eps=_GN_EPS)
        self.out_conv = nn.Conv2d(ch, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor, noise_level=None, cond: torch.Tensor | None = None) -> torch.Tensor:
        h = x if cond is None else torch.cat([cond.to(x.dtype), x], dim=1)  # condition first, as the official
        if h.shape[1] != self.in_channels:
            raise ValueError(f"official_sr3 expects {self.in_channels} input channels (cond + x), got {h.shape[1]}")
        if noise_level is None:
            raise ValueError("official_sr3 needs the noise level √γ")
        level = format_noise_level(noise_level, h.shape[0], 1, h.device)[:, 0]
        emb = self.level_mlp(sqrt_gamma_embedding(level, self.inner_channel))
        h, (height, width) = pad_to_multiple(h, self.multiple)
        skips = []
        for layer in self.downs:
            h = layer(h, emb) if isinstance(layer, SR3Stage) else layer(h)
            skips.append(h)
        for layer in self.mid:
            h = layer(h, emb)
        for layer in self.ups:
            h = layer(torch.cat([h, skips.pop()], dim=1), emb) if isinstance(layer, SR3Stage) else layer(h)
        h = self.out_conv(F.silu(self.out_norm(h)))
        return h[:, :, :height, :width].to(x.dtype)


# official key (regex) -> ours; the rest (downs.N / ups.N / mid.N indices, attn.norm, attn.qkv) agree
_RENAMES = [
    (r"^noise_level_mlp\.1\.", "level_mlp.0."),
    (r"^noise_level_mlp\.3\.", "level_mlp.2."),
    (r"\.res_block\.block1\.block\.0\.", ".res.norm1."),
    (r"\.res_block\.block1\.block\.3\.", ".res.conv1."),
    (r"\.res_block\.block2\.block\.0\.", ".res.norm2."),
    (r"\.res_block\.block2\.block\.3\.", ".res.conv2."),
    (r"\.res_block\.noise_func\.noise_func\.0\.", ".res.level_proj."),
    (r"\.res_block\.res_conv\.", ".res.skip."),
    (r"\.attn\.out\.", ".attn.proj."),
    (r"^final_conv\.block\.0\.", "out_norm."),
    (r"^final_conv\.block\.3\.", "out_conv."),
]


def rename_official(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official SR3 UNet state_dict keys -> this module's keys (values untouched)."""
    out = {}
    for k, v in sd.items():
        for pattern, repl in _RENAMES:
            k = re.sub(pattern, repl, k)
        out[k] = v
    return out
