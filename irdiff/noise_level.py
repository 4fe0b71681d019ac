"""Blind estimate of the standard deviation of white Gaussian noise in an image (Donoho's MAD rule).

The finest diagonal band of the orthonormal Haar transform, HH = (a - b - c + d) / 2 over each 2x2
block, keeps white noise at its own std while it removes flat regions, ramps and (largely) edges, so
sigma ~ median(|HH|) / 0.6745 (0.6745 = the median of |N(0, 1)|). The median ignores the minority of
coefficients that texture and edges make large; on textured photos the estimate still reads high at low
noise (a few units at sigma 0-5), and on clipped 8-bit files it reads the noise that survived clipping.

Used by noise-map models (``method: {name: regression, noise_map: true}``) when no sigma is given.
"""

from __future__ import annotations

from torch import Tensor

# median of |N(0, 1)|: the MAD of a unit Gaussian
MAD_TO_STD = 0.6744897501960817

__all__ = ["MAD_TO_STD", "diagonal_band", "estimate_sigma"]


def diagonal_band(img: Tensor) -> Tensor:
    """The finest Haar diagonal band, (B, C, H // 2, W // 2), of a (B, C, H, W) image (an odd last row or
    column is dropped). Orthonormal: white noise of std s stays std s."""
    h, w = img.shape[-2] // 2 * 2, img.shape[-1] // 2 * 2
    x = img[..., :h, :w]
    return (x[..., 0::2, 0::2] - x[..., 0::2, 1::2] - x[..., 1::2, 0::2] + x[..., 1::2, 1::2]) / 2


def estimate_sigma(img: Tensor, scale: float = 255.0) -> Tensor:
    """Noise std of each image of a (B, C, H, W) or (C, H, W) batch in [0, 1] units, times ``scale`` (the
    0-255 scale by default, as papers quote sigma): a (B,) float tensor (a 0-dim one for a single image).
    All channels' coefficients are pooled (the noise is assumed the same in every channel)."""
    x = img[None] if img.dim() == 3 else img
    if x.dim() != 4 or min(x.shape[-2:]) < 2:
        raise ValueError(f"estimate_sigma: expected (B, C, H, W) or (C, H, W) with H, W >= 2, got {tuple(img.shape)}")
    band = diagonal_band(x.float()).abs().flatten(1)
    sigma = band.median(dim=1).values / MAD_TO_STD * scale
    return sigma[0] if img.dim() == 3 else sigma
