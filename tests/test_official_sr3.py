"""--format sr3: our SR3 U-Net and sampler against outputs of the official code (fixture written by
scripts/official_parity_sr3.py from Janspiry/Image-Super-Resolution-via-Iterative-Refinement; see meta.json)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import irdiff
from irdiff.config import Config, from_dict, validate
from irdiff.official import OfficialCheckpointError, convert
from irdiff.official import sr3 as sr3_format

FIX = Path(__file__).parent / "fixtures" / "official" / "sr3"
PALETTE_FIX = Path(__file__).parent / "fixtures" / "official" / "palette"
TOL = 1e-5


def fixture(root: Path = FIX) -> tuple[dict, dict[str, torch.Tensor]]:
    return json.loads((root / "meta.json").read_text()), load_file(str(root / "parity.safetensors"))


def export_model(net: torch.nn.Module, settings: dict, out: Path) -> Path:
    """What ``irdiff import`` writes: model.safetensors + model.json {"config": the Config keys of
    model_json's settings (validated), "official": the other keys (notes)}."""
    fields = {f.name for f in dataclasses.fields(Config)}
    config = {k: v for k, v in settings.items() if k in fields}
    validate(from_dict(Config, config))
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(out / "model.safetensors"))
    notes = {k: v for k, v in settings.items() if k not in fields}
    (out / "model.json").write_text(json.dumps({"config": config, "official": notes}))
    return out


def fixture_schedule(meta: dict) -> dict:
    s = meta["schedule"]
    assert s["schedule"] == "linear"
    return {"num_steps": s["n_timestep"], "beta_start": s["linear_start"], "beta_end": s["linear_end"]}


def test_fixture_is_small():
    for root in (FIX, PALETTE_FIX):
        assert sum(f.stat().st_size for f in root.iterdir()) < 2e6


def test_forward_matches_official():
    meta, t = fixture()
    net = convert("sr3", FIX / "gen.pth", **meta["arch"])
    with torch.no_grad():
        out = net(t["x"], t["level"], t["cond"])
    assert (out - t["out"]).abs().max() <= TOL
    assert t["out"].abs().max() > 0.1  # not a trivial output


def test_restore_reproduces_the_official_sampler(tmp_path):
    """irdiff.load(dir).restore(image) = the official p_sample_loop (same noise stream), end to end."""
    meta, t = fixture()
    net = convert("sr3", FIX / "gen.pth", **meta["arch"])
    cfg = sr3_format.model_json(sr3_format.arch_for("sr_16_128", **meta["arch"]), "sr_16_128")
    cfg["method"].update(fixture_schedule(meta))  # the fixture's short schedule instead of T = 2000
    cfg["data"]["train"]["scale"] = 1  # feed the condition itself (the official sample's input)
    restorer = irdiff.load(export_model(net, cfg, tmp_path / "m"))
    cond = (t["cond"][0] + 1) / 2
    out = restorer.restore(cond, steps=meta["schedule"]["n_timestep"], progress=False,
                           generator=torch.Generator().manual_seed(meta["sample_seed"]))
    assert (out * 2 - 1 - t["sample"][0]).abs().max() <= TOL


def test_module_prefix_and_bare_unet_give_the_same_net(tmp_path):
    meta, t = fixture()
    sd = torch.load(FIX / "gen.pth", weights_only=True)
    assert any(k == "betas" for k in sd)  # the official file holds GaussianDiffusion's buffers too
    variants = {"module.pth": {f"module.{k}": v for k, v in sd.items()},
                "unet.pth": {k[len("denoise_fn."):]: v for k, v in sd.items() if k.startswith("denoise_fn.")}}
    ref = convert("sr3", FIX / "gen.pth", **meta["arch"])(t["x"], t["level"], t["cond"])
    for name, d in variants.items():
        torch.save(d, tmp_path / name)
        out = convert("sr3", tmp_path / name, **meta["arch"])(t["x"], t["level"], t["cond"])
        assert torch.equal(out, ref), name


