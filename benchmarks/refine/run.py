"""Predict-and-refine on CBSD68, sigma 25: the one-pass prior against the model that refines it.

    python benchmarks/refine/run.py --model runs/denoise_refine_s25            # every run of RUNS, results.json
    python benchmarks/refine/run.py --model denoise-refine --report            # results.md, tradeoff.png, crops.png

Every image of CBSD68 gets AWGN sigma 25 (``irdiff.evaluate.degraded_items``, seed 0: the bundled cards' images)
and is restored through ``irdiff.evaluate.evaluate`` + ``with_restorer`` (what users get: the Restorer, whole
images); sampling noise of image i comes from ``sample_generator(0, i)``. PSNR / SSIM on RGB of the 8-bit output;
NIQE (``irdiff.niqe``, irdiff's pristine model, lower = more natural) of the same 8-bit output. Seconds per image
are process CPU time (the core is shared with other jobs: wall time would measure them too).

Each run is written to results.json as it finishes; a run already there (same model, settings and image
count) is skipped, so the script resumes after an interruption. --only NAME runs one entry (parallel shards).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))

SIGMA = 25
SEED = 0
STEPS = (1, 2, 5, 10)
ETAS = (0.0, 0.25, 0.5, 1.0)  # the eta sweep at 10 steps (1.0 is the model's default, in the steps sweep)
SAVE = (0, 1, 2)  # images whose restorations are kept (for crops.png), under --save-dir


def runs() -> list[dict]:
    out = [{"name": "prior", "model": "prior"}]
    out += [{"name": f"refine_s{s}_eta1", "model": "refine", "steps": s, "eta": 1.0} for s in STEPS]
    out += [{"name": f"refine_s10_eta{e:g}", "model": "refine", "steps": 10, "eta": e} for e in ETAS if e != 1.0]
    return out


def machine() -> str:

    from irdiff.sysinfo import cpu_name

    return f"{cpu_name()}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}"


def run_one(spec: dict, models: dict[str, str], items: list, save_dir: Path | None) -> dict:
    import irdiff
    from irdiff.data.io import to_uint8, write_image
    from irdiff.evaluate import evaluate, with_restorer
    from irdiff.niqe import niqe

    restorer = irdiff.load(models[spec["model"]])
    kw = {"tile": 0}
    if "steps" in spec:
        kw.update(steps=spec["steps"], eta=spec["eta"])
    inner = with_restorer(restorer, **kw)
    cpu: list[float] = []

    def restore(item, g):
        t0 = time.process_time()
        out = inner(item, g)
        cpu.append(time.process_time() - t0)
        return out

    scores: list[float] = []

    def on_item(i, item, restored):
        scores.append(niqe(to_uint8(restored.clamp(0, 1))))
        if save_dir is not None and i in SAVE:
            write_image(save_dir / spec["name"] / f"{item.name}.png", restored)

    res = evaluate(items, restore, seed=SEED, on_item=on_item)
    for rec, n, c in zip(res.records, scores, cpu):
        rec["niqe"], rec["cpu_seconds"] = n, c
    return {**spec, "model_path": models[spec["model"]], "images": len(items), "psnr": res.mean("psnr"),
            "ssim": res.mean("ssim"), "niqe": res.mean("niqe"), "cpu_seconds": res.mean("cpu_seconds"),
            "wall_seconds": res.mean("seconds"), "psnr_in": res.mean("psnr_in"), "records": res.records}


def input_niqe(items: list) -> float:
    from irdiff.data.io import to_uint8
    from irdiff.niqe import niqe

    return sum(niqe(to_uint8(it.lq.clamp(0, 1))) for it in items) / len(items)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="denoise-refine", help="the refining model (bundled name or run folder)")
    p.add_argument("--prior", default="denoise", help="the one-pass prior alone")
    data = Path(os.environ.get("IRDIFF_DATA", REPO.parent / "shared" / "data")) / "CBSD68"
    p.add_argument("--data", default=str(data), help="the CBSD68 folder (default: $IRDIFF_DATA/CBSD68)")
    p.add_argument("--max-images", type=int, default=None, help="the first N images (a smoke test)")
    p.add_argument("--results", default=str(HERE / "results.json"))
    p.add_argument("--save-dir", default=str(REPO / "runs" / "refine_bench"), help="restorations for crops.png")
    p.add_argument("--only", action="append", default=[], help="run only these entries (by name)")
    p.add_argument("--report", action="store_true", help="write results.md, tradeoff.png and crops.png")
    args = p.parse_args(argv)
    torch.set_num_threads(1)

    from irdiff.evaluate import degraded_items

    path = Path(args.results)
    results = json.loads(path.read_text()) if path.is_file() else {"runs": {}}
    items = degraded_items(args.data, {"name": "awgn", "sigma": SIGMA}, SEED, max_images=args.max_images)
    models = {"prior": args.prior, "refine": args.model}
    results.update(data=str(Path(args.data).name), sigma=SIGMA, seed=SEED, images=len(items))
    if "niqe_input" not in results or results.get("niqe_input_images") != len(items):
        results["niqe_input"], results["niqe_input_images"] = input_niqe(items), len(items)
    for spec in runs():
        if args.only and spec["name"] not in args.only:
            continue
        old = results["runs"].get(spec["name"])
        if old and old["images"] == len(items) and old["model_path"] == models[spec["model"]]:
            continue
        t0 = time.time()
        r = run_one(spec, models, items, Path(args.save_dir) if args.save_dir else None)
        r.update(date=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"), machine=machine(),
                 torch=torch.__version__, elapsed=round(time.time() - t0, 1))
        # re-read before writing: another shard may have added its runs meanwhile
        current = json.loads(path.read_text()) if path.is_file() else results
        current.update({k: v for k, v in results.items() if k != "runs"})
        current.setdefault("runs", {})[spec["name"]] = r
        path.write_text(json.dumps(current, indent=1))
        results = current
        print(f"{spec['name']}: PSNR {r['psnr']:.3f} SSIM {r['ssim']:.4f} NIQE {r['niqe']:.3f} "
              f"{r['cpu_seconds']:.2f} s/img ({len(items)} images)", flush=True)
    if args.report:
        from report import write_report  # benchmarks/refine/report.py

        write_report(results, Path(args.save_dir), items)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    raise SystemExit(main())
