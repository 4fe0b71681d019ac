"""Noise-DA's released restorers: parity with the official RestorationNet (through the whole-Network
container and the official test padding), the [0, 1] value range of the denoising weights, refusals,
and a model folder that ``irdiff.load`` restores with.

The fixture (tests/fixtures/official/noise_da) was written by scripts/official_parity_noise_da.py from the
official repository (commit in io.pt).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from irdiff.methods.noise_da import NoiseDA
from irdiff.official import OfficialCheckpointError, convert

FIX = Path(__file__).parent / "fixtures" / "official" / "noise_da"


def _io():
    return torch.load(FIX / "io.pt", weights_only=True)


def _net():
    return convert("noise_da", FIX / "checkpoint.pth", **_io()["arch"])


def test_fixture_is_small_and_names_its_commit():
    for f in FIX.iterdir():
        assert f.stat().st_size < 2_000_000, f
    assert len(_io()["commit"]) == 40


def test_convert_matches_the_official_test_output():
    """ours(x) is the residual; the official restoration_test_head returns x + R(x) (padded, cropped)."""
    io = _io()
    net = _net()
    with torch.no_grad():
        y = io["x"] + net(io["x"], None, None)
    assert y.shape == io["y"].shape
    assert (y - io["y"]).abs().max().item() <= 1e-5


def test_only_the_restorer_is_taken():
    sd = torch.load(FIX / "checkpoint.pth", weights_only=True)
    assert any(k.startswith("denoise_fn.") for k in sd) and "gammas" in sd
    ours = _net().state_dict()
    assert len(ours) == sum(k.startswith("RestorationNet.") for k in sd)


def test_the_denoising_range_through_the_method():
    """value_range [0, 1]: irdiff's [-1, 1] in and out, the reference's x' + R(x') on [0, 1] inside."""
    io = _io()
    method = NoiseDA(value_range=(0.0, 1.0))
    with torch.no_grad():
        out = method.sample(_net(), io["x"] * 2 - 1)
    assert ((out + 1) / 2 - io["y"].clamp(0, 1)).abs().max().item() <= 1e-5


def test_value_range_is_used_in_training_too():
    """The pixel loss sees ŷ = x + residual in [-1, 1] units: R(x') = 0.5 − x' on [0, 1] restores to 0."""
    class Half(torch.nn.Module):
        def forward(self, x, level, cond=None):
            return 0.5 - x

    y = torch.rand(2, 3, 8, 8) * 2 - 1
    batch = {"lq": torch.rand(2, 3, 8, 8) * 2 - 1, "gt": y, "real": torch.rand(2, 3, 8, 8) * 2 - 1}
    net = torch.nn.ModuleDict({"restorer": Half(), "diffusion": torch.nn.Identity()})
    terms = NoiseDA(lambda_dif=0.0, value_range=(0.0, 1.0)).loss_terms(net, batch)
    expected = torch.sqrt(y**2 + 1e-6).flatten(1).mean(1)  # Charbonnier(0 − y), ε = 1e-3
    assert torch.allclose(terms["pix"], expected, atol=1e-6)
    with pytest.raises(ValueError, match="value_range"):
        NoiseDA(value_range=(1.0, 0.0))


def test_another_format_is_refused_in_one_line(tmp_path):
    cold = Path(__file__).parent / "fixtures" / "official" / "cold" / "checkpoint.pt"
    with pytest.raises(OfficialCheckpointError) as e:
        convert("noise_da", cold)
    assert "\n" not in str(e.value) and "not a Noise-DA" in str(e.value)
    torch.save({"model": {"x": torch.zeros(1)}}, tmp_path / "nested.pt")
    with pytest.raises(OfficialCheckpointError, match="not a Noise-DA"):
        convert("noise_da", tmp_path / "nested.pt")


def test_wrong_depth_is_refused():
    with pytest.raises(OfficialCheckpointError, match="missing|unexpected|shape"):
        convert("noise_da", FIX / "checkpoint.pth", depth=4, wf=8)


def test_model_folder_restores_like_the_official_test(tmp_path):
    from safetensors.torch import save_file

    import irdiff
    from irdiff.official.noise_da import model_json

    io = _io()
    settings = model_json({"in_channels": 3, "out_channels": 3, **io["arch"]}, "denoise")
    config = {k: v for k, v in settings.items() if k in ("img_channels", "method", "net", "sample", "data")}
    net = _net()
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp_path / "model.safetensors"))
    (tmp_path / "model.json").write_text(json.dumps({"config": config}))
    r = irdiff.load(tmp_path)
    img = io["x"][0].permute(1, 2, 0).numpy().astype(np.float32)  # H x W x 3 float in [0, 1]
    out = r.restore(img, progress=False)
    ref = io["y"][0].clamp(0, 1).permute(1, 2, 0).numpy()
    assert np.abs(out - ref).max() <= 1e-5
