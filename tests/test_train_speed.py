"""The trainer's speed choices: mixed_precision auto / bf16 detection, the one-pass gradient guard + clip,
fused AdamW (issue 13, item 3; benchmarks/train_throughput)."""

import pytest
import torch

from irdiff import sysinfo
from irdiff.train import _grad_norm, resolve_mixed_precision


@pytest.mark.parametrize("native, want", [(True, "bf16"), (False, "no")])
def test_auto_picks_bf16_only_where_the_cpu_has_it(monkeypatch, native, want):
    monkeypatch.setattr(sysinfo, "native_bf16", lambda: native)
    assert resolve_mixed_precision("auto", cuda=False) == want
    assert resolve_mixed_precision("no", cuda=False) == "no"


def test_explicit_bf16_on_a_cpu_without_it_is_kept_with_a_warning(monkeypatch, capsys):
    monkeypatch.setattr(sysinfo, "native_bf16", lambda: False)
    assert resolve_mixed_precision("bf16", cuda=False) == "bf16"
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.startswith("warning: train.mixed_precision is bf16") and "auto" in out
    monkeypatch.setattr(sysinfo, "native_bf16", lambda: True)
    assert resolve_mixed_precision("bf16", cuda=False) == "bf16"
    assert capsys.readouterr().out == ""


def test_native_bf16_agrees_with_the_cpu_flags():
    from pathlib import Path

    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        pytest.skip("no /proc/cpuinfo")
    flags = next((set(line.split(":", 1)[1].split()) for line in text.splitlines()
                  if line.startswith(("flags", "Features"))), None)
    if flags is None:
        pytest.skip("no CPU flags line")
    assert sysinfo.native_bf16() == bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def _net_with_grads(seed=0):
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 3, 1))
    (net(torch.randn(2, 3, 9, 9)) ** 2).sum().mul(100).backward()
    return net


def test_guard_norm_and_clip_equal_torchs_clip_grad_norm():
    a = _net_with_grads()
    b = _net_with_grads()  # the same net and gradients
    params = list(a.parameters())
    norm = _grad_norm(params)
    torch.nn.utils.clip_grads_with_norm_(params, 1.0, norm)
    want = torch.nn.utils.clip_grad_norm_(b.parameters(), 1.0)
    assert torch.equal(norm, want) and float(norm) > 1.0  # clipping did something
    assert all(torch.equal(p.grad, q.grad) for p, q in zip(a.parameters(), b.parameters()))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_guard_norm_is_not_finite_when_one_gradient_is_not(bad):
    net = _net_with_grads()
    next(iter(net.parameters())).grad[0, 0, 0, 0] = bad
    assert not torch.isfinite(_grad_norm(list(net.parameters())))
    assert float(_grad_norm([torch.nn.Parameter(torch.ones(2))])) == 0.0  # no gradient at all: nothing to guard


def test_trainer_uses_fused_adamw_and_resolves_auto(tmp_path, image_folder, monkeypatch):
    from test_train import tiny_config

    from irdiff.config import load_config, to_dict
    from irdiff.train import Trainer

    # accelerate fixes the precision once per process (the other tests train in float32): auto -> no here
    monkeypatch.setattr(sysinfo, "native_bf16", lambda: False)
    data = to_dict(tiny_config(image_folder, steps=2))
    data["train"]["mixed_precision"] = "auto"
    trainer = Trainer(load_config(base=data), tmp_path / "run", progress=False)
    assert trainer.mixed_precision == "no"
    assert trainer.opt.param_groups[0]["fused"] is True


def test_channels_last_run_with_fused_adamw_resumes_bit_exactly(tmp_path, image_folder):
    """channels_last + fused AdamW: the optimizer state read back from a checkpoint is contiguous, the
    parameters are not; unless the trainer gives the state the parameters' strides, fused AdamW pairs the
    wrong elements and the resumed run departs from the uninterrupted one."""
    from test_train import losses, tiny_config

    from irdiff.checkpoint import latest_checkpoint, load_tensors
    from irdiff.config import load_config, to_dict
    from irdiff.train import train

    def cfg(steps):
        data = to_dict(tiny_config(image_folder, steps=steps))
        data["train"].update(channels_last=True)
        return load_config(base=data)

    train(cfg(4), tmp_path / "a", progress=False)
    train(cfg(2), tmp_path / "b", progress=False)
    train(cfg(4), tmp_path / "b", progress=False)  # resumes from step 2
    la, lb = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert sorted(la) == [1, 2, 3, 4] and la == lb
    ea = load_tensors(latest_checkpoint(tmp_path / "a") / "ema.safetensors")
    eb = load_tensors(latest_checkpoint(tmp_path / "b") / "ema.safetensors")
    assert all(torch.equal(ea[k], eb[k]) for k in ea)


def test_batches_made_on_a_background_thread_give_the_same_run(tmp_path, image_folder, monkeypatch):
    import threading

    from test_train import losses, tiny_config

    import irdiff.train as train_module
    from irdiff.checkpoint import latest_checkpoint, load_tensors
    from irdiff.config import load_config, to_dict

    data = to_dict(tiny_config(image_folder, steps=5))
    data["data"]["train"]["grey_fraction"] = 0.5  # more of the item's random draws
    cfg = load_config(base=data)
    made_on = []
    cpu_batch = train_module.Trainer._cpu_batch

    def spy(self, step):
        made_on.append((step, threading.current_thread().name.startswith("irdiff-batches")))
        return cpu_batch(self, step)

    monkeypatch.setattr(train_module.Trainer, "_cpu_batch", spy)
    for name, cores in (("background", 64), ("inline", 1)):
        monkeypatch.setattr(train_module, "_usable_cores", lambda cores=cores: cores)
        made_on.clear()
        train_module.train(cfg, tmp_path / name, progress=False)
        assert [s for s, _ in made_on] == list(range(5))  # each batch made once, in order
        assert [bg for _, bg in made_on] == ([False] + [True] * 4 if name == "background" else [False] * 5)
    assert losses(tmp_path / "background") == losses(tmp_path / "inline")
    ea = load_tensors(latest_checkpoint(tmp_path / "background") / "ema.safetensors")
    eb = load_tensors(latest_checkpoint(tmp_path / "inline") / "ema.safetensors")
    assert all(torch.equal(ea[k], eb[k]) for k in ea)
