"""Training throughput of the trainer against a bare loop of the same net and batch (issue 13, item 3).

    OMP_NUM_THREADS=1 taskset -c 1 python benchmarks/train_throughput/run.py [--steps 30] [--label after]

The config is the bundled `denoise` recipe, configs/denoise_blind_v2.yaml (NAFNet w32, batch 8, 96-px
patches, bf16 autocast), without validation and starting from random weights (the speed does not depend
on them). Three loops, each timed in process CPU time (``time.process_time``: the core may be shared) and
wall time, after ``--warmup`` untimed steps:

- ``trainer``: ``Trainer.step(k)`` for consecutive k (data, seeding, forward/backward, numerical guard, grad
  clip, AdamW, EMA): what ``irdiff train`` spends per step outside logging and checkpoints;
- ``bare``: ``zero_grad``, forward + L1 loss under the same autocast, backward, ``AdamW.step`` on one batch
  made before timing: the floor for this net and batch;
- ``parts``: the trainer step's pieces timed one by one (making the batch, forward + backward, the guard,
  clipping, the optimiser, the EMA update) to show where the difference goes.

Also: fp32 against bf16 for the bare loop, with the CPU's native-bf16 flags. Results are appended to
results.json under ``--label`` (before / after a change); results.md is rewritten from it.
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

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))
if not os.environ.get("IRDIFF_DATA") and (ROOT.parent / "shared" / "data").is_dir():
    os.environ["IRDIFF_DATA"] = str(ROOT.parent / "shared" / "data")  # the development checkout's data

import torch  # noqa: E402

CONFIG = ROOT / "configs" / "denoise_blind_v2.yaml"


def make_trainer(run_dir: Path, overrides: list[str]):
    from irdiff.config import load_config
    from irdiff.train import Trainer

    cfg = load_config(CONFIG, ["data.val=null", "train.init_from=null", *overrides])
    trainer = Trainer(cfg, run_dir, progress=False)
    trainer.model, trainer.opt = trainer.accel.prepare(trainer.model, trainer.opt)
    trainer.model.train()
    return trainer


def timed(fn, n: int) -> tuple[float, float]:
    """(CPU seconds, wall seconds) per call of fn() over n calls."""
    c0, w0 = time.process_time(), time.perf_counter()
    for _ in range(n):
        fn()
    return (time.process_time() - c0) / n, (time.perf_counter() - w0) / n


def trainer_loop(trainer):
    """Consecutive trainer steps 0, 1, 2...: batch k is made inside step k, as in ``irdiff train``."""
    k = iter(range(10**9))
    return lambda: trainer.step(next(k))


def bare_loop(trainer, dtype: torch.dtype | None):
    """One step of the floor: the trainer's net, a fresh AdamW, one pre-made batch."""
    from irdiff.build import build_model

    model = build_model(trainer.cfg, trainer.method)
    if trainer.cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.99))
    batch = trainer.batch(0)
    lq, gt = batch["lq"], batch["gt"]

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = (lq + model(lq, None) - gt).abs().float().mean()  # regression: residual, L1
        loss.backward()
        opt.step()

    return step


def interleaved(loops: dict, rounds: int, block: int, warmup: int) -> dict:
    """Time the loops in alternating blocks of `block` steps (so that load from other processes on a shared
    core falls on all of them alike); per loop: median and mean over rounds of CPU and wall s per step."""
    import statistics

    for fn in loops.values():
        for _ in range(warmup):
            fn()
    per: dict = {name: {"cpu": [], "wall": []} for name in loops}
    for _ in range(rounds):
        for name, fn in loops.items():
            cpu, wall = timed(fn, block)
            per[name]["cpu"].append(cpu)
            per[name]["wall"].append(wall)
    return {name: {"cpu_s": statistics.median(v["cpu"]), "cpu_s_mean": statistics.mean(v["cpu"]),
                   "wall_s": statistics.median(v["wall"]), "cpu_s_rounds": [round(c, 4) for c in v["cpu"]]}
            for name, v in per.items()}


