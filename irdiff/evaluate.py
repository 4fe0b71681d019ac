"""The one evaluation path: items -> restored images -> PSNR / SSIM (BasicSR conventions).

Training's validation, ``irdiff bench``, the bundled models' cards (scripts/export_pretrained.py) and the
Noise-DA benchmark all score through :func:`evaluate`, so they share:

- one seeding scheme: item ``i`` of a set is degraded with the data pipeline's generator
  ``item_generator(seed, 0, i)`` (a synthetic dataset's validation item is the same image), and its
  sampling noise comes from ``sample_generator(seed, i)`` (a generator seeded with ``seed + i``);
- one range conversion: images are [0, 1] outside methods and [-1, 1] inside
  (``irdiff.methods.base.to_method_range`` / ``from_method_range``);
- one scoring rule: prediction clamped to [0, 1], both images rounded to 8 bits, then
  ``irdiff.metrics.psnr`` / ``ssim`` with the set's ``crop_border`` and ``y_channel``.

A *restore function* maps ``(item, generator)`` to the restored (C, H, W) image in [0, 1]. Two are
provided: :func:`with_restorer` (a loaded model through ``Restorer``, i.e. exactly what users get, with
the input at the size a user would give it) and :func:`with_method` (a net under training through
``method.sample`` on the method's own input at the ground-truth size, as the trainer and the step-count
benchmark need).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from irdiff.methods.base import from_method_range, to_method_range


@dataclass
class Item:
    """One evaluation image: ``gt`` (C, H, W) and ``lq`` in [0, 1]; ``mask`` (1, H, W) for inpainting.

    ``lq`` has the gt's size for dataset items (SR inputs bicubic-upsampled by the data pipeline) and the
    input size a user would give (LR for SR) for :func:`degraded_items` with ``at_input_size``.
    """

    name: str
    gt: torch.Tensor
    lq: torch.Tensor
    mask: torch.Tensor | None = None


@dataclass
class Result:
    """Per-item records (name, psnr, ssim, seconds, and psnr_in / ssim_in when lq has gt's size) and means."""

    records: list[dict[str, Any]] = field(default_factory=list)

    def mean(self, key: str) -> float:
        values = [float(r[key]) for r in self.records if key in r]
        return sum(values) / len(values) if values else float("nan")

    def means(self) -> dict[str, float]:
        keys = [k for k in ("psnr", "ssim", "psnr_in", "ssim_in", "seconds") if any(k in r for r in self.records)]
        return {k: self.mean(k) for k in keys}


RestoreFn = Callable[[Item, torch.Generator], torch.Tensor]


# ---- seeding --------------------------------------------------------------------------------------

def degradation_generator(seed: int, index: int) -> torch.Generator:
    """The generator that degrades item ``index``: the data pipeline's own (epoch 0)."""
    from irdiff.data.datasets import item_generator

    return item_generator(seed, 0, index)


def sample_generator(seed: int, index: int, device: str | torch.device = "cpu") -> torch.Generator:
    """The sampling noise of item ``index`` (diffusion methods)."""
    g = torch.Generator(device=device)
    g.manual_seed(seed + index)
    return g


# ---- items ----------------------------------------------------------------------------------------

def _center_crop(img: torch.Tensor, size: int | None) -> torch.Tensor:
    if not size:
        return img
    h, w = img.shape[-2:]
    if h < size or w < size:
        raise ValueError(f"center_crop {size} is larger than an image ({w}x{h})")
    top, left = (h - size) // 2, (w - size) // 2
    return img[..., top : top + size, left : left + size]


def dataset_items(spec: Any, seed: int, max_images: int | None = None, center_crop: int | None = None
                  ) -> list[Item]:
    """The items of a config's data spec (``data.val``, a benchmark's ``data``): clean images degraded by
    the dataset itself (``synthetic``: with ``degradation_generator(seed, i)``) or folder pairs
    (``paired``: gt_dir / lq_dir matched by file stem), optionally centre-cropped after degrading."""
    from irdiff.data.datasets import build_dataset

    ds = build_dataset(spec, seed, train=False)
    n = len(ds) if not max_images else min(len(ds), max_images)
    items = []
    for i in range(n):
        raw = {k: _center_crop(v, center_crop) for k, v in ds[(0, i)].items() if torch.is_tensor(v)}
        items.append(Item(ds.name_of(i), raw["gt"], raw["lq"], raw.get("mask")))
    return items


def degraded_items(gt_dir: str | Path, degradation: dict[str, Any], seed: int, every: int = 1,
                   max_images: int | None = None, mod: int = 1, center_crop: int | None = None) -> list[Item]:
    """Clean files of a folder (every ``every``-th, then the first ``max_images``), centre-cropped to
    ``center_crop`` and mod-cropped to ``mod``, then degraded at their own size with
    ``degradation_generator(seed, i)``, ``i`` the file's index in the sorted folder. A degradation that
    shrinks (``bicubic_down``) gives LR inputs: restore them with :func:`with_restorer`, which upsamples
    as inference does."""
    from irdiff.data.degradations import build_degradation
    from irdiff.data.io import list_images, read_image
    from irdiff.data.resize import mod_crop

    degrade = build_degradation(degradation)
    files = [(i, p) for i, p in enumerate(list_images(gt_dir)) if i % every == 0]
    if max_images:
        files = files[:max_images]
    items = []
    for i, path in files:
        gt = _center_crop(read_image(path), center_crop)
        gt = mod_crop(gt, mod) if mod > 1 else gt
        out = degrade(gt, degradation_generator(seed, i))
        lq, mask = out if isinstance(out, tuple) else (out, None)
        items.append(Item(path.stem, gt, lq, mask))
    return items


# ---- restore functions ----------------------------------------------------------------------------

def method_input(method: Any, item: Item, device: str | torch.device = "cpu") -> torch.Tensor:
    """The image sampling starts from, (1, C, H, W) in the method's range: the item's lq, or the
    method's own D(gt, T) (Cold Diffusion)."""
    gt = to_method_range(item.gt[None].to(device))
    return method.degraded_input(gt, to_method_range(item.lq[None].to(device)))


@torch.no_grad()
def sample(method: Any, net: torch.nn.Module, x: torch.Tensor, *, steps: int | None = None,
           sampler: str | None = None, generator: torch.Generator | None = None, mask: torch.Tensor | None = None,
           color_fix: str = "none", sample_kwargs: dict[str, Any] | None = None,
           callback: Any = None) -> torch.Tensor:
    """``method.sample`` on a (B, C, H, W) batch in the method's range, then the colour fix: the one call
    of a sampler outside the Restorer (the trainer's validation and the step-count benchmark)."""
    from irdiff.colorfix import color_fix as fix

    extra = dict(sample_kwargs or {})
    if mask is not None:
        extra["mask"] = mask
    out = method.sample(net, x, steps=steps, sampler=sampler, generator=generator, callback=callback, **extra)
    return fix(color_fix, out, x)


def with_method(method: Any, net: torch.nn.Module, *, steps: int | None = None, sampler: str | None = None,
                color_fix: str = "none", sample_kwargs: dict[str, Any] | None = None,
                device: str | torch.device = "cpu") -> RestoreFn:
    """Restore items with ``net`` through ``method.sample`` at the gt size (see :func:`method_input`)."""

    def restore(item: Item, generator: torch.Generator) -> torch.Tensor:
        x = method_input(method, item, device)
        mask = None if item.mask is None else item.mask[None].to(device)
        out = sample(method, net, x, steps=steps, sampler=sampler, generator=generator, mask=mask,
                     color_fix=color_fix, sample_kwargs=sample_kwargs)
        return from_method_range(out[0].float().cpu())

    return restore


def with_restorer(restorer: Any, **restore_kwargs: Any) -> RestoreFn:
    """Restore items through ``Restorer.restore_tensor`` (tiling, SR upsampling, colour fix: what users
    get); ``restore_kwargs`` go to it (``tile``, ``steps``, ``sampler``...)."""

    def restore(item: Item, generator: torch.Generator) -> torch.Tensor:
        kw = dict(restore_kwargs)
        if item.mask is not None:
            kw["mask"] = item.mask[0] > 0.5
        return restorer.restore_tensor(item.lq, generator=generator, **kw)

    return restore


def identity(method: Any = None) -> RestoreFn:
    """The degraded input itself (Cold's own D(gt, T) when ``method`` is given): the 'input' baseline."""

    def restore(item: Item, generator: torch.Generator) -> torch.Tensor:
        if method is None:
            return item.lq
        return from_method_range(method_input(method, item)[0])

    return restore


# ---- scoring --------------------------------------------------------------------------------------

def score(pred: torch.Tensor, gt: torch.Tensor, crop_border: int = 0, y_channel: bool = False
          ) -> tuple[float, float]:
    """(PSNR, SSIM) of a [0, 1] prediction (clamped) against gt, both rounded to 8 bits first."""
    from irdiff.data.io import to_uint8
    from irdiff.metrics import psnr, ssim

    p8, g8 = to_uint8(pred.detach().float().cpu().clamp(0, 1)), to_uint8(gt.detach().float().cpu())
    kw = {"crop_border": crop_border, "y_channel": y_channel}
    return float(psnr(p8, g8, **kw)), float(ssim(p8, g8, **kw))


def evaluate(items: Iterable[Item], restore: RestoreFn, seed: int = 0, crop_border: int = 0,
             y_channel: bool = False, device: str | torch.device = "cpu", input_of: RestoreFn | None = None,
             on_item: Callable[[int, Item, torch.Tensor], None] | None = None) -> Result:
    """Restore and score every item; item ``i``'s sampling noise is ``sample_generator(seed, i)``.

    psnr_in / ssim_in score the input, ``input_of(item)`` (default: the lq where it has gt's size;
    ``identity(method)`` for Cold's own D). ``on_item(i, item, restored)`` sees each result (to save
    images). Records keep the item order.
    """
    result = Result()
    for i, item in enumerate(items):
        g = sample_generator(seed, i, device)
        t0 = time.perf_counter()
        restored = restore(item, g)
        seconds = time.perf_counter() - t0
        p, s = score(restored, item.gt, crop_border, y_channel)
        rec: dict[str, Any] = {"image": item.name, "psnr": p, "ssim": s, "seconds": seconds}
        shown = input_of(item, g) if input_of is not None else item.lq
        if shown.shape == item.gt.shape:
            rec["psnr_in"], rec["ssim_in"] = score(shown, item.gt, crop_border, y_channel)
        result.records.append(rec)
        if on_item is not None:
            on_item(i, item, restored)
    return result
