"""Noise-DA benchmark: synthetic-only R vs R + Noise-DA (and ablations) vs the real-pairs upper bound.

All runs share the data streams, R (NAFNet), steps, batch, patch, optimiser and seed; they differ only in
the method section (and, for the upper bound, in which pairs R sees). Every model is scored on one fixed
real-domain test set (CBSD68 degraded with the real-domain model, one fixed seed per image) and, as a
check that adaptation does not cost the synthetic domain, on a fixed AWGN σ = 25 subset.

    python benchmarks/noise_da/run.py train [--only b,c] [--jobs 2]   # train (resumes) + score each run
    python benchmarks/noise_da/run.py assemble                        # results.json + results.md
    python benchmarks/noise_da/run.py all                             # both

Run from the repository root. Training runs go under runs/noise_da_bench/<key>/ (log: <key>.log), each
scored into runs/noise_da_bench/<key>/eval.json as soon as it finishes. Each run is a subprocess
`nice -n 19 env OMP_NUM_THREADS=1 irdiff train ...` (one core); its CPU time is measured with wait4.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
RUNS_DIR = REPO / "runs" / "noise_da_bench"
DATA = Path(os.environ.get("IRDIFF_DATA", REPO.parent / "shared" / "data"))

REAL_DEGRADATION = {"name": "chain", "ops": [
    {"name": "poisson_gaussian", "peak": [10, 40], "read_sigma": [2, 10], "correlation": 1.0},
    {"name": "jpeg", "quality": [80, 95]}]}
SYN_DEGRADATION = {"name": "awgn", "sigma": 25}
REAL_EVERY, SYN_EVERY = 2, 4  # test subsets: every 2nd CBSD68 image (34) / every 4th (17)

# key -> (label, config file, --set overrides); in launch order (longest first)
RUNS = {
    "b": ("R + Noise-DA (λ_dif 0.2)", "noise_da.yaml", []),
    "c": ("Noise-DA without channel shuffle", "noise_da.yaml", ["method.channel_shuffle=false"]),
    "f": ("Noise-DA, λ_dif 1.0", "noise_da.yaml", ["method.lambda_dif=1.0"]),
    "d": ("Noise-DA without contrastive term", "noise_da.yaml", ["method.contrastive=false"]),
    "a": ("R on synthetic only (Charbonnier)", "regression_syn.yaml", []),
    "e": ("upper bound: R on real-domain pairs", "regression_real.yaml", []),
}
# the same comparisons at 6x the budget (3000 steps; Noise-DA's ramp stretched to its first half)
LONG = ["train.steps=3000", "train.val_every=1000", "train.ckpt_every=500"]
RUNS.update({
    "b3k": ("R + Noise-DA (λ_dif 0.2), 3000 steps", "noise_da.yaml", [*LONG, "method.ramp_steps=1500"]),
    "f3k": ("Noise-DA, λ_dif 1.0, 3000 steps", "noise_da.yaml",
            [*LONG, "method.ramp_steps=1500", "method.lambda_dif=1.0"]),
    "a3k": ("R on synthetic only, 3000 steps", "regression_syn.yaml", LONG),
    "e3k": ("upper bound: R on real pairs, 3000 steps", "regression_real.yaml", LONG),
})
TABLE_ORDER = ["a", "b", "c", "d", "f", "e", "a3k", "b3k", "f3k", "e3k"]
EXTRA_SETS: list[str] = []


def command(key: str) -> list[str]:
    _, cfg, sets = RUNS[key]
    cmd = [".venv/bin/irdiff", "train", "--config", f"benchmarks/noise_da/{cfg}", "--set", f"name=bench_{key}"]
    for s in [*sets, *EXTRA_SETS]:
        cmd += ["--set", s]
    out = os.path.relpath(RUNS_DIR / key, REPO)
    return cmd + ["--out", out, "--no-progress"]


# ---- test sets ----------------------------------------------------------------------------------

def test_set(kind: str) -> list:
    """The real-domain or AWGN test items of CBSD68 (``irdiff.evaluate``: image i degraded with the
    generator item_generator(seed, 0, i), seed 10000 for the real domain, 20000 for AWGN)."""
    from irdiff.evaluate import degraded_items

    spec, every, seed = (REAL_DEGRADATION, REAL_EVERY, 10_000) if kind == "real" else (SYN_DEGRADATION, SYN_EVERY,
                                                                                       20_000)
    return degraded_items(DATA / "CBSD68", spec, seed, every=every)


def score(restore, sets: dict[str, list]) -> dict[str, dict[str, float]]:
    """Mean PSNR/SSIM (RGB, 8-bit, BasicSR conventions) of ``restore(item, generator)`` on each test set."""
    from irdiff.evaluate import evaluate

    res = {}
    for kind, items in sets.items():
        r = evaluate(items, restore)
        res[kind] = {"psnr": r.mean("psnr"), "ssim": r.mean("ssim"), "n": len(r.records)}
    return res


def evaluate_run(key: str) -> dict:
    import torch

    import irdiff
    from irdiff.evaluate import with_restorer

    torch.set_num_threads(1)
    run = RUNS_DIR / key
    restorer = irdiff.load(run)
    sets = {"real": test_set("real"), "syn_awgn25": test_set("syn")}
    t0 = time.time()
    # the whole image in one pass (R is fully convolutional); no tiling needed
    result = score(with_restorer(restorer, tile=0), sets)
    meta = json.loads((run / "model.json").read_text())
    result.update(step=meta["step"], eval_seconds=round(time.time() - t0, 1))
    (run / "eval.json").write_text(json.dumps(result, indent=1))
    return result


def evaluate_input() -> dict:
    from irdiff.evaluate import identity

    sets = {"real": test_set("real"), "syn_awgn25": test_set("syn")}
    return score(identity(), sets)


# ---- diagnostics of the trained teacher --------------------------------------------------------------

def diagnose_run(key: str, batches: int = 8) -> dict:
    """With the final (non-EMA) R and ε_θ of a Noise-DA run, on fresh training batches at full weight:
    the MSE⁺ / MSE⁻ / triplet values and how much of L_dif's gradient reaches R's *real* output r_r
    compared with its synthetic output r_s (a teacher that reads only the synthetic slot gives ~0)."""
    import torch

    from irdiff.build import build_method, build_model
    from irdiff.checkpoint import latest_checkpoint, load_tensors
    from irdiff.config import Config, from_dict
    from irdiff.data.datasets import BatchPlan, build_dataset, collate
    from irdiff.methods.base import to_method_range

    torch.set_num_threads(1)
    run = RUNS_DIR / key
    cfg = from_dict(Config, json.loads((run / "model.json").read_text())["config"])
    method = build_method(cfg)
    if cfg.method["name"] != "noise_da" or method.lambda_dif == 0:
        return {}
    net = build_model(cfg, method)
    net.load_state_dict(load_tensors(latest_checkpoint(run) / "model.safetensors"))
    outputs = []
    net.restorer.register_forward_hook(lambda mod, args, out: outputs.append(out))
    syn, real = build_dataset(cfg.data.train, cfg.seed, True), build_dataset(cfg.data.real, cfg.seed + 1, True)
    plan_s = BatchPlan(len(syn), cfg.train.batch_size, cfg.seed + 7)
    plan_r = BatchPlan(len(real), cfg.train.batch_size, cfg.seed + 8)
    acc: dict[str, list[float]] = {}
    for i in range(batches):
        batch = collate([syn[k] for k in plan_s.keys(i)])
        batch.update(collate([real[k] for k in plan_r.keys(i)]))
        batch = {k: to_method_range(v) for k, v in batch.items()}
        outputs.clear()
        g = torch.Generator().manual_seed(1000 + i)
        terms = method.loss_terms(net, batch, g)
        r_s, r_r = outputs
        rows = {"mse_pos": terms["mse_pos"].mean(), "pix": terms["pix"].mean()}
        if "mse_neg" in terms:
            rows.update(mse_neg=terms["mse_neg"].mean(), tri=terms["tri"])
        g_s, g_r = torch.autograd.grad(terms["dif"].mean(), [r_s, r_r], retain_graph=True)
        (g_pix,) = torch.autograd.grad(terms["pix"].mean(), [r_s])
        rows["grad_real_over_syn"] = g_r.norm() / g_s.norm().clamp_min(1e-30)
        # how strong the teacher's pull on R is next to the pixel loss's, at the full ramp weight
        rows["wdif_over_pix_on_r_s"] = terms["w"] * g_s.norm() / g_pix.norm().clamp_min(1e-30)
        for k, v in rows.items():
            acc.setdefault(k, []).append(float(torch.as_tensor(v).detach()))
    diag = {k: sum(v) / len(v) for k, v in acc.items()}
    (run / "diag.json").write_text(json.dumps(diag, indent=1))
    return diag


# ---- training queue -----------------------------------------------------------------------------

def launch(key: str, kind: str) -> tuple[subprocess.Popen, float, object]:
    """kind "train": the training run; kind "eval": scoring its export (once training exited 0)."""
    RUNS_DIR.mkdir(parents=True, exist_ok=True)
    log = open(RUNS_DIR / f"{key}.log", "a")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = command(key) if kind == "train" else [sys.executable, __file__, "eval-one", key,
                                                "--runs-dir", str(RUNS_DIR)]
    proc = subprocess.Popen(["nice", "-n", "19", *cmd], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    return proc, time.time(), log


def record_timing(key: str, start: float, rusage, rc: int) -> None:
    run = RUNS_DIR / key
    timing_path = run / "timing.json"
    prev = json.loads(timing_path.read_text()) if timing_path.exists() else {"wall_s": 0.0, "cpu_s": 0.0}
    timing = {"wall_s": round(prev["wall_s"] + time.time() - start, 1),
              "cpu_s": round(prev["cpu_s"] + rusage.ru_utime + rusage.ru_stime, 1),
              "finished": dt.datetime.now().isoformat(timespec="seconds"), "rc": rc,
              "command": "nice -n 19 env OMP_NUM_THREADS=1 " + shlex.join(command(key))}
    if run.is_dir():
        timing_path.write_text(json.dumps(timing, indent=1))
    print(f"[{key}] training exit {rc}: wall {timing['wall_s']} s, cpu {timing['cpu_s']} s", flush=True)


def train_all(keys: list[str], jobs: int) -> None:
    """At most ``jobs`` processes at a time; a run's scoring takes its slot right after its training."""
    done = [k for k in keys if (RUNS_DIR / k / "eval.json").exists()]
    if done:
        print(f"already trained and scored (delete eval.json to redo): {', '.join(done)}", flush=True)
    pending, running = [(k, "train") for k in keys if k not in done], {}
    while pending or running:
        while pending and len(running) < jobs:
            key, kind = pending.pop(0)
            proc, start, log = launch(key, kind)
            running[proc.pid] = (key, kind, start, log)
            print(f"[{key}] {kind} started, pid {proc.pid}", flush=True)
        pid, status, rusage = os.wait4(-1, 0)
        if pid not in running:
            continue
        key, kind, start, log = running.pop(pid)
        log.close()
        rc = os.waitstatus_to_exitcode(status)
        if kind == "train":
            record_timing(key, start, rusage, rc)
            if rc == 0:
                pending.insert(0, (key, "eval"))
        else:
            print(f"[{key}] eval exit {rc}", flush=True)


