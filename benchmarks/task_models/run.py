"""The one-pass task models against their input and a classical baseline (issue 13).

    python benchmarks/task_models/run.py                        # deblur, jpeg and derain: the bundled models
    python benchmarks/task_models/run.py deblur --model deblur=runs/deblur_blind --max-images 8

Test settings, baselines and how they are tuned: ``tasks.py`` beside this file (shared with the cards that
``scripts/export_pretrained.py --eval deblur|jpeg|derain`` writes). Each run replaces the tasks it ran in
``results.json`` and rewrites ``results.md`` from it, so tasks can be run (and rerun) one at a time.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

import tasks  # noqa: E402  (beside this file)


def data_root(given: Path | None) -> Path:
    """--data, else $IRDIFF_DATA, else the development checkout's data folder beside the repository, else the
    user cache that `irdiff data fetch` fills."""
    from irdiff.data import catalog

    if given is not None:
        return given
    beside = ROOT.parent / "shared" / "data"
    return catalog.data_root() if os.environ.get("IRDIFF_DATA") or not beside.is_dir() else beside


def machine() -> str:
    from irdiff.sysinfo import cpu_name

    return f"{cpu_name()}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}"


def report(results: dict) -> str:
    lines = ["# One-pass task models vs their input and classical baselines", "",
             "PSNR (dB) / SSIM through `irdiff.evaluate` (8-bit output, BasicSR conventions; RGB unless the row "
             "says Y); seeded degradations (image i: `item_generator(0, 0, i)`), the same numbers as the model "
             "cards. Seconds: process CPU time per image, one thread. Settings and baselines: `tasks.py`.", ""]
    for task in tasks.TASKS:
        if task not in results:
            continue
        r = results[task]
        lines += [f"## {task}", "",
                  f"Model `{r['model']}` (step {r['step']}); {r['date']}; {r['machine']}; "
                  f"`{r['command']}`" + (f"; {r['note']}" if r.get("note") else "") + ".", "",
                  *tasks.table(task, r["metrics"]), "",
                  f"Mean gain over the input: {tasks.mean_gain(r['metrics']):+.2f} dB. {tasks.NOTES[task]}", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("task", nargs="*", help=f"tasks to run: {', '.join(tasks.TASKS)} (default: all)")
    ap.add_argument("--model", action="append", default=[], metavar="TASK=MODEL",
                    help="the model of a task: bundled name, run or model folder (default: the bundled TASK)")
    ap.add_argument("--data", type=Path, help="test sets (default: $IRDIFF_DATA or the user data cache)")
    ap.add_argument("--max-images", type=int, help="first N images of each set (a smoke run; results say so)")
    ap.add_argument("--every", type=int, default=1, help="every N-th image of the clean sets (a CPU-bound run)")
    ap.add_argument("--note", default="", help="a remark stored with the results (e.g. 'core shared with a training')")
    ap.add_argument("--out", type=Path, default=HERE, help="folder of results.json / results.md")
    ap.add_argument("--report", action="store_true", help="only rewrite results.md from results.json")
    args = ap.parse_args(argv)
    if args.report:
        results = json.loads((args.out / "results.json").read_text())
        (args.out / "results.md").write_text(report(results))
        return 0
    unknown = [t for t in args.task if t not in tasks.TASKS]
    if unknown:
        ap.error(f"unknown task {unknown[0]!r} (known: {', '.join(tasks.TASKS)})")
    models = {task: task for task in tasks.TASKS}
    for spec in args.model:
        task, sep, model = spec.partition("=")
        if not sep or task not in tasks.TASKS:
            ap.error(f"--model {spec!r}: expected TASK=MODEL with TASK one of {', '.join(tasks.TASKS)}")
        models[task] = model
    data = data_root(args.data)
    todo = args.task or list(tasks.TASKS)
    for task in todo:
        missing = tasks.missing_sets(task, data)
        if missing:
            print(f"error: {task}: test sets missing under {data}: {', '.join(missing)} "
                  f"(`irdiff data fetch NAME`, or set IRDIFF_DATA)", file=sys.stderr)
            return 1

    import irdiff

    command = "python benchmarks/task_models/run.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    path = args.out / "results.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    for task in todo:
        restorer = irdiff.load(models[task])
        metrics = tasks.evaluate_task(task, restorer, data, args.max_images, log=lambda s: print(s, flush=True),
                                      every=args.every)
        note = "; ".join(n for n in (args.note, f"first {args.max_images} image(s) per set only"
                                     if args.max_images else "",
                                     f"one image in {args.every} of CBSD68 / Kodak24" if args.every > 1 else "") if n)
        results[task] = {"model": str(models[task]), "step": restorer.meta.get("step"), "metrics": metrics,
                         "model_sha": tasks.weights_key(restorer), "settings": tasks.settings_key(task),
                         "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
                         "machine": machine(), "command": command.strip(), "note": note,
                         "max_images": args.max_images, "every": args.every}
        args.out.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=1) + "\n")
        (args.out / "results.md").write_text(report(results))
    print(report(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
