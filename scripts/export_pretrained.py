"""Bundle a trained run as irdiff/pretrained/NAME, measured on the standard test sets.

    python scripts/export_pretrained.py RUN_DIR NAME --eval denoise|sr4|deblur|jpeg|derain [--fp16] [--data DIR]

Copies the run's inference weights (the EMA net, as ``export_inference`` writes them; only what
inference needs) into irdiff/pretrained/NAME/model.safetensors, evaluates them and writes
model.json (config, step, metrics, provenance) and card.md.

Images, seeds and scores come from ``irdiff.evaluate`` (the path of every number irdiff reports):

- denoise: CBSD68 and Kodak24 at sigma = 15 / 25 / 50 (0-255 scale); Gaussian noise (``awgn``) added in
  float to the 8-bit clean image, image i with the generator ``item_generator(0, 0, i)``, not clipped;
  PSNR / SSIM on RGB of the 8-bit-rounded output (BasicSR conventions), as the published tables.
- sr4: Set5 and Set14; HR mod-cropped to 4, LR = MATLAB bicubic / 4 rounded to 8 bits (as a saved LR
  PNG); PSNR / SSIM on the Y channel with a 4-px border cropped; bicubic upsampling alongside.
- deblur, jpeg, derain: the test cells of ``benchmarks/task_models/tasks.py`` (fixed blurs + noise on CBSD68;
  JPEG quality 10-60 on CBSD68 and Kodak24; synthetic rain on CBSD68 and the Rain100L-subset3 pairs), with
  the input and the classical baselines (Wiener / Richardson-Lucy given the true kernel; median / opening).
  When ``benchmarks/task_models/results.json`` holds the task measured on the same weights and settings
  (``benchmarks/task_models/run.py``), its numbers are taken as they are, so card and benchmark agree.

- refine (a predict-and-refine model, ``irdiff.prior``): no evaluation here; the card takes the prior-vs-refined
  table of CBSD68 sigma 25 that benchmarks/refine/run.py measured through the same path on these weights
  (its results.json, whose runs must name RUN_DIR), and the model's default steps / eta become those of the
  run that best meets the goal (``benchmarks/refine/report.py: chosen``).

--fp16 stores half-precision weights only if every PSNR stays within 0.01 dB of float32's (on the first
--fp16-images N images of each set when given: the comparison is of the same net on the same inputs).
--max-images N evaluates the first N images of each set (a smoke test; the card says so).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DEST = REPO / "irdiff" / "pretrained"
DEFAULT_DATA = Path(os.environ.get("IRDIFF_DATA", REPO.parent / "shared" / "data"))
SIGMAS = (15, 25, 50)
DENOISE_SETS = ("CBSD68", "Kodak24")
SR_SETS = ("Set5", "Set14")
# Published numbers for context: RGB PSNR, colour AWGN; Y PSNR, bicubic x4.
PUBLISHED = {
    "denoise": {"CBSD68": {"CBM3D": (33.52, 30.71, 27.38), "CDnCNN": (33.90, 31.24, 27.95),
                           "DRUNet": (34.30, 31.69, 28.51)},
                "Kodak24": {"CBM3D": (34.28, 32.15, 28.46), "CDnCNN": (34.60, 32.14, 28.95),
                            "DRUNet": (35.31, 32.89, 29.86)}},
    "sr4": {"Set5": {"bicubic": 28.42}, "Set14": {"bicubic": 26.00}},
}


EVAL_SEED = 0  # irdiff.evaluate's seeds: image i of a set is degraded with item_generator(EVAL_SEED, 0, i)
TASK_MODELS = REPO / "benchmarks" / "task_models"
TASK_RESULTS = TASK_MODELS / "results.json"  # benchmarks/task_models/run.py's numbers, reused for the same weights
TASK_TEXT = {"denoise": "colour Gaussian denoising", "sr4": "x4 super-resolution (bicubic degradation)",
             "deblur": "blind deblurring (Gaussian or linear motion blur, mild noise)",
             "jpeg": "JPEG artifact removal (quality 10-60)",
             "derain": "rain-streak removal (irdiff's synthetic `rain` degradation)",
             "refine": "colour Gaussian denoising, predict-and-refine: a diffusion model refining a one-pass denoiser"}


def task_module() -> Any:
    """benchmarks/task_models/tasks.py: the test cells and baselines of the one-pass task models."""
    import importlib.util

    name = "irdiff_task_models"
    if name not in sys.modules:  # registered before it runs: its dataclasses look their module up
        spec = importlib.util.spec_from_file_location(name, TASK_MODELS / "tasks.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


def eval_denoise(restorer: Any, data: Path, max_images: int | None, tile: int | None) -> dict[str, Any]:
    from irdiff.evaluate import degraded_items, evaluate, with_restorer

    out: dict[str, Any] = {}
    for set_name in DENOISE_SETS:
        res = {}
        for sigma in SIGMAS:
            items = degraded_items(data / set_name, {"name": "awgn", "sigma": sigma}, EVAL_SEED,
                                   max_images=max_images)
            r = evaluate(items, with_restorer(restorer, tile=tile), seed=EVAL_SEED)
            res[f"sigma{sigma}"] = {"psnr": r.mean("psnr"), "ssim": r.mean("ssim"),
                                    "psnr_noisy": r.mean("psnr_in"), "images": len(items)}
        out[set_name] = res
    return out


def eval_sr4(restorer: Any, data: Path, max_images: int | None, tile: int | None) -> dict[str, Any]:
    from irdiff.data.resize import imresize
    from irdiff.evaluate import degraded_items, evaluate, with_restorer

    if restorer.scale != 4:
        raise SystemExit(f"--eval sr4 needs a x4 model; this one has scale {restorer.scale}")
    out: dict[str, Any] = {}
    lr_x4 = {"name": "bicubic_down", "scale": 4, "quantize": True}  # as a saved 8-bit LR PNG
    for set_name in SR_SETS:
        items = degraded_items(data / set_name, lr_x4, EVAL_SEED, max_images=max_images, mod=4)
        y4 = {"seed": EVAL_SEED, "crop_border": 4, "y_channel": True}
        sr = evaluate(items, with_restorer(restorer, tile=tile), **y4)
        bic = evaluate(items, lambda item, g: imresize(item.lq, scale=4).clamp(0, 1), **y4)
        out[set_name] = {"psnr_y": sr.mean("psnr"), "ssim_y": sr.mean("ssim"), "bicubic_psnr_y": bic.mean("psnr"),
                         "bicubic_ssim_y": bic.mean("ssim"), "images": len(items)}
    return out


REFINE_RESULTS = REPO / "benchmarks" / "refine" / "results.json"
TEST_SETS = DENOISE_SETS + SR_SETS


def refine_metrics(run_dir: Path, results_path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(metrics, chosen run) from benchmarks/refine/results.json, whose refined runs must be of ``run_dir``."""
    sys.path.insert(0, str(REPO / "benchmarks" / "refine"))
    from report import chosen

    if not results_path.is_file():
        raise SystemExit(f"{results_path}: missing; run benchmarks/refine/run.py --model {run_dir} first")
    results = json.loads(results_path.read_text())
    runs = results["runs"]
    foreign = sorted({r["model_path"] for k, r in runs.items() if k != "prior"} - {str(run_dir)})
    if foreign or "prior" not in runs:
        raise SystemExit(f"{results_path}: holds runs of {', '.join(foreign) or 'no prior'}, not only {run_dir}")
    keep = ("steps", "eta", "psnr", "ssim", "niqe", "cpu_seconds", "images", "date", "machine")
    table = {k: {f: r[f] for f in keep if f in r} for k, r in runs.items()}
    name, met = chosen(results)
    return ({"CBSD68": {f"sigma{results['sigma']}": table}, "noisy_niqe": results["niqe_input"],
             "default_run": name, "goal_met": met}, runs[name])


