"""The embedded default job: train a small denoiser on procedural images, then restore a bundled sample.

Needs no download and no dataset: the training images are generated (dead leaves) and the sample
ships inside the package (irdiff/assets).
"""

from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).parent / "assets"

QUICKSTART_CONFIG = {
    "name": "quickstart",
    "seed": 0,
    "method": {"name": "regression", "loss_type": "l1"},
    "net": {"name": "nafnet", "width": 16},
    "data": {
        "train": {"name": "deadleaves", "num_images": 64, "image_size": 128, "patch_size": 64,
                  "degradation": {"name": "awgn", "sigma": 25}},
        "val": {"name": "deadleaves", "num_images": 4, "image_size": 128, "patch_size": None,
                "degradation": {"name": "awgn", "sigma": 25}},
    },
    "train": {"steps": 300, "batch_size": 8, "lr": 1e-3, "warmup_steps": 20, "lr_schedule": "cosine",
              "ema_decay": 0.99, "log_every": 25, "ckpt_every": 100},
    "sample": {"val_max_images": 4, "val_save_images": 2},
}


def run_quickstart(out: Path, steps: int = 300, progress: bool = True) -> int:
    import copy

    from irdiff.config import load_config
    from irdiff.data.io import read_image, to_uint8, write_image
    from irdiff.inference import load
    from irdiff.metrics import psnr
    from irdiff.train import train

    data = copy.deepcopy(QUICKSTART_CONFIG)
    data["train"]["steps"] = steps
    cfg = load_config(base=data)
    summary = train(cfg, out, progress=progress)
    print(f"trained {summary['step']} steps in {summary['seconds']:.0f} s; validation: "
          + ", ".join(f"{k} {v:.2f}" for k, v in summary["metrics"].items()))
    restorer = load(out)
    noisy, clean = read_image(ASSETS / "sample_noisy.png"), read_image(ASSETS / "sample_clean.png")
    restored = restorer.restore_tensor(noisy)
    write_image(out / "sample_restored.png", restored)
    before, after = psnr(to_uint8(noisy), to_uint8(clean)), psnr(to_uint8(restored), to_uint8(clean))
    print(f"bundled sample (sigma=25): PSNR {before:.2f} dB -> {after:.2f} dB; wrote {out / 'sample_restored.png'}")
    return 0
