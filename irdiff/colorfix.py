"""Colour correction of a restored image towards its input's low frequencies (optional post-processing).

Diffusion restorers that predict noise (SR3, IR-SDE) can drift in colour when their networks are not
trained to convergence: the per-channel mean of ε̂ is barely constrained by the loss, yet the samplers
amplify it at high noise (see tests/test_e2e_methods.py). Diffusion-based restoration practice (StableSR,
DiffBIR) corrects this after sampling by taking the colour from the degraded input:

- ``wavelet``: out − L(out) + L(ref), with L an à-trous low-pass (``levels`` passes of the 3×3 binomial
  kernel [1 2 1]ᵀ[1 2 1]/16 dilated 1, 2, 4, …, replicate border): the output's detail, the input's colour
  and shading below ~2^levels px. Right when the degradation leaves low frequencies intact (noise, rain,
  JPEG, bicubic SR); wrong for deblurring's wide kernels or inpainting's holes.
- ``adain``: per-channel mean and standard deviation of ``out`` matched to ``ref``'s, over the whole image
  or, when the Restorer tiles, over each tile (tiles are blended, but their statistics differ).

Not part of any paper's method: off by default (``sample.color_fix: none``) and never used by the
benchmarks unless a config asks for it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

COLOR_FIXES = ("none", "wavelet", "adain")


def low_pass(x: torch.Tensor, levels: int = 5) -> torch.Tensor:
    """À-trous binomial low-pass of a (B, C, H, W) batch (the coarse band after ``levels`` levels)."""
    c = x.shape[1]
    k = torch.tensor([1.0, 2.0, 1.0], dtype=x.dtype, device=x.device)
    kernel = (k[:, None] * k[None, :] / 16).expand(c, 1, 3, 3)
    for i in range(levels):
        d = 2**i
        x = F.conv2d(F.pad(x, (d, d, d, d), mode="replicate"), kernel, dilation=d, groups=c)
    return x


def wavelet_fix(out: torch.Tensor, ref: torch.Tensor, levels: int = 5) -> torch.Tensor:
    return out - low_pass(out, levels) + low_pass(ref, levels)


def adain_fix(out: torch.Tensor, ref: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    dims = (-2, -1)
    mo, so = out.mean(dims, keepdim=True), out.std(dims, keepdim=True, correction=0)
    mr, sr = ref.mean(dims, keepdim=True), ref.std(dims, keepdim=True, correction=0)
    return (out - mo) / (so + eps) * sr + mr


def color_fix(name: str | None, out: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Apply the named correction to a (B, C, H, W) output given the degraded input ``ref`` (same size)."""
    if name in (None, "none"):
        return out
    if out.shape != ref.shape:
        raise ValueError(f"color_fix: output {tuple(out.shape)} and reference {tuple(ref.shape)} differ")
    if name == "wavelet":
        return wavelet_fix(out, ref)
    if name == "adain":
        return adain_fix(out, ref)
    raise ValueError(f"unknown color_fix {name!r}; known: {', '.join(COLOR_FIXES)}")
