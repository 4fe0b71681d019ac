"""Synthetic degradations: pure functions of (image, parameters, generator), and a registered config
class per degradation so that configs pick them by name.

Images are float tensors in [0, 1] of shape (C, H, W) or (B, C, H, W); the output has the rank of the
input. Every random draw goes through the explicit `Generator`, so equal seeds give
bit-identical outputs. Parameters drawn from a range ([lo, hi]) are drawn once per image.

Noise levels (`sigma` of AWGN, `read_sigma` of Poisson-Gaussian) are on the 0-255 scale, as papers
quote them: sigma 25 adds noise of standard deviation 25/255. Blur sigmas and lengths are in pixels.

A config names a degradation and its parameters, e.g. ``{"name": "awgn", "sigma": [0, 50]}``; see
`build_degradation`. ``{"name": "chain", "ops": [...]}`` applies several in order.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import kornia.filters as KF
import numpy as np
import torch
from PIL import Image
from torch import Generator, Tensor

from irdiff.data.resize import _batched, _unbatch, imresize, mod_crop
from irdiff.registry import DEGRADATIONS

Range = float | Sequence[float]

__all__ = [
    "build_degradation", "add_gaussian_noise", "add_poisson_gaussian_noise", "gaussian_blur",
    "motion_kernel", "motion_blur", "imresize", "mod_crop", "jpeg_compress", "random_mask", "add_rain",
    "add_haze", "AWGN", "PoissonGaussian", "GaussianBlur", "MotionBlur", "BicubicDown", "JPEG", "Mask",
    "Rain", "Haze", "Chain",
]


# ------------------------------------------------------------------------------------------ helpers


def _gdev(generator: Generator | None, fallback: torch.device) -> torch.device:
    return generator.device if generator is not None else fallback


def _randn_like(x: Tensor, generator: Generator | None) -> Tensor:
    dev = _gdev(generator, x.device)
    return torch.randn(x.shape, generator=generator, device=dev, dtype=x.dtype).to(x.device)


def _rand(shape: Sequence[int], generator: Generator | None, dtype=torch.float64) -> Tensor:
    """Uniform [0, 1) draws on the generator's device, returned on the CPU."""
    dev = _gdev(generator, torch.device("cpu"))
    return torch.rand(tuple(shape), generator=generator, device=dev, dtype=dtype).cpu()


def _as_range(value: Any, name: str, low: float | None = None, high: float | None = None,
              integer: bool = False, low_open: bool = False) -> tuple[float, float]:
    """Validate a number or a [lo, hi] pair; raise ValueError naming `name` for impossible values."""
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise ValueError(f"{name} must be a number or a [lo, hi] pair, got {list(value)}")
        lo, hi = value
    else:
        lo = hi = value
    for v in (lo, hi):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"{name} must be a finite number or a [lo, hi] pair, got {value!r}")
        if integer and int(v) != v:
            raise ValueError(f"{name} must be an integer (or a pair of integers), got {value!r}")
        if low is not None and (v < low or (low_open and v == low)):
            raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {value!r}")
        if high is not None and v > high:
            raise ValueError(f"{name} must be <= {high}, got {value!r}")
    if lo > hi:
        raise ValueError(f"{name}: lo must not exceed hi, got {list(value)}")
    return (int(lo), int(hi)) if integer else (float(lo), float(hi))


def _draw(rng: tuple[float, float], n: int, generator: Generator | None) -> Tensor:
    """n values uniform in [lo, hi] (float64, CPU); a fixed value draws nothing from the generator."""
    lo, hi = rng
    if lo == hi:
        return torch.full((n,), lo, dtype=torch.float64)
    return lo + (hi - lo) * _rand((n,), generator)


def _draw_int(rng: tuple[int, int], n: int, generator: Generator | None) -> list[int]:
    lo, hi = int(rng[0]), int(rng[1])
    if lo == hi:
        return [lo] * n
    dev = _gdev(generator, torch.device("cpu"))
    return torch.randint(lo, hi + 1, (n,), generator=generator, device=dev).tolist()


