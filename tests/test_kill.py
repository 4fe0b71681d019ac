"""Kill test (issue 16): a real training run SIGKILLed at >= 20 random moments, some of them on purpose
inside checkpoint writing, always resumes from a complete checkpoint and ends bit-exactly where an
uninterrupted run ends (CPU).

The child is ``python -c "import killhook; irdiff.cli.main()"``: killhook (written into tmp_path, never part
of irdiff) slows down checkpoint writing in the child only — each safetensors file is written in two
halves with a pause in between, and the directory fsyncs, the `latest` pointer and pruning pause too —
and records in a marker file which phase of the save is running. The marker is removed when the save
returns, so a marker still present after SIGKILL proves the kill landed inside a save (and says where).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import shared_data

from irdiff.checkpoint import latest_checkpoint, load_state, load_tensors

REPO = Path(__file__).resolve().parents[1]
STEPS, CKPT_EVERY, KILLS = 96, 8, 24
# the phases of a save that the "save" kills aim at in turn (the hook writes them into the marker)
SAVE_PHASES = ["write model.safetensors", "fsync after rename", "write ema.safetensors", "write latest",
               "write optimizer.safetensors", "prune", "fsync temp dir"]

KILLHOOK = r'''
import os, time
import irdiff.checkpoint as ck
from safetensors.torch import save as _encode

MARKER = os.environ["KILLTEST_MARKER"]
PAUSE = float(os.environ.get("KILLTEST_PAUSE", "0.08"))
_fsync_dir, _prune, _write_text, _save = ck._fsync_dir, ck._prune, ck.write_text_atomic, ck.save_checkpoint
_inside = False


def _phase(name):
    if _inside:
        with open(MARKER, "w") as f:
            f.write(name)


def save_file(tensors, filename, metadata=None):
    _phase("write " + os.path.basename(filename))
    data = _encode(tensors, metadata)
    with open(filename, "wb") as f:  # a torn file on disk while we pause
        f.write(data[: len(data) // 2])
        f.flush()
        time.sleep(PAUSE)
        f.write(data[len(data) // 2 :])


def fsync_dir(path):
    _phase("fsync temp dir" if os.path.basename(str(path)).startswith(".tmp") else "fsync after rename")
    time.sleep(PAUSE / 2)
    _fsync_dir(path)


def write_text_atomic(path, text):
    _phase("write " + os.path.basename(str(path)))
    time.sleep(PAUSE / 2)
    _write_text(path, text)


def prune(root, keep):
    _phase("prune")
    time.sleep(PAUSE / 2)
    _prune(root, keep)


def save_checkpoint(*args, **kwargs):
    global _inside
    _inside = True
    _phase("start")
    out = _save(*args, **kwargs)
    _inside = False
    os.unlink(MARKER)
    return out


ck.save_file, ck._fsync_dir, ck.write_text_atomic, ck._prune = save_file, fsync_dir, write_text_atomic, prune
ck.save_checkpoint = save_checkpoint  # before irdiff.train imports it
'''


def _config(tmp_path: Path, data: Path) -> Path:
    cfg = {
        "name": "killtest",
        "seed": 5,
        "method": {"name": "regression"},
        "net": {"name": "nafnet", "width": 8, "enc_blocks": [1, 1], "dec_blocks": [1, 1], "middle_blocks": 1},
        "data": {"train": {"name": "synthetic", "gt_dir": str(data), "patch_size": 24,
                           "degradation": {"name": "awgn", "sigma": 25}}},
        "train": {"steps": STEPS, "batch_size": 2, "lr": 1e-3, "log_every": 1, "ckpt_every": CKPT_EVERY,
                  "keep_ckpts": 2, "ema_decay": 0.9, "threads": 1, "device": "cpu"},
    }
    path = tmp_path / "kill.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _launch(cfg: Path, out: Path, hook_dir: Path | None, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    args = ["train", "--config", str(cfg), "--out", str(out), "--no-progress"]
    if hook_dir is None:
        cmd = [sys.executable, "-m", "irdiff.cli", *args]
    else:
        env["KILLTEST_MARKER"] = str(hook_dir / "in_save")
        code = (f"import sys; sys.path.insert(0, {str(hook_dir)!r}); import killhook; "
                "from irdiff.cli import main; sys.exit(main(sys.argv[1:]))")
        cmd = [sys.executable, "-c", code, *args]
    return subprocess.Popen(cmd, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT, cwd=REPO)


def _logged(run: Path) -> dict[int, float]:
    rows = {}
    path = run / "log.jsonl"
    if not path.is_file():
        return rows
    for line in path.read_text().splitlines():
        try:
            r = json.loads(line)
        except ValueError:
            continue  # a line being written
        if "loss" in r:
            rows[r["step"]] = r["loss"]
    return rows


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None


def _stamp(run: Path) -> tuple[int, int] | None:
    try:
        st = (run / "log.jsonl").stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns


def _check_latest(run: Path) -> tuple[int, str | None]:
    """The step `latest` names (0 if none yet) after checking that the checkpoint is complete and loads;
    the problem in one line otherwise."""
    try:
        ck = latest_checkpoint(run)
        if ck is None:
            return 0, None
        state = load_state(ck)
        for name in ("model", "ema", "optimizer"):
            load_tensors(ck / f"{name}.safetensors")
        if state["step"] != int(ck.name.split("_")[1]):
            return -1, f"{ck}: state.json says step {state['step']}"
        return state["step"], None
    except Exception as e:  # any failure to load is what this test is about
        return -1, f"{type(e).__name__}: {e}"


@pytest.mark.slow
def test_sigkill_at_random_moments_always_resumes_bit_exactly(tmp_path):
    data = shared_data("Set5")
    cfg = _config(tmp_path, data)
    hook_dir = tmp_path / "hook"
    hook_dir.mkdir()
    (hook_dir / "killhook.py").write_text(KILLHOOK)
    marker = hook_dir / "in_save"

    # the uninterrupted reference (no hook: the pauses change timing, never the numbers)
    t0 = time.time()
    ref = _launch(cfg, tmp_path / "ref", None, tmp_path / "ref.out")
    assert ref.wait(timeout=600) == 0, (tmp_path / "ref.out").read_text()
    ref_seconds = time.time() - t0

    rng = random.Random(16)
    run = tmp_path / "killed"
    kills, in_save, failures, phases, launches = 0, 0, [], {}, 0
    # step targets spread over the run, for the kills that wait for training progress
    targets = sorted(rng.randrange(1, STEPS) for _ in range(KILLS))
    latest = 0
    while kills < KILLS and launches < 4 * KILLS:
        mode = ("save", "step", "time")[kills % 3]
        out = tmp_path / f"launch{launches}.out"
        log_before = _stamp(run)
        child = _launch(cfg, run, hook_dir, out)
        launches += 1
        start = time.time()
        when = rng.uniform(0.3, ref_seconds / 2)
        aim = SAVE_PHASES[(kills // 3) % len(SAVE_PHASES)]
        deadline = start + max(120.0, 4 * ref_seconds)
        while child.poll() is None and time.time() < deadline:
            if mode == "save" and _read(marker) == aim:
                time.sleep(rng.uniform(0, 0.03))  # each phase pauses 40-80 ms in the hook
                break
            done = max(_logged(run), default=0)
            if mode == "step" and done > latest and done >= targets[kills]:
                time.sleep(rng.uniform(0, 0.3))
                break
            if mode == "time" and time.time() - start > when:
                break  # anywhere: start-up, resume, a step, a save
            if done >= STEPS - 2:
                break  # keep the run from finishing before all kills are spent
            time.sleep(0.005)
        if child.poll() is not None:  # finished (or failed) before the kill
            failures.append(f"launch {launches}: exit {child.returncode} before the kill: {out.read_text()[-300:]}")
            break
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        kills += 1
        if marker.exists():  # SIGKILL left the marker: the kill landed inside save_checkpoint
            in_save += 1
            where = marker.read_text() or "start"
            phases[where] = phases.get(where, 0) + 1
            marker.unlink()
        step, problem = _check_latest(run)
        if problem:
            failures.append(f"kill {kills} ({mode}): latest is not loadable: {problem}")
            break
        if step < latest:
            failures.append(f"kill {kills}: latest went back from step {latest} to {step}")
        prev_out = out.read_text()
        # a launch that got as far as touching the log has resumed: it must say from where
        if latest and _stamp(run) != log_before and f"(step {latest})" not in prev_out:
            failures.append(f"launch {launches}: did not resume from step {latest}: {prev_out[-300:]}")
        latest = step

    final = _launch(cfg, run, hook_dir, tmp_path / "final.out")
    if final.wait(timeout=600) != 0:
        failures.append(f"final run failed: {(tmp_path / 'final.out').read_text()[-500:]}")
    elif latest and f"(step {latest})" not in (tmp_path / "final.out").read_text():
        failures.append(f"final run did not resume from step {latest}")
    print(f"\nkill test: {kills} kills ({in_save} inside a checkpoint save: "
          f"{', '.join(f'{k} x{v}' for k, v in sorted(phases.items()))}), {launches + 1} launches, "
          f"{len(failures)} failures; reference run {ref_seconds:.0f} s")
    assert not failures, "\n".join(failures)
    assert kills >= 20 and in_save >= 5, (kills, in_save)

    a, b = _logged(tmp_path / "ref"), _logged(run)
    assert sorted(a) == sorted(b) == list(range(1, STEPS + 1))
    rows = (run / "log.jsonl").read_text().splitlines()
    assert len(rows) == STEPS, "redone steps must not be logged twice"
    assert all(a[s] == b[s] for s in a), [(s, a[s], b[s]) for s in a if a[s] != b[s]][:3]  # bit-exact
    wa = load_tensors(tmp_path / "ref" / "model.safetensors")
    wb = load_tensors(run / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    leftovers = [p.name for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]
    assert not leftovers, leftovers
