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
import hashlib
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))

SIGMA = 25
SEED = 0
STEPS = (1, 2, 5, 10)  # the steps sweep, at eta STEPS_ETA
STEPS_ETA = 0.5
ETAS = (0.0, 0.25, 0.5, 1.0)  # the eta sweep, at ETA_STEPS steps (a single-core CPU budget: 8 CPU minutes in all)
ETA_STEPS = (5,)
SAVE = (0, 1, 2)  # images whose restorations are kept (for crops.png), under --save-dir


def runs() -> list[dict]:
    out = [{"name": "prior", "model": "prior"}]
    grid = [(s, STEPS_ETA) for s in STEPS] + [(s, e) for s in ETA_STEPS for e in ETAS if (s, e) not in
                                               [(s2, STEPS_ETA) for s2 in STEPS]]
    out += [{"name": f"refine_s{s}_eta{e:g}", "model": "refine", "steps": s, "eta": e} for s, e in grid]
    return out


class CachedPrior(nn.Module):
    """The prior's net, remembering its output for the last few inputs: every refined run restores the same
    noisy images, whose prior output is the same (deterministic), so it is computed once per image. A hit
    adds the CPU time the entry cost to ``charged``, so the seconds per image stay those of the whole chain."""

    def __init__(self, net: nn.Module, keep: int = 128):
        super().__init__()
        self.net, self.keep, self.cache, self.charged = net, keep, {}, 0.0

    def forward(self, x, noise_level=None, cond=None):
        key = (tuple(x.shape), hashlib.sha1(x.detach().float().cpu().numpy().tobytes()).hexdigest())
        if key in self.cache:
            out, cost = self.cache[key]
            self.charged += cost
            return out
        t0 = time.process_time()
        out = self.net(x, noise_level, cond)
        if len(self.cache) >= self.keep:
            self.cache.pop(next(iter(self.cache)))
        self.cache[key] = (out, time.process_time() - t0)
        return out


def machine() -> str:

    from irdiff.sysinfo import cpu_name

    return f"{cpu_name()}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}"


def run_one(spec: dict, models: dict[str, str], items: list, save_dir: Path | None,
            prior_cache: CachedPrior | None = None) -> dict:
    import irdiff
    from irdiff.data.io import to_uint8, write_image
    from irdiff.evaluate import evaluate, with_restorer
    from irdiff.niqe import niqe

    restorer = irdiff.load(models[spec["model"]])
    if prior_cache is not None and spec["model"] == "refine":
        prior_cache.net.load_state_dict(restorer.net.prior.state_dict())  # the refining model's own prior
        restorer.net.prior = prior_cache
    kw = {"tile": 0}
    if "steps" in spec:
        kw.update(steps=spec["steps"], eta=spec["eta"])
    inner = with_restorer(restorer, **kw)
    cpu: list[float] = []

    def restore(item, g):
        t0, charged = time.process_time(), prior_cache.charged if prior_cache is not None else 0.0
        out = inner(item, g)
        hits = (prior_cache.charged - charged) if prior_cache is not None else 0.0
        cpu.append(time.process_time() - t0 + hits)
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
    import irdiff

    cache = None
    for spec in runs():
        if args.only and spec["name"] not in args.only:
            continue
        old = results["runs"].get(spec["name"])
        if old and old["images"] == len(items) and old["model_path"] == models[spec["model"]]:
            continue
        t0 = time.time()
        if spec["model"] == "refine" and cache is None:
            cache = CachedPrior(irdiff.load(models["refine"]).net.prior)
        r = run_one(spec, models, items, Path(args.save_dir) if args.save_dir else None, cache)
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
