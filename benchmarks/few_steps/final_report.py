"""results.md, psnr_vs_steps.png and psnr_niqe.png for the few-step final table (``final.py report``)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml

ORDER = ["regression", "sr3", "irsde", "denoising_sde", "rddm", "cold",
         "prior", "sr3+prior", "irsde+prior", "rddm+prior", "cold+prior",
         "sr3_eps", "sr3_x0_noise_std", "sr3_min_snr5", "irsde_eps"]
LABEL = {
    "regression": "one-pass NAFNet (L1 regression), same net and budget",
    "sr3": "SR3, x0-prediction, log-SNR input, DDIM",
    "irsde": "IR-SDE general form (mu = noisy input), x0-prediction, posterior sampler",
    "denoising_sde": "IR-SDE Denoising-SDE variant (paper), posterior sampler eta 1",
    "rddm": "RDDM (SM-Res-N, paper), DDIM",
    "cold": "Cold Diffusion (interp, T = 10), Algorithm 2",
    "prior": "bundled `denoise` (NAFNet width 32, trained for hours): the prior",
    "sr3+prior": "SR3 on the prior (the prior's output is its condition)",
    "irsde+prior": "IR-SDE on the prior (mu = the prior's output)",
    "rddm+prior": "RDDM on the prior (I_in = the prior's output)",
    "cold+prior": "Cold Diffusion on the prior (x_T = the prior's output)",
    "sr3_eps": "ablation: `sr3` with epsilon-prediction (the paper) and the default noise-level input sqrt(1 - gamma)",
    "sr3_x0_noise_std": "ablation: `sr3` with the default noise-level input sqrt(1 - gamma) instead of log-SNR",
    "sr3_min_snr5": "ablation: `sr3` with the min-SNR-5 loss weight",
    "irsde_eps": "ablation: `irsde` with epsilon-prediction (the same noise-matching loss)",
}


def merged(folder: Path) -> dict:
    """All shards' results (results_*.json) in one dict; a run in several shards keeps its latest record."""
    out: dict = {"runs": {}}
    for path in sorted(folder.glob("results*.json")):
        part = json.loads(path.read_text())
        for k, v in part.items():
            if k == "runs":
                for name, r in v.items():
                    if name not in out["runs"] or r.get("date", "") >= out["runs"][name].get("date", ""):
                        out["runs"][name] = r
            elif k not in out or k == "niqe_input":
                out[k] = v
    return out


def training_seconds(run_dir: Path) -> float | None:
    log = run_dir / "log.jsonl"
    if not log.is_file():
        return None
    last = None
    for line in log.read_text().splitlines():
        rec = json.loads(line)
        if "seconds" in rec:
            last = rec["seconds"]
    return last