# ---- results --------------------------------------------------------------------------------------

def machine() -> str:
    from irdiff.sysinfo import cpu_name

    cpu = cpu_name()
    import torch

    return f"{cpu}, {os.cpu_count()} cores, Linux {platform.release()}, torch {torch.__version__}, 1 thread per run"


def assemble() -> dict:
    rows = {}
    for key in TABLE_ORDER:
        run = RUNS_DIR / key
        ev = run / "eval.json"
        if not ev.exists():
            print(f"[{key}] no eval.json yet; skipped")
            continue
        timing = json.loads((run / "timing.json").read_text()) if (run / "timing.json").exists() else {}
        cfg = json.loads((run / "model.json").read_text())["config"]
        diag = json.loads((run / "diag.json").read_text()) if (run / "diag.json").exists() else {}
        rows[key] = {"label": RUNS[key][0], **json.loads(ev.read_text()), "teacher": diag,
                     "train_wall_s": timing.get("wall_s"), "train_cpu_s": timing.get("cpu_s"),
                     "finished": timing.get("finished"),
                     "command": "nice -n 19 env OMP_NUM_THREADS=1 " + shlex.join(command(key)),
                     "method": cfg["method"]}
    results = {
        "date": dt.date.today().isoformat(), "machine": machine(),
        "test_sets": {"real": f"CBSD68 every {REAL_EVERY}th image, {REAL_DEGRADATION}, irdiff.evaluate seed 10000",
                      "syn_awgn25": f"CBSD68 every {SYN_EVERY}th image, {SYN_DEGRADATION}, irdiff.evaluate seed 20000"},
        "input": evaluate_input(), "runs": rows,
    }
    (HERE / "results.json").write_text(json.dumps(results, indent=1, ensure_ascii=False))
    (HERE / "results.md").write_text(markdown(results))
    print((HERE / "results.md").read_text())
    return results


