"""Two CPU processes (gloo) through accelerate: the README's distributed command, end to end."""

import json
import os
import subprocess
import sys

import pytest
import yaml


@pytest.mark.slow
def test_two_process_training_on_cpu(tmp_path, image_folder):
    cfg = {
        "name": "ddp",
        "net": {"name": "nafnet", "width": 8, "enc_blocks": [1], "dec_blocks": [1], "middle_blocks": 1},
        "data": {"train": {"name": "synthetic", "gt_dir": str(image_folder), "patch_size": 16,
                           "degradation": {"name": "awgn", "sigma": 25}}},
        "train": {"steps": 4, "batch_size": 4, "log_every": 1, "ckpt_every": 2, "device": "cpu"},
    }
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "-m", "irdiff.cli", "train", "--config", str(tmp_path / "cfg.yaml"), "--out", str(tmp_path / "run"),
           "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "distributed: 2 processes" in res.stdout
    state = json.loads((tmp_path / "run" / "checkpoints" / "step_00000004" / "state.json").read_text())
    assert state["world_size"] == 2 and state["step"] == 4
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert len(losses) == 4 and all(v == v for v in losses)
