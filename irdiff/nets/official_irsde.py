"""IR-SDE's ConditionalUNet (Luo et al., ICML 2023), as the authors' code builds it, for their checkpoints.

Two forms exist in the official repository (codes/config/*/models/modules/DenoisingUNet_arch.py):

- the general form (``conditional=True``): the first convolution sees ``cat[x_t − μ, μ]``;
- Denoising-SDE (``conditional=False``, ``mid_attention="full"``): the net sees x_t alone, and its middle
  block uses full softmax self-attention instead of linear attention.

Our contract ``net(x, noise_level, cond)`` maps onto the official ``forward(xt, cond, time)`` as

    ours(x_t, t, μ) = official(x_t, μ, t)          (general form)
    ours(x_t, t, None) = official(x_t, t)          (Denoising-SDE)

with the official conventions kept: images in [0, 1], t the raw integer step (1..T) fed to the time
embedding, output ε (the noise of x_t). ``IRSDE(net_input="official")`` feeds it that way.

What differs from irdiff's own UNet (and why it is a separate net): no normalisation in the ResBlocks
(conv → FiLM → SiLU, bias-free convolutions), a GELU time MLP on [sin, cos] features whose frequencies
divide by (half − 1), channel LayerNorm without bias before/after linear attention, 4×4 stride-2
down-sampling convolutions, a level-0 skip of the first convolution's output into a final ResBlock, and
reflect padding to a multiple of 2^depth (one more factor of 2 than the down-sampling needs: kept, since
the padding changes the output near the bottom/right borders).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from irdiff.nets.layers import Upsample, film, format_noise_level, pad_to_multiple


def conv(cin: int, cout: int, kernel: int = 3, bias: bool = False) -> nn.Conv2d:
    """The official ``default_conv``: 'same' padding and, by default, no bias."""
    return nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=bias)


def step_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """(B,) steps -> (B, dim) features [sin, cos], frequencies 10000^(−k / (dim/2 − 1)), k = 0..dim/2−1."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, device=t.device) * -(math.log(10000) / (half - 1)))
    args = t.float()[:, None] * freqs[None, :]
    return torch.cat([args.sin(), args.cos()], dim=-1)


