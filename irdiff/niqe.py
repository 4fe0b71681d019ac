"""NIQE, the Natural Image Quality Evaluator (Mittal, Soundararajan & Bovik, IEEE SPL 2013,
"Making a Completely Blind Image Quality Analyzer"): a no-reference score, lower = more natural.

The image's luminance (0–255, BT.601 weights as MATLAB's ``rgb2gray``) is normalised into MSCN
coefficients (x − μ)/(σ + 1), with μ, σ local Gaussian-weighted statistics (7 × 7 window, std 7/6,
replicated borders). It is cut into 96 × 96 patches (the image is first cropped to whole patches) and,
at two scales (the second a MATLAB-bicubic half-size image, 48 × 48 patches over the same regions),
18 features describe each patch: an asymmetric generalised Gaussian (AGGD) fit of the MSCN values
(shape α and variance (σ_l² + σ_r²)/2) and of the products of each coefficient with its right (H),
lower (V), lower-right (D1) and lower-left (D2) neighbour (α, mean η, σ_l², σ_r² each); 36 in all.
The fits match moments as in the paper: with r̂ = E|x|² / E[x²], γ̂ = σ_l/σ_r and
R̂ = r̂ (γ̂³ + 1)(γ̂ + 1)/(γ̂² + 1)², α solves Γ(2/α)² / (Γ(1/α) Γ(3/α)) = R̂ (searched on a 0.001 grid),
η = (β_r − β_l) Γ(2/α)/Γ(1/α) with β = σ √(Γ(1/α)/Γ(3/α)).

A multivariate Gaussian (μ₁, Σ₁) of these features over pristine patches is the model of naturalness;
for the pristine model only patches whose sharpness (mean of σ over the patch) exceeds 0.75 of the
image's sharpest patch are kept. An image's score is the distance between the model and the Gaussian
(μ₂, Σ₂) of its own patches: √((μ₁ − μ₂)ᵀ ((Σ₁ + Σ₂)/2)⁺ (μ₁ − μ₂)).

irdiff's pristine model (``irdiff/assets/niqe_bsds400.json``) was fitted by ``scripts/fit_niqe.py`` on the
400 clean BSDS500 training images, not on the 125 images of the MATLAB release, and the products are
taken inside each patch without MATLAB's wrap-around (``circshift``). So absolute values differ from
MATLAB's ``niqe`` / other ports: compare NIQE values computed by this module with each other only.
Images must be at least 96 × 96; below 192 × 192 there is a single patch (Σ₂ = 0) and the score is noisy.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from scipy.special import gamma as gamma_fn

PATCH = 96
SHARPNESS_FRACTION = 0.75
DEFAULT_MODEL = Path(__file__).parent / "assets" / "niqe_bsds400.json"

_ALPHAS = np.arange(0.2, 10.0 + 1e-9, 0.001)
_RHO = gamma_fn(2 / _ALPHAS) ** 2 / (gamma_fn(1 / _ALPHAS) * gamma_fn(3 / _ALPHAS))


def gaussian_window(size: int = 7, sigma: float = 7 / 6) -> np.ndarray:
    """MATLAB's fspecial('gaussian', size, sigma): normalised to sum 1."""
    r = np.arange(size) - (size - 1) / 2
    g = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * sigma**2))
    return g / g.sum()


def luminance(img: Any) -> np.ndarray:
    """H x W float64 on the 0–255 scale: the BT.601 luma of an RGB image (MATLAB ``rgb2gray`` weights,
    not rounded), or the single channel of a grey one. Accepts what ``irdiff.metrics`` accepts."""
    from irdiff.metrics import to_uint8_image

    arr = to_uint8_image(img).astype(np.float64)
    if arr.shape[2] == 1:
        return arr[:, :, 0]
    if arr.shape[2] != 3:
        raise ValueError(f"NIQE: expected a grey or RGB image, got {arr.shape[2]} channels")
    return arr @ np.array([0.298936021293776, 0.587043074451121, 0.114020904255103])


