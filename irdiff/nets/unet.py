"""Conditional UNet (DDPM / guided-diffusion style): forward(x, noise_level, cond=None) -> tensor."""

from __future__ import annotations

import torch
from torch import nn

from irdiff.nets.layers import (
    AttentionBlock,
    Downsample,
    NoiseLevelEmbedding,
    ResBlock,
    Upsample,
    group_norm,
    pad_to_multiple,
    to_memory_format_of,
)


class UNet(nn.Module):
    """ResBlocks with FiLM noise-level conditioning, self-attention at chosen levels, skip connections.

    ``in_channels`` counts x and cond together (they are concatenated inside). ``attn_levels`` are
    indices into ``channel_mults``; the middle block has attention when ``attn_levels`` is not empty.
    Any H, W is accepted: the input is reflect-padded to a multiple of 2**(levels-1) and the output
    cropped back. The last convolution starts at zero, so an untrained net outputs zeros.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        noise_level_dim: int = 1,
        base_channels: int = 64,
        channel_mults: tuple[int, ...] = (1, 2, 4),
        num_res_blocks: int = 2,
        attn_levels: tuple[int, ...] = (2,),
        num_heads: int | None = None,
        head_channels: int = 32,
        dropout: float = 0.0,
        norm_groups: int = 32,
    ):
        super().__init__()
        channel_mults, attn_levels = tuple(channel_mults), tuple(attn_levels)
        bad = [i for i in attn_levels if not 0 <= i < len(channel_mults)]
        if bad:
            raise ValueError(f"attn_levels {bad} out of range for {len(channel_mults)} levels")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.noise_level_dim = noise_level_dim
        self.multiple = 2 ** (len(channel_mults) - 1)

        emb_dim = 4 * base_channels
        self.embed = NoiseLevelEmbedding(noise_level_dim, emb_dim) if noise_level_dim > 0 else None
        emb_dim = emb_dim if noise_level_dim > 0 else None

        def attn(ch):
            return AttentionBlock(ch, num_heads, head_channels, norm_groups)

        def res(cin, cout):
            return ResBlock(cin, cout, emb_dim, dropout, norm_groups)

        self.in_conv = nn.Conv2d(in_channels, base_channels, 3, padding=1)
        ch = base_channels
        skips = [ch]
        self.down = nn.ModuleList()
        for level, mult in enumerate(channel_mults):
            for _ in range(num_res_blocks):
                block = [res(ch, base_channels * mult)]
                ch = base_channels * mult
                if level in attn_levels:
                    block.append(attn(ch))
                self.down.append(nn.ModuleList(block))
                skips.append(ch)
            if level != len(channel_mults) - 1:
                self.down.append(nn.ModuleList([Downsample(ch)]))
                skips.append(ch)

        self.mid = nn.ModuleList([res(ch, ch), *([attn(ch)] if attn_levels else []), res(ch, ch)])

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mults))):
            for i in range(num_res_blocks + 1):
                block = [res(ch + skips.pop(), base_channels * mult)]
                ch = base_channels * mult
                if level in attn_levels:
                    block.append(attn(ch))
                if level != 0 and i == num_res_blocks:
                    block.append(Upsample(ch))
                self.up.append(nn.ModuleList(block))

        self.out_norm = group_norm(ch, norm_groups)
        self.out_conv = nn.Conv2d(ch, out_channels, 3, padding=1)
        nn.init.zeros_(self.out_conv.weight)
        nn.init.zeros_(self.out_conv.bias)

    @staticmethod
    def _run(block: nn.ModuleList, h: torch.Tensor, emb: torch.Tensor | None) -> torch.Tensor:
        for layer in block:
            h = layer(h, emb) if isinstance(layer, ResBlock | AttentionBlock) else layer(h)
        return h

    def forward(self, x: torch.Tensor, noise_level=None, cond: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, Cx, H, W), noise_level (B,) or (B, noise_level_dim), cond (B, Cc, H, W) or None.

        Returns (B, out_channels, H, W) in x's dtype (also under autocast).
        """
        h = x if cond is None else torch.cat([x, cond.to(x.dtype)], dim=1)
        if h.shape[1] != self.in_channels:
            raise ValueError(f"UNet expects {self.in_channels} input channels (x + cond), got {h.shape[1]}")
        emb = None
        if self.embed is not None:
            if noise_level is None:
                raise ValueError("UNet was built with noise_level_dim > 0 but got noise_level=None")
            emb = self.embed(noise_level, h.shape[0], h.device)
        h = to_memory_format_of(h, self.in_conv.weight)
        h, (height, width) = pad_to_multiple(h, self.multiple)

        h = self.in_conv(h)
        skips = [h]
        for block in self.down:
            h = self._run(block, h, emb)
            skips.append(h)
        h = self._run(self.mid, h, emb)
        for block in self.up:
            h = self._run(block, torch.cat([h, skips.pop()], dim=1), emb)
        h = self.out_conv(torch.nn.functional.silu(self.out_norm(h)))
        return h[:, :, :height, :width].to(x.dtype)