def markdown(r: dict) -> str:
    inp = r["input"]
    lines = [
        "# Noise-DA benchmark results", "",
        f"Date {r['date']}; machine: {r['machine']}.", "",
        f"Real-domain test set: {r['test_sets']['real']}.  ",
        f"Synthetic check: {r['test_sets']['syn_awgn25']}.", "",
        "| run | real PSNR | real SSIM | AWGN σ25 PSNR | AWGN σ25 SSIM | steps | train wall s | train CPU s |",
        "|---|---|---|---|---|---|---|---|",
        f"| noisy input | {inp['real']['psnr']:.2f} | {inp['real']['ssim']:.4f} | {inp['syn_awgn25']['psnr']:.2f} |"
        f" {inp['syn_awgn25']['ssim']:.4f} | – | – | – |",
    ]
    for key, row in r["runs"].items():
        lines.append(f"| ({key}) {row['label']} | {row['real']['psnr']:.2f} | {row['real']['ssim']:.4f} |"
                     f" {row['syn_awgn25']['psnr']:.2f} | {row['syn_awgn25']['ssim']:.4f} | {row['step']} |"
                     f" {row['train_wall_s']} | {row['train_cpu_s']} |")
    lines += ["", "Teacher diagnostics (final non-EMA nets, 8 fresh training batches, w = full weight):",
              "MSE⁺ / MSE⁻ are the ε-prediction errors with the true / residual-swapped conditions, tri the",
              "triplet term, and ‖∂L_dif/∂r_r‖ / ‖∂L_dif/∂r_s‖ how much adaptation signal reaches R's real output",
              "relative to its synthetic one; the last column is ‖∂(w·L_dif)/∂r_s‖ / ‖∂L_pix/∂r_s‖ at full w.", "",
              "| run | MSE⁺ | MSE⁻ | tri | ‖∂L_dif/∂r_r‖ / ‖∂L_dif/∂r_s‖ | w·L_dif vs L_pix on r_s |",
              "|---|---|---|---|---|---|"]
    for key, row in r["runs"].items():
        d = row.get("teacher") or {}
        if d:
            lines.append(f"| ({key}) | {d['mse_pos']:.4f} | {d.get('mse_neg', float('nan')):.4f} |"
                         f" {d.get('tri', float('nan')):.4f} | {d['grad_real_over_syn']:.3f} |"
                         f" {d.get('wdif_over_pix_on_r_s', float('nan')):.3f} |")
    lines += ["", "Commands (from the repository root):", ""]
    lines += [f"- ({key}) `{row['command']}`" for key, row in r["runs"].items()]
    lines += ["", "Assembled by `python benchmarks/noise_da/run.py assemble`.", ""]
    return "\n".join(lines)


def main() -> None:
    global RUNS_DIR
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["train", "assemble", "all", "eval-one", "diagnose"])
    p.add_argument("key", nargs="?")
    p.add_argument("--only", help="comma-separated run keys (default: all)")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--runs-dir", default=str(RUNS_DIR), help="where the runs go (default runs/noise_da_bench)")
    p.add_argument("--extra-set", action="append", default=[], help="one more --set for every run (smoke tests)")
    args = p.parse_args()
    RUNS_DIR = Path(args.runs_dir).resolve()
    EXTRA_SETS.extend(args.extra_set)
    keys = args.only.split(",") if args.only else list(RUNS)
    if args.what == "eval-one":
        print(f"[{args.key}] {json.dumps(evaluate_run(args.key))}", flush=True)
        print(f"[{args.key}] diagnostics {json.dumps(diagnose_run(args.key))}", flush=True)
        return
    if args.what == "diagnose":
        for key in keys:
            if (RUNS_DIR / key / "model.json").exists():
                print(f"[{key}] diagnostics {json.dumps(diagnose_run(key))}", flush=True)
        return
    if args.what in ("train", "all"):
        train_all(keys, args.jobs)
    if args.what in ("assemble", "all"):
        assemble()


if __name__ == "__main__":
    main()