def _per_image(v: Tensor | float, x: Tensor) -> Tensor:
    """A scalar or a (B,) tensor as a (B, 1, 1, 1) tensor matching x."""
    v = torch.as_tensor(v, dtype=torch.float64)
    if v.dim() == 0:
        v = v.expand(x.shape[0])
    return v.to(x.device, x.dtype).view(-1, 1, 1, 1)


# ---------------------------------------------------------------------------------------- functions


def add_gaussian_noise(img: Tensor, sigma: float | Tensor,
                       generator: Generator | None) -> Tensor:
    """img + N(0, (sigma/255)^2), sigma on the 0-255 scale (scalar or one per image). Not clipped,
    as in the published denoising benchmarks."""
    x, sq = _batched(img, "add_gaussian_noise")
    return _unbatch(x + _per_image(sigma, x) / 255.0 * _randn_like(x, generator), sq)


def add_poisson_gaussian_noise(img: Tensor, peak: float | Tensor, read_sigma: float | Tensor,
                               generator: Generator | None, correlation: float = 0.0,
                               clip: bool = False) -> Tensor:
    """Shot + read noise: Poisson(peak * x) / peak + N(0, (read_sigma/255)^2).

    peak: photons at intensity 1 (smaller is noisier); read_sigma on the 0-255 scale. correlation > 0
    blurs the noise field with a Gaussian of that sigma (px), rescaled so each pixel keeps its variance.
    """
    x, sq = _batched(img, "add_poisson_gaussian_noise")
    p = _per_image(peak, x)
    rate = (x.clamp(min=0) * p).to(_gdev(generator, x.device))
    shot = torch.poisson(rate, generator=generator).to(x.device, x.dtype) / p - x.clamp(min=0)
    noise = shot + _per_image(read_sigma, x) / 255.0 * _randn_like(x, generator)
    if correlation > 0:
        ks = 2 * math.ceil(3 * correlation) + 1
        k1 = torch.exp(-((torch.arange(ks, dtype=torch.float64) - ks // 2) ** 2) / (2 * correlation**2))
        k1 = k1 / k1.sum()
        # Blurring white noise scales its std by the kernel's L2 norm; for k1 k1^T that is sum(k1^2).
        gain = 1.0 / float((k1**2).sum())
        noise = KF.gaussian_blur2d(noise, (ks, ks), (correlation, correlation), border_type="reflect") * gain
    out = x + noise
    return _unbatch(out.clamp(0, 1) if clip else out, sq)


BLUR_BORDERS = ("reflect", "circular")


def gaussian_blur(img: Tensor, sigma: float | Tensor, kernel_size: int | None = None,
                  border: str = "reflect") -> Tensor:
    """Isotropic Gaussian blur (sigma in px, scalar or one per image); kernel_size defaults to
    2*ceil(3*max sigma)+1. ``border`` "reflect" (no edge repeat; images too small for it repeat the edge)
    or "circular" (wrap around: Cold Diffusion's reference blur)."""
    if border not in BLUR_BORDERS:
        raise ValueError(f"gaussian_blur: border must be one of {', '.join(BLUR_BORDERS)}, got {border!r}")
    x, sq = _batched(img, "gaussian_blur")
    s = torch.as_tensor(sigma, dtype=torch.float64).expand(x.shape[0])
    if kernel_size is None:
        kernel_size = 2 * math.ceil(3 * float(s.max())) + 1
    s2 = s.to(x.device, x.dtype)[:, None].expand(-1, 2).contiguous()
    border_type = _border(x, kernel_size) if border == "reflect" else border
    return _unbatch(KF.gaussian_blur2d(x, (kernel_size, kernel_size), s2, border_type=border_type), sq)


def _border(x: Tensor, kernel_size: int) -> str:
    # reflect needs the image to be wider than the kernel's half-width; smaller images repeat the edge
    return "reflect" if min(x.shape[-2:]) > kernel_size // 2 else "replicate"


def motion_kernel(length: int, angle: float, dtype=torch.float32) -> Tensor:
    """A (length, length) linear motion kernel through the centre at `angle` degrees (0 = horizontal,
    counter-clockwise), antialiased by sampling the segment densely, summing to 1."""
    if length < 1:
        raise ValueError(f"motion_kernel: length must be >= 1, got {length}")
    size = length if length % 2 == 1 else length + 1
    # Sample the segment [-length/2, length/2] at cell midpoints, so a horizontal kernel is nearly a box.
    n = 16 * size
    t = (torch.arange(n, dtype=torch.float64) + 0.5) / n * length - length / 2
    a = math.radians(angle)
    px, py = t * math.cos(a) + size // 2, -t * math.sin(a) + size // 2  # image rows grow downwards
    k = torch.zeros(size, size, dtype=torch.float64)
    x0, y0 = px.floor(), py.floor()
    for dx in (0, 1):
        for dy in (0, 1):
            xi, yi = x0 + dx, y0 + dy
            w = (1 - (px - xi).abs()) * (1 - (py - yi).abs())
            ok = (xi >= 0) & (xi < size) & (yi >= 0) & (yi < size)
            k.index_put_((yi[ok].long(), xi[ok].long()), w[ok], accumulate=True)
    return (k / k.sum()).to(dtype)


def motion_blur(img: Tensor, length: int | Sequence[int], angle: float | Sequence[float]) -> Tensor:
    """Linear motion blur; length (px) and angle (degrees) are scalars or one per image; reflect border."""
    x, sq = _batched(img, "motion_blur")
    b = x.shape[0]
    lengths = [int(length)] * b if np.isscalar(length) else [int(v) for v in length]
    angles = [float(angle)] * b if np.isscalar(angle) else [float(v) for v in angle]
    out = []
    for i in range(b):
        k = motion_kernel(lengths[i], angles[i], x.dtype).to(x.device)
        out.append(KF.filter2d(x[i : i + 1], k[None], border_type=_border(x, k.shape[-1])))
    return _unbatch(torch.cat(out), sq)


def jpeg_compress(img: Tensor, quality: int | Sequence[int]) -> Tensor:
    """JPEG round trip through Pillow (4:2:0 chroma, Pillow's defaults) at `quality` (1..95, scalar
    or one per image). The image is rounded to 8 bits first; the output is in [0, 1]."""
    from irdiff.data.io import from_numpy, to_uint8

    x, sq = _batched(img, "jpeg_compress")
    qs = [int(quality)] * x.shape[0] if np.isscalar(quality) else [int(q) for q in quality]
    out = []
    for i in range(x.shape[0]):
        arr = to_uint8(x[i])
        buf = io.BytesIO()
        Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr).save(buf, format="JPEG", quality=qs[i])
        buf.seek(0)
        with Image.open(buf) as dec:
            y = from_numpy(np.asarray(dec), channels=1 if arr.shape[2] == 1 else 3)
        out.append(y.to(x.device, x.dtype))
    return _unbatch(torch.stack(out), sq)


def _stroke_mask(h: int, w: int, generator, strokes: tuple[int, int], vertices: tuple[int, int],
                 max_width: float) -> Tensor:
    """Free-form mask (as DeepFill v2 / Palette): random polylines of random width, rasterised by
    distance to each segment."""
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                            indexing="ij")
    m = torch.zeros(h, w, dtype=torch.bool)
    diag = math.hypot(h, w)
    for _ in range(_draw_int(strokes, 1, generator)[0]):
        nv = _draw_int(vertices, 1, generator)[0]
        u = _rand((3 + 2 * nv,), generator)
        px, py = float(u[0]) * (w - 1), float(u[1]) * (h - 1)
        width = 1.0 + float(u[2]) * (max_width - 1.0)
        for v in range(nv):
            ang = float(u[3 + 2 * v]) * 2 * math.pi
            ln = (0.1 + 0.2 * float(u[4 + 2 * v])) * diag
            qx = min(max(px + ln * math.cos(ang), 0.0), w - 1.0)
            qy = min(max(py + ln * math.sin(ang), 0.0), h - 1.0)
            dx, dy = qx - px, qy - py
            t = (((xx - px) * dx + (yy - py) * dy) / max(dx * dx + dy * dy, 1e-12)).clamp(0, 1)
            d2 = (xx - px - t * dx) ** 2 + (yy - py - t * dy) ** 2
            m |= d2 <= (width / 2) ** 2
            px, py = qx, qy
    return m


def random_mask(img: Tensor, kind: str, generator: Generator | None,
                box_size: tuple[float, float] = (0.25, 0.5), center_size: float = 0.5,
                strokes: tuple[int, int] = (1, 4), vertices: tuple[int, int] = (4, 12),
                max_width: float = 0.08) -> tuple[Tensor, Tensor]:
    """Mask out a region; returns (masked image, mask) with mask (1, H, W) (or (B, 1, H, W)), 1 = missing.

    kind: "box" (a rectangle with sides box_size of H/W, random place), "center" (a centred square of
    side center_size of H/W), "free_form" (random brush strokes; max_width as a fraction of the
    shorter side). The hole is filled with 0.
    """
    x, sq = _batched(img, "random_mask")
    b, _, h, w = x.shape
    masks = []
    for _ in range(b):
        m = torch.zeros(h, w, dtype=torch.bool)
        if kind == "center":
            mh, mw = max(1, round(h * center_size)), max(1, round(w * center_size))
            top, left = (h - mh) // 2, (w - mw) // 2
            m[top : top + mh, left : left + mw] = True
        elif kind == "box":
            u = _rand((4,), generator)
            fh = box_size[0] + float(u[0]) * (box_size[1] - box_size[0])
            fw = box_size[0] + float(u[1]) * (box_size[1] - box_size[0])
            mh, mw = max(1, round(h * fh)), max(1, round(w * fw))
            top, left = int(float(u[2]) * (h - mh + 1)), int(float(u[3]) * (w - mw + 1))
            m[top : top + mh, left : left + mw] = True
        elif kind == "free_form":
            m = _stroke_mask(h, w, generator, strokes, vertices, max(1.0, max_width * min(h, w)))
        else:
            raise ValueError(f"random_mask: kind must be box, center or free_form, got {kind!r}")
        masks.append(m)
    mask = torch.stack(masks)[:, None].to(x.device, x.dtype)
    return _unbatch(x * (1 - mask), sq), _unbatch(mask, sq)


def add_rain(img: Tensor, generator: Generator | None, density: float | Tensor = 0.01,
             length: int | Sequence[int] = 21, angle: float | Sequence[float] = 0.0,
             intensity: float | Tensor = 0.8) -> Tensor:
    """Synthetic rain streaks (Rain100L-style): sparse random seeds, motion-blurred along `angle`
    (degrees from vertical, per image) over `length` px, scaled by `intensity`, added and clipped."""
    x, sq = _batched(img, "add_rain")
    b, _, h, w = x.shape
    u = _rand((b, 1, h, w), generator, dtype=torch.float32)
    v = _rand((b, 1, h, w), generator, dtype=torch.float32)
    dens = torch.as_tensor(density, dtype=torch.float32).reshape(-1, 1, 1, 1)
    seeds = (u < dens).float() * (0.5 + 0.5 * v)
    lengths = [int(length)] * b if np.isscalar(length) else [int(n) for n in length]
    angles = [float(angle)] * b if np.isscalar(angle) else [float(a) for a in angle]
    streaks = motion_blur(seeds, lengths, [90.0 + a for a in angles])
    streaks = streaks * torch.tensor(lengths, dtype=torch.float32).view(-1, 1, 1, 1)  # a streak peaks near 1
    rain = (streaks * _per_image(intensity, streaks)).clamp(0, 1).to(x.device, x.dtype)
    return _unbatch((x + rain).clamp(0, 1), sq)


def _smooth_field(b: int, h: int, w: int, generator, cells: int = 4) -> Tensor:
    """A smooth random field in [0, 1], (B, 1, H, W): coarse uniform noise, bicubic-upsampled."""
    coarse = _rand((b, 1, cells, cells), generator)
    f = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=True)
    lo, hi = f.amin((1, 2, 3), keepdim=True), f.amax((1, 2, 3), keepdim=True)
    return (f - lo) / (hi - lo).clamp(min=1e-12)


