"""The trainer's numerical guard: a step whose loss or gradients are not finite is skipped (no optimiser or
EMA update), counted and logged; train.max_bad_steps such steps in a row stop the run with a one-line error
and a usable last checkpoint; in a 2-process run both processes skip the same step."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from irdiff.checkpoint import latest_checkpoint, load_state, load_tensors
from irdiff.config import load_config
from irdiff.methods.regression import Regression
from irdiff.train import TrainingError, train

NET = {"name": "nafnet", "width": 8, "enc_blocks": [1], "dec_blocks": [1], "middle_blocks": 1}


def config(folder, steps=5, **train_kw):
    return load_config(base={
        "name": "guard", "seed": 1, "net": dict(NET),
        "data": {"train": {"name": "synthetic", "gt_dir": str(folder), "patch_size": 16,
                           "degradation": {"name": "awgn", "sigma": 25}}},
        "train": {"steps": steps, "batch_size": 2, "lr": 1e-3, "log_every": 1, "ckpt_every": 1, "keep_ckpts": 0,
                  "ema_decay": 0.5, **train_kw}})


def step_of(batch) -> int:
    """The trainer's step, from the progress entries it adds to every batch."""
    return round(float(batch["progress"][0]) * float(batch["total_steps"][0]))


class _NaNGrad(torch.autograd.Function):
    """Identity forward, NaN backward: a finite loss whose gradients are not."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g * float("nan")


def inject(monkeypatch, bad_steps: set[int], where: str) -> None:
    """Regression's loss turns NaN (``where="loss"``) or gets NaN gradients (``"grad"``) at ``bad_steps``."""
    original = Regression.loss

    def loss(self, net, batch, generator=None, t=None, noise=None):
        value = original(self, net, batch, generator, t, noise)
        if step_of(batch) in bad_steps:
            return value * float("nan") if where == "loss" else _NaNGrad.apply(value)
        return value

    monkeypatch.setattr(Regression, "loss", loss)


def tensors_at(run, step, name):
    return load_tensors(run / "checkpoints" / f"step_{step:08d}" / f"{name}.safetensors")


def same(a, b):
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("where", ["loss", "grad"])
def test_a_non_finite_step_is_skipped_counted_and_logged(tmp_path, image_folder, monkeypatch, where):
    inject(monkeypatch, {2}, where)  # the third step (0-based 2) goes bad
    summary = train(config(image_folder), tmp_path / "r", progress=False)
    run = tmp_path / "r"
    assert summary["step"] == 5 and summary["bad_steps"] == 1
    # step index 2 ends at checkpoint 3: model, EMA and optimiser state are those of checkpoint 2
    for name in ("model", "ema", "optimizer"):
        assert same(tensors_at(run, 2, name), tensors_at(run, 3, name)), name
        assert not same(tensors_at(run, 3, name), tensors_at(run, 4, name)), name  # training goes on
    assert load_state(run / "checkpoints" / "step_00000005")["bad_steps"] == 1
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    by_step = {r["step"]: r for r in rows}
    assert "loss" not in by_step[3] and by_step[3]["bad_steps"] == 1
    assert all("loss" in by_step[s] for s in (1, 2, 4, 5))
    assert all(torch.isfinite(v).all() for v in load_tensors(run / "model.safetensors").values())


def test_max_bad_steps_in_a_row_stop_with_a_usable_checkpoint(tmp_path, image_folder, monkeypatch):
    inject(monkeypatch, set(range(2, 50)), "loss")  # good steps 0 and 1, then only bad ones
    run = tmp_path / "r"
    with pytest.raises(TrainingError) as info:
        train(config(image_folder, steps=50, max_bad_steps=4, ckpt_every=100), run, progress=False)
    msg = str(info.value)
    assert "\n" not in msg and "4 steps in a row" in msg and "steps 3..6" in msg and "max_bad_steps" in msg
    ckpt = latest_checkpoint(run)
    assert ckpt.name == "step_00000006" and str(ckpt) in msg
    assert load_state(ckpt)["bad_steps"] == 4
    weights = load_tensors(ckpt / "model.safetensors")
    assert all(torch.isfinite(v).all() for v in weights.values())
    # the weights are the last good update's: a run stopped after step 2 has the same
    train(config(image_folder, steps=2, max_bad_steps=4, ckpt_every=100), tmp_path / "two", progress=False)
    assert same(weights, load_tensors(latest_checkpoint(tmp_path / "two") / "model.safetensors"))
    import irdiff

    restorer = irdiff.load(run)  # usable for inference straight from the checkpoint
    out = restorer.restore(torch.rand(3, 16, 16), progress=False)
    assert torch.isfinite(out).all()


