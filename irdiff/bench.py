"""Benchmark harness: methods x datasets x step counts -> JSON + CSV + Markdown + a PSNR-vs-steps plot.

A benchmark is a YAML file::

    name: few_steps
    out: benchmarks/few_steps/results      # relative to the current directory
    seed: 0                                # image i of a dataset is sampled with seed + i
    threads: 1                             # torch threads
    steps: [1, 2, 5, 10, 20, 50, 100]      # default step counts for every method
    methods:
      - {name: sr3, run: runs/sr3_denoise}                # a trained run dir (or bundled model name)
      - {name: cold, config: configs/cold_denoise_s25.yaml, set: [train.steps=200]}  # trained if needed
      - {name: irsde-ode, run: runs/irsde, sampler: ode, steps: [10, 100]}
    datasets:
      - name: CBSD68-s25
        data: {name: synthetic, gt_dir: "${IRDIFF_DATA}/CBSD68", max_images: 8, patch_size: null,
               degradation: {name: awgn, sigma: 25}}
        center_crop: 128        # optional: centre crop (gt and lq) after degrading
        crop_border: 0          # metrics (BasicSR conventions)
        y_channel: false

A method given by ``config`` is trained (``irdiff.train.train``) into ``<out>/runs/<name>`` unless that
directory already holds a finished model. Items, seeds and scores come from ``irdiff.evaluate`` (the
path training's validation and the bundled models' cards use): restoration calls ``method.sample`` on the
degraded input at the gt size (``Method.degraded_input``, so Cold Diffusion gets its own D(gt, T)), with
the run's EMA net; a forward hook counts the network evaluations (NFE). A step count above a method's training T is
clamped by the method (reported as ``nfe``). The identity (the degraded input itself) is scored as
method ``input`` with 0 steps.

Outputs in ``out``: ``results.json`` (every image, plus machine/command/date), ``results.csv`` and
``results.md`` (means per method x dataset x steps) and ``psnr_vs_steps.png``.
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import json
import math
import platform
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from irdiff.config import ConfigError, DataSpec, from_dict, read_yaml
from irdiff.evaluate import Item, Result, dataset_items, evaluate, identity, with_method

CSV_FIELDS = ["method", "dataset", "steps", "nfe", "psnr", "ssim", "sec_per_image", "sec_per_step", "n_images",
              "sampler"]


@dataclass
class MethodEntry:
    name: str
    run: str | None = None
    config: str | None = None
    set: list[str] = field(default_factory=list)
    sampler: str | None = None
    steps: list[int] | None = None
    sample_kwargs: dict[str, Any] = field(default_factory=dict)  # extra keyword args of method.sample (eta...)
    color_fix: str = "none"  # post-sampling colour correction (irdiff.colorfix); none = the method as published


@dataclass
class DatasetEntry:
    name: str
    data: DataSpec = field(default_factory=DataSpec)
    center_crop: int | None = None
    crop_border: int = 0
    y_channel: bool = False


@dataclass
class BenchConfig:
    name: str = "bench"
    out: str = "bench_out"
    seed: int = 0
    threads: int | None = 1
    device: str = "cpu"
    steps: list[int] = field(default_factory=lambda: [1, 2, 5, 10, 20, 50, 100])
    methods: list[MethodEntry] = field(default_factory=list)
    datasets: list[DatasetEntry] = field(default_factory=list)
    progress: bool = True


def load_bench_config(path: str | Path | None = None, data: dict[str, Any] | None = None) -> BenchConfig:
    """Read and check a benchmark YAML (or a dict); errors name the key."""
    raw = dict(data) if data is not None else read_yaml(path)
    methods = raw.pop("methods", None)
    datasets = raw.pop("datasets", None)
    cfg = from_dict(BenchConfig, raw)
    if not methods or not isinstance(methods, list):
        raise ConfigError("methods: a non-empty list of {name, run | config} is required")
    if not datasets or not isinstance(datasets, list):
        raise ConfigError("datasets: a non-empty list of {name, data} is required")
    cfg.methods = [from_dict(MethodEntry, m, f"methods[{i}]") for i, m in enumerate(methods)]
    cfg.datasets = []
    for i, d in enumerate(datasets):
        if not isinstance(d, dict):
            raise ConfigError(f"datasets[{i}]: expected a mapping")
        if not isinstance(d.get("data"), dict):
            raise ConfigError(f"datasets[{i}].data: a data spec mapping is required (as a config's data.val)")
        cfg.datasets.append(from_dict(DatasetEntry, d, f"datasets[{i}]"))
    names = [m.name for m in cfg.methods]
    for i, m in enumerate(cfg.methods):
        if (m.run is None) == (m.config is None):
            raise ConfigError(f"methods[{i}] ({m.name}): give exactly one of run or config")
        if m.name in names[:i] or m.name == "input":
            raise ConfigError(f"methods[{i}].name: {m.name!r} is used twice or reserved")
        from irdiff.colorfix import COLOR_FIXES

        if m.color_fix not in COLOR_FIXES:
            raise ConfigError(f"methods[{i}].color_fix: must be one of {', '.join(COLOR_FIXES)}, got {m.color_fix!r}")
    for key, steps in [("steps", cfg.steps)] + [(f"methods[{i}].steps", m.steps) for i, m in enumerate(cfg.methods)]:
        if steps is not None and (not steps or any(not isinstance(s, int) or s < 1 for s in steps)):
            raise ConfigError(f"{key}: a list of integers >= 1, got {steps!r}")
    return cfg


# ---- running ------------------------------------------------------------------------------------

def _ensure_run(entry: MethodEntry, out: Path, progress: bool) -> Path:
    if entry.run is not None:
        return Path(entry.run)
    from irdiff.config import load_config
    from irdiff.train import train

    run_dir = out / "runs" / entry.name
    if (run_dir / "model.safetensors").is_file() and (run_dir / "model.json").is_file():
        return run_dir
    cfg = load_config(entry.config, entry.set)
    print(f"[bench] training {entry.name} from {entry.config} into {run_dir}", flush=True)
    train(cfg, run_dir, progress=progress)
    return run_dir


def load_images(entry: DatasetEntry, seed: int) -> list[Item]:
    """The dataset's items (gt, lq, optional mask) in [0, 1], degraded once by ``irdiff.evaluate``'s seeds."""
    return dataset_items(entry.data, seed, center_crop=entry.center_crop)


class _Counter:
    """Counts the net's forward passes (NFE) per restored item."""

    def __init__(self, net: torch.nn.Module):
        self.n, self.per_item = 0, []
        self.handle = net.register_forward_hook(self._hook)

    def _hook(self, *_: Any) -> None:
        self.n += 1

    def item_done(self, i: int, item: Item, restored: torch.Tensor) -> None:
        self.per_item.append(self.n)
        self.n = 0


