import json

import pytest
import torch

from irdiff.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    load_state,
    load_tensors,
    optimizer_from_flat,
    optimizer_to_flat,
    save_checkpoint,
)


def test_save_load_roundtrip_and_latest(tmp_path):
    sd = {"w": torch.randn(3, 4), "b": torch.arange(5)}
    for step in (10, 20, 30):
        save_checkpoint(tmp_path, step, {"model": sd}, {"step": step}, keep=2)
    ck = latest_checkpoint(tmp_path)
    assert ck.name == "step_00000030"
    assert load_state(ck)["step"] == 30
    back = load_tensors(ck / "model.safetensors")
    assert all(torch.equal(back[k], sd[k]) for k in sd)
    kept = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert kept == ["latest", "step_00000020", "step_00000030"]  # pruned, no temp dirs left


def test_failed_save_leaves_previous_state(tmp_path):
    save_checkpoint(tmp_path, 1, {"model": {"w": torch.ones(2)}}, {"step": 1})

    class Boom:
        def __iter__(self):
            raise RuntimeError("disk full")

    with pytest.raises(TypeError):
        save_checkpoint(tmp_path, 2, {"model": {"w": torch.ones(2)}}, {"step": 2, "bad": Boom()})
    assert latest_checkpoint(tmp_path).name == "step_00000001"
    assert [p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".")] == []


def test_optimizer_state_roundtrip():
    p = torch.nn.Parameter(torch.randn(4))
    opt = torch.optim.AdamW([p], lr=0.1)
    p.grad = torch.randn(4)
    opt.step()
    tensors, meta = optimizer_to_flat(opt.state_dict())
    json.dumps(meta)  # JSON-able
    opt2 = torch.optim.AdamW([torch.nn.Parameter(p.detach().clone())], lr=0.1)
    opt2.load_state_dict(optimizer_from_flat(tensors, json.loads(json.dumps(meta))))
    a, b = opt.state_dict()["state"][0], opt2.state_dict()["state"][0]
    assert all(torch.equal(a[k], b[k]) for k in ("exp_avg", "exp_avg_sq", "step"))


def test_corrupt_files_give_clear_errors(tmp_path):
    ck = save_checkpoint(tmp_path, 5, {"model": {"w": torch.ones(2)}}, {"step": 5})
    (ck / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_tensors(ck / "model.safetensors")
    (ck / "state.json").write_text("{oops")
    with pytest.raises(CheckpointError, match="state.json"):
        load_state(ck)