def _error(fmt: str, path: Path, **arch) -> str:
    with pytest.raises(OfficialCheckpointError) as e:
        convert(fmt, path, **arch)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_wrong_files_are_refused_in_one_line(tmp_path):
    meta, _ = fixture()
    assert "--format palette" in _error("sr3", PALETTE_FIX / "Network.pth")
    torch.save({"epoch": 3, "iter": 10, "scheduler": None, "optimizer": {"state": {}, "param_groups": []}},
               tmp_path / "I10_E3_opt.pth")
    assert "optimizer" in _error("sr3", tmp_path / "I10_E3_opt.pth")
    torch.save({"conv.weight": torch.zeros(2, 2)}, tmp_path / "other.pth")
    assert "not an SR3 U-Net" in _error("sr3", tmp_path / "other.pth")
    # the right file with the wrong architecture (the default 16->128 widths): names keys / layers
    msg = _error("sr3", FIX / "gen.pth")
    assert "gen.pth" in msg and ("keys" in msg or "layer" in msg)


def test_sqrt_gamma_method_feeds_sqrt_alpha_bar():
    """noise_level_input sqrt_gamma: at step t the net sees √ᾱ_t of the official linear schedule."""
    from irdiff.methods.sr3 import SR3

    m = SR3(num_steps=2000, noise_level_input="sqrt_gamma")
    seen = []

    def net(x, level, cond):
        seen.append(float(level[0]))
        return torch.zeros_like(x)

    m.sample(net, torch.zeros(1, 3, 4, 4), steps=4, sampler="ddpm", generator=torch.Generator().manual_seed(0))
    alpha_bar = np.cumprod(1 - np.linspace(1e-6, 1e-2, 2000))  # the official make_beta_schedule('linear')
    assert np.allclose(seen, np.sqrt(alpha_bar[[1999, 1499, 999, 499]]), rtol=1e-6)


def test_defaults_and_tasks_match_the_official_configs():
    """The released configs' full-size U-Nets (key -> shape recorded from the official code) fit ours."""
    shapes = json.loads((FIX / "shapes.json").read_text())
    for task, rec in shapes.items():
        arch = sr3_format.arch_for(task)
        assert arch == rec["unet"], task
        with torch.device("meta"):
            net = sr3_format.build(**arch)
        ours = {k: list(v.shape) for k, v in net.state_dict().items()}
        official = {k: rec["keys"][o] for o, k in zip(rec["keys"], sr3_format.rename_official(rec["keys"]))}
        assert ours == official, task
        val = rec["beta_schedule"]["val"]
        cfg = sr3_format.model_json(arch, task)
        assert (cfg["method"]["num_steps"], cfg["method"]["beta_start"], cfg["method"]["beta_end"]) == \
            (val["n_timestep"], val["linear_start"], val["linear_end"])
        assert cfg["sample"] == {"sampler": "ddpm", "steps": val["n_timestep"]}
        assert cfg["method"]["noise_level_input"] == "sqrt_gamma"


def test_sr_model_upsamples_by_8_and_pads_any_size(tmp_path):
    meta, t = fixture()
    net = convert("sr3", FIX / "gen.pth", **meta["arch"])
    cfg = sr3_format.model_json(sr3_format.arch_for(None, **meta["arch"]), None)
    restorer = irdiff.load(export_model(net, cfg, tmp_path / "m"))
    assert restorer.scale == 8
    lr = np.random.default_rng(0).integers(0, 256, (3, 5, 3), dtype=np.uint8)
    out = restorer.restore(lr, steps=2, progress=False, generator=torch.Generator().manual_seed(0))
    assert out.shape == (24, 40, 3) and out.dtype == np.uint8
    # sizes the official net rejects (not multiples of 2**(levels-1) = 4) are padded and cropped back
    with torch.no_grad():
        odd = net(t["x"][:, :, :15, :13], t["level"], t["cond"][:, :, :15, :13])
    assert odd.shape == (2, 3, 15, 13) and torch.isfinite(odd).all()