def _records(result: Result, method: str, entry: DatasetEntry, steps: int, nfe: list[int] | None = None,
             sampler: str | None = None) -> list[dict[str, Any]]:
    return [{"method": method, "dataset": entry.name, "image": r["image"], "steps": steps,
             "nfe": nfe[i] if nfe else 0, "psnr": r["psnr"], "ssim": r["ssim"],
             "seconds": r["seconds"] if nfe else 0.0, "sampler": sampler} for i, r in enumerate(result.records)]


def bench_method(name: str, restorer: Any, items: list[Item], entry: DatasetEntry, steps: list[int],
                 seed: int, sampler: str | None = None, sample_kwargs: dict[str, Any] | None = None,
                 progress: bool = False, color_fix: str = "none") -> list[dict[str, Any]]:
    """Restore every item at every step count (``irdiff.evaluate``); one record per (image, steps)."""
    method, net = restorer.method, restorer.net
    sampler = sampler or restorer.cfg.sample.sampler
    used = sampler or (method.samplers[0] if method.samplers else None)
    counter = _Counter(net)
    records = []
    try:
        for n in steps:
            restore = with_method(method, net, steps=n, sampler=sampler, color_fix=color_fix,
                                  sample_kwargs=sample_kwargs, device=restorer.device)
            counter.n, counter.per_item = 0, []
            res = evaluate(items, restore, seed=seed, crop_border=entry.crop_border, y_channel=entry.y_channel,
                           device=restorer.device, on_item=counter.item_done)
            records += _records(res, name, entry, n, counter.per_item, used)
            if progress:
                print(f"[bench] {name} {entry.name} steps={n}: PSNR {res.mean('psnr'):.3f} dB, "
                      f"{res.mean('seconds'):.2f} s/image", flush=True)
    finally:
        counter.handle.remove()
    return records


def input_records(items: list[Item], entry: DatasetEntry, method: Any = None) -> list[dict[str, Any]]:
    """The identity baseline: the degraded input scored as it is (Cold's own D when ``method`` is Cold)."""
    res = evaluate(items, identity(method), crop_border=entry.crop_border, y_channel=entry.y_channel)
    return _records(res, "input", entry, 0)


