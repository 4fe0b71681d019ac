"""Make the README's bundled sample and its before/after figure.

    python docs/make_figure.py                       # docs/before_after.png from the bundled sample
    python docs/make_figure.py --sample DATA_DIR     # first re-cut the sample from DATA_DIR/Kodak24

The sample (irdiff/assets/sample_clean.png, sample_noisy.png) is a 256x256 crop of Kodak's kodim23
(the parrots; the Kodak suite was released by Kodak for unrestricted usage, see irdiff/assets/README.md)
with Gaussian noise of sigma 25 (0-255 scale) from numpy's default_rng(0), rounded and clipped to 8 bits:
a file a user could have, unlike noise added in float. The figure runs the README's first command's
restoration (bundled `denoise` model, default settings) on it and prints the PSNRs the README quotes.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent
ASSETS = HERE.parent / "irdiff" / "assets"
SOURCE, TOP, LEFT, SIZE = "kodim23.png", 128, 256, 256
SIGMA, SEED = 25.0, 0


def make_sample(data: Path) -> None:
    """Cut the clean crop from Kodak24 and add the fixed noise; write both into irdiff/assets."""
    img = np.asarray(Image.open(data / "Kodak24" / SOURCE).convert("RGB"))
    clean = img[TOP:TOP + SIZE, LEFT:LEFT + SIZE]
    noise = np.random.default_rng(SEED).normal(0.0, SIGMA, clean.shape)
    noisy = np.clip(np.round(clean + noise), 0, 255).astype(np.uint8)
    Image.fromarray(clean).save(ASSETS / "sample_clean.png", optimize=True)
    Image.fromarray(noisy).save(ASSETS / "sample_noisy.png", optimize=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sample", type=Path, metavar="DATA_DIR",
                    help="re-cut the bundled sample from DATA_DIR/Kodak24 first")
    ap.add_argument("--model", default="denoise")
    args = ap.parse_args()
    if args.sample:
        make_sample(args.sample)

    import irdiff
    from irdiff.data.io import read_array
    from irdiff.metrics import psnr

    noisy, clean = read_array(ASSETS / "sample_noisy.png"), read_array(ASSETS / "sample_clean.png")
    restored = irdiff.load(args.model).restore(noisy, progress=False)
    p_in, p_out = psnr(noisy, clean), psnr(restored, clean)
    labels = [f"noisy (sigma 25): {p_in:.2f} dB", f"restored ({args.model}): {p_out:.2f} dB", "clean"]
    gap, top = 4, 18
    w, h = clean.shape[1], clean.shape[0]
    canvas = Image.new("RGB", (3 * w + 2 * gap, h + top), "white")
    draw = ImageDraw.Draw(canvas)
    for k, (img, label) in enumerate(zip((noisy, restored, clean), labels)):
        x = k * (w + gap)
        draw.text((x + 4, 3), label, fill="black")
        canvas.paste(Image.fromarray(img), (x, top))
    canvas.save(HERE / "before_after.png", optimize=True)
    print(f"PSNR against the clean crop: noisy {p_in:.2f} dB, restored {p_out:.2f} dB ({p_out - p_in:+.2f} dB)")


if __name__ == "__main__":
    main()