def add_haze(img: Tensor, beta: float | Tensor, airlight: float | Tensor,
             generator: Generator | None, depth: str = "random") -> Tensor:
    """Atmospheric scattering model I = J t + A (1 - t), t = exp(-beta d), d in [0, 1].

    depth: "gradient" (d = 1 at the top row, 0 at the bottom: sky far, ground near), "random" (a
    smooth random field from the generator), "mixed" (their mean).
    """
    x, sq = _batched(img, "add_haze")
    b, _, h, w = x.shape
    grad = torch.linspace(1, 0, h, dtype=torch.float64).view(1, 1, h, 1).expand(b, 1, h, w)
    if depth == "gradient":
        d = grad
    elif depth == "random":
        d = _smooth_field(b, h, w, generator)
    elif depth == "mixed":
        d = 0.5 * (grad + _smooth_field(b, h, w, generator))
    else:
        raise ValueError(f"add_haze: depth must be gradient, random or mixed, got {depth!r}")
    t = torch.exp(-_per_image(beta, d) * d).to(x.device, x.dtype)
    a = _per_image(airlight, x)
    return _unbatch(x * t + a * (1 - t), sq)


# ------------------------------------------------------------------------------ registered configs


def build_degradation(spec: dict | str | Any, where: str = "degradation") -> Any:
    """A degradation from a config: ``"awgn"`` or ``{"name": "awgn", "sigma": 25}``; objects with a
    __call__ (already built) are returned as they are."""
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, dict):
        if callable(spec):
            return spec
        raise ValueError(f"{where}: expected a name or a mapping with 'name', got {spec!r}")
    if "name" not in spec:
        raise ValueError(f"{where}: missing key 'name' (known: {', '.join(DEGRADATIONS.names())})")
    kwargs = {k: v for k, v in spec.items() if k != "name"}
    return DEGRADATIONS.build(spec["name"], where=f"{where}.{spec['name']}", **kwargs)


