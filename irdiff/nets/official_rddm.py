"""RDDM's ``UnetRes`` with one or two U-Nets (nachifur/RDDM, src/residual_denoising_diffusion_pytorch.py).

Re-implemented from the architecture (commit e597481); parameter names follow it (``unet0.*``, ``unet1.*``),
so the network part of an official checkpoint loads unchanged. Covers the generation code's
``num_unet`` = 1 / 2 and the restoration code's ``share_encoder`` = −1 / 0 (the same modules; the
shared-encoder variant ``share_encoder = 1`` is another network and is not covered).

Mapping to irdiff's contract, with ``noise_level`` = (l0, l1) per sample (the RDDM method's two columns)
and ``cond`` = I_in (None for the unconditional generation models):

    ours(x, (l0, l1), cond) = cat([unet0(cat[x, cond], s·l0), unet1(cat[x, cond], s·l1)], dim=1)

with ``s = time_scale``: the official model call is ``UnetRes(cat[x_t, x_input], time)``, and its
``time`` is the 0-based step t − 1 for both nets in the restoration code (the method's ``level: index``
feeds (t − 1, t − 1), ``time_scale`` 1), and [ᾱ_t·T, β̄_t·T] in the partially path-independent
generation code (the method's default (ᾱ_t, β̄_t/β̄_T) with β̄_T = 1, ``time_scale`` T). The output is
(residual, noise) concatenated: the RDDM method's ``res_noise`` layout. With one U-Net the output is that
net's alone; ``objective`` (``pred_res`` / ``pred_noise``) picks which time column it sees, as officially.

Each U-Net (lucidrains' denoising-diffusion-pytorch of early 2023): 7x7 init conv; per level two
ResnetBlocks (weight-standardised 3x3 conv, GroupNorm, time scale-shift, SiLU), linear attention, a 4x4
stride-2 conv down (3x3 at the last level); middle ResnetBlock, full attention, ResnetBlock; up with two
skip concatenations per level, nearest x2 + 3x3 conv up (3x3 at the last level); a final ResnetBlock on
[x, init features] and a 1x1 conv. Inputs of any size are reflect-padded to a multiple of 2^(levels − 1)
and cropped back.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from irdiff.nets.layers import format_noise_level, pad_to_multiple, sinusoidal_sin_cos


def _eps(x: torch.Tensor) -> float:
    return 1e-5 if x.dtype == torch.float32 else 1e-3  # as the reference (float64 included)


class WSConv2d(nn.Conv2d):
    """Weight-standardised convolution: each filter normalised to zero mean, unit (biased) variance."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        mean = w.mean(dim=(1, 2, 3), keepdim=True)
        var = w.var(dim=(1, 2, 3), unbiased=False, keepdim=True)
        return F.conv2d(x, (w - mean) * (var + _eps(x)).rsqrt(), self.bias, self.stride, self.padding,
                        self.dilation, self.groups)


