"""Training recipes for the blind denoiser at equal CPU time (issue 13, item 4).

    python benchmarks/recipes/run.py all [--budget 120] [--every 4] [--only NAME ...]
    python benchmarks/recipes/run.py report                  # results.md / results.json from results.jsonl

Every recipe is a committed config under configs/recipes/. For each, this script measures the seconds of
process CPU time per training step (3 warm-up steps, then 12 timed, in a throw-away trainer), sets
``train.steps`` so that the run takes ``--budget`` CPU seconds, trains it into runs/recipes/NAME (in a
child process, one thread: pin it with ``taskset``) and scores the exported model through
``irdiff.evaluate`` (what users get: ``irdiff.load`` + ``Restorer``) on every ``--every``-th CBSD68 image at
sigma 25 under three protocols on one noise draw:

- ``float``: noise added in float, not clipped (the papers' protocol);
- ``uint8``: the same noisy image clipped and rounded to 8 bits (a photo file): awgn ``quantize: 8``;
- ``grey8``: CBSD68 converted to grey (BT.601, 8 bits), 8-bit noise, fed as a one-channel image.

Noise-map models are scored twice: sigma estimated from the image (the default) and sigma 25 given.
Two recipe groups are compared with their own baseline: ``ft_*`` fine-tune the bundled ``denoise``
weights, ``sc_*`` train from scratch (architectures that the bundled weights do not fit). ``seed=3``
repeats of the baselines measure the run-to-run spread. Each finished recipe is one line of
results.jsonl (a rerun skips what it holds).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CONFIGS = ROOT / "configs" / "recipes"
RUNS = ROOT / "runs" / "recipes"
RESULTS = HERE / "results.jsonl"
SIGMA = 25
EVAL_SEED = 0

# (recipe name, config stem, overrides, share of the budget); stages of one recipe share its name
RECIPES: list[tuple[str, list[tuple[str, list[str], float]]]] = [
    ("ft_base", [("ft_base", [], 1.0)]),
    ("ft_clip8", [("ft_clip8", [], 1.0)]),
    ("ft_clip8_grey", [("ft_clip8_grey", [], 1.0)]),
    ("ft_noise_map", [("ft_noise_map", [], 1.0)]),
    ("sc_base", [("sc_base", [], 1.0)]),
    ("sc_unshuffle", [("sc_unshuffle", [], 1.0)]),
    ("ft_base_seed3", [("ft_base", ["seed=3"], 1.0)]),
    ("sc_deep", [("sc_deep", [], 1.0)]),
    ("sc_progressive", [("sc_progressive_1", [], 0.6), ("sc_progressive_2", [], 0.4)]),
    ("ft_patch128", [("ft_patch128", [], 1.0)]),
    ("sc_base_seed3", [("sc_base", ["seed=3"], 1.0)]),
]


# The ft_* recipes fine-tune the weights that were bundled as `denoise` when the recipes were first measured
# (configs/denoise_blind_v2.yaml); the bundle has moved on (denoise_blind_v3, the clipped-noise recipe), so they
# are pinned to that commit's file, taken out of git once, to keep every ft_* row comparable.
FT_WEIGHTS_COMMIT = "dabb910"


def ft_weights() -> Path:
    out = RUNS / "denoise_v2"
    if not (out / "model.safetensors").is_file():
        out.mkdir(parents=True, exist_ok=True)
        for f in ("model.safetensors", "model.json"):
            blob = subprocess.run(["git", "show", f"{FT_WEIGHTS_COMMIT}:irdiff/pretrained/denoise/{f}"], cwd=ROOT,
                                  check=True, capture_output=True).stdout
            (out / f).write_bytes(blob)
    return out


def data_root() -> Path:
    beside = ROOT.parent / "shared" / "data"
    return Path(os.environ["IRDIFF_DATA"]) if os.environ.get("IRDIFF_DATA") else beside


# ---- training (child process) ---------------------------------------------------------------------

def seconds_per_step(cfg) -> float:
    """Process CPU seconds of one optimisation step of ``cfg`` (data included), in a throw-away trainer."""
    import tempfile

    from irdiff.train import Trainer

    with tempfile.TemporaryDirectory() as tmp:
        tr = Trainer(cfg, tmp, progress=False)
        tr.model.train()
        for s in range(3):
            tr.step(s)
        t0 = time.process_time()
        for s in range(3, 15):
            tr.step(s)
        return (time.process_time() - t0) / 12


def train_stage(stem: str, overrides: list[str], budget: float, out: Path) -> dict:
    from irdiff.config import load_config
    from irdiff.train import train

    os.environ.setdefault("IRDIFF_DATA", str(data_root()))
    cfg = load_config(CONFIGS / f"{stem}.yaml", overrides)
    sps = seconds_per_step(cfg)
    steps = max(1, round(budget / sps))
    cfg = load_config(CONFIGS / f"{stem}.yaml", overrides + [f"train.steps={steps}"])
    t0, w0 = time.process_time(), time.time()
    train(cfg, out, progress=False)
    return {"config": f"configs/recipes/{stem}.yaml", "overrides": overrides, "steps": steps,
            "probe_s_per_step": round(sps, 4), "cpu_s": round(time.process_time() - t0, 1),
            "wall_s": round(time.time() - w0, 1)}


# ---- evaluation -----------------------------------------------------------------------------------

def items(protocol: str, every: int) -> list:
    """The sigma-25 CBSD68 items of a protocol, through the evaluation module's own seeding."""
    from irdiff.data.degradations import build_degradation
    from irdiff.data.io import list_images, read_image
    from irdiff.evaluate import Item, degradation_generator, degraded_items

    folder = data_root() / "CBSD68"
    spec = {"name": "awgn", "sigma": SIGMA, **({"quantize": 8} if protocol != "float" else {})}
    if protocol != "grey8":
        return degraded_items(folder, spec, EVAL_SEED, every=every)
    degrade, out = build_degradation(spec), []
    for i, path in enumerate(list_images(folder)):
        if i % every == 0:
            gt = read_image(path, channels=1)
            out.append(Item(path.stem, gt, degrade(gt, degradation_generator(EVAL_SEED, i))))
    return out