def _mean(values: Any) -> float:
    v = [float(x) for x in values]
    finite = [x for x in v if math.isfinite(x)]
    return sum(finite) / len(finite) if finite else float("nan")


def summarize(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Means per (method, dataset, steps), in first-seen order."""
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["method"], r["dataset"], r["steps"]), []).append(r)
    rows = []
    for (m, d, n), rs in groups.items():
        nfe = _mean(r["nfe"] for r in rs)
        sec = _mean(r["seconds"] for r in rs)
        rows.append({"method": m, "dataset": d, "steps": n, "nfe": round(nfe, 2),
                     "psnr": round(_mean(r["psnr"] for r in rs), 4),
                     "ssim": round(_mean(r["ssim"] for r in rs), 5), "sec_per_image": round(sec, 4),
                     "sec_per_step": round(sec / nfe, 5) if nfe else 0.0, "n_images": len(rs),
                     "sampler": rs[0].get("sampler")})
    return rows


def write_outputs(out: Path, records: list[dict[str, Any]], meta: dict[str, Any]) -> dict[str, Path]:
    """results.json / results.csv / results.md / psnr_vs_steps.png in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    rows = summarize(records)
    paths = {"json": out / "results.json", "csv": out / "results.csv", "md": out / "results.md",
             "png": out / "psnr_vs_steps.png"}
    paths["json"].write_text(json.dumps({"meta": meta, "summary": rows, "records": records}, indent=1))
    with open(paths["csv"], "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k) for k in CSV_FIELDS})
    paths["md"].write_text(markdown_table(rows))
    plot(rows, paths["png"])
    return paths


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """One table per dataset: a row per method, a PSNR column per step count (+ the 10-vs-100 gap)."""
    lines = []
    for d in dict.fromkeys(r["dataset"] for r in rows):
        sub = [r for r in rows if r["dataset"] == d]
        steps = sorted({r["steps"] for r in sub if r["method"] != "input"})
        inp = [r for r in sub if r["method"] == "input"]
        lines.append(f"**{d}**" + (f" (input: {inp[0]['psnr']:.2f} dB / {inp[0]['ssim']:.4f})" if inp else ""))
        lines.append("")
        gap = 10 in steps and 100 in steps
        lines.append("| method | " + " | ".join(f"N={n}" for n in steps) + (" | 100−10 (dB)" if gap else "")
                     + " | s/step |")
        lines.append("|---" * (len(steps) + 2 + gap) + "|")
        for m in dict.fromkeys(r["method"] for r in sub if r["method"] != "input"):
            by = {r["steps"]: r for r in sub if r["method"] == m}
            cells = [f"{by[n]['psnr']:.2f}" if n in by else "" for n in steps]
            extra = ""
            if gap:
                extra = f" | {by[100]['psnr'] - by[10]['psnr']:+.2f}" if 10 in by and 100 in by else " | "
            sps = _mean(r["sec_per_step"] for r in by.values())
            lines.append(f"| {m} | " + " | ".join(cells) + extra + f" | {sps:.3f} |")
        lines.append("")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    fig, axes = plt.subplots(1, len(datasets), figsize=(5.5 * len(datasets), 4), squeeze=False)
    for ax, d in zip(axes[0], datasets):
        sub = [r for r in rows if r["dataset"] == d]
        for m in dict.fromkeys(r["method"] for r in sub if r["method"] != "input"):
            pts = sorted((r["steps"], r["psnr"]) for r in sub if r["method"] == m)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=m)
        for r in sub:
            if r["method"] == "input":
                ax.axhline(r["psnr"], color="grey", linestyle="--", label="input")
                break
        ax.set_xscale("log")
        ax.set_xlabel("sampling steps N")
        ax.set_ylabel("PSNR (dB)")
        ax.set_title(d)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def machine_info() -> dict[str, Any]:
    import os

    info = {"date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"), "python": platform.python_version(),
            "torch": torch.__version__, "platform": platform.platform(), "processor": platform.processor(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "command": shlex.join(sys.argv)}
    try:
        info["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                            timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        info["git_commit"] = None
    return info


def run_bench(cfg: BenchConfig, out: str | Path | None = None, only: list[str] | None = None) -> dict[str, Any]:
    """Run a whole benchmark; returns {"records", "summary", "paths"}."""
    from irdiff.inference import load

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(out or cfg.out)
    methods = [m for m in cfg.methods if not only or m.name in only]
    if only and len(methods) != len(only):
        missing = sorted(set(only) - {m.name for m in cfg.methods})
        raise ConfigError(f"--only: no method named {', '.join(missing)}")
    runs = {m.name: _ensure_run(m, out, cfg.progress) for m in methods}
    records: list[dict[str, Any]] = []
    meta = {"name": cfg.name, **machine_info(), "seed": cfg.seed, "methods": {}, "datasets": {}}
    datasets = [(d, load_images(d, cfg.seed)) for d in cfg.datasets]
    baselines = {}
    for d, items in datasets:
        meta["datasets"][d.name] = {"n_images": len(items), "center_crop": d.center_crop,
                                    "crop_border": d.crop_border, "y_channel": d.y_channel,
                                    "images": [it.name for it in items]}
        baselines[d.name] = input_records(items, d)
        records += baselines[d.name]
    for m in methods:
        restorer = load(runs[m.name], device=cfg.device)
        meta["methods"][m.name] = {"run": str(runs[m.name]), "step": restorer.meta.get("step"),
                                   "method": dict(restorer.cfg.method),
                                   "params": sum(p.numel() for p in restorer.net.parameters()),
                                   "train_seconds": _train_seconds(runs[m.name])}
        for d, items in datasets:
            own = input_records(items, d, restorer.method)
            if any(a["psnr"] != b["psnr"] for a, b in zip(own, baselines[d.name])):  # Cold's own D: its own baseline
                for r in own:
                    r["method"] = f"input ({m.name})"
                records += own
            records += bench_method(m.name, restorer, items, d, m.steps or cfg.steps, cfg.seed, m.sampler,
                                    m.sample_kwargs, cfg.progress, m.color_fix)
    paths = write_outputs(out, records, meta)
    return {"records": records, "summary": summarize(records), "paths": paths}


def _train_seconds(run_dir: Path) -> float | None:
    """Wall seconds of the run's training (its log's last entry), when it has a log."""
    log = Path(run_dir) / "log.jsonl"
    if not log.is_file():
        return None
    seconds = None
    for line in log.read_text().splitlines():
        try:
            seconds = json.loads(line).get("seconds", seconds)
        except json.JSONDecodeError:
            continue
    return seconds


def merge(dirs: list[str | Path], out: str | Path) -> dict[str, Path]:
    """Combine several results.json (e.g. methods benchmarked in parallel processes) into one set of outputs."""
    records: list[dict[str, Any]] = []
    metas = []
    for d in dirs:
        data = json.loads((Path(d) / "results.json").read_text())
        metas.append(data["meta"])
        seen = {(r["method"], r["dataset"], r["image"], r["steps"]) for r in records}
        records += [r for r in data["records"] if (r["method"], r["dataset"], r["image"], r["steps"]) not in seen]
    meta = {**machine_info(), "merged_from": [str(d) for d in dirs], "parts": metas}
    return write_outputs(Path(out), records, meta)


# ---- CLI ----------------------------------------------------------------------------------------

def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``bench`` on an argparse sub-parser set (``irdiff bench --config F``)."""
    p = subparsers.add_parser("bench", help="benchmark methods x datasets x step counts (JSON/CSV/PNG)")
    _arguments(p)
    return p


def _arguments(p: argparse.ArgumentParser) -> None:
    from irdiff.cli import bench_arguments  # declared in the CLI, which must build its parser without torch

    bench_arguments(p)


def run(args: argparse.Namespace) -> int:
    if args.merge:
        if not args.out:
            print("irdiff bench: --merge needs --out", file=sys.stderr)
            return 2
        paths = merge(args.merge, args.out)
        print(Path(paths["md"]).read_text())
        return 0
    if not args.config:
        print("irdiff bench: --config is required (or --merge)", file=sys.stderr)
        return 2
    cfg = load_bench_config(args.config)
    if args.no_progress:
        cfg.progress = False
    if getattr(args, "threads", None):
        cfg.threads = args.threads
    if args.steps:
        cfg.steps = [int(s) for s in args.steps.split(",")]
    only = [s.strip() for s in args.only.split(",")] if args.only else None
    res = run_bench(cfg, args.out, only)
    print(Path(res["paths"]["md"]).read_text())
    print(f"wrote {', '.join(str(p) for p in res['paths'].values())}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m irdiff.bench", description=__doc__.splitlines()[0])
    _arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