def mscn(gray: np.ndarray, c: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(MSCN coefficients, local σ) of a 0–255 grey image; C = 1 keeps flat regions finite."""
    w = gaussian_window()
    mu = ndimage.correlate(gray, w, mode="nearest")
    var = ndimage.correlate(gray * gray, w, mode="nearest") - mu * mu
    sigma = np.sqrt(np.abs(var))
    return (gray - mu) / (sigma + c), sigma


def aggd_fit(x: np.ndarray) -> tuple[float, float, float, float]:
    """Moment-matching AGGD fit: (α, η, σ_l², σ_r²) with σ² the mean square of each side's values."""
    x = np.asarray(x, dtype=np.float64).ravel()
    # MATLAB splits at exactly 0; values within round-off of 0 (flat, e.g. saturated, regions give exact
    # zeros that a brightness shift turns into ±1e-11) count as zeros here, on neither side
    tol = 1e-8 * float(np.abs(x).max()) if x.size else 0.0
    left, right = x[x < -tol], x[x > tol]
    sl2 = float(np.mean(left**2)) if left.size else 0.0
    sr2 = float(np.mean(right**2)) if right.size else 0.0
    if sl2 == 0.0 or sr2 == 0.0:
        return math.nan, math.nan, sl2, sr2
    g = math.sqrt(sl2 / sr2)
    r_hat = float(np.mean(np.abs(x))) ** 2 / float(np.mean(x**2))
    big_r = r_hat * (g**3 + 1) * (g + 1) / (g**2 + 1) ** 2
    alpha = float(_ALPHAS[np.argmin((_RHO - big_r) ** 2)])
    k = math.sqrt(gamma_fn(1 / alpha) / gamma_fn(3 / alpha))
    eta = (math.sqrt(sr2) - math.sqrt(sl2)) * k * gamma_fn(2 / alpha) / gamma_fn(1 / alpha)
    return alpha, eta, sl2, sr2


def patch_features(p: np.ndarray) -> list[float]:
    """The 18 features of one MSCN patch (one scale)."""
    alpha, _, sl2, sr2 = aggd_fit(p)
    feats = [alpha, (sl2 + sr2) / 2]
    for prod in (p[:, :-1] * p[:, 1:], p[:-1, :] * p[1:, :], p[:-1, :-1] * p[1:, 1:], p[:-1, 1:] * p[1:, :-1]):
        feats.extend(aggd_fit(prod))
    return feats


def image_features(gray: np.ndarray, patch: int = PATCH) -> tuple[np.ndarray, np.ndarray]:
    """(features (n, 36), sharpness (n,)) of every whole patch of a grey H x W image on the 0–255 scale."""
    gray = np.asarray(gray, dtype=np.float64)
    if gray.ndim != 2:
        raise ValueError(f"NIQE features need a grey H x W array (see luminance()), got shape {gray.shape}")
    h, w = gray.shape
    rows, cols = h // patch, w // patch
    if rows == 0 or cols == 0:
        raise ValueError(f"NIQE needs an image of at least {patch}x{patch} pixels, got {w}x{h}")
    gray = gray[: rows * patch, : cols * patch]
    from irdiff.data.resize import imresize  # MATLAB bicubic, antialiased

    half = imresize(torch.from_numpy(gray / 255.0)[None], scale=0.5)[0].numpy() * 255.0
    feats, sharp = [[] for _ in range(rows * cols)], np.zeros(rows * cols)
    for scale, im in ((1, gray), (2, half)):
        coeffs, sigma = mscn(im)
        ps = patch // scale
        for i in range(rows):
            for j in range(cols):
                k = i * cols + j
                feats[k].extend(patch_features(coeffs[i * ps:(i + 1) * ps, j * ps:(j + 1) * ps]))
                if scale == 1:
                    sharp[k] = sigma[i * ps:(i + 1) * ps, j * ps:(j + 1) * ps].mean()
    return np.array(feats, dtype=np.float64), sharp


@dataclass(frozen=True)
class NIQEModel:
    """The multivariate Gaussian of pristine patch features."""

    mean: np.ndarray  # (36,)
    cov: np.ndarray  # (36, 36)
    info: dict

    def save(self, path: str | os.PathLike) -> None:
        """JSON, written atomically (a temporary file renamed into place)."""
        path = Path(path)
        doc = {"format": "irdiff-niqe-v1", "mean": self.mean.tolist(), "cov": self.cov.tolist(), "info": self.info}
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        try:
            os.chmod(tmp, 0o644)
            with os.fdopen(fd, "w") as f:
                json.dump(doc, f, indent=1)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: str | os.PathLike = DEFAULT_MODEL) -> NIQEModel:
        try:
            doc = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: cannot read a NIQE model ({e})") from None
        if not isinstance(doc, dict) or doc.get("format") != "irdiff-niqe-v1":
            raise ValueError(f"{path}: not an irdiff NIQE model (format irdiff-niqe-v1)")
        mean, cov = np.asarray(doc["mean"], dtype=np.float64), np.asarray(doc["cov"], dtype=np.float64)
        if mean.shape != (36,) or cov.shape != (36, 36):
            raise ValueError(f"{path}: NIQE model needs mean (36,) and cov (36, 36), got {mean.shape}, {cov.shape}")
        return cls(mean, cov, doc.get("info", {}))


