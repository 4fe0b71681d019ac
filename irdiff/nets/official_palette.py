"""Palette's guided-diffusion U-Net (Janspiry's Palette-Image-to-Image-Diffusion-Models,
models/guided_diffusion_modules/unet.py), re-implemented from the architecture, for checkpoints imported
with ``irdiff import --format palette``.

Mapping to irdiff's contract (the official forward is ``UNet(cat[condition, noisy], gamma)``)::

    ours(x_t, gamma, cond) = official(cat[cond, x_t], gamma)

The noise level is γ itself (Palette's ``gammas``), embedded with the guided-diffusion sinusoids
[cos, sin] of the raw value (no 1000x scale), then Linear(C, 4C) - SiLU - Linear(4C, 4C). The SR3
method feeds it with ``noise_level_input: gamma``.

The blocks are irdiff's ``layers.ResBlock`` (FiLM scale-shift: the official ``use_scale_shift_norm=True``,
which the released configs use) and ``layers.AttentionBlock``'s projections, with what the official code
does differently: GroupNorm with 32 groups and torch's eps 1e-5; down/up-sampling inside residual blocks
(``resblock_updown=True``: 2x2 average pooling / nearest x2 of both branches between the first norm and
conv); the attention's qkv channels ordered per head ([head][q, k, v][d], the "legacy" order), with
``num_head_channels`` channels per head. Attention sits at the levels whose *downsampling rate* (1, 2,
4, ...) is in ``attn_res``, plus the middle block; ``image_size`` is not used by the official net.

``rename_official`` maps the official state_dict keys onto ours (and its 1-D attention convs onto 1x1
2-D convs). Inputs of any size are reflect-padded to a multiple of 2**(levels-1) and cropped back.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

from irdiff.nets.layers import AttentionBlock, ResBlock, format_noise_level, pad_to_multiple, sinusoidal_embedding

_GROUPS, _GN_EPS = 32, 1e-5  # the official normalization(): GroupNorm32(32, C), torch's default eps


def _official_norms(module: nn.Module) -> nn.Module:
    """irdiff's blocks use eps 1e-6; the official GroupNorm32 uses torch's default 1e-5."""
    for m in module.modules():
        if isinstance(m, nn.GroupNorm):
            m.eps = _GN_EPS
    return module


class ResampleResBlock(ResBlock):
    """A residual block that halves (down) or doubles (up) H and W: both the main branch (after its first
    norm + SiLU, before its first conv) and the skip branch are resampled (guided-diffusion's up/down blocks)."""

    def __init__(self, channels: int, emb_dim: int, dropout: float, mode: str):
        super().__init__(channels, channels, emb_dim, dropout, _GROUPS)
        self.mode = mode

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, 2) if self.mode == "down" else F.interpolate(x, scale_factor=2.0, mode="nearest")

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(self._resample(F.silu(self.norm1(x))))
        h = self.norm2(h)
        scale, shift = self.emb_proj(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = self.conv2(self.dropout(F.silu(h * (1 + scale) + shift)))
        return self._resample(x) + h


class LegacyOrderAttention(AttentionBlock):
    """Multi-head self-attention whose qkv conv output is laid out [head][q, k, v][d] (guided-diffusion's
    QKVAttentionLegacy), softmax(q·k / √d)."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        b, c, h, w = x.shape
        heads, d = self.num_heads, c // self.num_heads
        qkv = self.qkv(self.norm(x)).reshape(b, heads, 3, d, h * w).transpose(-1, -2)  # (B, heads, 3, N, d)
        q, k, v = (t.contiguous() for t in qkv.unbind(2))
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, N, d)
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class OfficialPaletteUNet(nn.Module):
    """net(x_t, γ, cond) = Palette's guided-diffusion UNet(cat[cond, x_t], γ). Arguments carry the official
    names; ``in_channels`` / ``out_channels`` are set by the method (x and cond together, as in_channel)."""

    def __init__(self, in_channels: int = 6, out_channels: int = 3, noise_level_dim: int = 1, inner_channel: int = 64,
                 channel_mults: tuple[int, ...] = (1, 2, 4, 8), attn_res: tuple[int, ...] = (16,), res_blocks: int = 2,
                 dropout: float = 0.0, num_heads: int = 1, num_head_channels: int = -1, num_heads_upsample: int = -1,
                 image_size: int = 256):
        super().__init__()
        if noise_level_dim != 1:
            raise ValueError(f"official_palette takes one noise level (γ), got noise_level_dim {noise_level_dim}")
        channel_mults, attn_res = tuple(channel_mults), tuple(attn_res)
        self.in_channels, self.out_channels, self.inner_channel = in_channels, out_channels, inner_channel
        self.image_size = image_size  # kept for the record: the official net does not use it
        self.multiple = 2 ** (len(channel_mults) - 1)
        emb = 4 * inner_channel
        self.level_mlp = nn.Sequential(nn.Linear(inner_channel, emb), nn.SiLU(), nn.Linear(emb, emb))
        up_heads = num_heads if num_heads_upsample == -1 else num_heads_upsample

        def res(cin: int, cout: int) -> ResBlock:
            return ResBlock(cin, cout, emb, dropout, _GROUPS)

        def attn(ch: int, heads: int) -> LegacyOrderAttention:
            if num_head_channels != -1:
                if ch % num_head_channels:
                    raise ValueError(f"official_palette: {ch} channels do not split into heads of {num_head_channels}")
                heads = ch // num_head_channels
            return LegacyOrderAttention(ch, num_heads=heads, norm_groups=_GROUPS)

        ch = int(channel_mults[0] * inner_channel)
        self.down = nn.ModuleList([nn.ModuleList([nn.Conv2d(in_channels, ch, 3, padding=1)])])
        skips, rate = [ch], 1
        for level, mult in enumerate(channel_mults):
            for _ in range(res_blocks):
                block: list[nn.Module] = [res(ch, int(mult * inner_channel))]
                ch = int(mult * inner_channel)
                if rate in attn_res:
                    block.append(attn(ch, num_heads))
                self.down.append(nn.ModuleList(block))
                skips.append(ch)
            if level < len(channel_mults) - 1:
                self.down.append(nn.ModuleList([ResampleResBlock(ch, emb, dropout, "down")]))
                skips.append(ch)
                rate *= 2
        self.mid = nn.ModuleList([res(ch, ch), attn(ch, num_heads), res(ch, ch)])
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mults))):
            for i in range(res_blocks + 1):
                block = [res(ch + skips.pop(), int(inner_channel * mult))]
                ch = int(inner_channel * mult)
                if rate in attn_res:
                    block.append(attn(ch, up_heads))
                if level and i == res_blocks:
                    block.append(ResampleResBlock(ch, emb, dropout, "up"))
                    rate //= 2
                self.up.append(nn.ModuleList(block))
        self.out_norm = nn.GroupNorm(_GROUPS, ch)
        self.out_conv = nn.Conv2d(ch, out_channels, 3, padding=1)
        _official_norms(self)

    @staticmethod
    def _run(block: nn.ModuleList, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for layer in block:
            h = layer(h, emb) if isinstance(layer, ResBlock | AttentionBlock) else layer(h)
        return h

    def forward(self, x: torch.Tensor, noise_level=None, cond: torch.Tensor | None = None) -> torch.Tensor:
        h = x if cond is None else torch.cat([cond.to(x.dtype), x], dim=1)  # condition first, as the official
        if h.shape[1] != self.in_channels:
            raise ValueError(f"official_palette expects {self.in_channels} input channels (cond + x), got {h.shape[1]}")
        if noise_level is None:
            raise ValueError("official_palette needs the noise level γ")
        gamma = format_noise_level(noise_level, h.shape[0], 1, h.device)[:, 0]
        emb = self.level_mlp(sinusoidal_embedding(gamma, self.inner_channel, scale=1.0))
        h, (height, width) = pad_to_multiple(h, self.multiple)
        skips = []
        for block in self.down:
            h = self._run(block, h, emb)
            skips.append(h)
        h = self._run(self.mid, h, emb)
        for block in self.up:
            h = self._run(block, torch.cat([h, skips.pop()], dim=1), emb)
        h = self.out_conv(F.silu(self.out_norm(h)))
        return h[:, :, :height, :width].to(x.dtype)


# official key (regex) -> ours
_RENAMES = [
    (r"^cond_embed\.", "level_mlp."),
    (r"^input_blocks\.", "down."),
    (r"^middle_block\.", "mid."),
    (r"^output_blocks\.", "up."),
    (r"\.in_layers\.0\.", ".norm1."),
    (r"\.in_layers\.2\.", ".conv1."),
    (r"\.emb_layers\.1\.", ".emb_proj."),
    (r"\.out_layers\.0\.", ".norm2."),
    (r"\.out_layers\.3\.", ".conv2."),
    (r"\.skip_connection\.", ".skip."),
    (r"\.proj_out\.", ".proj."),
    (r"^out\.0\.", "out_norm."),
    (r"^out\.2\.", "out_conv."),
]


def rename_official(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official Palette UNet state_dict keys -> ours; the attention's Conv1d weights (O, I, 1) become 1x1 Conv2d."""
    out = {}
    for k, v in sd.items():
        for pattern, repl in _RENAMES:
            k = re.sub(pattern, repl, k)
        if re.search(r"\.(qkv|proj)\.weight$", k) and torch.is_tensor(v) and v.dim() == 3:
            v = v.unsqueeze(-1)
        out[k] = v
    return out
