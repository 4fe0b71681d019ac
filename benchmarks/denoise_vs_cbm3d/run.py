"""The bundled denoiser and (C)BM3D side by side on the same noisy images (issue 13).

    python benchmarks/denoise_vs_cbm3d/run.py all [--model denoise] [--max-images N]
    python benchmarks/denoise_vs_cbm3d/run.py cbm3d --max-images 8     # fill the BM3D cache only
    python benchmarks/denoise_vs_cbm3d/run.py report                   # results.md / results.json

Sets: CBSD68 and Kodak24 (colour, CBM3D), and CBSD68 converted to grey (BT.601 luma rounded to 8 bits;
grey BM3D), at sigma 15 / 25 / 50, under two protocols on the same noise draw:

- ``float``: noise added in float and not clipped (the papers' protocol);
- ``uint8``: the same noisy image rounded and clipped to an 8-bit file (what real photos are).

The noise of image i of a set at sigma s is drawn from ``torch.Generator().manual_seed(noise_seed(set, s, i))``
(the seeds of every number committed for the bundled models). Both methods get the same array, are told
the true sigma (BM3D needs it; the irdiff model is blind) and are scored by ``irdiff.evaluate.score`` (the
scoring rule of every irdiff number: 8-bit RGB PSNR / SSIM, BasicSR conventions). Seconds are wall time per
image on one thread.

CBM3D is slow (about a minute per CBSD68 image on one core), so every result is appended to a cache
(``cache_<method>.jsonl`` beside this file, committed) and a run only computes what is missing; images
are taken in an interleaved order (image 0 of every cell, then image 1...) so that a partial run covers
every cell evenly. The report says how many images each cell holds and compares the two methods on the
images both have.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
import zlib
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SETS = {"CBSD68": "CBSD68", "Kodak24": "Kodak24", "CBSD68-grey": "CBSD68"}  # cell name -> folder
SIGMAS = (15, 25, 50)
PROTOCOLS = ("float", "uint8")


def noise_seed(set_name: str, sigma: int, index: int) -> int:
    # the scheme of scripts/export_pretrained.py: the same noise as the numbers in the model cards
    return 1000003 * sum(map(ord, set_name)) + 1009 * sigma + index


def data_root() -> Path:
    """$IRDIFF_DATA, else the development checkout's data folder beside the repository, else the user cache
    that `irdiff data fetch CBSD68 Kodak24` fills."""
    from irdiff.data import catalog

    beside = ROOT.parent / "shared" / "data"
    return catalog.data_root() if os.environ.get("IRDIFF_DATA") or not beside.is_dir() else beside


def files_of(folder: str) -> list[Path]:
    from irdiff.data.io import list_images

    return list_images(data_root() / folder)


def clean_image(cell: str, path: Path) -> np.ndarray:
    """H x W x C float64 in [0, 1]: the 8-bit clean image (grey cells: BT.601 luma rounded to 8 bits)."""
    from irdiff.data.io import read_array

    arr = read_array(path)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    arr = arr[:, :, :3].astype(np.float64)
    if cell.endswith("-grey"):
        arr = np.round(arr @ np.array([0.299, 0.587, 0.114]))[:, :, None]
    return arr / 255.0


def noisy_image(cell: str, index: int, sigma: int, clean: np.ndarray, protocol: str) -> np.ndarray:
    import torch

    g = torch.Generator().manual_seed(noise_seed(cell, sigma, index))
    noise = torch.randn(clean.shape[2], clean.shape[0], clean.shape[1], generator=g).numpy().transpose(1, 2, 0)
    noisy = clean + sigma / 255.0 * noise.astype(np.float64)
    if protocol == "uint8":
        noisy = np.clip(np.round(noisy * 255), 0, 255) / 255.0
    return noisy


def score(out: np.ndarray, clean: np.ndarray) -> tuple[float, float]:
    """irdiff.evaluate.score, the one scoring rule (clamp, round both to 8 bits, BasicSR PSNR / SSIM)."""
    import torch

    from irdiff.evaluate import score as irdiff_score

    def chw(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1), dtype=np.float32))

    return irdiff_score(chw(out), chw(clean))


def jobs(max_images: int | None) -> list[tuple[str, int, Path, int, str]]:
    """(cell, index, file, sigma, protocol) in interleaved order: every cell advances together."""
    lists = {cell: files_of(folder) for cell, folder in SETS.items()}
    n = max(len(v) for v in lists.values())
    n = min(n, max_images) if max_images else n
    out = []
    for i in range(n):
        for cell, files in lists.items():
            if i < len(files):
                for sigma in SIGMAS:
                    for protocol in PROTOCOLS:
                        out.append((cell, i, files[i], sigma, protocol))
    return out


def read_cache(path: Path) -> dict[tuple, dict]:
    if not path.exists():
        return {}
    rows = {}
    for line in path.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            rows[(r["set"], r["image"], r["sigma"], r["protocol"])] = r
    return rows


def append(path: Path, row: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def in_shard(job: tuple, shard: tuple[int, int]) -> bool:
    """--shard i/n: one of n processes (a core each) takes the jobs whose key hashes to i, a split that does
    not depend on what the others have already written."""
    return zlib.crc32(f"{job[0]}/{job[2].name}/{job[3]}/{job[4]}".encode()) % shard[1] == shard[0]


def run_cbm3d(max_images: int | None, shard: tuple[int, int] = (0, 1)) -> None:
    import bm3d

    cache_path = HERE / "cache_cbm3d.jsonl"
    done = read_cache(cache_path)
    todo = [j for j in jobs(max_images) if (j[0], j[2].name, j[3], j[4]) not in done and in_shard(j, shard)]
    print(f"cbm3d: {len(todo)} images to denoise", flush=True)
    for cell, i, f, sigma, protocol in todo:
        clean = clean_image(cell, f)
        noisy = noisy_image(cell, i, sigma, clean, protocol)
        t = time.perf_counter()
        if clean.shape[2] == 3:
            out = bm3d.bm3d_rgb(noisy, sigma / 255.0)
        else:
            out = bm3d.bm3d(noisy[:, :, 0], sigma / 255.0)[:, :, None]
        seconds = time.perf_counter() - t
        p, s = score(out, clean)
        append(cache_path, {"set": cell, "image": f.name, "index": i, "sigma": sigma, "protocol": protocol,
                            "psnr": p, "ssim": s, "seconds": seconds, "method": "CBM3D" if clean.shape[2] == 3
                            else "BM3D", "version": getattr(bm3d, "__version__", "bm3d")})
        print(f"cbm3d {cell} {f.name} s{sigma} {protocol}: {p:.2f} dB {seconds:.1f} s", flush=True)


def model_key(name: str) -> str:
    """A hash of the inference net's weights as loaded (float32): a training run's checkpoint and the model
    exported from it share their cache."""
    import irdiff

    h = hashlib.sha256()
    for k, v in sorted(irdiff.load(name).net.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().float().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def run_model(name: str, max_images: int | None, shard: tuple[int, int] = (0, 1)) -> str:
    import torch

    import irdiff

    torch.set_num_threads(1)
    key = model_key(name)
    cache_path = HERE / f"cache_model_{key}.jsonl"
    done = read_cache(cache_path)
    todo = [j for j in jobs(max_images) if (j[0], j[2].name, j[3], j[4]) not in done]
    todo = [j for j in todo if in_shard(j, shard)]
    restorer = irdiff.load(name)
    print(f"model {name} ({key}): {len(todo)} images", flush=True)
    for cell, i, f, sigma, protocol in todo:
        clean = clean_image(cell, f)
        noisy = noisy_image(cell, i, sigma, clean, protocol).astype(np.float32)
        t = time.perf_counter()
        with torch.inference_mode():
            out = restorer.restore_tensor(torch.from_numpy(noisy.transpose(2, 0, 1).copy()))
        seconds = time.perf_counter() - t
        out = out.numpy().transpose(1, 2, 0).astype(np.float64)
        p, s = score(out, clean)
        append(cache_path, {"set": cell, "image": f.name, "index": i, "sigma": sigma, "protocol": protocol,
                            "psnr": p, "ssim": s, "seconds": seconds, "method": name, "model_sha": key})
    return key


def report(model: str) -> dict:
    from irdiff.sysinfo import cpu_name

    key = model_key(model)
    ours = read_cache(HERE / f"cache_model_{key}.jsonl")
    theirs = read_cache(HERE / "cache_cbm3d.jsonl")
    cells = []
    for cell in SETS:
        for protocol in PROTOCOLS:
            for sigma in SIGMAS:
                both = [k for k in ours if k[0] == cell and k[2] == sigma and k[3] == protocol and k in theirs]
                if not both:
                    continue

                def mean(rows: dict, field: str, keys: list = both) -> float:
                    return float(np.mean([rows[k][field] for k in keys]))

                every = [k for k in ours if k[0] == cell and k[2] == sigma and k[3] == protocol]
                cells.append({"set": cell, "protocol": protocol, "sigma": sigma, "images": len(both),
                              "ours_all_psnr": mean(ours, "psnr", every), "ours_all_ssim": mean(ours, "ssim", every),
                              "ours_all_images": len(every),
                              "of": len(files_of(SETS[cell])),
                              "ours_psnr": mean(ours, "psnr"), "ours_ssim": mean(ours, "ssim"),
                              "ours_seconds": mean(ours, "seconds"),
                              "bm3d_psnr": mean(theirs, "psnr"), "bm3d_ssim": mean(theirs, "ssim"),
                              "bm3d_seconds": mean(theirs, "seconds")})
    result = {"model": model, "model_sha": key, "cpu": cpu_name(), "date": time.strftime("%Y-%m-%d %H:%M UTC",
              time.gmtime()), "cells": cells}
    suffix = "" if model == "denoise" else f"_{Path(model).name}"
    (HERE / f"results{suffix}.json").write_text(json.dumps(result, indent=1))
    lines = [f"# `{model}` vs (C)BM3D on the same noisy images", "",
             f"Machine: {result['cpu']}; one thread each; {result['date']}. "
             "Command: `python benchmarks/denoise_vs_cbm3d/run.py all"
             f"{'' if model == 'denoise' else ' --model ' + model}`.", "",
             "RGB PSNR (dB) / SSIM on the 8-bit output. `float`: noise added in float, not clipped (papers' "
             "protocol); `uint8`: the same noisy image rounded and clipped to 8 bits. Grey: CBSD68 as BT.601 luma, "
             "grey BM3D. Images: how many of the set both methods have run on (the mean is over those).", "",
             "| set | protocol | σ | images | ours PSNR / SSIM | (C)BM3D PSNR / SSIM | Δ dB | ours s/img | BM3D s/img "
             "| speed-up | ours, whole set |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in cells:
        lines.append(f"| {c['set']} | {c['protocol']} | {c['sigma']} | {c['images']}/{c['of']} | "
                     f"{c['ours_psnr']:.2f} / {c['ours_ssim']:.4f} | {c['bm3d_psnr']:.2f} / {c['bm3d_ssim']:.4f} | "
                     f"{c['ours_psnr'] - c['bm3d_psnr']:+.2f} | {c['ours_seconds']:.2f} | {c['bm3d_seconds']:.1f} | "
                     f"{c['bm3d_seconds'] / c['ours_seconds']:.0f}x | "
                     f"{c['ours_all_psnr']:.2f} / {c['ours_all_ssim']:.4f} ({c['ours_all_images']}) |")
    (HERE / f"results{suffix}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["all", "cbm3d", "model", "report"])
    ap.add_argument("--model", default="denoise", help="bundled name or model folder (default: denoise)")
    ap.add_argument("--max-images", type=int, default=None, help="first N images of each set (default: all)")
    ap.add_argument("--shard", default="0/1", help="i/n: this process restores every n-th missing image from i")
    args = ap.parse_args(argv)
    if not data_root().is_dir():
        print(f"error: no data folder {data_root()} (set IRDIFF_DATA)", file=sys.stderr)
        return 1
    i, n = (int(v) for v in args.shard.split("/"))
    if args.what in ("all", "model"):
        run_model(args.model, args.max_images, (i, n))
    if args.what in ("all", "cbm3d"):
        run_cbm3d(args.max_images, (i, n))
    if args.what in ("all", "report"):
        report(args.model)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
