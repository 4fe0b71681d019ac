"""Peak memory and time of tiled restoration vs image size (GitHub issue 6).

Each (size, tile) runs in a fresh subprocess: it builds a NAFNet-sized restorer (the bundled denoiser's
architecture: width 32, enc_blocks [1, 1, 2], middle 2, dec [1, 1, 1], regression method; freshly
initialised unless --run names a run directory or bundled model), makes a random uint8 RGB image,
restores it with ``Restorer.restore`` and reports ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (the
process's peak resident set, which includes Python, torch and the model) before and after, and the
wall time of the restore call.

    OMP_NUM_THREADS=1 python benchmarks/tiling_memory/run.py            # writes results.json + results.md
    python benchmarks/tiling_memory/run.py --sizes 512 1024 --tiles 512   # a quick subset
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
NET = {"name": "nafnet", "width": 32, "enc_blocks": [1, 1, 2], "middle_blocks": 2, "dec_blocks": [1, 1, 1]}


class _Stop(Exception):
    pass


def child(size: int, tile: int, overlap: int, tile_batch: int, run: str | None, threads: int,
          stop_tiles: int = 0) -> dict:
    import numpy as np
    import torch

    from irdiff.inference import tile_grid

    torch.set_num_threads(threads)
    if run:
        from irdiff.inference import load

        restorer = load(run)
    else:
        from irdiff.build import build_method
        from irdiff.config import Config, from_dict
        from irdiff.inference import Restorer

        cfg = from_dict(Config, {"method": {"name": "regression"}, "net": dict(NET)})
        method = build_method(cfg)
        torch.manual_seed(0)
        restorer = Restorer(method, method.build_net(dict(cfg.net), 3), cfg, {})
    image = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    sc = restorer.scale  # SR models: `size` is the input, the output is size * scale
    total = len(tile_grid(size * sc, size * sc, tile or None, overlap, restorer.multiple))
    done = [0]
    infer = restorer._infer

    def counted(tiles, *a, **k):  # --stop-tiles: end after N tiles were accumulated and flushed
        if stop_tiles and done[0] >= stop_tiles:
            raise _Stop
        out = infer(tiles, *a, **k)
        done[0] += tiles.shape[0]
        return out

    restorer._infer = counted
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    partial = False
    try:
        out = restorer.restore(image, tile=tile, overlap=overlap, tile_batch=tile_batch or None, progress=False)
        assert out.shape == (size * sc, size * sc, 3) and out.dtype == image.dtype
    except _Stop:
        partial = True
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    row = {"size": size, "tile": tile or None, "overlap": overlap, "tile_batch": tile_batch,
           "peak_rss_mib": round(peak, 1), "rss_before_restore_mib": round(before, 1),
           "image_mib": round(image.nbytes / 2**20, 1), "tiles": total, "seconds": round(seconds, 2),
           "output_size": size * sc, "output_mib": round(image.nbytes * sc * sc / 2**20, 1),
           "mpix_per_s": round((size * sc) ** 2 / 1e6 / seconds, 3)}
    if partial:  # time extrapolated from the tiles done
        row.update(partial=True, tiles_done=done[0], seconds_measured=round(seconds, 2),
                   seconds=round(seconds * total / done[0], 2),
                   mpix_per_s=round((size * sc) ** 2 / 1e6 / (seconds * total / done[0]), 3))
    return row


def _engine_mib(r: dict) -> float:
    """Peak minus the caller's uint8 input and output images (the output is scale² larger for SR)."""
    return r["peak_rss_mib"] - r["image_mib"] - r.get("output_mib", r["image_mib"])


def machine() -> str:
    from irdiff.sysinfo import cpu_name

    cpu = cpu_name()
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    return f"{cpu}, {os.cpu_count()} logical CPUs{mem}, {platform.system()} {platform.release()}"


