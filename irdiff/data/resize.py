"""MATLAB-compatible bicubic resizing (BasicSR's `imresize`) and mod-crop.

Kept apart from the degradations because the data pipeline and inference use it too (SR inputs are
bicubic-upsampled to the output size before any method sees them).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor


def _batched(img: Tensor, where: str) -> tuple[Tensor, bool]:
    if not isinstance(img, Tensor) or img.dim() not in (3, 4):
        shape = tuple(img.shape) if isinstance(img, Tensor) else type(img).__name__
        raise ValueError(f"{where}: expected a (C, H, W) or (B, C, H, W) tensor, got {shape}")
    if not img.is_floating_point():
        raise ValueError(f"{where}: expected a float tensor in [0, 1], got {img.dtype}")
    return (img[None], True) if img.dim() == 3 else (img, False)


def _unbatch(x: Tensor, squeeze: bool) -> Tensor:
    return x[0] if squeeze else x



def _cubic(x: Tensor) -> Tensor:
    # Keys' cubic with a = -0.5, as MATLAB's imresize.
    ax = x.abs()
    ax2, ax3 = ax**2, ax**3
    near = (1.5 * ax3 - 2.5 * ax2 + 1) * (ax <= 1)
    return near + (-0.5 * ax3 + 2.5 * ax2 - 4 * ax + 2) * ((ax > 1) & (ax <= 2))


def _resize_matrix(in_len: int, out_len: int, scale: float, antialias: bool) -> Tensor:
    """(out_len, in_len) float64 matrix of MATLAB imresize bicubic weights, symmetric borders."""
    width = 4.0
    if scale < 1 and antialias:
        width = width / scale
    x = torch.arange(1, out_len + 1, dtype=torch.float64)
    u = x / scale + 0.5 * (1 - 1 / scale)  # output pixel centre in input coordinates (1-based)
    left = torch.floor(u - width / 2)
    p = math.ceil(width) + 2
    idx = left[:, None] + torch.arange(p, dtype=torch.float64)[None]
    dist = u[:, None] - idx
    w = scale * _cubic(dist * scale) if (scale < 1 and antialias) else _cubic(dist)
    w = w / w.sum(1, keepdim=True)
    # MATLAB mirrors out-of-range indices, repeating the edge pixel: [1..n, n..1] periodically.
    aux = torch.cat([torch.arange(in_len), torch.arange(in_len - 1, -1, -1)])
    j = aux[torch.remainder(idx.long() - 1, 2 * in_len)]
    m = torch.zeros(out_len, in_len, dtype=torch.float64)
    m.scatter_add_(1, j, w)
    return m


def imresize(img: Tensor, scale: float | None = None, out_size: Sequence[int] | None = None,
             antialias: bool = True) -> Tensor:
    """MATLAB-compatible bicubic `imresize` (Keys kernel a=-0.5, antialiased when downscaling),
    for down- and up-scaling, as BasicSR's `imresize`.

    Give `scale` (output size ceil(scale * input), MATLAB's rule) or `out_size` (H, W). Works in
    float throughout (MATLAB rounds to uint8 between the two passes on uint8 inputs; BasicSR and we
    do not). Not clipped: bicubic overshoots slightly at edges. The dimension with the smaller
    scale is resized first, as MATLAB does.
    """
    x, sq = _batched(img, "imresize")
    h, w = x.shape[-2:]
    if (scale is None) == (out_size is None):
        raise ValueError("imresize: give exactly one of scale or out_size")
    if scale is not None:
        if not scale > 0:
            raise ValueError(f"imresize: scale must be > 0, got {scale}")
        # round() guards against 255 * (1/3) = 85.00000000000001 -> 86
        oh, ow = (math.ceil(round(n * scale, 9)) for n in (h, w))
        sh = sw = float(scale)
    else:
        oh, ow = (int(v) for v in out_size)
        if oh < 1 or ow < 1:
            raise ValueError(f"imresize: out_size must be positive, got {tuple(out_size)}")
        sh, sw = oh / h, ow / w
    mh = _resize_matrix(h, oh, sh, antialias).to(x.device, x.dtype)
    mw = _resize_matrix(w, ow, sw, antialias).to(x.device, x.dtype)
    if sh <= sw:
        out = (mh @ x) @ mw.T
    else:
        out = mh @ (x @ mw.T)
    return _unbatch(out, sq)


def mod_crop(img: Tensor, scale: int) -> Tensor:
    """Crop the bottom/right so that H and W are multiples of `scale` (BasicSR's mod_crop)."""
    h, w = img.shape[-2:]
    return img[..., : h - h % scale, : w - w % scale]