@DEGRADATIONS.register("awgn")
@dataclass
class AWGN:
    """Additive white Gaussian noise, sigma on the 0-255 scale (25 means 25/255), fixed or [lo, hi]
    (drawn per image). Not clipped by default (the papers' protocol).

    Real photos are files: ``clip`` clips the noisy image to [0, 1]; ``quantize`` (8 or 16) also rounds
    it to that many bits, as saving it to an 8- or 16-bit file does. ``clip_fraction`` is the share of
    images (drawn per image) that get the clip / rounding, the rest keeping float noise, so that one
    model learns both; it draws from the generator only when it lies strictly between 0 and 1, so the
    noise of a seeded image does not depend on it.
    """

    sigma: Range = 25.0
    clip: bool = False
    quantize: int = 0
    clip_fraction: float = 1.0

    def __post_init__(self):
        self._sigma = _as_range(self.sigma, "awgn.sigma", low=0)
        if not isinstance(self.clip, bool):
            raise ValueError(f"awgn.clip must be true or false, got {self.clip!r}")
        if isinstance(self.quantize, bool) or self.quantize not in (0, 8, 16):
            raise ValueError(f"awgn.quantize must be 0 (off), 8 or 16 (bits), got {self.quantize!r}")
        _as_range(self.clip_fraction, "awgn.clip_fraction", low=0, high=1)

    def __call__(self, img: Tensor, generator: Generator | None) -> Tensor:
        n = img.shape[0] if img.dim() == 4 else 1
        out = add_gaussian_noise(img, _draw(self._sigma, n, generator), generator)
        if not (self.clip or self.quantize) or self.clip_fraction == 0:
            return out
        filed = out.clamp(0, 1)
        if self.quantize:
            top = float(2**self.quantize - 1)
            # in float64, as irdiff writes files: float32 would round some 16-bit values the other way
            filed = (torch.round(filed.double() * top) / top).to(out.dtype)
        if self.clip_fraction == 1:
            return filed
        chosen = (_rand((n,), generator) < self.clip_fraction).to(out.device)
        return torch.where(chosen.view(-1, 1, 1, 1) if out.dim() == 4 else chosen.view(1, 1, 1), filed, out)