def evaluate_model(model: str | Path, every: int) -> dict:
    import torch

    from irdiff.evaluate import evaluate, with_restorer
    from irdiff.inference import load

    restorer = load(model)
    noise_map = bool(restorer.cfg.method.get("noise_map"))
    scores = {}
    for protocol in ("float", "uint8", "grey8"):
        its = items(protocol, every)
        variants = {"": {}} | ({"_given": {"noise_sigma": float(SIGMA)}} if noise_map else {})
        for suffix, kw in variants.items():
            t0 = time.process_time()
            with torch.inference_mode():
                res = evaluate(its, with_restorer(restorer, progress=False, **kw), seed=EVAL_SEED)
            scores[protocol + suffix] = {"psnr": round(res.mean("psnr"), 4), "ssim": round(res.mean("ssim"), 4),
                                         "images": len(its),
                                         "cpu_s_per_img": round((time.process_time() - t0) / len(its), 3)}
    return scores


def run_recipe(name: str, budget: float, every: int) -> dict:
    stages = dict(RECIPES)[name]
    row: dict = {"recipe": name, "budget_cpu_s": budget, "stages": []}
    init = None
    for k, (stem, overrides, share) in enumerate(stages):
        out = RUNS / name if len(stages) == 1 else RUNS / f"{name}_{k + 1}"
        if init is None and stem.startswith("ft_"):
            init = ft_weights()
        extra = list(overrides) + ([f"train.init_from={init}"] if init else [])
        row["stages"].append(train_stage(stem, extra, budget * share, out))
        init = out
    row["cpu_s"] = round(sum(s["cpu_s"] for s in row["stages"]), 1)
    row["scores"] = evaluate_model(init, every)
    return row


def run_reference(every: int) -> dict:
    return {"recipe": "denoise (bundled, no training)", "budget_cpu_s": 0, "cpu_s": 0, "stages": [],
            "scores": evaluate_model(str(ft_weights()), every)}


