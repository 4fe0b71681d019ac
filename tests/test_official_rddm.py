"""RDDM's UnetRes checkpoints: parity with the official one- / two-U-Net nets of the generation and
restoration code, the official DDIM sampler through our RDDM method (level index, residual clamp,
truncated step spacing), container handling and refusals.

Fixtures (tests/fixtures/official/rddm) were written by scripts/official_parity_rddm.py from the official
repository (commit in *_io.pt).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from irdiff.methods.rddm import RDDM, trunc_timesteps
from irdiff.official import OfficialCheckpointError, convert
from irdiff.official.rddm import model_json

FIX = Path(__file__).parent / "fixtures" / "official" / "rddm"


def _io(name):
    return torch.load(FIX / f"{name}_io.pt", weights_only=True)


def _arch(io, **kw):
    a = io["arch"]
    return {"dim": a["dim"], "dim_mults": tuple(a["dim_mults"]), "resnet_block_groups": a["resnet_block_groups"], **kw}


def test_fixtures_are_small_and_name_their_commit():
    for f in FIX.iterdir():
        assert f.stat().st_size < 2_000_000, f
    assert len(_io("restoration")["commit"]) == 40


def test_generation_unets_match_the_official():
    """Released layout: two U-Nets, no condition, time [ᾱ_t·T, β̄_t·T] = T · our (ᾱ_t, β̄_t/β̄_T) at β̄_T = 1."""
    io = _io("generation")
    net = convert("rddm", FIX / "generation.pt", **_arch(io, condition=False, time_input="coefficients"))
    with torch.no_grad():
        y = net(io["x"], io["time"] / 1000, None)
    assert (y - io["y"]).abs().max().item() <= 1e-5


def test_restoration_unets_match_the_official():
    io = _io("restoration")
    net = convert("rddm", FIX / "restoration.pt", **_arch(io))
    t = io["t"].double()
    with torch.no_grad():
        y = net(io["x"], torch.stack([t, t], 1), io["cond"])
    assert (y - io["y"]).abs().max().item() <= 1e-5


def test_one_unet_sees_its_objectives_time_column():
    io = _io("restoration")
    two = convert("rddm", FIX / "restoration.pt", **_arch(io))
    sd = {k: v for k, v in two.state_dict().items() if k.startswith("unet0.")}
    from irdiff.nets.official_rddm import RDDMUnetRes

    one = RDDMUnetRes(6, 3, 2, dim=8, dim_mults=(1, 2), resnet_block_groups=4, num_unet=1, objective="pred_res")
    one.load_state_dict(sd)
    t = io["t"].double()
    with torch.no_grad():
        y = one(io["x"], torch.stack([t, torch.zeros_like(t)], 1), io["cond"])
    assert (y - io["y"][:, :3]).abs().max().item() <= 1e-5


def test_the_official_ddim_sampler_through_our_method():
    """ddim_sample (3 steps, η 0, seeded start I_in + randn) == RDDM.sample with the imported settings."""
    io = _io("restoration")
    net = convert("rddm", FIX / "restoration.pt", **_arch(io))
    settings = model_json({**_arch(io), "channels": 3, "num_unet": 2, "objective": "pred_res_noise",
                           "condition": True, "time_input": "index"}, "derain_raindrop")
    cfg = {k: v for k, v in settings["method"].items() if k != "name"}
    method = RDDM(**cfg)
    g = torch.Generator().manual_seed(io["sample_seed"])
    with torch.no_grad():
        out = method.sample(net, io["cond"], steps=io["sample_steps"], generator=g)
    assert ((out + 1) / 2 - io["sampled"]).abs().max().item() <= 1e-5


def _generation_arch(io):
    return {**_arch(io), "channels": 3, "num_unet": 2, "objective": "pred_res_noise", "condition": False,
            "time_input": "coefficients"}


def test_the_official_two_stage_generation_through_our_method():
    """The released models' test: init(), then the partially path-independent ddim_sample (3 steps, seeded
    randn start, I_in = 0) == RDDM.sample with the generate_celeba settings (input only sets the size)."""
    io = _io("generation")
    net = convert("rddm", FIX / "generation.pt", **_arch(io, condition=False, time_input="coefficients"))
    settings = model_json(_generation_arch(io), "generate_celeba")
    assert settings["sample"] == {"sampler": "two_stage", "steps": 10}
    method = RDDM(**{k: v for k, v in settings["method"].items() if k != "name"})
    g = torch.Generator().manual_seed(io["sample_seed"])
    with torch.no_grad():
        out = method.sample(net, torch.rand(2, 3, 16, 16), steps=io["sample_steps"], sampler="two_stage", generator=g)
    assert ((out + 1) / 2 - io["sampled"]).abs().max().item() <= 1e-5


def test_ddpm_converted_schedule():
    """ᾱ_t = 1 − √∏(1 − β_i), β̄_t² = 1 − ∏(1 − β_i), β linear 1e-4 … 0.02 (T = 1000)."""
    m = RDDM(alpha_schedule="ddpm", beta_schedule="ddpm", condition=False)
    betas = np.linspace(1e-4, 0.02, 1000)
    prod = np.cumprod(1 - betas)
    assert np.allclose(m.alpha_bar[1:], 1 - np.sqrt(prod), atol=1e-6)
    assert np.allclose(m.beta_bar[1:] ** 2, 1 - prod, atol=1e-6)
    assert m.alpha_bar[0] == 0 and m.beta_bar[0] == 0
    with pytest.raises(ValueError, match="ddpm"):
        RDDM(alpha_schedule="ddpm", beta_schedule="ddpm")  # conditional: ᾱ_T < 1 would not reach I_in
    assert m.net_in_channels(3) == 3 and RDDM().net_in_channels(3) == 6


def test_trunc_step_spacing_is_the_references():
    # torch.linspace(-1, 999, 4).int() = [-1, 332, 665, 999] -> 1-based, decreasing
    assert trunc_timesteps(1000, 3) == [1000, 666, 333, 0]
    assert trunc_timesteps(1000, 10) == list(range(1000, -1, -100))
    assert trunc_timesteps(5, 5) == [5, 4, 3, 2, 1, 0]


def test_level_index_and_res_clip():
    m = RDDM(num_steps=10, level="index", res_clip=1.0)
    t = torch.tensor([1, 10])
    assert m.noise_level(t, torch.zeros(1)).tolist() == [[0.0, 0.0], [9.0, 9.0]]

    class Const(torch.nn.Module):  # residual 1.5 everywhere, noise 0
        def forward(self, x, level, cond):
            return torch.cat([torch.full_like(x, 1.5), torch.zeros_like(x)], 1)

    x = torch.zeros(1, 3, 4, 4)
    res, _, _ = m.predict(Const(), x, x, 5, clip=True)
    assert torch.all(res == 1.0)
    res, _, _ = RDDM(num_steps=10).predict(Const(), x, x, 5, clip=True)
    assert torch.all(res == 1.5)
    # 'noise' mode: the derived residual is clamped too, as the reference's pred_noise branch
    class Noise(torch.nn.Module):  # ε that puts I_0^θ far below −1
        def forward(self, x, level, cond):
            return torch.full_like(x, 50.0)

    m1 = RDDM(num_steps=10, mode="noise", res_clip=1.0)
    res, _, x0 = m1.predict(Noise(), torch.zeros(1, 3, 4, 4), torch.ones(1, 3, 4, 4), 5, clip=True)
    assert torch.all(x0 == -1) and torch.all(res == 1.0)
    with pytest.raises(ValueError, match="level"):
        RDDM(level="t")


def test_the_ema_copy_is_taken(tmp_path):
    io = _io("restoration")
    ck = torch.load(FIX / "restoration.pt", weights_only=True)
    torch.save({k: v for k, v in ck.items() if k != "ema"}, tmp_path / "no_ema.pt")
    net = convert("rddm", tmp_path / "no_ema.pt", **_arch(io))
    t = io["t"].double()
    with torch.no_grad():
        y = net(io["x"], torch.stack([t, t], 1), io["cond"])
    assert (y - io["y"]).abs().max().item() > 1e-3


def test_other_formats_and_variants_are_refused(tmp_path):
    cold = Path(__file__).parent / "fixtures" / "official" / "cold" / "checkpoint.pt"
    with pytest.raises(OfficialCheckpointError) as e:
        convert("rddm", cold)
    assert "\n" not in str(e.value) and "not an RDDM" in str(e.value)
    torch.save({"step": 1, "model": {"model.init_conv.weight": torch.zeros(1),
                                     "model.ups_no_skip.0.0.mlp.1.weight": torch.zeros(1)}}, tmp_path / "shared.pt")
    with pytest.raises(OfficialCheckpointError, match="share_encoder=1"):
        convert("rddm", tmp_path / "shared.pt")
    # a generation checkpoint does not fit the conditional default (6 input channels): the layer is named
    with pytest.raises(OfficialCheckpointError, match="init_conv"):
        convert("rddm", FIX / "generation.pt", **_arch(_io("generation")))
    # a task whose checkpoints have another architecture than the one given
    gen_arch = {**_arch(_io("generation")), "channels": 3, "num_unet": 2, "objective": "pred_res_noise",
                "condition": False, "time_input": "coefficients"}
    with pytest.raises(OfficialCheckpointError, match="derain_raindrop: needs condition=True"):
        model_json(gen_arch, None)
    with pytest.raises(OfficialCheckpointError, match="generate_celeba: needs condition=False"):
        model_json({**gen_arch, "condition": True, "time_input": "index"}, "generate_celeba")


def test_generation_model_folder(tmp_path):
    from safetensors.torch import save_file

    import irdiff

    io = _io("generation")
    settings = model_json(_generation_arch(io), "generate_celeba")
    config = {k: v for k, v in settings.items() if k in ("img_channels", "method", "net", "sample", "data")}
    config["sample"]["steps"] = 3
    net = convert("rddm", FIX / "generation.pt", **_arch(io, condition=False, time_input="coefficients"))
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp_path / "model.safetensors"))
    (tmp_path / "model.json").write_text(json.dumps({"config": config}))
    r = irdiff.load(tmp_path)
    img = np.zeros((16, 16, 3), dtype=np.float32)
    out = r.restore(img, progress=False, generator=torch.Generator().manual_seed(io["sample_seed"]))
    assert np.abs(out - io["sampled"][0].permute(1, 2, 0).numpy()).max() <= 1e-5


def test_model_folder_restores(tmp_path):
    from safetensors.torch import save_file

    import irdiff

    io = _io("restoration")
    arch = {**_arch(io), "channels": 3, "num_unet": 2, "objective": "pred_res_noise", "condition": True,
            "time_input": "index"}
    settings = model_json(arch, "derain_raindrop")
    config = {k: v for k, v in settings.items() if k in ("img_channels", "method", "net", "sample", "data")}
    config["sample"]["steps"] = 3
    net = convert("rddm", FIX / "restoration.pt", **_arch(io))
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp_path / "model.safetensors"))
    (tmp_path / "model.json").write_text(json.dumps({"config": config}))
    r = irdiff.load(tmp_path)
    img = io["cond"][0].add(1).div(2).permute(1, 2, 0).numpy().astype(np.float32)
    out = r.restore(img, progress=False, generator=torch.Generator().manual_seed(io["sample_seed"]))
    ref = io["sampled"][0].permute(1, 2, 0).numpy()
    assert np.abs(out - ref).max() <= 1e-5