def test_a_bad_run_from_the_command_line_is_one_line_and_exit_2(tmp_path, image_folder, monkeypatch, capsys):
    import yaml

    from irdiff.cli import main
    from irdiff.config import to_dict

    inject(monkeypatch, set(range(100)), "loss")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(to_dict(config(image_folder, steps=10, max_bad_steps=3))))
    assert main(["train", "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "r"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "non-finite loss or gradient" in err[0]


HOOK = textwrap.dedent('''
    """Runs `irdiff train` with a NaN loss on process 1 only at step 2, and records each process's skips."""
    import json, os, sys
    from irdiff.methods.regression import Regression
    from irdiff.train import Trainer
    rank = int(os.environ.get("RANK", "0"))
    original, original_step = Regression.loss, Trainer.step
    def loss(self, net, batch, generator=None, t=None, noise=None):
        value = original(self, net, batch, generator, t, noise)
        step = round(float(batch["progress"][0]) * float(batch["total_steps"][0]))
        return value * float("nan") if (rank == 1 and step == 2) else value
    def step(self, k):
        res = original_step(self, k)
        with open(os.path.join(sys.argv[-1], f"steps_rank{rank}.jsonl"), "a") as f:
            f.write(json.dumps({"step": k, "skipped": res.skipped}) + "\\n")
        return res
    Regression.loss, Trainer.step = loss, step
    from irdiff.cli import main
    sys.exit(main(sys.argv[1:-1]))
''')


@pytest.mark.slow
def test_two_processes_skip_the_same_step(tmp_path, image_folder):
    """Process 1 alone sees a NaN at step 2; both processes skip it (else DDP would hang or diverge)."""
    import yaml

    from irdiff.config import to_dict

    cfg = to_dict(config(image_folder, steps=4, batch_size=4, device="cpu"))
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    (tmp_path / "hook.py").write_text(HOOK)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(tmp_path / "hook.py"),
           "train", "--config", str(tmp_path / "cfg.yaml"), "--out", str(tmp_path / "run"), "--no-progress",
           str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "distributed: 2 processes" in res.stdout
    skips = {}
    for rank in (0, 1):
        rows = [json.loads(line) for line in (tmp_path / f"steps_rank{rank}.jsonl").read_text().splitlines()]
        skips[rank] = [r["step"] for r in rows if r["skipped"]]
        assert [r["step"] for r in rows] == [0, 1, 2, 3]
    assert skips == {0: [2], 1: [2]}
    state = json.loads((tmp_path / "run" / "checkpoints" / "step_00000004" / "state.json").read_text())
    assert state["bad_steps"] == 1 and state["world_size"] == 2


FP16 = textwrap.dedent('''
    import json, sys
    from pathlib import Path
    import torch
    from irdiff.checkpoint import load_tensors
    from irdiff.config import load_config
    from irdiff.methods.regression import Regression
    from irdiff.train import train
    original = Regression.loss
    def loss(self, net, batch, generator=None, t=None, noise=None):
        value = original(self, net, batch, generator, t, noise)
        step = round(float(batch["progress"][0]) * float(batch["total_steps"][0]))
        return value * float("nan") if step == 2 else value
    Regression.loss = loss
    cfg, run = json.loads(sys.argv[1]), Path(sys.argv[2])
    summary = train(load_config(base=cfg), run, progress=False)
    a, b = (load_tensors(run / "checkpoints" / f"step_{k:08d}" / "model.safetensors") for k in (2, 3))
    print(json.dumps({"bad_steps": summary["bad_steps"], "step": summary["step"],
                      "unchanged": all(torch.equal(a[k], b[k]) for k in a)}))
''')


@pytest.mark.slow
def test_fp16_loss_scaling_skips_the_bad_step_too(tmp_path, image_folder):
    """With fp16 the loss scaler unscales the gradients first and must be stepped (it skips the update
    itself and lowers its scale); a separate process because accelerate fixes the precision per process."""
    from irdiff.config import to_dict

    cfg = to_dict(config(image_folder, steps=4, mixed_precision="fp16", device="cpu"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    res = subprocess.run([sys.executable, "-c", FP16, json.dumps(cfg), str(tmp_path / "run")], capture_output=True,
                         text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads(res.stdout.strip().splitlines()[-1]) == {"bad_steps": 1, "step": 4, "unchanged": True}
