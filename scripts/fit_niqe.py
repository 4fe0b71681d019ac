"""Fit NIQE's pristine model (irdiff.niqe) on a folder of clean images and write it as JSON.

    python scripts/fit_niqe.py DATA_DIR [--out irdiff/assets/niqe_bsds400.json]

The bundled model was fitted on the 400 clean BSDS500 training images (BSDS500-train400: the official
train + test splits, 481 x 321, JPEG as Berkeley distributes them) with the defaults: 96 x 96 patches,
patches sharper than 0.75 of each image's sharpest one.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

from irdiff.data.io import list_images, read_image
from irdiff.niqe import DEFAULT_MODEL, SHARPNESS_FRACTION, fit_pristine


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data", help="folder of clean images")
    p.add_argument("--out", default=str(DEFAULT_MODEL), help="output JSON (default: the bundled model's path)")
    p.add_argument("--sharpness-fraction", type=float, default=SHARPNESS_FRACTION)
    args = p.parse_args(argv)
    files = list_images(args.data)
    if not files:
        print(f"error: no images in {args.data}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    model = fit_pristine((read_image(f) for f in files), args.sharpness_fraction,
                         info={"data": Path(args.data).name, "fitted": datetime.date.today().isoformat(),
                               "command": "python scripts/fit_niqe.py " + Path(args.data).name})
    seconds = time.perf_counter() - t0
    model.save(args.out)
    print(f"{args.out}: {model.info['patches']} patches from {model.info['images']} images in {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
