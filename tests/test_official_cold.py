"""Cold Diffusion's released checkpoints: parity with the official U-Net, container handling, the official
sampling conventions (time input s − 1, exponential / circular blur, discrete D(x0, T)) and a model folder
that ``irdiff.load`` restores with.

The fixture (tests/fixtures/official/cold) was written by scripts/official_parity_cold.py from the official
repository (commit in io.pt): the official Unet's output for a fixed input, and its checkpoint as the
official Trainer saves it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from irdiff.methods.cold import ColdDiffusion
from irdiff.official import OfficialCheckpointError, convert

FIX = Path(__file__).parent / "fixtures" / "official" / "cold"


def _io():
    return torch.load(FIX / "io.pt", weights_only=True)


def _arch(io):
    a = io["arch"]
    return {"dim": a["dim"], "dim_mults": tuple(a["dim_mults"]), "channels": a["channels"]}


def test_fixture_is_small_and_names_its_commit():
    for f in FIX.glob("*.pt"):
        assert f.stat().st_size < 2_000_000, f
    assert len(_io()["commit"]) == 40


def test_convert_matches_the_official_unet():
    io = _io()
    net = convert("cold", FIX / "checkpoint.pt", **_arch(io))
    with torch.no_grad():
        y = net(io["x"], io["t"], None)
    assert (y - io["y"]).abs().max().item() <= 1e-5


def test_the_ema_copy_is_taken(tmp_path):
    """The official test scripts sample with ema_model: the fixture's 'model' copy differs from it."""
    io = _io()
    ck = torch.load(FIX / "checkpoint.pt", weights_only=True)
    torch.save({"step": ck["step"], "model": ck["model"]}, tmp_path / "model_only.pt")
    other = convert("cold", tmp_path / "model_only.pt", **_arch(io))
    with torch.no_grad():
        y = other(io["x"], io["t"], None)
    assert (y - io["y"]).abs().max().item() > 1e-3
    # a bare U-Net state_dict (denoise_fn's own keys) loads too
    bare = {k[len("module.denoise_fn."):]: v for k, v in ck["ema"].items() if k.startswith("module.denoise_fn.")}
    torch.save(bare, tmp_path / "bare.pt")
    with torch.no_grad():
        y = convert("cold", tmp_path / "bare.pt", **_arch(io))(io["x"], io["t"], None)
    assert (y - io["y"]).abs().max().item() <= 1e-5


def test_another_format_is_refused_in_one_line(tmp_path):
    # an RDDM-style container (ema_pytorch keys) is not a Cold checkpoint
    torch.save({"step": 1, "model": {"model.unet0.init_conv.weight": torch.zeros(1)},
                "ema": {"ema_model.model.unet0.init_conv.weight": torch.zeros(1)}}, tmp_path / "rddm.pt")
    with pytest.raises(OfficialCheckpointError) as e:
        convert("cold", tmp_path / "rddm.pt")
    assert "\n" not in str(e.value) and "not a Cold Diffusion" in str(e.value)
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(OfficialCheckpointError, match="not a Cold Diffusion checkpoint"):
        convert("cold", tmp_path / "list.pt")


def test_wrong_width_names_the_layer():
    with pytest.raises(OfficialCheckpointError, match="shape|missing|unexpected"):
        convert("cold", FIX / "checkpoint.pt", dim=16, dim_mults=(1, 2, 2), channels=3)


# ---- the official sampling conventions in the Cold method -----------------------------------------


def _official_blur_chain(x, steps, size, std_of, mode):
    """The reference's D: a 2-D depthwise conv per step (outer-product Gaussian, its padding mode)."""
    r = size // 2
    ax = np.arange(size) - r
    for i in range(steps):  # 0-based step i, as get_kernels
        sigma = std_of(i)
        g = np.exp(-(ax**2) / (2 * sigma**2))
        g = g / g.sum()
        k = torch.from_numpy(np.outer(g, g)).to(x.dtype)
        conv = torch.nn.Conv2d(x.shape[1], x.shape[1], size, padding=r, padding_mode=mode, bias=False,
                               groups=x.shape[1])
        conv.weight.data = k.expand(x.shape[1], 1, size, size).clone()
        with torch.no_grad():
            x = conv(x)
    return x