# ---- driver and report ----------------------------------------------------------------------------

def done() -> dict[str, dict]:
    if not RESULTS.exists():
        return {}
    return {r["recipe"]: r for r in map(json.loads, RESULTS.read_text().splitlines()) if r}


def machine() -> str:
    from irdiff.sysinfo import cpu_name

    return cpu_name()


def cmd_all(args) -> None:
    names = args.only or [n for n, _ in RECIPES]
    have = done()
    todo = ([] if "denoise (bundled, no training)" in have else ["reference"]) + [n for n in names if n not in have]
    for name in todo:
        print(f"{datetime.now(UTC):%H:%M:%S} {name}", flush=True)
        cmd = [sys.executable, __file__, "one", name, "--budget", str(args.budget), "--every", str(args.every)]
        subprocess.run(cmd, check=True)
    cmd_report(args)


def cmd_one(args) -> None:
    row = run_reference(args.every) if args.name == "reference" else run_recipe(args.name, args.budget, args.every)
    row.update(date=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), machine=machine(),
               threads=int(os.environ.get("OMP_NUM_THREADS", "0") or 0))
    with open(RESULTS, "a") as f:
        f.write(json.dumps(row) + "\n")


def cmd_report(args) -> None:
    rows = list(done().values())
    (HERE / "results.json").write_text(json.dumps(rows, indent=1) + "\n")
    base = {r["recipe"][:2]: r for r in rows if r["recipe"] in ("ft_base", "sc_base")}

    def cell(r: dict, key: str) -> str:
        s = r["scores"].get(key)
        if s is None:
            return "-"
        ref = base.get(r["recipe"][:2])
        d = "" if ref is None or ref is r or key not in ref["scores"] else \
            f" ({s['psnr'] - ref['scores'][key]['psnr']:+.2f})"
        return f"{s['psnr']:.2f}{d}"

    dates = sorted(r["date"] for r in rows)
    lines = [
        "# Denoising recipes at equal CPU time (generated by `python benchmarks/recipes/run.py report`)", "",
        f"Machine: {rows[0]['machine'] if rows else '?'}, one thread (`OMP_NUM_THREADS=1 taskset -c 1`); "
        f"{dates[0] if dates else ''} to {dates[-1] if dates else ''}. "
        "Command: `python benchmarks/recipes/run.py all`.",
        "",
        "CBSD68 σ 25 (every 4th image: 17), PSNR dB on the 8-bit output, through `irdiff.evaluate`; in brackets "
        "the difference to the group's baseline (`ft_base` for `ft_*`, `sc_base` for `sc_*`). `float`: float "
        "noise; `uint8`: the same noisy image clipped and rounded to 8 bits; `grey8`: grey CBSD68 with 8-bit noise. "
        "`σ given`: noise-map models told σ = 25 instead of estimating it. Train CPU s: process CPU time of the "
        "training (data, setup and checkpoints included).", "",
        "| recipe | steps | train CPU s | float | uint8 | grey8 | float, σ given | uint8, σ given |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        steps = "+".join(str(s["steps"]) for s in r["stages"]) or "0"
        lines.append(f"| {r['recipe']} | {steps} | {r['cpu_s']} | {cell(r, 'float')} | {cell(r, 'uint8')} | "
                     f"{cell(r, 'grey8')} | {cell(r, 'float_given')} | {cell(r, 'uint8_given')} |")
    (HERE / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("all")
    a.add_argument("--only", nargs="*")
    o = sub.add_parser("one")
    o.add_argument("name")
    for q in (a, o):
        q.add_argument("--budget", type=float, default=120.0, help="CPU seconds of training per recipe")
        q.add_argument("--every", type=int, default=4, help="score every N-th CBSD68 image")
    sub.add_parser("report")
    args = p.parse_args()
    {"all": cmd_all, "one": cmd_one, "report": cmd_report}[args.cmd](args)


if __name__ == "__main__":
    main()