def psnrs(metrics: dict[str, Any]) -> list[float]:
    vals = []
    for k, v in metrics.items():
        if isinstance(v, dict):
            vals += psnrs(v)
        elif k in ("psnr", "psnr_y"):
            vals.append(v)
    return vals


def machine() -> str:
    from irdiff.sysinfo import cpu_name

    cpu = cpu_name()
    return f"{cpu}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}"


def training_log(run_dir: Path) -> dict[str, Any]:
    """Steps and wall time from the run's log.jsonl. `seconds` restarts at each resume: a row with fewer seconds
    than the one before starts a new segment, and the segments' last values are summed."""
    log = run_dir / "log.jsonl"
    info: dict[str, Any] = {}
    if not log.is_file():
        return info
    done, last = 0.0, 0.0
    for line in log.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "seconds" in row:
            if row["seconds"] < last:
                done += last
            last = row["seconds"]
            info["seconds"], info["logged_step"] = round(done + last, 2), row.get("step")
        if "loss" in row:
            info["final_loss"] = row["loss"]
    return info


def portable(obj: Any, data_root: Path, run_dir: Path) -> Any:
    """obj (str / dict / list) with this machine's paths written as a user would: the data root as
    ``${IRDIFF_DATA}`` (as the configs spell it) and the folder holding the run as ``runs``."""
    pairs = sorted({(str(Path(data_root).resolve()), "${IRDIFF_DATA}"),
                    (str(Path(run_dir).resolve().parent), "runs")}, key=lambda p: -len(p[0]))
    if isinstance(obj, str):
        for old, new in pairs:
            obj = obj.replace(old, new)
        return obj
    if isinstance(obj, dict):
        return {k: portable(v, data_root, run_dir) for k, v in obj.items()}
    if isinstance(obj, list):
        return [portable(v, data_root, run_dir) for v in obj]
    return obj


