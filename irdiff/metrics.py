"""PSNR and SSIM with BasicSR's conventions, and folder evaluation.

Conventions (BasicSR ``basicsr/metrics``), so numbers compare with published tables:

- Images are H x W x C uint8. Float inputs (torch tensors (C, H, W) / (1, C, H, W) / (H, W), or float
  numpy arrays H x W x C) are taken as [0, 1] and first rounded to 8 bit like ``tensor2img``: clip to
  [0, 1], x255, round. Everything after that is float64.
- ``crop_border`` pixels are removed from every side before anything else.
- ``y_channel``: the luma of ITU-R BT.601 (``rgb2ycbcr`` with ``only_y``), Y in [16, 235] on the
  0-255 scale, not rounded. Inputs are RGB (BasicSR's ``bgr2ycbcr`` on OpenCV's BGR is the same).
- PSNR = 10 log10(255^2 / MSE) over all pixels and channels; identical images give ``inf``.
- SSIM: an 11 x 11 Gaussian window with sigma 1.5, statistics by 'valid' filtering (the 5-pixel
  border of cv2.filter2D's output is discarded, so no padding enters), C1 = (0.01 * 255)^2,
  C2 = (0.03 * 255)^2, the mean SSIM map per channel, then the mean over channels.

LPIPS (AlexNet) is available only from a local weight file: :func:`lpips_from_path`.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage

__all__ = ["to_uint8_image", "rgb_to_y", "psnr", "ssim", "evaluate_folders", "LPIPS", "lpips_from_path"]


def to_uint8_image(img: Any) -> np.ndarray:
    """Any supported image -> H x W x C uint8 (see the module docstring for the conventions)."""
    if isinstance(img, np.ndarray):
        if img.dtype == np.uint8:
            arr = img
        elif np.issubdtype(img.dtype, np.floating):
            finite_max = float(np.nanmax(img)) if img.size else 0.0
            if finite_max > 2.0:
                raise ValueError(
                    f"float image with values up to {finite_max:.4g}: float inputs are taken as [0, 1];"
                    " pass 0-255 images as uint8"
                )
            arr = np.round(np.clip(np.nan_to_num(img.astype(np.float32), nan=0.0), 0, 1) * np.float32(255))
            arr = arr.astype(np.uint8)
        else:
            raise ValueError(f"unsupported image dtype {img.dtype}: use uint8, or float in [0, 1]")
    else:
        if not isinstance(img, torch.Tensor):
            raise TypeError(f"expected a numpy array or torch tensor, got {type(img).__name__}")
        if img.dtype == torch.uint8:
            raise ValueError("uint8 tensors are ambiguous (CHW or HWC?): pass an H x W x C numpy array")
        from irdiff.data.io import to_uint8

        arr = to_uint8(img.float())
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3:
        raise ValueError(f"expected an H x W x C image, got shape {arr.shape}")
    return arr


def rgb_to_y(img: np.ndarray) -> np.ndarray:
    """H x W x 3 RGB on the 0-255 scale -> H x W x 1 float64 BT.601 luma in [16, 235]."""
    img = np.asarray(img, dtype=np.float64)
    y = 16.0 + (65.481 * img[..., 0] + 128.553 * img[..., 1] + 24.966 * img[..., 2]) / 255.0
    return y[..., None]


def _prepare(img1: Any, img2: Any, crop_border: int, y_channel: bool) -> tuple[np.ndarray, np.ndarray]:
    a, b = to_uint8_image(img1), to_uint8_image(img2)
    if a.shape != b.shape:
        raise ValueError(f"image shapes differ: {a.shape} vs {b.shape}")
    if crop_border < 0:
        raise ValueError(f"crop_border must be >= 0, got {crop_border}")
    if crop_border:
        if 2 * crop_border >= min(a.shape[:2]):
            raise ValueError(f"crop_border {crop_border} leaves nothing of a {a.shape[0]}x{a.shape[1]} image")
        a = a[crop_border:-crop_border, crop_border:-crop_border]
        b = b[crop_border:-crop_border, crop_border:-crop_border]
    if y_channel:
        if a.shape[2] == 3:
            return rgb_to_y(a), rgb_to_y(b)
        if a.shape[2] != 1:
            raise ValueError(f"y_channel needs 1 or 3 channels, got {a.shape[2]}")
    return a.astype(np.float64), b.astype(np.float64)


def psnr(img1: Any, img2: Any, crop_border: int = 0, y_channel: bool = False) -> float:
    """PSNR in dB on the 8-bit scale (BasicSR ``calculate_psnr``); ``inf`` for identical images."""
    a, b = _prepare(img1, img2, crop_border, y_channel)
    mse = float(np.mean((a - b) ** 2))
    if mse == 0:
        return math.inf
    return 10.0 * math.log10(255.0**2 / mse)


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    # cv2.getGaussianKernel(11, 1.5): exp(-(i - 5)^2 / (2 sigma^2)), normalised to sum 1
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    k = np.exp(-(x**2) / (2 * sigma**2))
    return k / k.sum()


def _filter_valid(img: np.ndarray, k: np.ndarray) -> np.ndarray:
    r = len(k) // 2
    out = ndimage.correlate1d(img, k, axis=0, mode="mirror")
    out = ndimage.correlate1d(out, k, axis=1, mode="mirror")
    return out[r:-r, r:-r]


def _ssim_channel(a: np.ndarray, b: np.ndarray) -> float:
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    k = _gaussian_window()
    mu1, mu2 = _filter_valid(a, k), _filter_valid(b, k)
    mu1_sq, mu2_sq, mu1_mu2 = mu1**2, mu2**2, mu1 * mu2
    sigma1_sq = _filter_valid(a * a, k) - mu1_sq
    sigma2_sq = _filter_valid(b * b, k) - mu2_sq
    sigma12 = _filter_valid(a * b, k) - mu1_mu2
    ssim_map = ((2 * mu1_mu2 + c1) * (2 * sigma12 + c2)) / (
        (mu1_sq + mu2_sq + c1) * (sigma1_sq + sigma2_sq + c2)
    )
    return float(ssim_map.mean())


def ssim(img1: Any, img2: Any, crop_border: int = 0, y_channel: bool = False) -> float:
    """SSIM (BasicSR ``calculate_ssim``): mean over channels of the mean 'valid' SSIM map."""
    a, b = _prepare(img1, img2, crop_border, y_channel)
    if min(a.shape[:2]) < 11:
        raise ValueError(f"SSIM needs images of at least 11x11 pixels (after cropping), got {a.shape[:2]}")
    return float(np.mean([_ssim_channel(a[..., c], b[..., c]) for c in range(a.shape[2])]))


def evaluate_folders(
    pred_dir: str | os.PathLike, gt_dir: str | os.PathLike, crop_border: int = 0, y_channel: bool = False,
    niqe: bool = False,
) -> dict[str, Any]:
    """PSNR/SSIM of every prediction against the ground truth with the same file stem (or of one image
    file against another); with ``niqe`` also each prediction's NIQE (``irdiff.niqe``, no reference,
    lower = more natural; on the whole image).

    Returns ``{"psnr": mean, "ssim": mean, "count": n, "crop_border": .., "y_channel": ..,
    "per_image": {stem: {"psnr": .., "ssim": ..}}}``. Missing or extra files, duplicate stems and
    size mismatches raise a one-line ValueError naming the files.
    """
    from irdiff.data.io import list_images, read_image

    def by_stem(folder):
        files: dict[str, Path] = {}
        for p in list_images(folder):
            if p.stem in files:
                raise ValueError(
                    f"two images with stem {p.stem!r} in {folder}: {files[p.stem].name}, {p.name}"
                )
            files[p.stem] = p
        return files

    if Path(pred_dir).is_file() and Path(gt_dir).is_file():  # two files: one pair, whatever their names
        preds, gts = {Path(gt_dir).stem: Path(pred_dir)}, {Path(gt_dir).stem: Path(gt_dir)}
    else:
        preds, gts = by_stem(pred_dir), by_stem(gt_dir)
    missing = sorted(set(gts) - set(preds))
    extra = sorted(set(preds) - set(gts))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"no prediction in {pred_dir} for {', '.join(gts[s].name for s in missing)}")
        if extra:
            parts.append(f"no ground truth in {gt_dir} for {', '.join(preds[s].name for s in extra)}")
        raise ValueError("folders do not match: " + "; ".join(parts))

    per_image: dict[str, dict[str, float]] = {}
    for stem in sorted(gts):
        pred, gt = to_uint8_image(read_image(preds[stem])), to_uint8_image(read_image(gts[stem]))
        if pred.shape != gt.shape:
            raise ValueError(
                f"size mismatch: {preds[stem]} is {pred.shape[1]}x{pred.shape[0]},"
                f" {gts[stem]} is {gt.shape[1]}x{gt.shape[0]}"
            )
        per_image[stem] = {
            "psnr": psnr(pred, gt, crop_border, y_channel),
            "ssim": ssim(pred, gt, crop_border, y_channel),
        }
        if niqe:
            from irdiff.niqe import niqe as niqe_score

            try:
                per_image[stem]["niqe"] = niqe_score(pred)
            except ValueError as e:
                raise ValueError(f"{preds[stem]}: {e}") from None
    n = len(per_image)
    means = {"niqe": sum(v["niqe"] for v in per_image.values()) / n} if niqe else {}
    return {
        "psnr": sum(v["psnr"] for v in per_image.values()) / n,
        "ssim": sum(v["ssim"] for v in per_image.values()) / n,
        **means,
        "count": n,
        "crop_border": crop_border,
        "y_channel": y_channel,
        "per_image": per_image,
    }


# ---------------------------------------------------------------------------------------------- LPIPS

# (in, out, kernel, stride, padding) of AlexNet's convolutions, and where the 5 LPIPS taps sit
_ALEX_CONVS = [
    (3, 64, 11, 4, 2),
    (64, 192, 5, 1, 2),
    (192, 384, 3, 1, 1),
    (384, 256, 3, 1, 1),
    (256, 256, 3, 1, 1),
]
# parameter names in the `lpips` package's LPIPS(net="alex").state_dict(): net.slice{k}.{index}
_ALEX_KEYS = ["net.slice1.0", "net.slice2.3", "net.slice3.6", "net.slice4.8", "net.slice5.10"]


class LPIPS(torch.nn.Module):
    """LPIPS (Zhang et al. 2018, AlexNet variant, v0.1) with weights from a local file only.

    ``forward(img1, img2)`` takes float tensors (B, 3, H, W) in [0, 1] and returns (B,) distances.
    Build it with :func:`lpips_from_path`; nothing is ever downloaded.
    """

    def __init__(self):
        super().__init__()
        self.convs = torch.nn.ModuleList(torch.nn.Conv2d(i, o, k, s, p) for i, o, k, s, p in _ALEX_CONVS)
        self.lins = torch.nn.ModuleList(torch.nn.Conv2d(c[1], 1, 1, bias=False) for c in _ALEX_CONVS)
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))

    def _features(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = ((2 * x - 1) - self.shift) / self.scale
        feats = []
        for i, conv in enumerate(self.convs):
            if i in (1, 2):
                h = torch.nn.functional.max_pool2d(h, 3, 2)
            h = torch.relu(conv(h))
            feats.append(h / (h.pow(2).sum(1, keepdim=True).sqrt() + 1e-10))
        return feats

    def forward(self, img1: torch.Tensor, img2: torch.Tensor) -> torch.Tensor:
        f1, f2 = self._features(img1), self._features(img2)
        return sum(lin((a - b) ** 2).mean(dim=(1, 2, 3)) for lin, a, b in zip(self.lins, f1, f2))


def lpips_from_path(weights_path: str | os.PathLike) -> LPIPS:
    """Load LPIPS-Alex from a local .safetensors file holding the `lpips` package's state_dict keys
    (``net.slice1.0.weight`` ... ``net.slice5.10.bias``, or torchvision AlexNet's ``features.{i}.*``
    names, and the linear heads ``lin0.model.1.weight`` ... ``lin4`` or ``lins.{k}.model.1.weight``,
    as in the package's ``weights/v0.1/alex.pth``). Raises FileNotFoundError / ValueError, one line.
    """
    from safetensors.torch import load_file

    path = Path(weights_path)
    if not path.is_file():
        raise FileNotFoundError(f"LPIPS needs a local weight file (no download is attempted); none at {path}")
    if path.suffix != ".safetensors":
        raise ValueError(f"LPIPS weights must be a .safetensors file (pickles are not loaded), got {path}")
    sd = load_file(str(path))
    model, state, missing = LPIPS(), {}, []
    for k, prefix in enumerate(_ALEX_KEYS):
        index = prefix.rsplit(".", 1)[1]
        for part in ("weight", "bias"):
            key = next((n for n in (f"{prefix}.{part}", f"features.{index}.{part}") if n in sd), None)
            if key is None:
                missing.append(f"{prefix}.{part}")
            else:
                state[f"convs.{k}.{part}"] = sd[key]
        lin = next((n for n in (f"lin{k}.model.1.weight", f"lins.{k}.model.1.weight") if n in sd), None)
        if lin is None:
            missing.append(f"lin{k}.model.1.weight")
        else:
            state[f"lins.{k}.weight"] = sd[lin]
    if missing:
        raise ValueError(f"LPIPS weight file {path} lacks {', '.join(missing)}")
    state["shift"], state["scale"] = model.shift, model.scale
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"LPIPS weight file {path} has wrong shapes: {' '.join(str(e).split())}") from e
    return model.eval().requires_grad_(False)
