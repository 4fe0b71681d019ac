"""--format palette: our guided-diffusion U-Net and inpainting sampler against outputs of the official code
(fixture written by scripts/official_parity_palette.py from Janspiry/Palette-Image-to-Image-Diffusion-Models)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_official_sr3 import FIX as SR3_FIX
from test_official_sr3 import TOL, _error, export_model, fixture, fixture_schedule

import irdiff
from irdiff.methods.sr3 import SR3
from irdiff.official import convert
from irdiff.official import palette as palette_format

FIX = Path(__file__).parent / "fixtures" / "official" / "palette"


def test_forward_matches_official():
    meta, t = fixture(FIX)
    assert meta["arch"]["num_head_channels"] * 2 == meta["arch"]["inner_channel"]  # two heads: the qkv order matters
    net = convert("palette", FIX / "Network.pth", **meta["arch"])
    with torch.no_grad():
        out = net(t["x"], t["level"], t["cond"])
    assert (out - t["out"]).abs().max() <= TOL
    assert t["out"].abs().max() > 0.1


def test_inpainting_restore_reproduces_the_official_test_sampler(tmp_path):
    """irdiff.load(dir).restore(image, mask=) = the official restoration(cond, y_t=cond, y_0=gt, mask=):
    condition without mask channel, γ fed, start from the condition, known pixels pasted after every step."""
    meta, t = fixture(FIX)
    net = convert("palette", FIX / "Network.pth", **meta["arch"])
    cfg = palette_format.model_json({**palette_format.DEFAULTS, **meta["arch"]}, "inpainting_celebahq")
    cfg["method"].update(fixture_schedule(meta))  # the fixture's short schedule instead of T = 1000
    restorer = irdiff.load(export_model(net, cfg, tmp_path / "m"))
    out = restorer.restore((t["gt"][0] + 1) / 2, mask=t["mask"][0, 0] > 0.5, steps=meta["schedule"]["n_timestep"],
                           progress=False, generator=torch.Generator().manual_seed(meta["sample_seed"]))
    assert (out * 2 - 1 - t["sample"][0]).abs().max() <= TOL
    known = t["mask"][0].expand(3, -1, -1) < 0.5
    assert torch.allclose(out[known], ((t["gt"][0] + 1) / 2)[known], atol=1e-6)


def test_ema_file_module_prefix_and_bare_unet(tmp_path):
    """{epoch}_Network_ema.pth has the Network's layout; DataParallel prefixes and bare U-Nets load alike."""
    meta, t = fixture(FIX)
    sd = torch.load(FIX / "Network.pth", weights_only=True)
    assert "gammas" in sd
    ref = convert("palette", FIX / "Network.pth", **meta["arch"])(t["x"], t["level"], t["cond"])
    variants = {"5_Network_ema.pth": dict(sd), "module.pth": {f"module.{k}": v for k, v in sd.items()},
                "unet.pth": {k[len("denoise_fn."):]: v for k, v in sd.items() if k.startswith("denoise_fn.")}}
    for name, d in variants.items():
        torch.save(d, tmp_path / name)
        out = convert("palette", tmp_path / name, **meta["arch"])(t["x"], t["level"], t["cond"])
        assert torch.equal(out, ref), name


def test_wrong_files_are_refused_in_one_line(tmp_path):
    assert "--format sr3" in _error("palette", SR3_FIX / "gen.pth")
    torch.save({"epoch": 5, "iter": 9, "schedulers": [], "optimizers": []}, tmp_path / "5.state")
    assert "training state" in _error("palette", tmp_path / "5.state")
    torch.save({"conv.weight": torch.zeros(2, 2)}, tmp_path / "other.pth")
    assert "not a Palette" in _error("palette", tmp_path / "other.pth")
    msg = _error("palette", FIX / "Network.pth")  # the default full-size widths: keys / shapes named
    assert "Network.pth" in msg and ("keys" in msg or "layer" in msg)


def test_defaults_match_the_released_configs():
    """The released configs' full-size U-Nets (key -> shape recorded from the official code) fit ours; the
    configs' attn_res [16] is a downsampling rate the 4-level net never reaches: attention in the middle only."""
    shapes = json.loads((FIX / "shapes.json").read_text())
    for task, rec in shapes.items():
        assert task in palette_format.TASKS and rec["module_name"] == "guided_diffusion"
        arch = {**palette_format.DEFAULTS}
        assert {k: arch[k] for k in rec["unet"]} == rec["unet"], task
        with torch.device("meta"):
            net = palette_format.build(**arch)
        ours = {k: list(v.shape) for k, v in net.state_dict().items()}
        renamed = palette_format.rename_official({k: torch.empty(v, device="meta") for k, v in rec["keys"].items()})
        assert ours == {k: list(v.shape) for k, v in renamed.items()}, task
        assert not any("qkv" in k for k in rec["keys"] if not k.startswith("middle_block."))
        test = rec["beta_schedule"]["test"]
        cfg = palette_format.model_json(arch, task)
        assert (cfg["method"]["num_steps"], cfg["method"]["beta_start"], cfg["method"]["beta_end"]) == \
            (test["n_timestep"], test["linear_start"], test["linear_end"])
        assert cfg["sample"] == {"sampler": "ddpm", "steps": test["n_timestep"]}


def test_method_options_for_palette_nets():
    m = SR3(inpainting=True, mask_channel=False)
    assert m.net_in_channels(3) == 6 and SR3(inpainting=True).net_in_channels(3) == 7
    with pytest.raises(ValueError, match="init_from_cond needs inpainting"):
        SR3(init_from_cond=True)
    seen = []

    def net(x, level, cond):
        seen.append((x.clone(), cond.clone()))
        return torch.zeros_like(x)

    lq, mask = torch.rand(1, 3, 8, 8) * 2 - 1, torch.zeros(1, 1, 8, 8)
    mask[..., 2:5, 3:6] = 1
    SR3(num_steps=10, inpainting=True, mask_channel=False, init_from_cond=True, noise_level_input="gamma").sample(
        net, lq, steps=2, sampler="ddpm", generator=torch.Generator().manual_seed(0), mask=mask)
    x_T, cond = seen[0]
    assert cond.shape[1] == 3 and torch.equal(x_T, cond)  # starts from the condition, hole noise included
    assert torch.equal(cond[mask.expand_as(cond) < 0.5], lq[mask.expand_as(lq) < 0.5])