@DEGRADATIONS.register("poisson_gaussian")
@dataclass
class PoissonGaussian:
    """Poisson shot noise at `peak` photons for intensity 1, plus Gaussian read noise `read_sigma` on
    the 0-255 scale; both fixed or [lo, hi]. `correlation` (px) > 0 makes the noise spatially
    correlated. `clip` clips the result to [0, 1]."""

    peak: Range = 30.0
    read_sigma: Range = 5.0
    correlation: float = 0.0
    clip: bool = False

    def __post_init__(self):
        self._peak = _as_range(self.peak, "poisson_gaussian.peak", low=0, low_open=True)
        self._read = _as_range(self.read_sigma, "poisson_gaussian.read_sigma", low=0)
        _as_range(self.correlation, "poisson_gaussian.correlation", low=0)

    def __call__(self, img: Tensor, generator: Generator | None) -> Tensor:
        n = img.shape[0] if img.dim() == 4 else 1
        peak, read = _draw(self._peak, n, generator), _draw(self._read, n, generator)
        return add_poisson_gaussian_noise(img, peak, read, generator, self.correlation, self.clip)


@DEGRADATIONS.register("gaussian_blur")
@dataclass
class GaussianBlur:
    """Gaussian blur, sigma in px fixed or [lo, hi]; kernel_size odd (default 2*ceil(3*max sigma)+1);
    border reflect (default) or circular."""

    sigma: Range = 2.0
    kernel_size: int | None = None
    border: str = "reflect"

    def __post_init__(self):
        self._sigma = _as_range(self.sigma, "gaussian_blur.sigma", low=0, low_open=True)
        if self.border not in BLUR_BORDERS:
            raise ValueError(f"gaussian_blur.border must be one of {', '.join(BLUR_BORDERS)}, got {self.border!r}")
        if self.kernel_size is not None and (
            not isinstance(self.kernel_size, int) or self.kernel_size < 1 or self.kernel_size % 2 == 0
        ):
            ks = self.kernel_size
            raise ValueError(f"gaussian_blur.kernel_size must be a positive odd int, got {ks!r}")

    def __call__(self, img: Tensor, generator: Generator | None) -> Tensor:
        n = img.shape[0] if img.dim() == 4 else 1
        ks = self.kernel_size or 2 * math.ceil(3 * self._sigma[1]) + 1
        return gaussian_blur(img, _draw(self._sigma, n, generator), ks, self.border)