class ChannelLayerNorm(nn.Module):
    """LayerNorm over channels with a gain and no bias; eps 1e-5 in float32 (1e-3 in lower precision)."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        eps = 1e-5 if x.dtype == torch.float32 else 1e-3
        var = torch.var(x, dim=1, unbiased=False, keepdim=True)
        mean = torch.mean(x, dim=1, keepdim=True)
        return (x - mean) * (var + eps).rsqrt() * self.weight[None, :, None, None]


class ResBlock(nn.Module):
    """conv → FiLM(step) → SiLU → conv → SiLU, plus a (1×1, bias-free) projection of the input.

    Without ``emb_dim`` (Refusion's autoencoder) there is no FiLM."""

    def __init__(self, cin: int, cout: int, emb_dim: int | None):
        super().__init__()
        self.emb_proj = nn.Linear(emb_dim, 2 * cout) if emb_dim else None
        self.conv1 = conv(cin, cout)
        self.conv2 = conv(cout, cout)
        self.skip = conv(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(x)
        if self.emb_proj is not None:
            h = film(h, self.emb_proj(F.silu(emb)))
        h = F.silu(self.conv2(F.silu(h)))
        return h + self.skip(x)


class LinearAttention(nn.Module):
    """x + LN(proj(linear attention(LN(x)))): softmax over channels for q, over pixels for k (4 heads × 32)."""

    def __init__(self, channels: int, heads: int = 4, head_dim: int = 32):
        super().__init__()
        self.heads, self.scale = heads, head_dim**-0.5
        hidden = heads * head_dim
        self.norm = ChannelLayerNorm(channels)
        self.to_qkv = nn.Conv2d(channels, 3 * hidden, 1, bias=False)
        self.out_conv = nn.Conv2d(hidden, channels, 1)
        self.out_norm = ChannelLayerNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        q, k, v = (t.reshape(b, self.heads, -1, h * w) for t in self.to_qkv(self.norm(x)).chunk(3, dim=1))
        q = q.softmax(dim=-2) * self.scale
        k = k.softmax(dim=-1)
        v = v / (h * w)
        context = torch.einsum("bhdn,bhen->bhde", k, v)
        out = torch.einsum("bhde,bhdn->bhen", context, q).reshape(b, -1, h, w)
        return x + self.out_norm(self.out_conv(out))


class FullAttention(nn.Module):
    """x + proj(softmax attention over all pixels of LN(x)) (4 heads × 32; the Denoising-SDE middle block)."""

    def __init__(self, channels: int, heads: int = 4, head_dim: int = 32):
        super().__init__()
        self.heads = heads
        hidden = heads * head_dim
        self.norm = ChannelLayerNorm(channels)
        self.to_qkv = nn.Conv2d(channels, 3 * hidden, 1, bias=False)
        self.out_conv = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        q, k, v = (t.reshape(b, self.heads, -1, h * w).transpose(-1, -2).contiguous()
                   for t in self.to_qkv(self.norm(x)).chunk(3, dim=1))
        out = F.scaled_dot_product_attention(q, k, v)  # scale 1/√32, as the official q * dim_head^-0.5
        return x + self.out_conv(out.transpose(-1, -2).reshape(b, -1, h, w))


class Level(nn.Module):
    """One encoder or decoder level: two ResBlocks, linear attention, then a resampling convolution."""

    def __init__(self, res1: ResBlock, res2: ResBlock, attn: nn.Module, resample: nn.Module):
        super().__init__()
        self.res1, self.res2, self.attn, self.resample = res1, res2, attn, resample


class IRSDEUNet(nn.Module):
    """The official IR-SDE ConditionalUNet; see the module docstring for the input convention.

    ``in_channels`` counts what the first convolution sees (2 × image channels in the general form, as
    irdiff's own UNet counts x and cond together); ``nf`` and ``depth`` are the official constructor's.
    """

    def __init__(self, in_channels: int, out_channels: int, noise_level_dim: int = 1, nf: int = 64,
                 depth: int = 4, conditional: bool = True, mid_attention: str = "linear"):
        super().__init__()
        if noise_level_dim != 1:
            raise ValueError(f"irsde_unet takes one noise level (the step t), got noise_level_dim={noise_level_dim}")
        if conditional and in_channels % 2:
            raise ValueError(f"irsde_unet: conditional form sees cat[x - cond, cond], in_channels must be even, "
                             f"got {in_channels}")
        if mid_attention not in ("linear", "full"):
            raise ValueError(f"irsde_unet: mid_attention must be 'linear' or 'full', got {mid_attention!r}")
        if depth < 1 or nf < 2:
            raise ValueError(f"irsde_unet: needs depth >= 1 and nf >= 2, got depth={depth}, nf={nf}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.conditional, self.nf, self.depth = conditional, nf, depth
        self.multiple = 2**depth  # the official padding (see the module docstring)
        emb_dim = 4 * nf

        self.init_conv = conv(in_channels, nf, 7)
        self.time_fc1 = nn.Linear(nf, emb_dim)
        self.time_fc2 = nn.Linear(emb_dim, emb_dim)

        self.downs, self.ups = nn.ModuleList(), nn.ModuleList()
        for i in range(depth):
            c_in, c_out = nf * 2**i, nf * 2 ** (i + 1)
            last = i == depth - 1
            self.downs.append(Level(ResBlock(c_in, c_in, emb_dim), ResBlock(c_in, c_in, emb_dim),
                                    LinearAttention(c_in),
                                    conv(c_in, c_out) if last else nn.Conv2d(c_in, c_out, 4, 2, 1)))
            self.ups.insert(0, Level(ResBlock(c_out + c_in, c_out, emb_dim), ResBlock(c_out + c_in, c_out, emb_dim),
                                     LinearAttention(c_out),
                                     conv(c_out, c_in) if i == 0 else Upsample(c_out, c_in)))
        mid = nf * 2**depth
        self.mid_block1 = ResBlock(mid, mid, emb_dim)
        self.mid_attn = LinearAttention(mid) if mid_attention == "linear" else FullAttention(mid)
        self.mid_block2 = ResBlock(mid, mid, emb_dim)
        self.final_res_block = ResBlock(2 * nf, nf, emb_dim)
        self.final_conv = nn.Conv2d(nf, out_channels, 3, 1, 1)

    def forward(self, x: torch.Tensor, noise_level=None, cond: torch.Tensor | None = None) -> torch.Tensor:
        """x = x_t, noise_level = the integer step t ((B,) or a number), cond = μ (general form only)."""
        if self.conditional:
            if cond is None:
                raise ValueError("irsde_unet (conditional form) needs cond = the degraded image μ")
            h = torch.cat([x - cond, cond], dim=1)
        else:
            if cond is not None:
                raise ValueError("irsde_unet (Denoising-SDE form) takes no cond")
            h = x
        if h.shape[1] != self.in_channels:
            raise ValueError(f"irsde_unet expects {self.in_channels} input channels, got {h.shape[1]}")
        if noise_level is None:
            raise ValueError("irsde_unet needs noise_level = the step t")
        t = format_noise_level(noise_level, h.shape[0], 1, h.device)[:, 0]
        emb = self.time_fc2(F.gelu(self.time_fc1(step_embedding(t, self.nf))))

        height, width = h.shape[-2:]
        h, _ = pad_to_multiple(h, self.multiple)
        h = self.init_conv(h)
        first = h
        skips = []
        for level in self.downs:
            h = level.res1(h, emb)
            skips.append(h)
            h = level.attn(level.res2(h, emb))
            skips.append(h)
            h = level.resample(h)
        h = self.mid_block2(self.mid_attn(self.mid_block1(h, emb)), emb)
        for level in self.ups:
            h = level.res1(torch.cat([h, skips.pop()], dim=1), emb)
            h = level.attn(level.res2(torch.cat([h, skips.pop()], dim=1), emb))
            h = level.resample(h)
        h = self.final_res_block(torch.cat([h, first], dim=1), emb)
        return self.final_conv(h)[..., :height, :width]
