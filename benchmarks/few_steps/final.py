"""The few-step study's final table (issue 14): every diffusion method, alone and on a prior, at one CPU budget.

    python benchmarks/few_steps/final.py configs            # write final/configs/*.yaml (committed)
    python benchmarks/few_steps/final.py train NAME ...     # train into runs/few_steps_final/NAME (resumes)
    python benchmarks/few_steps/final.py eval NAME ...      # all of CBSD68 at sigma 25 -> final/results.json
    python benchmarks/few_steps/final.py report             # final/results.md and psnr_vs_steps.png

Another training budget: ``FEW_STEPS_FINAL_RUNS=DIR`` (where its runs go), ``train --train-steps N`` and
``--folder F`` for eval and report.

One budget for every model (``COMMON`` below): the same net (NAFNet width 16, 0.34 M parameters, noise level
FiLM-embedded), 2000 steps of batch 8 on 64² BSDS500-train400 patches with AWGN sigma 25 drawn on the fly,
AdamW lr 5e-4 (100 warm-up steps, cosine to 5 %), EMA 0.999, gradient clip 1, bf16 autocast where the CPU
computes it natively (``mixed_precision: auto``), one thread, seed 0. Each method keeps its paper's schedule,
loss and sampler (its shipped ``configs/<method>_denoise_s25.yaml``), with the prediction-target changes of
issue 14 where they apply (SR3: x0-prediction and log-SNR input; IR-SDE's general form: x0-prediction with
the noise-matching loss). ``+prior`` models stack the same method and net on the bundled one-pass ``denoise``
(frozen): it is the refiner that gets the budget, the prior was trained beforehand.

Evaluation: all 68 CBSD68 images, AWGN sigma 25 added in float with the cards' seed (``degraded_items``, seed
0), restored whole through the Restorer (what users get), sampling noise of image i from
``sample_generator(0, i)``; PSNR / SSIM on RGB of the 8-bit output, NIQE (``irdiff.niqe``: irdiff's pristine
model, lower = more natural; absolute values differ from MATLAB's) and process CPU seconds per image.
The per-image machinery (prior cache, CPU accounting) is benchmarks/refine/run.py's.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
FINAL = HERE / "final"
RUNS = Path(os.environ.get("FEW_STEPS_FINAL_RUNS", REPO / "runs" / "few_steps_final"))
STEPS = (1, 2, 5, 10)
PRIOR = "denoise"

COMMON = {
    "seed": 0,
    "net": {"name": "nafnet", "width": 16, "enc_blocks": [1, 1, 1], "middle_blocks": 1, "dec_blocks": [1, 1, 1]},
    "data": {
        "train": {"name": "synthetic", "gt_dir": "${IRDIFF_DATA}/BSDS500-train400", "patch_size": 64,
                  "degradation": {"name": "awgn", "sigma": 25}},
        "val": None,
    },
    "train": {"steps": 2000, "batch_size": 8, "lr": 5.0e-4, "warmup_steps": 100, "lr_schedule": "cosine",
              "min_lr_ratio": 0.05, "ema_decay": 0.999, "grad_clip": 1.0, "mixed_precision": "auto",
              "log_every": 100, "val_every": 0, "ckpt_every": 250, "threads": 1},
}


def _shipped_method(name: str) -> dict:
    return yaml.safe_load((REPO / "configs" / f"{name}.yaml").read_text())["method"]


def methods() -> dict[str, dict]:
    """Each model's ``method`` section and, in ``sample``, its sampler settings for the table."""
    sr3 = {**_shipped_method("sr3_denoise_s25"), "prediction": "x0", "noise_level_input": "log_snr"}
    irsde = {"name": "irsde", "num_steps": 100, "lam": 10.0, "eps": 0.005, "schedule": "cosine",
             "objective": "noise", "loss_type": "l1", "prediction": "x0", "eta": 0.0}
    out = {
        "regression": ({"name": "regression", "loss_type": "l1"}, {}),
        "sr3": (sr3, {"sampler": "ddim"}),
        "irsde": (irsde, {"sampler": "posterior"}),
        "denoising_sde": (_shipped_method("irsde_denoise_s25"), {"sampler": "posterior"}),
        "rddm": (_shipped_method("rddm_denoise_s25"), {"sampler": "ddim"}),
        "cold": (_shipped_method("cold_denoise_s25"), {"sampler": "improved"}),
    }
    for name in ("sr3", "irsde", "rddm", "cold"):
        out[f"{name}+prior"] = out[name]
    # one change at a time (what each bought, at this budget and on the full set)
    out["sr3_eps"] = ({**sr3, "prediction": "eps", "noise_level_input": "noise_std"}, {"sampler": "ddim"})
    out["sr3_x0_noise_std"] = ({**sr3, "noise_level_input": "noise_std"}, {"sampler": "ddim"})
    out["sr3_min_snr5"] = ({**sr3, "min_snr_gamma": 5.0}, {"sampler": "ddim"})
    out["irsde_eps"] = ({**irsde, "prediction": "eps"}, {"sampler": "posterior"})
    return out


def config(name: str) -> dict:
    method, sample = methods()[name]
    cfg = {"name": f"few_steps_final_{name.replace('+', '_')}", **copy.deepcopy(COMMON), "method": dict(method)}
    if name.endswith("+prior"):
        cfg["prior"] = {"model": PRIOR, "freeze": True}
    if sample:
        cfg["sample"] = {"steps": 10, **sample}
    return cfg


def config_path(name: str) -> Path:
    return FINAL / "configs" / f"{name.replace('+', '_')}.yaml"