def card(name: str, meta: dict[str, Any], kind: str, metrics: dict[str, Any], prov: dict[str, Any]) -> str:
    cfg = meta["config"]
    train = cfg["data"]["train"]
    deg = train.get("degradation") or {}
    hours = prov["training"].get("seconds")
    lines = [
        f"# irdiff pretrained model `{name}`",
        "",
        f"- task: {TASK_TEXT[kind]}",
        f"- method: {cfg['method']['name']} ({json.dumps(cfg['method'])}); net: {json.dumps(cfg['net'])}; "
        f"{prov['parameters']:,} parameters, {prov['dtype']} weights",
        f"- training data: `{Path(str(train.get('gt_dir') or train.get('name'))).name}`, degradation "
        f"{json.dumps(deg)}, patches {train.get('patch_size')}, batch {cfg['train']['batch_size']}",
        f"- training: {meta.get('step')} steps"
        + (f", fine-tuned from the bundled `{cfg['train']['init_from']}` weights"
           if cfg["train"].get("init_from") else "")
        + (f" ({prov['note']})" if prov.get("note") else "")
        + (f", {hours / 3600:.2f} h wall time" if hours else "")
        + f" (run `{prov['run']}`, config name `{cfg.get('name')}`)",
        f"- evaluated: {prov['date']} on {prov['machine']}",
        f"- command: `{prov['command']}`",
    ]
    if prov.get("max_images"):
        lines.append(f"- **smoke test only: the first {prov['max_images']} image(s) of each set**")
    if prov.get("fp16_note"):
        lines.append(f"- {prov['fp16_note']}")
    if cfg.get("prior"):
        pc = cfg["prior"]["config"]
        lines.append(f"- prior: `{cfg['prior']['model']}` ({pc['method']['name']}, net {json.dumps(pc['net'])}), "
                     f"{'frozen' if cfg['prior'].get('freeze', True) else 'fine-tuned'}; its weights are stored in "
                     "this model's file (keys `prior.*`), so the model does not change when that one is re-trained")
    if prov.get("numbers_from"):
        lines.append(f"- numbers: {prov['numbers_from']}")
    lines += ["", "## Results", ""]
    if kind == "refine":
        run = metrics["default_run"]
        lines += [f"CBSD68, AWGN σ 25 (all images, seed 0), RGB PSNR / SSIM on the 8-bit output; NIQE (irdiff's "
                  "model, lower = more natural); process CPU seconds per image on one thread. Measured by "
                  "`python benchmarks/refine/run.py` (benchmarks/refine/results.md). Default sampling of this model: "
                  f"`{run}` ({'within 0.2 dB of the prior, lower NIQE' if metrics['goal_met'] else 'goal not met'}).",
                  "", "| run | steps | η | PSNR | SSIM | NIQE | CPU s |", "|---|---|---|---|---|---|---|"]
        for k, r in next(iter(metrics["CBSD68"].values())).items():
            lines.append(f"| {'prior alone' if k == 'prior' else k} | {r.get('steps', '')} | {r.get('eta', '')} | "
                         f"{r['psnr']:.2f} | {r['ssim']:.4f} | {r['niqe']:.3f} | {r['cpu_seconds']:.2f} |")
        lines.append(f"| noisy input | | | | | {metrics['noisy_niqe']:.3f} | |")
    elif kind in TASK_TEXT and kind not in ("denoise", "sr4"):
        tm = task_module()
        lines += ["PSNR (dB) / SSIM on the 8-bit output (RGB unless the row says Y), degradations seeded per image "
                  "(`benchmarks/task_models/tasks.py`); CPU seconds per image on one thread.", "",
                  *tm.table(kind, metrics), "",
                  f"Mean gain over the input: {tm.mean_gain(metrics):+.2f} dB. {tm.NOTES[kind]}"]
    elif kind == "denoise":
        lines += ["RGB PSNR (dB) / SSIM on the 8-bit output; noise added in float with fixed seeds, not clipped.", "",
                  "| set | " + " | ".join(f"σ={s}" for s in SIGMAS) + " |", "|---|" + "---|" * len(SIGMAS)]
        for set_name, res in metrics.items():
            cells = [f"{res[f'sigma{s}']['psnr']:.2f} / {res[f'sigma{s}']['ssim']:.4f}" for s in SIGMAS]
            lines.append(f"| {set_name} ({res[f'sigma{SIGMAS[0]}']['images']} images) | " + " | ".join(cells) + " |")
            for ref, vals in PUBLISHED["denoise"][set_name].items():
                lines.append(f"| {set_name}: {ref} (published) | " + " | ".join(f"{v:.2f}" for v in vals) + " |")
    else:
        lines += ["Y-channel PSNR (dB) / SSIM, 4-px border cropped; LR = MATLAB bicubic /4, 8-bit.", "",
                  "| set | this model | bicubic (measured) | bicubic (published) |", "|---|---|---|---|"]
        for set_name, res in metrics.items():
            lines.append(f"| {set_name} ({res['images']} images) | {res['psnr_y']:.2f} / {res['ssim_y']:.4f} | "
                         f"{res['bicubic_psnr_y']:.2f} / {res['bicubic_ssim_y']:.4f} | "
                         f"{PUBLISHED['sr4'][set_name]['bicubic']:.2f} |")
    if kind == "refine":
        test_sets = ["CBSD68"]
    elif kind in ("denoise", "sr4"):
        test_sets = list(metrics)
    else:
        test_sets = sorted({r["set"] for r in metrics.values()})
    use = [f"irdiff restore photo.png -o restored.png --model {name}"]
    if kind == "refine":  # the table's most textured settings, for comparison
        runs = {k: r for k, r in next(iter(metrics["CBSD68"].values())).items() if k != "prior"}
        r = min(runs.values(), key=lambda r: r["niqe"])
        use[0] += f"   # {metrics['default_run']}"
        use.append(f"irdiff restore photo.png -o textured.png --model {name} --steps {r['steps']} --eta {r['eta']:g}"
                   "   # the lowest NIQE of the table")
    lines += ["", "## Use", "", "```", *use,
              "```", "", "```python", "import irdiff", "",
              f"restored = irdiff.load({name!r}).restore(image)  # numpy / PIL / tensor, any size", "```", "",
              f"Test images are research benchmarks ({', '.join(test_sets)}: sources, terms and checksums in "
              "`irdiff data list`; `irdiff data fetch NAME` downloads them); none is shipped with the model.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("name")
    ap.add_argument("--eval", required=True, choices=list(TASK_TEXT))
    ap.add_argument("--results", type=Path, default=REFINE_RESULTS, help="--eval refine: the benchmark's results")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"test sets (default {DEFAULT_DATA})")
    ap.add_argument("--dest", type=Path, default=DEFAULT_DEST, help="folder holding the bundled models")
    ap.add_argument("--fp16", action="store_true", help="store fp16 weights if PSNR moves by <= 0.01 dB")
    ap.add_argument("--max-images", type=int, help="evaluate only the first N images per set (smoke test)")
    ap.add_argument("--fp16-images", type=int, help="--fp16: compare float32 and fp16 on the first N images per set "
                    "(default: every evaluated image)")
    ap.add_argument("--tile", type=int, help="tile size for evaluation (default: whole images)")
    ap.add_argument("--note", help="a remark on the training for the card (e.g. where it ran, what it resumed)")
    args = ap.parse_args(argv)
    command = "python scripts/export_pretrained.py " + shlex.join(argv if argv is not None else sys.argv[1:])

    from safetensors.torch import save

    from irdiff import __version__
    from irdiff.checkpoint import write_bytes_atomic, write_text_atomic
    from irdiff.inference import load, resolve_model

    if args.eval in ("denoise", "sr4", "refine"):
        sets = {"denoise": DENOISE_SETS, "sr4": SR_SETS, "refine": ()}[args.eval]
        missing = [s for s in sets if not (args.data / s).is_dir()]
    else:
        missing = task_module().missing_sets(args.eval, args.data)
    if missing:
        raise SystemExit(f"test sets missing under {args.data}: {', '.join(missing)}")
    _, _, meta = resolve_model(args.run_dir)
    restorer = load(args.run_dir)
    numbers_from = None
    t0 = time.time()
    if args.eval == "refine":  # measured by benchmarks/refine (the same evaluation path): not again here
        if args.fp16 and args.fp16_images is None:
            raise SystemExit("--eval refine --fp16 needs --fp16-images N (the fp16 check's CBSD68 images)")
        metrics, default = refine_metrics(args.run_dir, args.results)

        def evaluate(restorer: Any, data: Path, max_images: int | None, tile: int | None) -> dict[str, Any]:
            # only for the fp16 check: the benchmark's default run (CBSD68 sigma 25, its steps and eta, seeded)
            from irdiff.evaluate import degraded_items, with_restorer
            from irdiff.evaluate import evaluate as run_eval

            items = degraded_items(data / "CBSD68", {"name": "awgn", "sigma": 25}, EVAL_SEED, max_images=max_images)
            r = run_eval(items, with_restorer(restorer, tile=tile, steps=default["steps"], eta=default["eta"]),
                         seed=EVAL_SEED)
            return {"psnr": r.mean("psnr")}
        meta = json.loads(json.dumps(meta))
        meta["config"]["sample"]["steps"] = default["steps"]  # the benchmark's best run becomes the default
        meta["config"]["method"]["eta"] = default["eta"]
    else:
        if args.eval == "denoise":
            evaluate = eval_denoise
        elif args.eval == "sr4":
            evaluate = eval_sr4
        else:
            def evaluate(restorer: Any, data: Path, max_images: int | None, tile: int | None,
                         baselines: bool = True) -> dict[str, Any]:
                return task_module().evaluate_task(args.eval, restorer, data, max_images, tile, baselines=baselines)
        stored = None
        if args.eval not in ("denoise", "sr4") and args.tile is None:
            stored = task_module().stored_metrics(TASK_RESULTS, args.eval, restorer, args.max_images)
        if stored is not None:
            metrics = stored["metrics"]
            numbers_from = (f"`benchmarks/task_models/results.json` ({stored['date']}, same weights and settings; "
                            f"`{stored['command']}`)")
        else:
            metrics = evaluate(restorer, args.data, args.max_images, args.tile)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in restorer.net.state_dict().items()}
    dtype, fp16_note = "float32", None
    if args.fp16:
        def model_only(max_images: int | None) -> dict[str, Any]:
            if args.eval in ("denoise", "sr4", "refine"):
                return evaluate(restorer, args.data, max_images, args.tile)
            return evaluate(restorer, args.data, max_images, args.tile, baselines=False)

        checked = args.max_images if args.fp16_images is None else args.fp16_images
        reference = metrics if checked == args.max_images and args.eval != "refine" else model_only(checked)
        half = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
        restorer.net.load_state_dict(half)  # cast back to the float32 parameters: what inference sees
        m16 = model_only(checked)
        delta = max(abs(a - b) for a, b in zip(psnrs(reference), psnrs(m16)))
        on = "" if args.fp16_images is None else f" on the first {checked} images of each set"
        if delta <= 0.01:
            state, dtype = half, "float16"
            fp16_note = f"fp16 weights: largest PSNR change vs float32 {delta:.4f} dB (<= 0.01){on}"
        else:
            fp16_note = f"float32 weights kept: fp16 moved PSNR by up to {delta:.4f} dB (> 0.01){on}"
    eval_seconds = time.time() - t0

    prov = {"run": str(args.run_dir), "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": machine(), "command": command, "dtype": dtype, "fp16_note": fp16_note,
            "max_images": args.max_images, "eval_seconds": round(eval_seconds, 1), "numbers_from": numbers_from,
            "note": args.note,
            "parameters": sum(v.numel() for v in state.values()),
            "training": training_log(args.run_dir), "irdiff": __version__, "torch": torch.__version__}
    meta_out = {k: v for k, v in meta.items() if k != "from_checkpoint"}
    meta_out.update({"name": args.name, "task": args.eval, "train_metrics": meta.get("metrics", {}),
                     "metrics": metrics, "provenance": prov})
    meta_out = portable(meta_out, args.data, args.run_dir)  # no absolute paths of this machine in the bundle
    args.dest.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=args.dest, prefix=f".{args.name}."))
    final, old = args.dest / args.name, args.dest / f".{args.name}.old"
    try:  # a complete folder (each file fsynced) is swapped in: the bundle is the old one or the new one
        write_bytes_atomic(tmp / "model.safetensors", save(state, metadata={"format": "pt", "irdiff": __version__}))
        write_text_atomic(tmp / "model.json", json.dumps(meta_out, indent=1) + "\n")
        write_text_atomic(tmp / "card.md", portable(card(args.name, meta, args.eval, metrics, prov), args.data,
                                                    args.run_dir))
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print((final / "card.md").read_text())
    size = (final / "model.safetensors").stat().st_size
    print(f"wrote {final} ({size / 2**20:.2f} MiB weights, {dtype}); evaluation took {eval_seconds:.0f} s")
    return 0 if all(math.isfinite(v) for v in psnrs(metrics)) else 1


if __name__ == "__main__":
    sys.exit(main())
