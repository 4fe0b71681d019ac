"""Noise-DA's restoration U-Net (``RestorationNet`` of KangLiao929/Noise-DA, models/net/UNet.py).

Re-implemented from the architecture (commit 47ecb49); parameter names follow it, so the
``RestorationNet.*`` part of an official Network state_dict loads unchanged.

Mapping to irdiff's contract: ``ours(x, None, None) == official(x)``, the *residual* (the official
``restoration_test_head`` and the Noise-DA method both return x + R(x)). The official test pads the
input at the bottom / right by replication to a multiple of 8 (2^(depth − 1) for depth > 4) and crops
the result (``test_split_fn``); this net does the same, so any H, W works and equals the official test output.

Architecture: ``depth`` levels of two 3x3 conv + LeakyReLU(slope) with 2^i·wf channels, 2x2 average
pooling between them; up: bilinear x2 (align_corners=True), 3x3 conv, concat with the (centre-cropped)
skip, two 3x3 conv + LeakyReLU; a last 3x3 conv to ``out_channels``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ConvBlock(nn.Module):
    """Two 3x3 convolutions, each followed by LeakyReLU (``block.0`` and ``block.2`` hold the weights)."""

    def __init__(self, in_size: int, out_size: int, slope: float):
        super().__init__()
        self.block = nn.Sequential(nn.Conv2d(in_size, out_size, 3, padding=1), nn.LeakyReLU(slope),
                                   nn.Conv2d(out_size, out_size, 3, padding=1), nn.LeakyReLU(slope))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class UpBlock(nn.Module):
    def __init__(self, in_size: int, out_size: int, slope: float):
        super().__init__()
        self.conv_up = nn.Conv2d(in_size, out_size, 3, padding=1)
        self.conv_block = ConvBlock(in_size, out_size, slope)

    def forward(self, x: torch.Tensor, bridge: torch.Tensor) -> torch.Tensor:
        up = self.conv_up(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True))
        h, w = up.shape[-2:]
        dy, dx = (bridge.shape[-2] - h) // 2, (bridge.shape[-1] - w) // 2
        return self.conv_block(torch.cat([up, bridge[:, :, dy:dy + h, dx:dx + w]], dim=1))


class NoiseDAUNet(nn.Module):
    """The official RestorationNet (constructor names ``depth``, ``wf``, ``slope``); returns the residual."""

    def __init__(self, in_channels: int = 3, out_channels: int = 3, noise_level_dim: int = 0, depth: int = 4,
                 wf: int = 64, slope: float = 0.2):
        super().__init__()
        if noise_level_dim != 0:
            raise ValueError(f"noise_da_unet takes no noise level (noise_level_dim 0), got {noise_level_dim}")
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.in_channels, self.out_channels = in_channels, out_channels
        # the official test pads to a multiple of 8 whatever the depth (test_split_fn's dep_U = 4); deeper
        # nets need 2^(depth − 1)
        self.multiple = max(8, 2 ** (depth - 1))
        self.down_path = nn.ModuleList()
        prev = in_channels
        for i in range(depth):
            self.down_path.append(ConvBlock(prev, 2**i * wf, slope))
            prev = 2**i * wf
        self.up_path = nn.ModuleList()
        for i in reversed(range(depth - 1)):
            self.up_path.append(UpBlock(prev, 2**i * wf, slope))
            prev = 2**i * wf
        self.last = nn.Conv2d(prev, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor, noise_level=None, cond: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, C, H, W) -> R(x) (B, out_channels, H, W); ``noise_level`` is ignored, ``cond`` must be None."""
        if cond is not None:
            raise ValueError("noise_da_unet takes no condition")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"noise_da_unet expects {self.in_channels} input channels, got {x.shape[1]}")
        height, width = x.shape[-2:]
        ph, pw = (-height) % self.multiple, (-width) % self.multiple
        h = F.pad(x, (0, pw, 0, ph), mode="replicate") if ph or pw else x
        skips = []
        for i, down in enumerate(self.down_path):
            h = down(h)
            if i != len(self.down_path) - 1:
                skips.append(h)
                h = F.avg_pool2d(h, 2)
        for up in self.up_path:
            h = up(h, skips.pop())
        return self.last(h)[:, :, :height, :width]