def write_configs() -> None:
    (FINAL / "configs").mkdir(parents=True, exist_ok=True)
    for name in methods():
        head = (f"# Few-step final table (issue 14), model {name!r}: written by\n# "
                "`python benchmarks/few_steps/final.py configs`; edit final.py, not this file.\n")
        config_path(name).write_text(head + yaml.safe_dump(config(name), sort_keys=False))
        print(config_path(name))


def train(names: list[str], steps: int | None = None) -> None:
    """Train each model (resuming a run already there); ``steps`` overrides the budget's training steps."""
    more = [] if steps is None else ["--set", f"train.steps={steps}"]
    for name in names:
        out = RUNS / name.replace("+", "_")
        log = RUNS / f"{name.replace('+', '_')}.train.log"
        RUNS.mkdir(parents=True, exist_ok=True)
        t0 = time.time()
        with open(log, "a") as f:
            subprocess.run([sys.executable, "-m", "irdiff.cli", "train", "--config", str(config_path(name)),
                            "--out", str(out), "--no-progress", *more], stdout=f, stderr=subprocess.STDOUT, check=True)
        print(f"trained {name} in {time.time() - t0:.0f} s wall -> {out}", flush=True)


def grid(name: str) -> list[dict]:
    """The (steps, eta) settings a model is restored with: every step count with the deterministic sampler
    (eta 0 where the sampler has one; the Denoising-SDE keeps its paper's eta 1), and for the samplers with
    an eta on a prior, eta 0.5 at 2 and 5 steps (where texture comes back: benchmarks/refine)."""
    method, _ = methods()[name]
    if method["name"] == "regression":
        return [{}]
    if name == "denoising_sde" or method["name"] == "cold":
        return [{"steps": s} for s in STEPS]
    out = [{"steps": s, "eta": 0.0} for s in STEPS]
    if name.endswith("+prior"):
        out += [{"steps": s, "eta": 0.5} for s in (2, 5)]
    return out


def run_key(name: str, spec: dict) -> str:
    parts = [name] + [f"{k}{v:g}" for k, v in spec.items()]
    return "_".join(parts)


def _refine_bench():
    spec = importlib.util.spec_from_file_location("refine_bench", REPO / "benchmarks" / "refine" / "run.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def model_path(name: str) -> str:
    if name == "prior":
        return PRIOR
    path = RUNS / name.replace("+", "_")
    if not (path / "model.json").is_file() and not (path / "final").is_dir():
        raise SystemExit(f"final.py: {path}: no trained model (run `final.py train {name}` first)")
    return str(path)


def evaluate(names: list[str], max_images: int | None, results_path: Path) -> None:
    import torch

    import irdiff
    from irdiff.evaluate import degraded_items

    torch.set_num_threads(1)
    rb = _refine_bench()
    data = Path(os.environ.get("IRDIFF_DATA", REPO.parent / "shared" / "data")) / "CBSD68"
    items = degraded_items(data, {"name": "awgn", "sigma": 25}, 0, max_images=max_images)

    def load() -> dict:
        return json.loads(results_path.read_text()) if results_path.is_file() else {"runs": {}}

    for name in names:
        specs = [{}] if name == "prior" else grid(name)
        mp = model_path(name)
        cache = None
        if name.endswith("+prior"):
            cache = rb.CachedPrior(irdiff.load(mp).net.prior)
        for spec in specs:
            key = run_key(name, spec)
            old = load()["runs"].get(key)
            if old and old["images"] == len(items):
                continue
            t0 = time.time()
            entry = {"name": key, "model": "refine" if cache is not None else "plain", **spec}
            if "steps" in spec:
                entry.setdefault("eta", None)  # None: the model's own value (Cold and the Denoising-SDE)
            r = rb.run_one(entry, {"refine": mp, "plain": mp}, items, None, cache)
            r.update(model=name, date=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
                     machine=rb.machine(), torch=torch.__version__, elapsed=round(time.time() - t0, 1))
            current = load()  # re-read: another shard may have written meanwhile
            current.update(data="CBSD68", sigma=25, seed=0, images=len(items))
            current["runs"][key] = r
            results_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = results_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(current, indent=1))
            tmp.replace(results_path)
            print(f"{key}: PSNR {r['psnr']:.3f} SSIM {r['ssim']:.4f} NIQE {r['niqe']:.3f} "
                  f"{r['cpu_seconds']:.2f} CPU s/img ({len(items)} images, {r['elapsed']:.0f} s)", flush=True)
    res = load()
    if "niqe_input" not in res or res.get("niqe_input_images") != len(items):
        res["niqe_input"], res["niqe_input_images"] = rb.input_niqe(items), len(items)
        results_path.write_text(json.dumps(res, indent=1))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=["configs", "train", "eval", "report"])
    p.add_argument("names", nargs="*", help="models (default: all); eval also takes 'prior'")
    p.add_argument("--max-images", type=int, default=None, help="the first N images (a smoke test)")
    p.add_argument("--results", default=None, help="eval: the results file (default FOLDER/results.json)")
    p.add_argument("--folder", default=str(FINAL), help="eval / report: the folder of results*.json and the report")
    p.add_argument("--train-steps", type=int, default=None, help="train: another budget (default: COMMON's)")
    args = p.parse_args(argv)
    known = list(methods())
    bad = [n for n in args.names if n not in known + ["prior"]]
    if bad:
        p.error(f"unknown model {bad[0]!r} (known: {', '.join(known)}, prior)")
    names = args.names or known
    if args.what == "configs":
        write_configs()
    elif args.what == "train":
        train([n for n in names if n != "prior"], args.train_steps)
    elif args.what == "eval":
        results = Path(args.results) if args.results else Path(args.folder) / "results.json"
        evaluate(names if args.names else ["prior"] + known, args.max_images, results)
    else:
        sys.path.insert(0, str(HERE))
        from final_report import write_report

        write_report(Path(args.folder))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