@pytest.mark.parametrize("schedule,mode,std,std_of", [
    ("exponential", "reflect", 0.05, lambda i: np.exp(0.05 * i)),    # Exponential_reflect
    ("exponential", "circular", 0.05, lambda i: np.exp(0.05 * i)),   # Exponential
    ("linear", "circular", 0.3, lambda i: 0.3),                      # Constant
])
def test_blur_routines_match_the_reference(schedule, mode, std, std_of):
    x = torch.rand(1, 3, 20, 24, dtype=torch.float64) * 2 - 1
    m = ColdDiffusion("blur", num_steps=6, blur_kernel_size=7, blur_std=std, blur_schedule=schedule,
                      blur_padding=mode)
    for s in (1, 4, 6):
        ref = _official_blur_chain(x, s, 7, std_of, mode)
        assert torch.allclose(m.degrade(x, s), ref, atol=1e-12)


def test_discrete_blur_ends_in_the_mean_colour():
    x = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    m = ColdDiffusion("blur", num_steps=4, blur_kernel_size=5, blur_std=0.1, blur_schedule="exponential",
                      blur_padding="circular", blur_discrete=True)
    ref = _official_blur_chain(x, 4, 5, lambda i: np.exp(0.1 * i), "circular").mean(dim=(2, 3), keepdim=True)
    assert torch.allclose(m.degrade(x, 4), ref.expand_as(x), atol=1e-12)
    assert not torch.allclose(m.degrade(x, 3), m.degrade(x, 3).mean(dim=(2, 3), keepdim=True).expand_as(x))


class _Recorder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.levels = []

    def forward(self, x, level, cond):
        self.levels.append(level.tolist())
        return x


def test_level_index_feeds_the_official_time():
    """all_sample calls denoise_fn(img, times − 1) for times = T..1."""
    net = _Recorder()
    m = ColdDiffusion("blur", num_steps=5, blur_kernel_size=3, level="index")
    m.sample(net, torch.zeros(2, 3, 8, 8), steps=5)
    assert net.levels == [[4.0, 4.0], [3.0, 3.0], [2.0, 2.0], [1.0, 1.0], [0.0, 0.0]]
    net = _Recorder()
    ColdDiffusion("blur", num_steps=5, blur_kernel_size=3).sample(net, torch.zeros(1, 3, 8, 8), steps=5)
    assert net.levels[0] == [1.0] and net.levels[-1] == pytest.approx([0.2])


def test_the_official_test_sampling():
    """Trainer.test_from_data -> all_sample (x0_step_down, Exponential_reflect blur, every step), run by the
    parity script from the official code, == our D and our 'improved' sampler with the imported settings."""
    io = _io()
    d = io["diffusion"]
    net = convert("cold", FIX / "checkpoint.pt", **_arch(io))
    m = ColdDiffusion("blur", num_steps=d["timesteps"], blur_kernel_size=d["kernel_size"], blur_std=d["kernel_std"],
                      blur_schedule="exponential", blur_padding="reflect", level="index")
    assert (m.degrade(io["x0"], d["timesteps"]) - io["degraded"]).abs().max().item() <= 1e-6
    with torch.no_grad():
        out = m.sample(net, io["degraded"], steps=d["timesteps"])
    assert (out - io["sampled"]).abs().max().item() <= 1e-5
    assert (io["sampled"] - io["degraded"]).abs().max().item() > 0.05  # the sampler did move the image


def test_model_folder_restores(tmp_path):
    """The settings of model_json build a method + net that irdiff.load restores an image with."""
    from safetensors.torch import save_file

    import irdiff
    from irdiff.official.cold import model_json

    io = _io()
    arch = {"dim": 8, "dim_mults": (1, 2, 2), "channels": 3, "with_time_emb": True, "residual": False}
    settings = model_json(arch, "deblur_celeba")
    config = {k: v for k, v in settings.items() if k in ("img_channels", "method", "net", "sample", "data")}
    config["method"]["num_steps"] = config["sample"]["steps"] = 8  # a short schedule for the test
    net = convert("cold", FIX / "checkpoint.pt", **_arch(io))
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp_path / "model.safetensors"))
    (tmp_path / "model.json").write_text(json.dumps({"config": config}))
    r = irdiff.load(tmp_path)
    img = (np.random.default_rng(0).random((20, 28, 3)) * 255).astype(np.uint8)
    out = r.restore(img, progress=False)
    assert out.shape == img.shape and out.dtype == np.uint8
    # the loaded net is the converted one: same output on the fixture input
    with torch.no_grad():
        assert (r.net(io["x"], io["t"], None) - io["y"]).abs().max().item() <= 1e-5
    assert F.mse_loss(torch.from_numpy(out).float(), torch.from_numpy(img).float()) > 0
