"""Make docs/before_after.png: noisy / restored / clean crops for the README (bundled `denoise` model).

    python docs/make_figure.py [--data ../shared/data]

Uses a Kodak24 image (released by Kodak for unrestricted use; the crop lives in docs/, not in the
package) with AWGN sigma = 25 added in float with a fixed seed, and the bundled sample image.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

import irdiff
from irdiff.data.io import read_image, to_uint8
from irdiff.metrics import psnr

HERE = Path(__file__).resolve().parent


def row(restorer, clean: torch.Tensor, sigma: float, seed: int) -> tuple[list[np.ndarray], float, float]:
    g = torch.Generator().manual_seed(seed)
    noisy = clean + torch.randn(clean.shape, generator=g) * sigma / 255
    out = restorer.restore(noisy, progress=False)
    imgs = [to_uint8(noisy), to_uint8(out), to_uint8(clean)]
    return imgs, psnr(imgs[0], imgs[2]), psnr(imgs[1], imgs[2])


def main() -> None:
    ap = argparse.ArgumentParser()
    default_data = Path(os.environ.get("IRDIFF_DATA", HERE.parents[1] / "shared" / "data"))
    ap.add_argument("--data", type=Path, default=default_data)
    ap.add_argument("--model", default="denoise")
    args = ap.parse_args()
    restorer = irdiff.load(args.model)
    crops = [read_image(args.data / "Kodak24" / "kodim23.png")[:, 120:312, 280:472],
             read_image(args.data / "Kodak24" / "kodim05.png")[:, 160:352, 300:492]]
    rows, labels = [], []
    for i, c in enumerate(crops):
        imgs, p_in, p_out = row(restorer, c, 25, seed=i)
        rows.append(np.concatenate(imgs, axis=1))
        labels.append(f"sigma 25: noisy {p_in:.2f} dB | restored {p_out:.2f} dB | clean")
    grid = np.concatenate(rows, axis=0)
    canvas = Image.new("RGB", (grid.shape[1], grid.shape[0] + 16 * len(rows)), "white")
    y = 0
    for r, label in zip(rows, labels):
        ImageDraw.Draw(canvas).text((4, y + 2), label, fill="black")
        canvas.paste(Image.fromarray(r), (0, y + 16))
        y += r.shape[0] + 16
    canvas.save(HERE / "before_after.png", optimize=True)
    print("\n".join(labels))


if __name__ == "__main__":
    main()