def fit_pristine(images: Iterable[Any], sharpness_fraction: float = SHARPNESS_FRACTION,
                 info: dict | None = None) -> NIQEModel:
    """The pristine model from clean images: per image, the patches sharper than ``sharpness_fraction``
    of its sharpest one; patches with an undefined feature (flat: one-sided AGGD) are dropped."""
    kept, n_images = [], 0
    for img in images:
        feats, sharp = image_features(luminance(img))
        kept.append(feats[sharp > sharpness_fraction * sharp.max()])
        n_images += 1
    if not kept:
        raise ValueError("fit_pristine: no images")
    allf = np.concatenate(kept)
    allf = allf[np.isfinite(allf).all(1)]
    if allf.shape[0] < 37:
        raise ValueError(f"fit_pristine: {allf.shape[0]} usable patches, need at least 37 for a 36-d covariance")
    meta = {"images": n_images, "patches": int(allf.shape[0]), "patch": PATCH,
            "sharpness_fraction": sharpness_fraction, **(info or {})}
    return NIQEModel(allf.mean(0), np.cov(allf, rowvar=False), meta)


_cached: dict[str, NIQEModel] = {}


def niqe(img: Any, model: NIQEModel | str | os.PathLike | None = None) -> float:
    """NIQE of one image (lower = more natural): uint8 H x W (x C), float in [0, 1] or a (C, H, W) tensor,
    as ``irdiff.metrics`` takes them. ``model`` defaults to the bundled BSDS500-400 fit."""
    return niqe_luminance(luminance(img), model)


def niqe_luminance(gray: np.ndarray, model: NIQEModel | str | os.PathLike | None = None) -> float:
    """NIQE of a grey H x W float image on the 0–255 scale (no 8-bit rounding)."""
    if not isinstance(model, NIQEModel):
        key = str(model or DEFAULT_MODEL)
        if key not in _cached:
            _cached[key] = NIQEModel.load(key)
        model = _cached[key]
    feats, _ = image_features(gray)
    feats = feats[np.isfinite(feats).all(1)]
    if feats.shape[0] == 0:
        raise ValueError("NIQE: every patch is flat (no usable features)")
    mu = feats.mean(0)
    cov = np.cov(feats, rowvar=False) if feats.shape[0] > 1 else np.zeros((36, 36))
    d = model.mean - mu
    return float(math.sqrt(max(d @ np.linalg.pinv((model.cov + cov) / 2) @ d, 0.0)))
