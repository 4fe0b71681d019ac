"""Cold Diffusion's U-Net, as in the authors' deblurring code (a lucidrains-style ConvNeXt U-Net).

Re-implemented from the architecture of ``Unet`` in Cold-Diffusion-Models/deblurring-diffusion-pytorch
(commit f8b1379); module and parameter names follow it, so an official state_dict loads unchanged.

Mapping to irdiff's contract: ``ours(x, t, None) == official(x, t)``, where ``t`` is the official time
input: the 0-based step index (s − 1 for the state with s blur operators applied). The Cold method
feeds it with ``level: index``. ``cond`` must be None (Cold's restorer sees only x_s).

The architecture, per level (dims = [channels, dim·m for m in dim_mults]):
down: ConvNext(in→out, no norm at level 0), ConvNext(out→out), Residual(PreNorm(LinearAttention)),
4x4 stride-2 conv except at the last level; middle: ConvNext, attention, ConvNext; up (one fewer
level): ConvNext(2·out→in), ConvNext(in→in), attention, 4x4 stride-2 transposed conv at every level
(the official loop's ``is_last`` test never fires); final: ConvNext(dim→dim) without time input, 1x1
conv. ``residual`` adds the input to the output. The time embedding is sinusoidal (sin then cos) of
the raw time, then Linear(dim, 4·dim), GELU, Linear(4·dim, dim).
"""

from __future__ import annotations

import torch
from torch import nn

from irdiff.nets.layers import format_noise_level, pad_to_multiple, sinusoidal_sin_cos


