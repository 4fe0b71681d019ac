"""Grey photos (issue 13, item 5): a colour denoiser on CBSD68 converted to grey against grey BM3D, with the
noisy image as a float array, an 8-bit file and a 16-bit file.

    python benchmarks/denoise_grey/run.py [--model denoise] [--bm3d-images 8] [--images N]

The grey images, the noise draws, the float / uint8 protocols and the scoring are those of
benchmarks/denoise_vs_cbm3d (imported from there: the same noisy arrays); ``uint16`` is the same noisy
image clipped and rounded to 16 bits. The model gets each image as a user would pass it: an H x W float32,
uint8 or uint16 array (``Restorer.restore``: a grey image is fed to a colour model as three equal channels).
BM3D's float and uint8 rows come from that benchmark's cache (cache_cbm3d.jsonl); its uint16 rows are
computed here for the first ``--bm3d-images`` images (BM3D takes 5-15 s per grey image on one core) and
cached in cache_bm3d_uint16.jsonl. Writes results[_MODEL].md / .json beside this file.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CELL = "CBSD68-grey"
PROTOCOLS = ("float", "uint8", "uint16")


def _side_by_side():
    path = ROOT / "benchmarks" / "denoise_vs_cbm3d" / "run.py"
    spec = importlib.util.spec_from_file_location("denoise_vs_cbm3d", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


SBS = _side_by_side()


def noisy_array(index: int, path: Path, sigma: int, protocol: str) -> tuple[np.ndarray, np.ndarray]:
    """(clean H x W x 1 float64, noisy H x W array as a user holds it: float32, uint8 or uint16)."""
    clean = SBS.clean_image(CELL, path)
    noisy = SBS.noisy_image(CELL, index, sigma, clean, "float")[:, :, 0]
    if protocol == "float":
        return clean, noisy.astype(np.float32)
    top, dtype = (255, np.uint8) if protocol == "uint8" else (65535, np.uint16)
    return clean, np.clip(np.round(noisy * top), 0, top).astype(dtype)


def as_unit(arr: np.ndarray) -> np.ndarray:
    div = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}.get(arr.dtype, 1.0)
    return (arr.astype(np.float64) / div)[:, :, None]


def run_model(model: str, n_images: int | None) -> list[dict]:
    import torch

    import irdiff

    torch.set_num_threads(1)
    restorer = irdiff.load(model)
    rows = []
    for i, path in enumerate(SBS.files_of("CBSD68")[:n_images]):
        for sigma in SBS.SIGMAS:
            for protocol in PROTOCOLS:
                clean, noisy = noisy_array(i, path, sigma, protocol)
                t = time.process_time()
                with torch.inference_mode():
                    out = restorer.restore(noisy, progress=False)
                seconds = time.process_time() - t
                p, s = SBS.score(as_unit(out), clean)
                rows.append({"image": path.name, "index": i, "sigma": sigma, "protocol": protocol, "psnr": p,
                             "ssim": s, "cpu_s": seconds})
    return rows


def run_bm3d(n_images: int) -> dict[tuple, dict]:
    """BM3D rows by (image, sigma, protocol): float / uint8 from the side-by-side cache, uint16 computed."""
    import bm3d

    cache = HERE / "cache_bm3d_uint16.jsonl"
    rows = {(k[1], k[2], k[3]): r for k, r in SBS.read_cache(SBS.HERE / "cache_cbm3d.jsonl").items() if k[0] == CELL}
    rows.update({(k[1], k[2], k[3]): r for k, r in SBS.read_cache(cache).items()})
    for i, path in enumerate(SBS.files_of("CBSD68")[:n_images]):
        for sigma in SBS.SIGMAS:
            if (path.name, sigma, "uint16") in rows:
                continue
            clean, noisy = noisy_array(i, path, sigma, "uint16")
            t = time.process_time()
            out = bm3d.bm3d(as_unit(noisy)[:, :, 0], sigma / 255.0)[:, :, None]
            p, s = SBS.score(out, clean)
            row = {"set": CELL, "image": path.name, "index": i, "sigma": sigma, "protocol": "uint16", "psnr": p,
                   "ssim": s, "seconds": time.process_time() - t, "method": "BM3D"}
            SBS.append(cache, row)
            rows[(path.name, sigma, "uint16")] = row
            print(f"bm3d {path.name} s{sigma} uint16: {p:.2f} dB", flush=True)
    return rows


def report(model: str, ours: list[dict], theirs: dict[tuple, dict]) -> None:
    from irdiff.sysinfo import cpu_name

    cells = []
    for protocol in PROTOCOLS:
        for sigma in SBS.SIGMAS:
            mine = [r for r in ours if r["sigma"] == sigma and r["protocol"] == protocol]
            both = [r for r in mine if (r["image"], sigma, protocol) in theirs]
            cells.append({
                "protocol": protocol, "sigma": sigma, "images": len(both), "all_images": len(mine),
                "ours_all_psnr": float(np.mean([r["psnr"] for r in mine])),
                "ours_psnr": float(np.mean([r["psnr"] for r in both])) if both else None,
                "bm3d_psnr": float(np.mean([theirs[(r["image"], sigma, protocol)]["psnr"] for r in both]))
                if both else None,
                "ours_cpu_s": float(np.mean([r["cpu_s"] for r in mine])),
            })
    date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    suffix = "" if model == "denoise" else f"_{Path(model).name}"
    (HERE / f"results{suffix}.json").write_text(json.dumps({"model": model, "cpu": cpu_name(), "date": date,
                                                            "cells": cells, "rows": ours}, indent=1) + "\n")
    lines = [f"# `{model}` on grey CBSD68 vs BM3D", "",
             f"Machine: {cpu_name()}, one thread; {date}. Command: `python benchmarks/denoise_grey/run.py"
             f"{'' if model == 'denoise' else ' --model ' + model}`.", "",
             "PSNR (dB) on the 8-bit output; the noisy grey image given as a float array, an 8-bit or a 16-bit "
             "array. BM3D columns: the images BM3D ran on (the first ones of the set); `ours, first N`: the "
             "model on the first N images it ran on.", "",
             "| protocol | σ | images | ours | BM3D | Δ dB | ours, first N | N | ours CPU s/img |",
             "|---|---|---|---|---|---|---|---|---|"]
    for c in cells:
        vs = (f"{c['ours_psnr']:.2f} | {c['bm3d_psnr']:.2f} | {c['ours_psnr'] - c['bm3d_psnr']:+.2f}"
              if c["images"] else "- | - | -")
        lines.append(f"| {c['protocol']} | {c['sigma']} | {c['images']} | {vs} | {c['ours_all_psnr']:.2f} | "
                     f"{c['all_images']} | {c['ours_cpu_s']:.2f} |")
    (HERE / f"results{suffix}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="denoise")
    ap.add_argument("--bm3d-images", type=int, default=8)
    ap.add_argument("--images", type=int, default=None, help="the model on the first N images (default: all 68)")
    args = ap.parse_args()
    if not SBS.data_root().is_dir():
        print(f"error: no data folder {SBS.data_root()} (set IRDIFF_DATA)", file=sys.stderr)
        return 1
    theirs = run_bm3d(args.bm3d_images)
    report(args.model, run_model(args.model, args.images), theirs)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
