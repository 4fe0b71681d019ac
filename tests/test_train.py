import json

import pytest
import torch

from irdiff.checkpoint import latest_checkpoint, load_tensors
from irdiff.config import load_config
from irdiff.train import TrainingError, train

TINY_NETS = {
    "nafnet": {"name": "nafnet", "width": 8, "enc_blocks": [1, 1], "dec_blocks": [1, 1], "middle_blocks": 1},
    "unet": {"name": "unet", "base_channels": 8, "channel_mults": [1, 2], "num_res_blocks": 1, "attn_levels": [1],
             "norm_groups": 4, "head_channels": 8},
}
TINY_METHODS = {
    "regression": ({"name": "regression"}, "nafnet"),
    "sr3": ({"name": "sr3", "num_steps": 50}, "unet"),
    "cold": ({"name": "cold", "degradation": "interp", "num_steps": 5}, "unet"),
    "irsde": ({"name": "irsde", "num_steps": 20}, "unet"),
    "rddm": ({"name": "rddm", "num_steps": 50}, "unet"),
}


def tiny_config(folder, method="regression", steps=6, **train):
    m, net = TINY_METHODS[method]
    data = {
        "name": f"tiny-{method}",
        "seed": 3,
        "method": dict(m),
        "net": dict(TINY_NETS[net]),
        "data": {
            "train": {"name": "synthetic", "gt_dir": str(folder), "patch_size": 16,
                      "degradation": {"name": "awgn", "sigma": 25}},
            "val": {"name": "synthetic", "gt_dir": str(folder), "patch_size": 16, "max_images": 2,
                    "degradation": {"name": "awgn", "sigma": 25}},
        },
        "train": {"steps": steps, "batch_size": 4, "lr": 1e-3, "log_every": 1, "ckpt_every": 3,
                  "ema_decay": 0.9, "keep_ckpts": 5, **train},
        "sample": {"steps": 2, "val_max_images": 2},
    }
    return load_config(base=data)


def losses(run_dir):
    rows = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


@pytest.mark.parametrize("method", list(TINY_METHODS))
def test_resume_reproduces_uninterrupted_run(tmp_path, image_folder, method):
    full = tiny_config(image_folder, method, steps=6)
    train(full, tmp_path / "a", progress=False)

    first = tiny_config(image_folder, method, steps=3)
    train(first, tmp_path / "b", progress=False)
    train(full, tmp_path / "b", progress=False)  # resumes from step 3

    la, lb = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert sorted(la) == list(range(1, 7)) and sorted(lb) == list(range(1, 7))
    assert all(la[s] == lb[s] for s in la), (la, lb)  # bit-exact on the CPU
    ea = load_tensors(latest_checkpoint(tmp_path / "a") / "ema.safetensors")
    eb = load_tensors(latest_checkpoint(tmp_path / "b") / "ema.safetensors")
    assert all(torch.equal(ea[k], eb[k]) for k in ea)


def test_same_seed_same_run_different_seed_differs(tmp_path, image_folder):
    cfg = tiny_config(image_folder, steps=3)
    train(cfg, tmp_path / "a", progress=False)
    train(cfg, tmp_path / "b", progress=False)
    assert losses(tmp_path / "a") == losses(tmp_path / "b")
    other = load_config(base={**_as_dict(cfg), "seed": 4})
    train(other, tmp_path / "c", progress=False)
    assert losses(tmp_path / "a") != losses(tmp_path / "c")


def _as_dict(cfg):
    from irdiff.config import to_dict

    return to_dict(cfg)


def test_run_outputs(tmp_path, image_folder):
    summary = train(tiny_config(image_folder, steps=3), tmp_path / "r", progress=False)
    run = tmp_path / "r"
    assert (run / "config.yaml").is_file() and (run / "model.safetensors").is_file()
    meta = json.loads((run / "model.json").read_text())
    assert meta["step"] == 3 and meta["config"]["method"]["name"] == "regression"
    assert {"val/psnr", "val/ssim", "val/psnr_in"} <= set(summary["metrics"])
    assert list((run / "val").glob("step_*/*.png"))
    assert list((run / "tb").glob("events.*"))


def test_resume_refuses_a_different_config(tmp_path, image_folder):
    train(tiny_config(image_folder, steps=3), tmp_path / "r", progress=False)
    with pytest.raises(ValueError, match="train.lr"):
        train(tiny_config(image_folder, steps=6, lr=5e-4), tmp_path / "r", progress=False)


def test_nan_guard_stops_after_max_bad_steps(tmp_path, image_folder, monkeypatch):
    from irdiff.methods.regression import Regression

    calls = []

    def nan_loss(self, net, batch, generator=None, t=None, noise=None):
        calls.append(1)
        return net(batch["lq"], None).flatten(1).mean(1) * float("nan")

    monkeypatch.setattr(Regression, "loss", nan_loss)
    with pytest.raises(TrainingError, match="non-finite"):
        train(tiny_config(image_folder, steps=50, max_bad_steps=4), tmp_path / "r", progress=False)
    assert len(calls) == 4


def test_init_from_copies_a_trained_model_and_refuses_another_shape(tmp_path):
    """train.init_from starts a run from another run's exported weights (a schedule in chunks)."""
    import irdiff
    from irdiff.config import ConfigError, load_config
    from irdiff.train import train as run_training

    base = {"name": "a", "seed": 0, "net": {"name": "nafnet", "width": 8, "enc_blocks": [1], "middle_blocks": 1,
                                           "dec_blocks": [1]},
            "data": {"train": {"name": "deadleaves", "num_images": 4, "image_size": 32, "patch_size": 16,
                               "degradation": {"name": "awgn", "sigma": 25}}},
            "train": {"steps": 2, "batch_size": 2, "ckpt_every": 2}}
    run_training(load_config(base=base), tmp_path / "first", progress=False)
    first = irdiff.load(tmp_path / "first").net.state_dict()
    second = {**base, "seed": 5, "train": {**base["train"], "steps": 0 + 1, "lr": 1e-12,
                                            "init_from": str(tmp_path / "first")}}
    run_training(load_config(base=second), tmp_path / "second", progress=False)
    got = irdiff.load(tmp_path / "second").net.state_dict()
    # one step at lr 1e-12 and EMA from the copied weights: equal to the first run's export up to ~1e-9
    assert all(torch.allclose(got[k], first[k], atol=1e-6) for k in first)
    wider = {**second, "net": {**base["net"], "width": 16}}
    with pytest.raises(ConfigError, match="init_from"):
        run_training(load_config(base=wider), tmp_path / "third", progress=False)


def test_a_run_saved_with_older_key_spellings_resumes_under_the_new_ones(tmp_path, image_folder):
    """loss_type 1 (older SR3 configs) and "l1" are the same setting: resuming is allowed, refusing other changes."""
    from irdiff.config import to_dict

    old = to_dict(tiny_config(image_folder, "sr3", steps=2))
    old["method"]["loss_type"] = 1
    train(load_config(base=old), tmp_path / "r", progress=False)
    new = {**old, "method": {**old["method"], "loss_type": "l1"}, "train": {**old["train"], "steps": 3}}
    assert train(load_config(base=new), tmp_path / "r", progress=False)["step"] == 3
    other = {**new, "method": {**new["method"], "loss_type": "l2"}, "train": {**new["train"], "steps": 4}}
    with pytest.raises(ValueError, match="method.loss_type"):
        train(load_config(base=other), tmp_path / "r", progress=False)