def write_report(folder: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = merged(folder)
    runs = res["runs"]
    first = next(iter(runs.values()))
    psnr_in = first["psnr_in"]
    prior = runs.get("prior")
    repo = Path(__file__).resolve().parents[2]
    runs_dir = Path(os.environ.get("FEW_STEPS_FINAL_RUNS", repo / "runs" / "few_steps_final"))
    budgets = sorted({yaml.safe_load((d / "config.yaml").read_text())["train"]["steps"]
                      for d in runs_dir.iterdir() if (d / "config.yaml").is_file()}) if runs_dir.is_dir() else []
    lines = [
        "# Few-step final table: all of CBSD68, sigma 25, one CPU budget (issue 14)",
        "",
        f"Every model trained {' / '.join(map(str, budgets)) or '?'} steps of batch 8 (64² patches), the same "
        "NAFNet width 16, one thread, bf16 autocast (`benchmarks/few_steps/final.py`, `COMMON`); `train s` is the "
        "run's wall time, one thread (on a core of its own: its CPU time, unless the README says otherwise).",
        "",
        f"{res.get('images', '?')} images, AWGN sigma 25 (float, seed 0); input PSNR {psnr_in:.2f} dB, "
        f"NIQE {res.get('niqe_input', float('nan')):.2f}. Machine: {first['machine']}, torch {first['torch']}, "
        f"one thread; evaluated {min(r['date'] for r in runs.values())} to {max(r['date'] for r in runs.values())}.",
        "Command: `python benchmarks/few_steps/final.py configs && python benchmarks/few_steps/final.py train && "
        "python benchmarks/few_steps/final.py eval && python benchmarks/few_steps/final.py report` "
        "(the committed run: two shards, one per core, `runs/few_steps_final/drive.sh`).",
        "",
        "CPU s = process CPU seconds per image for the whole restoration (prior included), one thread. "
        "delta = PSNR - the model's reference (alone: the input; +prior: the prior). "
        "NIQE: irdiff's pristine model (lower = more natural), absolute values differ from MATLAB's.",
        "",
        "| model | steps | eta | PSNR | delta | SSIM | NIQE | CPU s/img | train s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for model in ORDER:
        recs = sorted((r for r in runs.values() if r.get("model", r["name"]) == model),
                      key=lambda r: (r.get("eta") or 0, r.get("steps") or 0))
        if not recs:
            continue
        train_s = training_seconds(runs_dir / model.replace("+", "_")) if model != "prior" else None
        for j, r in enumerate(recs):
            ref = prior["psnr"] if model.endswith("+prior") and prior else psnr_in
            eta = "" if r.get("eta") is None else f"{r['eta']:g}"
            steps = r.get("steps") or 1
            lines.append(
                f"| {model if j == 0 else ''} | {steps} | {eta} | {r['psnr']:.2f} | {r['psnr'] - ref:+.2f} | "
                f"{r['ssim']:.4f} | {r['niqe']:.2f} | {r['cpu_seconds']:.2f} | "
                f"{'' if j or train_s is None else f'{train_s:.0f}'} |")
    lines += ["", "Models:", ""] + [f"- `{m}`: {LABEL[m]}" for m in ORDER if any(
        r.get("model", r["name"]) == m for r in runs.values())]
    (folder / "results.md").write_text("\n".join(lines) + "\n")

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 5))
    colours = dict(zip(ORDER, plt.get_cmap("tab20").colors))
    low = 22.5
    for model in ORDER:
        recs = sorted((r for r in runs.values() if r.get("model") == model and r.get("steps")
                       and not r.get("eta")), key=lambda r: r["steps"])
        if recs:
            style = "--" if model.endswith("+prior") else "-"
            ax.plot([r["steps"] for r in recs], [max(r["psnr"], low) for r in recs], style, marker="o",
                    color=colours[model], label=model)
            for r in recs:
                if r["psnr"] < low:
                    ax.annotate(f"{model} N={r['steps']}: {r['psnr']:.1f} dB (off scale)", (r["steps"], low),
                                fontsize=7, xytext=(4, 4), textcoords="offset points")
    for name, value, colour in [("prior", prior["psnr"] if prior else None, "black"),
                                ("regression", runs.get("regression", {}).get("psnr"), "tab:brown")]:
        if value is not None:
            ax.axhline(value, color=colour, lw=0.8, ls=":")
            ax.text(10.4, value, name, va="center", fontsize=8)
    ax.set_ylim(low - 0.2, 31.6)
    ax.set_xscale("log")
    ax.set_xticks([1, 2, 5, 10], ["1", "2", "5", "10"])
    ax.set_xlabel("sampling steps")
    ax.set_ylabel("PSNR (dB), CBSD68 sigma 25")
    ax.legend(fontsize=7, ncol=2, loc="lower right")
    ax.set_title(f"PSNR vs steps (deterministic samplers; input {psnr_in:.2f} dB)")
    near = [m for m in ORDER if m == "prior" or m.endswith("+prior")]
    for model in near:
        recs = sorted((r for r in runs.values() if r.get("model") == model), key=lambda r: r["niqe"])
        if not recs:
            continue
        bx.plot([r["niqe"] for r in recs], [r["psnr"] for r in recs], marker="s" if model == "prior" else "o",
                ls="none", color=colours[model], label=model)
        for r in recs:
            tag = "" if model == "prior" else f"N{r['steps']}" + ("" if r.get("eta") is None else f" η{r['eta']:g}")
            bx.annotate(tag, (r["niqe"], r["psnr"]), fontsize=6, xytext=(3, 2), textcoords="offset points")
    if not any(r.get("model") in near for r in runs.values()):
        bx.set_visible(False)
    if prior:
        bx.axhspan(prior["psnr"] - 0.2, prior["psnr"], color="grey", alpha=0.15, label="within 0.2 dB of the prior")
    bx.set_xlabel("NIQE (lower = more natural)")
    bx.set_ylabel("PSNR (dB)")
    if bx.get_visible():
        bx.legend(fontsize=7)
    bx.set_title("On the prior: PSNR against NIQE (N steps, η)")
    fig.tight_layout()
    fig.savefig(folder / "psnr_vs_steps.png", dpi=120)
    print(folder / "results.md")