def bench_parts(trainer, steps: int) -> dict:
    """The trainer step's pieces, in its order, each timed over `steps` repetitions (CPU s per call)."""
    from irdiff.train import _grad_norm

    tc, accel, model = trainer.cfg.train, trainer.accel, trainer.model
    params = [p for p in model.parameters() if p.requires_grad]
    out = {}
    k = iter(range(10**6))
    out["batch"] = timed(lambda: trainer.batch(next(k)), steps)[0]
    batch = trainer.batch(0)

    def fwd_bwd():
        model.zero_grad(set_to_none=True)
        with accel.autocast():
            loss = trainer.method.loss(model, batch, generator=trainer.gen).float().mean()
        accel.backward(loss)

    out["forward_backward"] = timed(fwd_bwd, steps)[0]
    # the numerical guard's gradient norm, reused by the clip (the "before" runs had a separate isfinite pass
    # per gradient, then accelerate's clip_grad_norm_: parts guard and grad_clip)
    out["guard_and_clip"] = timed(lambda: float(torch.nn.utils.clip_grads_with_norm_(
        params, tc.grad_clip, _grad_norm(params)) or 0), steps)[0]
    out["adamw"] = timed(trainer.opt.step, steps)[0]
    out["ema"] = timed(trainer.ema.update, steps)[0]
    return out


def op_profile(trainer, steps: int, top: int = 12) -> list[dict]:
    """torch.profiler over `steps` trainer steps: the ops with the most self time, as shares of the total."""
    from torch.profiler import ProfilerActivity, profile

    loop = trainer_loop(trainer)
    loop()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            loop()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    return [{"op": e.key, "share": round(e.self_cpu_time_total / total, 4), "calls_per_step": e.count / steps}
            for e in events[:top]]


def cpu_flags() -> dict:
    flags = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    out = {"avx512_bf16": "avx512_bf16" in flags, "amx_bf16": "amx_bf16" in flags}
    try:
        from irdiff.train import native_bf16

        out["native_bf16 (irdiff)"] = native_bf16()
    except ImportError:  # before the detection existed
        pass
    return out


