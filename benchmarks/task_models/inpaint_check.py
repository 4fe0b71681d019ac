"""What smooth hole filling scores on CBSD68 (issue 13, item 6: is a one-pass `inpaint` model useful?).

    python benchmarks/task_models/inpaint_check.py [--images 8]

An L1-trained one-pass net predicts, in each missing pixel, the median of what the training data allows
there: a smooth fill, like the classical PDE fills. This measures what such fills already reach, through
``irdiff.evaluate`` on the ``mask`` degradation's holes (free-form strokes and boxes, seeded per image):
the zero-filled input, biharmonic inpainting (scikit-image) and a normalised Gaussian fill (the local mean of
the known pixels, one line of numpy). PSNR over the whole image and over the holes only. Writes
``inpaint_check.json`` beside this file.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1]))

import tasks  # noqa: E402

MASKS = {"free_form": {"name": "mask", "kind": "free_form"}, "box": {"name": "mask", "kind": "box"}}


def gaussian_fill(lq: np.ndarray, hole: np.ndarray, sigma: float = 4.0) -> np.ndarray:
    """Normalised convolution: blur(known) / blur(known mask) in the holes, the known pixels kept."""
    from scipy.ndimage import gaussian_filter

    known = 1.0 - hole
    num = np.stack([gaussian_filter(c * known, sigma, mode="reflect") for c in lq])
    den = gaussian_filter(known, sigma, mode="reflect")[None]
    # where a hole is much wider than sigma the weights vanish: fall back to the image's known mean
    mean = (lq * known).sum((1, 2), keepdims=True) / max(known.sum(), 1.0)
    fill = np.where(den > 1e-3, num / np.maximum(den, 1e-3), mean)
    return lq * known + fill * hole


def biharmonic(lq: np.ndarray, hole: np.ndarray) -> np.ndarray:
    from skimage.restoration import inpaint_biharmonic

    return inpaint_biharmonic(lq.transpose(1, 2, 0), hole.astype(bool), channel_axis=-1).transpose(2, 0, 1)


def hole_psnr(pred: torch.Tensor, gt: torch.Tensor, hole: np.ndarray) -> float:
    p = np.round(pred.clamp(0, 1).numpy() * 255)
    g = np.round(gt.numpy() * 255)
    m = np.broadcast_to(hole[None] > 0.5, p.shape)
    return float(10 * np.log10(255.0**2 / np.mean((p[m] - g[m]) ** 2)))


def main(argv: list[str] | None = None) -> int:
    from run import data_root  # beside this file

    from irdiff.evaluate import degraded_items, evaluate

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=8, help="first N CBSD68 images")
    ap.add_argument("--data", type=Path)
    args = ap.parse_args(argv)
    data = data_root(args.data)
    out: dict = {"images": args.images, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                 "command": "python benchmarks/task_models/inpaint_check.py " + " ".join(sys.argv[1:]), "cells": {}}
    for kind, spec in MASKS.items():
        items = degraded_items(data / "CBSD68", spec, tasks.EVAL_SEED, max_images=args.images)
        cell = {"hole_fraction": float(np.mean([it.mask.float().mean().item() for it in items]))}
        fills = {"zero-filled input": lambda lq, hole: lq, "Gaussian fill": gaussian_fill, "biharmonic": biharmonic}
        for name, fill in fills.items():
            preds: list[torch.Tensor] = []

            def restore(item, g, fill=fill, preds=preds):
                pred = torch.from_numpy(fill(item.lq.double().numpy(), item.mask[0].double().numpy())).float()
                preds.append(pred)
                return pred

            timer = tasks.CpuTimer(restore)
            r = evaluate(items, timer, seed=tasks.EVAL_SEED)
            holes = [hole_psnr(p, it.gt, it.mask[0].numpy()) for p, it in zip(preds, items)]
            cell[name] = {"psnr": r.mean("psnr"), "ssim": r.mean("ssim"), "hole_psnr": float(np.mean(holes)),
                          "cpu_seconds": float(np.mean(timer.seconds))}
            print(kind, name, {k: round(v, 3) for k, v in cell[name].items()}, flush=True)
        out["cells"][kind] = cell
    (HERE / "inpaint_check.json").write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