class ChannelLayerNorm(nn.Module):
    """LayerNorm over channels with parameters ``g``, ``b`` of shape (1, C, 1, 1), eps 1e-5 (biased var)."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.g = nn.Parameter(torch.ones(1, dim, 1, 1))
        self.b = nn.Parameter(torch.zeros(1, dim, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        var = torch.var(x, dim=1, unbiased=False, keepdim=True)
        mean = torch.mean(x, dim=1, keepdim=True)
        return (x - mean) / (var + self.eps).sqrt() * self.g + self.b


class PreNormResidual(nn.Module):
    """x + fn(norm(x)); parameters under ``fn.fn.*`` and ``fn.norm.*`` (Residual(PreNorm(...)) officially)."""

    def __init__(self, dim: int, fn: nn.Module):
        super().__init__()
        self.fn = _PreNorm(dim, fn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x) + x


class _PreNorm(nn.Module):
    def __init__(self, dim: int, fn: nn.Module):
        super().__init__()
        self.fn = fn
        self.norm = ChannelLayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(self.norm(x))


class ConvNextBlock(nn.Module):
    """Depthwise 7x7, + projected time, [LayerNorm], 3x3 conv to mult·out, GELU, 3x3 conv; + 1x1 skip."""

    def __init__(self, dim: int, dim_out: int, time_emb_dim: int | None = None, mult: int = 2, norm: bool = True):
        super().__init__()
        self.mlp = nn.Sequential(nn.GELU(), nn.Linear(time_emb_dim, dim)) if time_emb_dim else None
        self.ds_conv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.net = nn.Sequential(
            ChannelLayerNorm(dim) if norm else nn.Identity(),
            nn.Conv2d(dim, dim_out * mult, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(dim_out * mult, dim_out, 3, padding=1),
        )
        self.res_conv = nn.Conv2d(dim, dim_out, 1) if dim != dim_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.ds_conv(x)
        if self.mlp is not None:
            if emb is None:
                raise ValueError("this block was built with a time embedding but got none")
            h = h + self.mlp(emb)[:, :, None, None]
        return self.net(h) + self.res_conv(x)


class LinearAttention(nn.Module):
    """Linear attention: softmax over positions on keys only, q scaled by dim_head^-0.5."""

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
        q = q * self.scale
        k = k.softmax(dim=-1)
        context = torch.einsum("bhdn,bhen->bhde", k, v)
        out = torch.einsum("bhde,bhdn->bhen", context, q)
        return self.to_out(out.reshape(b, -1, h, w))


class ColdUnet(nn.Module):
    """The official Cold Diffusion deblurring U-Net; see the module docstring for the mapping.

    ``in_channels`` / ``out_channels`` are the official ``channels`` / ``out_dim``; ``dim``, ``dim_mults``,
    ``with_time_emb`` and ``residual`` are the official constructor's. Inputs of any size are
    reflect-padded to a multiple of 2^(levels − 1) and cropped back (the official code needs exact sizes).
    """

    def __init__(self, in_channels: int = 3, out_channels: int | None = None, noise_level_dim: int = 1,
                 dim: int = 64, dim_mults: tuple[int, ...] = (1, 2, 4, 8), with_time_emb: bool = True,
                 residual: bool = False):
        super().__init__()
        if noise_level_dim not in (0, 1):
            raise ValueError(f"cold_unet takes one time value per sample (noise_level_dim 1), got {noise_level_dim}")
        dim_mults = tuple(dim_mults)
        out_channels = out_channels or in_channels
        self.in_channels, self.out_channels = in_channels, out_channels
        self.residual = residual
        self.multiple = 2 ** (len(dim_mults) - 1)
        dims = [in_channels, *(dim * m for m in dim_mults)]
        in_out = list(zip(dims[:-1], dims[1:]))
        self.dim = dim
        if with_time_emb:
            time_dim = dim
            self.time_mlp = nn.Sequential(_SinCos(dim), nn.Linear(dim, dim * 4), nn.GELU(), nn.Linear(dim * 4, dim))
        else:
            time_dim = None
            self.time_mlp = None

        self.downs = nn.ModuleList()
        for i, (d_in, d_out) in enumerate(in_out):
            last = i == len(in_out) - 1
            self.downs.append(nn.ModuleList([
                ConvNextBlock(d_in, d_out, time_dim, norm=i != 0),
                ConvNextBlock(d_out, d_out, time_dim),
                PreNormResidual(d_out, LinearAttention(d_out)),
                nn.Conv2d(d_out, d_out, 4, 2, 1) if not last else nn.Identity(),
            ]))
        mid = dims[-1]
        self.mid_block1 = ConvNextBlock(mid, mid, time_dim)
        self.mid_attn = PreNormResidual(mid, LinearAttention(mid))
        self.mid_block2 = ConvNextBlock(mid, mid, time_dim)

        self.ups = nn.ModuleList()
        for d_in, d_out in reversed(in_out[1:]):
            self.ups.append(nn.ModuleList([
                ConvNextBlock(d_out * 2, d_in, time_dim),
                ConvNextBlock(d_in, d_in, time_dim),
                PreNormResidual(d_in, LinearAttention(d_in)),
                nn.ConvTranspose2d(d_in, d_in, 4, 2, 1),
            ]))
        self.final_conv = nn.Sequential(ConvNextBlock(dim, dim), nn.Conv2d(dim, out_channels, 1))

    def forward(self, x: torch.Tensor, noise_level=None, cond: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, C, H, W); noise_level: the official time, (B,) or a number; cond must be None."""
        if cond is not None:
            raise ValueError("cold_unet takes no condition (Cold Diffusion's restorer sees only x_s)")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"cold_unet expects {self.in_channels} input channels, got {x.shape[1]}")
        emb = None
        if self.time_mlp is not None:
            if noise_level is None:
                raise ValueError("cold_unet was built with with_time_emb=True but got noise_level=None")
            t = format_noise_level(noise_level, x.shape[0], 1, x.device)[:, 0]
            emb = self.time_mlp(t.to(self.time_mlp[1].weight.dtype))
        h, (height, width) = pad_to_multiple(x, self.multiple)
        orig = h
        skips = []
        for block1, block2, attn, down in self.downs:
            h = attn(block2(block1(h, emb), emb))
            skips.append(h)
            h = down(h)
        h = self.mid_block2(self.mid_attn(self.mid_block1(h, emb)), emb)
        for block1, block2, attn, up in self.ups:
            h = up(attn(block2(block1(torch.cat([h, skips.pop()], dim=1), emb), emb)))
        out = self.final_conv(h)
        if self.residual:
            out = out + orig
        return out[:, :, :height, :width]


class _SinCos(nn.Module):
    """The official SinusoidalPosEmb as a parameter-free module (keeps the official key numbering)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return sinusoidal_sin_cos(t, self.dim)