def write_md(all_res: dict) -> None:
    """results.md from results.json: one row per label, then the step's parts and the op profile."""
    lines = ["# Training throughput: `Trainer.step` against a bare loop", "",
             "Config configs/denoise_blind_v2.yaml (the bundled `denoise` recipe: NAFNet w32, batch 8, 96-px "
             "patches, bf16 autocast), one thread. Process CPU seconds per step, medians over rounds in which the "
             "loops alternate (the core was shared with other jobs: wall time was longer and is not compared). "
             "Generated by run.py from results.json.", "",
             "| run | overrides | trainer s/step | bare loop s/step | trainer / bare | training px/s "
             "| bare fp32 s/step | date |", "|---|---|---|---|---|---|---|---|"]
    for label, r in all_res.items():
        fp32 = f"{r['bare_fp32']['cpu_s']:.3f}" if "bare_fp32" in r else "-"
        note = f" ({r['rounds']} round of {r['block']} steps: for the op shares)" if r["rounds"] < 3 else ""
        lines.append(f"| {label}{note} | {' '.join(r.get('overrides', [])) or '-'} | {r['trainer']['cpu_s']:.3f} | "
                     f"{r['bare']['cpu_s']:.3f} | {r['ratio_cpu']:.3f} | {r['train_px_per_cpu_s']:,.0f} | {fp32} | "
                     f"{r['date']} |")
        if "trainer_channels_last" in r:
            lines.append(f"| {label}, same run | train.channels_last=true | "
                         f"{r['trainer_channels_last']['cpu_s']:.3f} | "
                         f"{r['bare_channels_last']['cpu_s']:.3f} | {r['ratio_cpu_channels_last']:.3f} | "
                         f"{r['train_px_per_cpu_s_channels_last']:,.0f} | - | {r['date']} |")
    parts = {label: r["parts_cpu_s"] for label, r in all_res.items() if "parts_cpu_s" in r}
    if parts:
        names = list(dict.fromkeys(n for p in parts.values() for n in p))
        lines += ["", "Parts of a trainer step, CPU ms each (timed one by one):", "",
                  "| run | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        for label, p in parts.items():
            lines.append(f"| {label} | " + " | ".join(f"{1000 * p[n]:.1f}" if n in p else "-" for n in names) + " |")
    for label, r in all_res.items():
        if "ops" in r:
            lines += ["", f"Ops by self time in a trainer step ({label}, torch.profiler):", "",
                      "| op | share | calls / step |", "|---|---|---|"]
            lines += [f"| `{o['op']}` | {100 * o['share']:.1f}% | {o['calls_per_step']:.0f} |" for o in r["ops"]]
    r = next(iter(all_res.values()))
    lines += ["", f"Machine: {r['machine']}; CPU flags {r['cpu_flags']}; torch {r['torch']}.", "",
              "Commands:", ""] + [f"- {label}: `{r['command']}`" for label, r in all_res.items()] + [""]
    (HERE / "results.md").write_text("\n".join(lines))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=6, help="alternating rounds of every loop")
    ap.add_argument("--block", type=int, default=5, help="timed steps per loop and round")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--label", default="current", help="key in results.json (e.g. before, after)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config overrides")
    ap.add_argument("--fp32", action="store_true", help="also time the bare loop in float32")
    ap.add_argument("--no-parts", action="store_true")
    ap.add_argument("--channels-last-too", action="store_true",
                    help="also time trainer and bare loop with train.channels_last=true, alternating with the rest")
    ap.add_argument("--profile", action="store_true", help="also the ops' shares of a trainer step (torch.profiler)")
    ap.add_argument("--report", action="store_true", help="only rewrite results.md from results.json")
    args = ap.parse_args()
    if args.report:
        write_md(json.loads((HERE / "results.json").read_text()))
        return 0
    import tempfile

    from irdiff.sysinfo import cpu_name

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = make_trainer(Path(tmp) / "run", args.set)
        tc = trainer.cfg.train
        px = tc.batch_size * trainer.cfg.data.train.patch_size ** 2
        amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(trainer.accel.mixed_precision)
        loops = {"trainer": trainer_loop(trainer), "bare": bare_loop(trainer, amp)}
        if args.fp32:
            loops["bare_fp32"] = bare_loop(trainer, None)
        if args.channels_last_too:  # the same config with train.channels_last, in the same alternation
            cl = make_trainer(Path(tmp) / "run_cl", [*args.set, "train.channels_last=true"])
            loops.update({"trainer_channels_last": trainer_loop(cl), "bare_channels_last": bare_loop(cl, amp)})
        res = interleaved(loops, args.rounds, args.block, args.warmup)
        if args.channels_last_too:
            res["ratio_cpu_channels_last"] = res["trainer_channels_last"]["cpu_s"] / res["bare_channels_last"]["cpu_s"]
            res["train_px_per_cpu_s_channels_last"] = px / res["trainer_channels_last"]["cpu_s"]
        if not args.no_parts:
            res["parts_cpu_s"] = bench_parts(trainer, args.block * 2)
        if args.profile:
            res["ops"] = op_profile(trainer, args.block)
    res["ratio_cpu"] = res["trainer"]["cpu_s"] / res["bare"]["cpu_s"]
    res["train_px_per_cpu_s"] = px / res["trainer"]["cpu_s"]
    res["bare_px_per_cpu_s"] = px / res["bare"]["cpu_s"]
    res.update({
        "command": "OMP_NUM_THREADS=1 taskset -c 1 python benchmarks/train_throughput/run.py " + " ".join(sys.argv[1:]),
        "config": str(CONFIG.relative_to(ROOT)), "overrides": args.set,
        "mixed_precision": trainer.accel.mixed_precision,
        "batch": tc.batch_size, "patch": trainer.cfg.data.train.patch_size, "rounds": args.rounds, "block": args.block,
        "warmup": args.warmup, "threads": torch.get_num_threads(),
        "machine": f"{cpu_name()}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}",
        "cpu_flags": cpu_flags(), "torch": torch.__version__,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")})
    path = HERE / "results.json"
    all_res = json.loads(path.read_text()) if path.is_file() else {}
    all_res[args.label] = res
    path.write_text(json.dumps(all_res, indent=1) + "\n")
    write_md(all_res)
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