@DEGRADATIONS.register("motion_blur")
@dataclass
class MotionBlur:
    """Linear motion blur: length in px (int or [lo, hi]) and angle in degrees (default [0, 180]),
    drawn per image."""

    length: int | Sequence[int] = (5, 15)
    angle: Range = (0.0, 180.0)

    def __post_init__(self):
        self._length = _as_range(self.length, "motion_blur.length", low=1, integer=True)
        self._angle = _as_range(self.angle, "motion_blur.angle")

    def __call__(self, img: Tensor, generator: Generator | None) -> Tensor:
        n = img.shape[0] if img.dim() == 4 else 1
        lengths = _draw_int(self._length, n, generator)
        return motion_blur(img, lengths, _draw(self._angle, n, generator).tolist())


@DEGRADATIONS.register("bicubic_down")
@dataclass
class BicubicDown:
    """MATLAB-compatible bicubic down-sampling by 2, 3 or 4 (see `imresize`). H and W must be
    multiples of the scale (crop with `mod_crop`). `clip` clips the result to [0, 1]; `quantize` also
    rounds it to 8 bits, as a low-resolution image saved to PNG (the published test sets) is."""

    scale: int = 4
    clip: bool = False
    quantize: bool = False

    def __post_init__(self):
        if self.scale not in (2, 3, 4) or isinstance(self.scale, bool):
            raise ValueError(f"bicubic_down.scale must be 2, 3 or 4, got {self.scale!r}")

    def __call__(self, img: Tensor, generator: Generator | None = None) -> Tensor:
        h, w = img.shape[-2:]
        if h % self.scale or w % self.scale:
            raise ValueError(
                f"bicubic_down: image size {h}x{w} is not a multiple of scale {self.scale}; "
                "crop it first (mod_crop)"
            )
        out = imresize(img, out_size=(h // self.scale, w // self.scale))
        if self.quantize:
            return torch.round(out.clamp(0, 1) * 255) / 255
        return out.clamp(0, 1) if self.clip else out


@DEGRADATIONS.register("jpeg")
@dataclass
class JPEG:
    """JPEG compression through Pillow, quality (1..95) fixed or [lo, hi] drawn per image."""

    quality: int | Sequence[int] = (30, 95)

    def __post_init__(self):
        self._quality = _as_range(self.quality, "jpeg.quality", low=1, high=100, integer=True)

    def __call__(self, img: Tensor, generator: Generator | None) -> Tensor:
        n = img.shape[0] if img.dim() == 4 else 1
        return jpeg_compress(img, _draw_int(self._quality, n, generator))


@DEGRADATIONS.register("mask")
@dataclass
class Mask:
    """Inpainting masks; returns (masked image, mask), mask 1 = missing, hole filled with 0.

    kind: "box", "center", "free_form", or "mixed" (box or free_form, chosen per call). box_size:
    [lo, hi] side fraction; center_size: side fraction; strokes / vertices: [lo, hi] counts; max_width:
    brush width as a fraction of the shorter side.
    """

    kind: str = "free_form"
    box_size: Sequence[float] = (0.25, 0.5)
    center_size: float = 0.5
    strokes: Sequence[int] = (1, 4)
    vertices: Sequence[int] = (4, 12)
    max_width: float = 0.08

    def __post_init__(self):
        if self.kind not in ("box", "center", "free_form", "mixed"):
            raise ValueError(f"mask.kind must be box, center, free_form or mixed, got {self.kind!r}")
        self._box = _as_range(list(self.box_size), "mask.box_size", low=0, high=1, low_open=True)
        _as_range(self.center_size, "mask.center_size", low=0, high=1, low_open=True)
        self._strokes = _as_range(list(self.strokes), "mask.strokes", low=1, integer=True)
        self._vertices = _as_range(list(self.vertices), "mask.vertices", low=1, integer=True)
        _as_range(self.max_width, "mask.max_width", low=0, high=1, low_open=True)

    def __call__(self, img: Tensor, generator: Generator | None) -> tuple[Tensor, Tensor]:
        kind = self.kind
        if kind == "mixed":
            kind = "box" if float(_rand((1,), generator)[0]) < 0.5 else "free_form"
        return random_mask(img, kind, generator, self._box, self.center_size, self._strokes, self._vertices,
                           self.max_width)


@DEGRADATIONS.register("rain")
@dataclass
class Rain:
    """Synthetic rain streaks (Rain100L-like): density = fraction of seed pixels, length in px,
    angle in degrees from vertical, intensity = streak brightness; each fixed or [lo, hi]."""

    density: Range = (0.004, 0.012)
    length: int | Sequence[int] = (15, 30)
    angle: Range = (-20.0, 20.0)
    intensity: Range = (0.6, 0.9)

    def __post_init__(self):
        self._density = _as_range(self.density, "rain.density", low=0, high=1)
        self._length = _as_range(self.length, "rain.length", low=1, integer=True)
        self._angle = _as_range(self.angle, "rain.angle", low=-90, high=90)
        self._intensity = _as_range(self.intensity, "rain.intensity", low=0)

    def __call__(self, img: Tensor, generator: Generator | None) -> Tensor:
        n = img.shape[0] if img.dim() == 4 else 1
        dens, inten = _draw(self._density, n, generator), _draw(self._intensity, n, generator)
        lengths, angles = _draw_int(self._length, n, generator), _draw(self._angle, n, generator).tolist()
        return add_rain(img, generator, dens, lengths, angles, inten)


@DEGRADATIONS.register("haze")
@dataclass
class Haze:
    """Haze by the atmospheric model, I = J t + A (1 - t), t = exp(-beta d): beta (scattering, with
    d in [0, 1]) and airlight A, each fixed or [lo, hi]; depth "random", "gradient" or "mixed"."""

    beta: Range = (0.5, 2.0)
    airlight: Range = (0.7, 1.0)
    depth: str = "mixed"

    def __post_init__(self):
        self._beta = _as_range(self.beta, "haze.beta", low=0)
        self._airlight = _as_range(self.airlight, "haze.airlight", low=0, high=1)
        if self.depth not in ("random", "gradient", "mixed"):
            raise ValueError(f"haze.depth must be random, gradient or mixed, got {self.depth!r}")

    def __call__(self, img: Tensor, generator: Generator | None) -> Tensor:
        n = img.shape[0] if img.dim() == 4 else 1
        beta, air = _draw(self._beta, n, generator), _draw(self._airlight, n, generator)
        return add_haze(img, beta, air, generator, self.depth)


@DEGRADATIONS.register("chain")
@dataclass
class Chain:
    """Several degradations applied in order: ``{"name": "chain", "ops": [{"name": ...}, ...]}``.

    If an op returns (image, mask), later ops act on the image and the chain returns (image, mask),
    masks of several such ops being united.
    """

    ops: Sequence[Any] = field(default_factory=list)

    def __post_init__(self):
        if not isinstance(self.ops, (list, tuple)) or not self.ops:
            raise ValueError(f"chain.ops must be a non-empty list of degradations, got {self.ops!r}")
        self._ops = [build_degradation(op, where=f"chain.ops[{i}]") for i, op in enumerate(self.ops)]

    def __call__(self, img: Tensor, generator: Generator | None):
        mask = None
        for op in self._ops:
            img = op(img, generator)
            if isinstance(img, tuple):
                img, m = img
                mask = m if mask is None else torch.maximum(mask, m)
        return img if mask is None else (img, mask)


@DEGRADATIONS.register("one_of")
@dataclass
class OneOf:
    """One degradation drawn per image from ``ops`` (with optional ``weights``), e.g. Gaussian or motion
    blur for a blind deblurring model: ``{"name": "one_of", "ops": [{"name": "gaussian_blur"}, ...]}``.
    The choice uses the same generator as the ops, so a seeded item is reproducible."""

    ops: Sequence[Any] = field(default_factory=list)
    weights: Sequence[float] | None = None

    def __post_init__(self):
        if not isinstance(self.ops, (list, tuple)) or not self.ops:
            raise ValueError(f"one_of.ops must be a non-empty list of degradations, got {self.ops!r}")
        self._ops = [build_degradation(op, where=f"one_of.ops[{i}]") for i, op in enumerate(self.ops)]
        w = [1.0] * len(self._ops) if self.weights is None else list(self.weights)
        if len(w) != len(self._ops) or any(not isinstance(v, (int, float)) or v < 0 for v in w) or sum(w) <= 0:
            raise ValueError(f"one_of.weights must be {len(self._ops)} non-negative numbers, not all 0, got {w!r}")
        self._cum = torch.tensor(w, dtype=torch.float64).cumsum(0) / sum(w)

    def _pick(self, generator: Generator | None):
        u = float(_rand((1,), generator)[0])
        return self._ops[min(int(torch.searchsorted(self._cum, u, right=True)), len(self._ops) - 1)]

    def __call__(self, img: Tensor, generator: Generator | None):
        if img.dim() == 3:
            return self._pick(generator)(img, generator)
        outs = [self._pick(generator)(x[None], generator) for x in img]
        if isinstance(outs[0], tuple):
            return torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])
        return torch.cat(outs)