def write_md(res: dict, path: Path) -> None:
    lines = [
        "# Tiled restoration: peak memory and time vs image size",
        "",
        f"- command: `{res['command']}`",
        f"- date: {res['date']}",
        f"- machine: {res['machine']}",
        f"- torch {res['torch']}, {res['threads']} thread(s) per process, {res['jobs']} process(es) at a time; "
        f"model: {res['model']}",
        f"- load during the run: {res['load_note']}",
        "",
        "Peak RSS is the whole process (`ru_maxrss`: Python + torch + model + input + output + tiles), "
        "each row in a fresh process; *before* is the peak after imports, model and input image, just "
        "before `restore`. The uint8 input and output images (3 bytes/px each) are counted in the peak; "
        "the *peak − image in/out* column takes them out.",
        "",
        "| image | tile | overlap | peak RSS (MiB) | before restore (MiB) | peak − image in/out (MiB) "
        "| time (s) | Mpx/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        if "error" in r:
            lines.append(f"| {r['size']}² | {r['tile'] or 'whole'} | | failed: {r['error']} | | | | |")
            continue
        note = f" (first {r['tiles_done']} of {r['tiles']} tiles; time extrapolated)" if r.get("partial") else ""
        lines.append(f"| {r['size']}²{note} | {r['tile'] or 'whole'} | {r['overlap']} | {r['peak_rss_mib']:.0f} | "
                     f"{r['rss_before_restore_mib']:.0f} | {_engine_mib(r):.0f} | "
                     f"{r['seconds']:.1f} | {r['mpix_per_s']:.3f} |")
    lines += ["", *res.get("summary", [])]
    path.write_text("\n".join(lines) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    ap.add_argument("--tiles", type=int, nargs="+", default=[512, 256], help="0 = whole image (no tiling)")
    ap.add_argument("--untiled-up-to", type=int, default=1024, help="also run untiled up to this size")
    ap.add_argument("--overlap", type=int, default=32)
    ap.add_argument("--tile-batch", type=int, default=0, help="0: the Restorer's default")
    ap.add_argument("--run", help="run directory or bundled model (default: a freshly initialised net)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--jobs", type=int, default=1, help="children run at the same time (times then interfere)")
    ap.add_argument("--load-note", default="none stated")
    ap.add_argument("--out", default=str(HERE))
    ap.add_argument("--stop-tiles", type=int, default=0,
                    help="stop each image after N tiles (peak memory of the first strips; time extrapolated)")
    ap.add_argument("--render", action="store_true", help="only rewrite results.md from results.json")
    ap.add_argument("--child", nargs=2, type=int, metavar=("SIZE", "TILE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(*args.child, args.overlap, args.tile_batch, args.run, args.threads,
                               args.stop_tiles)))
        return 0
    if args.render:
        write_md(json.loads((Path(args.out) / "results.json").read_text()), Path(args.out) / "results.md")
        return 0

    import torch

    jobs = [(s, t) for t in args.tiles for s in args.sizes]
    jobs += [(s, 0) for s in args.sizes if s <= args.untiled_up_to and 0 not in args.tiles]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}

    def run_child(job: tuple[int, int]) -> dict:
        size, tile = job
        cmd = [sys.executable, __file__, "--child", str(size), str(tile), "--overlap", str(args.overlap),
               "--tile-batch", str(args.tile_batch), "--threads", str(args.threads),
               "--stop-tiles", str(args.stop_tiles)]
        if args.run:
            cmd += ["--run", args.run]
        p = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if p.returncode != 0:
            err = (p.stderr.strip().splitlines() or [f"exit {p.returncode}"])[-1]
            row = {"size": size, "tile": tile or None, "error": err}
        else:
            row = json.loads(p.stdout.strip().splitlines()[-1])
        print(json.dumps(row), flush=True)
        return row

    # children may run side by side (--jobs): ru_maxrss is per process, so peaks are unaffected
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        rows = list(pool.map(run_child, jobs))
    summary = []
    for tile in args.tiles:
        got = {r["size"]: r["peak_rss_mib"] for r in rows if r.get("tile") == (tile or None) and "error" not in r}
        if 1024 in got and max(got) >= 4096:
            lo, hi = min(v for s, v in got.items() if s >= 1024), max(v for s, v in got.items() if s >= 1024)
            summary.append(f"- tile {tile}: peak RSS 1024² → 4096² spans {lo:.0f}–{hi:.0f} MiB "
                           f"({(hi / lo - 1) * 100:+.1f}% of the smallest); 4096² peak "
                           f"{got[4096] / 1024:.2f} GiB (goal: < 2 GiB, flat within ±10%).")
    argv = " ".join([str(Path(sys.argv[0]))] + sys.argv[1:])
    res = {"command": f"OMP_NUM_THREADS={args.threads} python {argv}",
           "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
           "machine": machine(), "torch": torch.__version__, "threads": args.threads, "jobs": args.jobs,
           "model": args.run or "freshly initialised NAFNet " + json.dumps(NET) + " (regression)",
           "load_note": args.load_note, "rows": rows, "summary": summary}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(res, indent=1) + "\n")
    write_md(res, out / "results.md")
    print("\n".join(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