class ChannelNorm(nn.Module):
    """LayerNorm over channels with a gain ``g`` (1, C, 1, 1) and no bias."""

    def __init__(self, dim: int):
        super().__init__()
        self.g = nn.Parameter(torch.ones(1, dim, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        var = torch.var(x, dim=1, unbiased=False, keepdim=True)
        mean = torch.mean(x, dim=1, keepdim=True)
        return (x - mean) * (var + _eps(x)).rsqrt() * self.g


class _PreNorm(nn.Module):
    def __init__(self, dim: int, fn: nn.Module):
        super().__init__()
        self.fn = fn
        self.norm = ChannelNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(self.norm(x))


class PreNormResidual(nn.Module):
    """x + fn(norm(x)), with the official Residual(PreNorm(...)) key layout (``fn.fn.*``, ``fn.norm.g``)."""

    def __init__(self, dim: int, fn: nn.Module):
        super().__init__()
        self.fn = _PreNorm(dim, fn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x) + x


class Block(nn.Module):
    def __init__(self, dim: int, dim_out: int, groups: int):
        super().__init__()
        self.proj = WSConv2d(dim, dim_out, 3, padding=1)
        self.norm = nn.GroupNorm(groups, dim_out)

    def forward(self, x: torch.Tensor, scale_shift: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        x = self.norm(self.proj(x))
        if scale_shift is not None:
            scale, shift = scale_shift
            x = x * (scale + 1) + shift
        return F.silu(x)


class ResnetBlock(nn.Module):
    def __init__(self, dim: int, dim_out: int, time_emb_dim: int, groups: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.SiLU(), nn.Linear(time_emb_dim, dim_out * 2))
        self.block1 = Block(dim, dim_out, groups)
        self.block2 = Block(dim_out, dim_out, groups)
        self.res_conv = nn.Conv2d(dim, dim_out, 1) if dim != dim_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        scale_shift = self.mlp(emb)[:, :, None, None].chunk(2, dim=1)
        return self.block2(self.block1(x, scale_shift)) + self.res_conv(x)


class LinearAttention(nn.Module):
    """Softmax over channels for q, over positions for k; v / (h·w); out conv then a channel LayerNorm."""

    def __init__(self, dim: int, heads: int = 4, dim_head: int = 32):
        super().__init__()
        self.scale = dim_head**-0.5
        self.heads = heads
        hidden = dim_head * heads
        self.to_qkv = nn.Conv2d(dim, hidden * 3, 1, bias=False)
        self.to_out = nn.Sequential(nn.Conv2d(hidden, dim, 1), ChannelNorm(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        q, k, v = (t.reshape(b, self.heads, -1, h * w) for t in self.to_qkv(x).chunk(3, dim=1))
        q = q.softmax(dim=-2) * self.scale
        k = k.softmax(dim=-1)
        v = v / (h * w)
        context = torch.einsum("bhdn,bhen->bhde", k, v)
        out = torch.einsum("bhde,bhdn->bhen", context, q)
        return self.to_out(out.reshape(b, -1, h, w))


class Attention(nn.Module):
    """Full softmax attention over positions (the middle block)."""

    def __init__(self, dim: int, heads: int = 4, dim_head: int = 32):
        super().__init__()
        self.scale = dim_head**-0.5
        self.heads = heads
        hidden = dim_head * heads
        self.to_qkv = nn.Conv2d(dim, hidden * 3, 1, bias=False)
        self.to_out = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        q, k, v = (t.reshape(b, self.heads, -1, h * w) for t in self.to_qkv(x).chunk(3, dim=1))
        sim = torch.einsum("bhdi,bhdj->bhij", q * self.scale, k)
        out = torch.einsum("bhij,bhdj->bhid", sim.softmax(dim=-1), v)  # (b, heads, n, d)
        return self.to_out(out.permute(0, 1, 3, 2).reshape(b, -1, h, w))


class _Up(nn.Sequential):
    """Nearest x2 then a 3x3 conv (keys ``1.weight``, ``1.bias``)."""

    def __init__(self, dim: int, dim_out: int):
        super().__init__(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(dim, dim_out, 3, padding=1))


class RDDMUnet(nn.Module):
    """One official RDDM U-Net: ``input_channels`` in (x and any conditions), ``out_dim`` out."""

    def __init__(self, input_channels: int, out_dim: int, dim: int, init_dim: int | None,
                 dim_mults: tuple[int, ...], groups: int):
        super().__init__()
        init_dim = init_dim or dim
        self.init_conv = nn.Conv2d(input_channels, init_dim, 7, padding=3)
        dims = [init_dim, *(dim * m for m in dim_mults)]
        in_out = list(zip(dims[:-1], dims[1:]))
        time_dim = dim * 4
        self.dim = dim
        self.time_mlp = nn.Sequential(_SinCos(dim), nn.Linear(dim, time_dim), nn.GELU(), nn.Linear(time_dim, time_dim))

        def block(a: int, b: int) -> ResnetBlock:
            return ResnetBlock(a, b, time_dim, groups)

        self.downs = nn.ModuleList()
        for i, (d_in, d_out) in enumerate(in_out):
            last = i == len(in_out) - 1
            self.downs.append(nn.ModuleList([
                block(d_in, d_in), block(d_in, d_in), PreNormResidual(d_in, LinearAttention(d_in)),
                nn.Conv2d(d_in, d_out, 4, 2, 1) if not last else nn.Conv2d(d_in, d_out, 3, padding=1),
            ]))
        mid = dims[-1]
        self.mid_block1 = block(mid, mid)
        self.mid_attn = PreNormResidual(mid, Attention(mid))
        self.mid_block2 = block(mid, mid)
        self.ups = nn.ModuleList()
        for i, (d_in, d_out) in enumerate(reversed(in_out)):
            last = i == len(in_out) - 1
            self.ups.append(nn.ModuleList([
                block(d_out + d_in, d_out), block(d_out + d_in, d_out), PreNormResidual(d_out, LinearAttention(d_out)),
                _Up(d_out, d_in) if not last else nn.Conv2d(d_out, d_in, 3, padding=1),
            ]))
        self.final_res_block = block(dim * 2, dim)
        self.final_conv = nn.Conv2d(dim, out_dim, 1)

    def forward(self, x: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        x = self.init_conv(x)
        r = x.clone()
        t = self.time_mlp(time.to(self.final_conv.weight.dtype))
        skips = []
        for block1, block2, attn, down in self.downs:
            x = block1(x, t)
            skips.append(x)
            x = attn(block2(x, t))
            skips.append(x)
            x = down(x)
        x = self.mid_block2(self.mid_attn(self.mid_block1(x, t)), t)
        for block1, block2, attn, up in self.ups:
            x = block1(torch.cat((x, skips.pop()), dim=1), t)
            x = attn(block2(torch.cat((x, skips.pop()), dim=1), t))
            x = up(x)
        return self.final_conv(self.final_res_block(torch.cat((x, r), dim=1), t))


class _SinCos(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return sinusoidal_sin_cos(t, self.dim)


class RDDMUnetRes(nn.Module):
    """The official ``UnetRes``; see the module docstring for the mapping.

    ``in_channels`` counts x and cond together (the official Unet's input_channels); ``out_channels`` is
    ``num_unet`` × the image channels (the official ``channels``). ``dim``, ``init_dim``, ``dim_mults``,
    ``resnet_block_groups``, ``num_unet`` and ``objective`` are the official constructor's; ``time_scale``
    multiplies the noise level into the official time input.
    """

    def __init__(self, in_channels: int, out_channels: int, noise_level_dim: int = 2, dim: int = 64,
                 init_dim: int | None = None, dim_mults: tuple[int, ...] = (1, 2, 4, 8),
                 resnet_block_groups: int = 8, num_unet: int = 2, objective: str = "pred_res_noise",
                 time_scale: float = 1.0):
        super().__init__()
        if num_unet not in (1, 2):
            raise ValueError(f"num_unet must be 1 or 2, got {num_unet}")
        if noise_level_dim != 2:
            raise ValueError(f"rddm_unetres takes the RDDM method's two noise-level columns, got {noise_level_dim}")
        if out_channels % num_unet:
            raise ValueError(f"out_channels {out_channels} is not a multiple of num_unet {num_unet}")
        if num_unet == 1 and objective not in ("pred_res", "pred_noise"):
            raise ValueError(f"one U-Net predicts 'pred_res' or 'pred_noise', got objective {objective!r}")
        if init_dim not in (None, dim):
            raise ValueError(f"init_dim must equal dim (the final block takes 2·dim channels), got {init_dim}")
        dim_mults = tuple(dim_mults)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.num_unet, self.objective, self.time_scale = num_unet, objective, float(time_scale)
        self.multiple = 2 ** (len(dim_mults) - 1)
        per = out_channels // num_unet
        self.unet0 = RDDMUnet(in_channels, per, dim, init_dim, dim_mults, resnet_block_groups)
        if num_unet == 2:
            self.unet1 = RDDMUnet(in_channels, per, dim, init_dim, dim_mults, resnet_block_groups)

    def forward(self, x: torch.Tensor, noise_level, cond: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, C, H, W), noise_level (B, 2), cond (B, C, H, W) or None -> (B, out_channels, H, W)."""
        h = x if cond is None else torch.cat([x, cond.to(x.dtype)], dim=1)
        if h.shape[1] != self.in_channels:
            raise ValueError(f"rddm_unetres expects {self.in_channels} input channels (x + cond), got {h.shape[1]}")
        level = format_noise_level(noise_level, h.shape[0], 2, h.device) * self.time_scale
        h, (height, width) = pad_to_multiple(h, self.multiple)
        if self.num_unet == 2:
            out = torch.cat([self.unet0(h, level[:, 0]), self.unet1(h, level[:, 1])], dim=1)
        else:
            out = self.unet0(h, level[:, 0] if self.objective == "pred_res" else level[:, 1])
        return out[:, :, :height, :width]
