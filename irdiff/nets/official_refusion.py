"""Refusion's networks (Luo et al., CVPRW 2023), as the authors' code builds them, for their checkpoints.

From github.com/Algolzw/image-restoration-sde:

- ``refusion_nafnet``: ConditionalNAFNet (codes/config/*/models/modules/DenoisingNAFNet_arch.py), the
  noise network of Refusion, in pixel space (``intro_skip=False``, every task's refusion.yml) or on an
  autoencoder's latent (``intro_skip=True``, codes/config/latent-*: the first convolution's output is
  also added before the last one). Contract as IR-SDE's net: ours(x_t, t, μ) = official(x_t, μ, t),
  images / latents as the official code sees them, t the integer step.
- ``RefusionAutoencoder``: the U-Net-shaped autoencoder of latent Refusion (codes/config/unet-latent/
  models/modules/UNet_arch.py): ``encode(x) -> (latent, hidden)`` compresses by 2^(len(ch_mult) − 1);
  ``decode(latent, hidden)`` also receives the encoder's skip features (of the degraded image, in
  Refusion). Its ``forward(x)`` is ``decode(*encode(x))``.

What these nets have that irdiff's NAFNet / UNet do not: NAFBlocks with a bias-free channel LayerNorm
(eps 1e-5) and a four-way step modulation (shift/scale before attention and before the FFN) from a
SimpleGate time MLP; zero padding to a multiple of 2^levels (the NAFNet) and reflect padding to
2^len(ch_mult), one factor more than the autoencoder down-samples (kept: it changes border outputs).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from irdiff.nets.layers import Upsample, format_noise_level, pad_to_multiple
from irdiff.nets.official_irsde import ChannelLayerNorm, Level, LinearAttention, ResBlock, conv, step_embedding
from irdiff.nets.restorers import SimpleGate


class NAFBlock(nn.Module):
    """NAFNet block with the step applied as (1 + scale)·x + shift after each of its two norms."""

    def __init__(self, c: int, emb_dim: int):
        super().__init__()
        dw = 2 * c
        self.emb_proj = nn.Linear(emb_dim // 2, 4 * c)  # fed SimpleGate(emb): half the width
        self.norm1 = ChannelLayerNorm(c)
        self.conv1 = nn.Conv2d(c, dw, 1)
        self.conv2 = nn.Conv2d(dw, dw, 3, padding=1, groups=dw)
        self.sca = nn.Conv2d(dw // 2, dw // 2, 1)
        self.conv3 = nn.Conv2d(dw // 2, c, 1)
        self.norm2 = ChannelLayerNorm(c)
        self.conv4 = nn.Conv2d(c, 2 * c, 1)
        self.conv5 = nn.Conv2d(c, c, 1)
        self.gate = SimpleGate()
        self.beta = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.gamma = nn.Parameter(torch.zeros(1, c, 1, 1))

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        shift_att, scale_att, shift_ffn, scale_ffn = self.emb_proj(self.gate(emb))[:, :, None, None].chunk(4, dim=1)
        h = self.norm1(x) * (scale_att + 1) + shift_att
        h = self.gate(self.conv2(self.conv1(h)))
        h = h * self.sca(F.adaptive_avg_pool2d(h, 1))
        y = x + self.conv3(h) * self.beta
        h = self.norm2(y) * (scale_ffn + 1) + shift_ffn
        return y + self.conv5(self.gate(self.conv4(h))) * self.gamma


class RefusionNAFNet(nn.Module):
    """Refusion's ConditionalNAFNet; ``in_channels`` = 2 × the image (or latent) channels."""

    def __init__(self, in_channels: int, out_channels: int, noise_level_dim: int = 1, width: int = 64,
                 enc_blk_nums: tuple[int, ...] = (1, 1, 1, 28), middle_blk_num: int = 1,
                 dec_blk_nums: tuple[int, ...] = (1, 1, 1, 1), intro_skip: bool = False):
        super().__init__()
        if noise_level_dim != 1:
            raise ValueError(f"refusion_nafnet takes one noise level (the step t), got {noise_level_dim}")
        if in_channels != 2 * out_channels:
            raise ValueError(f"refusion_nafnet sees cat[x - cond, cond]: in_channels must be 2 x out_channels, "
                             f"got {in_channels} and {out_channels}")
        if len(enc_blk_nums) != len(dec_blk_nums):
            raise ValueError("refusion_nafnet: enc_blk_nums and dec_blk_nums must have the same length")
        self.in_channels, self.out_channels, self.width = in_channels, out_channels, width
        self.intro_skip = intro_skip
        self.multiple = 2 ** len(enc_blk_nums)
        emb_dim = 4 * width
        self.time_fc1 = nn.Linear(width, 2 * emb_dim)
        self.time_fc2 = nn.Linear(emb_dim, emb_dim)
        self.gate = SimpleGate()
        self.intro = nn.Conv2d(in_channels, width, 3, padding=1)
        self.ending = nn.Conv2d(width, out_channels, 3, padding=1)
        self.encoders, self.downs, self.ups, self.decoders = (nn.ModuleList() for _ in range(4))
        ch = width
        for n in enc_blk_nums:
            self.encoders.append(nn.ModuleList([NAFBlock(ch, emb_dim) for _ in range(n)]))
            self.downs.append(nn.Conv2d(ch, 2 * ch, 2, 2))
            ch *= 2
        self.middle_blks = nn.ModuleList([NAFBlock(ch, emb_dim) for _ in range(middle_blk_num)])
        for n in dec_blk_nums:
            self.ups.append(nn.Conv2d(ch, 2 * ch, 1, bias=False))  # then PixelShuffle(2): ch // 2 channels
            ch //= 2
            self.decoders.append(nn.ModuleList([NAFBlock(ch, emb_dim) for _ in range(n)]))

    @staticmethod
    def _run(blocks: nn.ModuleList, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for block in blocks:
            h = block(h, emb)
        return h

    def forward(self, x: torch.Tensor, noise_level=None, cond: torch.Tensor | None = None) -> torch.Tensor:
        """x = x_t, noise_level = the integer step t, cond = μ (the degraded image or its latent)."""
        if cond is None or noise_level is None:
            raise ValueError("refusion_nafnet needs noise_level = the step t and cond = μ")
        h = torch.cat([x - cond, cond], dim=1)
        if h.shape[1] != self.in_channels:
            raise ValueError(f"refusion_nafnet expects {self.in_channels} input channels, got {h.shape[1]}")
        t = format_noise_level(noise_level, h.shape[0], 1, h.device)[:, 0]
        emb = self.time_fc2(self.gate(self.time_fc1(step_embedding(t, self.width))))
        height, width = h.shape[-2:]
        m = self.multiple
        h = F.pad(h, (0, (m - width % m) % m, 0, (m - height % m) % m))  # zeros, as the official padder
        h = first = self.intro(h)
        skips = []
        for blocks, down in zip(self.encoders, self.downs):
            h = self._run(blocks, h, emb)
            skips.append(h)
            h = down(h)
        h = self._run(self.middle_blks, h, emb)
        for blocks, up in zip(self.decoders, self.ups):
            h = F.pixel_shuffle(up(h), 2) + skips.pop()
            h = self._run(blocks, h, emb)
        h = self.ending(h + first if self.intro_skip else h)
        return h[..., :height, :width]


class RefusionAutoencoder(nn.Module):
    """Latent Refusion's U-Net-shaped autoencoder (no step input); see the module docstring.

    Built like every net (``in_channels``, ``out_channels``, ``noise_level_dim`` = 0: it takes no level),
    so that the ``autoencoder`` method trains it through the one trainer; ``embed_dim`` is the number of
    latent channels, ``scale`` the latent's spatial compression."""

    def __init__(self, in_channels: int = 3, out_channels: int = 3, noise_level_dim: int = 0, ch: int = 64,
                 ch_mult: tuple[int, ...] = (1, 2, 4, 4), embed_dim: int = 4):
        super().__init__()
        if noise_level_dim != 0:
            raise ValueError(f"refusion_ae takes no noise level, got noise_level_dim {noise_level_dim}")
        if not ch_mult:
            raise ValueError("refusion_ae: ch_mult must list at least one level")
        in_ch, out_ch = in_channels, out_channels
        self.in_channels, self.out_channels, self.embed_dim = in_channels, out_channels, embed_dim
        depth = len(ch_mult)
        self.depth, self.multiple = depth, 2**depth
        self.scale = 2 ** (depth - 1)  # spatial compression of the latent
        mults = [1, *ch_mult]
        self.init_conv = conv(in_ch, ch)
        self.encoder, self.decoder = nn.ModuleList(), nn.ModuleList()
        for i in range(depth):
            c_in, c_out = ch * mults[i], ch * mults[i + 1]
            last = i == depth - 1
            self.encoder.append(Level(ResBlock(c_in, c_in, None), ResBlock(c_in, c_in, None),
                                      LinearAttention(c_in) if last else nn.Identity(),
                                      conv(c_in, c_out) if last else nn.Conv2d(c_in, c_out, 4, 2, 1)))
            self.decoder.insert(0, Level(ResBlock(c_out + c_in, c_out, None), ResBlock(c_out + c_in, c_out, None),
                                         LinearAttention(c_out) if last else nn.Identity(),
                                         conv(c_out, c_in) if i == 0 else Upsample(c_out, c_in)))
        mid = ch * mults[-1]
        self.latent_conv = conv(mid, embed_dim, 1)
        self.post_latent_conv = conv(embed_dim, mid, 1)
        self.final_conv = nn.Conv2d(ch, out_ch, 3, 1, 1)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        """x -> (latent at 1/scale, hidden = {"skips": encoder features, "size": (H, W)})."""
        size = tuple(x.shape[-2:])
        h, _ = pad_to_multiple(x, self.multiple)
        h = self.init_conv(h)
        skips = [h]
        for level in self.encoder:
            h = level.res1(h)
            skips.append(h)
            h = level.attn(level.res2(h))
            skips.append(h)
            h = level.resample(h)
        return self.latent_conv(h), {"skips": skips, "size": size}

    def decode(self, latent: torch.Tensor, hidden: dict[str, Any]) -> torch.Tensor:
        skips = hidden["skips"]
        h = self.post_latent_conv(latent)
        for i, level in enumerate(self.decoder):
            h = level.res1(torch.cat([h, skips[-(2 * i + 1)]], dim=1))
            h = level.attn(level.res2(torch.cat([h, skips[-(2 * i + 2)]], dim=1)))
            h = level.resample(h)
        height, width = hidden["size"]
        return self.final_conv(h + skips[0])[..., :height, :width]

    def forward(self, x: torch.Tensor, noise_level=None, cond: torch.Tensor | None = None) -> torch.Tensor:
        """The round trip decode(encode(x)); with ``cond``, x's latent decoded with cond's skip features
        (Refusion's decoding of a restored latent with the degraded image's)."""
        latent, hidden = self.encode(x)
        return self.decode(latent, hidden if cond is None else self.encode(cond)[1])
