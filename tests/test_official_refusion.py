"""Refusion official checkpoints: parity of the ConditionalNAFNet (pixel and latent) and of latent
Refusion's autoencoder with the authors' code (fixtures from scripts/official_parity_irsde.py), format
refusals, and importing the pixel-space net as an IR-SDE model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from irdiff.official import OfficialCheckpointError, convert, import_checkpoint

FIX = Path(__file__).parent / "fixtures" / "official"


def fixture(fmt: str) -> tuple[Path, dict[str, torch.Tensor], dict]:
    d = FIX / fmt
    return d / "net.pth", load_file(str(d / "io.safetensors")), json.loads((d / "fixture.json").read_text())


def maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def test_fixtures_are_small():
    for fmt in ("refusion", "refusion_latent", "refusion_ae"):
        assert sum(f.stat().st_size for f in (FIX / fmt).iterdir()) < 2 * 1024**2


def test_refusion_nafnet_matches_official_output():
    path, io, meta = fixture("refusion")
    net = convert("refusion", path)  # widths and block counts read off the file
    assert (net.width, len(net.encoders), [len(e) for e in net.encoders]) == (4, 4, meta["arch"]["enc_blk_nums"])
    with torch.no_grad():
        out = net(io["x_t"], io["t"], io["lq"].expand(2, -1, -1, -1))  # ours(x_t, t, μ) = official(x_t, μ, t)
        out_int = net(io["x_t"][:1], 40, io["lq"])
    assert maxdiff(out, io["out"]) <= 1e-5 and maxdiff(out_int, io["out_int_t"]) <= 1e-5
    assert io["out"].abs().max() > 0.05


def test_latent_nafnet_matches_official_output():
    path, io, _ = fixture("refusion_latent")
    net = convert("refusion_latent", path)
    assert net.intro_skip and net.out_channels == 8
    with torch.no_grad():
        assert maxdiff(net(io["x_t"], io["t"], io["mu"]), io["out"]) <= 1e-5
    # the same tensors as a pixel-space net (no intro skip) would give another output: the skip matters
    pixel = convert("refusion_latent", path)
    pixel.intro_skip = False
    with torch.no_grad():
        assert maxdiff(pixel(io["x_t"], io["t"], io["mu"]), io["out"]) > 1e-3


def test_autoencoder_matches_official_encode_decode():
    path, io, _ = fixture("refusion_ae")
    ae = convert("refusion_ae", path)
    assert ae.scale == 8
    with torch.no_grad():
        latent, hidden = ae.encode(io["lq"])
        assert latent.shape == io["latent"].shape and maxdiff(latent, io["latent"]) <= 1e-5
        assert maxdiff(ae.decode(latent, hidden), io["recon"]) <= 1e-5
        assert maxdiff(ae.decode(io["other_latent"], hidden), io["decoded_other"]) <= 1e-5
        assert maxdiff(ae(io["lq"]), io["forward"]) <= 1e-5


def test_formats_refuse_each_other():
    with pytest.raises(OfficialCheckpointError, match="use --format refusion$"):
        convert("irsde", fixture("refusion")[0])
    with pytest.raises(OfficialCheckpointError, match="use --format irsde or irsde_denoise"):
        convert("refusion", fixture("irsde")[0])
    with pytest.raises(OfficialCheckpointError, match="use --format refusion_latent"):
        convert("refusion", fixture("refusion_latent")[0])
    with pytest.raises(OfficialCheckpointError, match="use --format refusion$"):
        convert("refusion_latent", fixture("refusion")[0])
    with pytest.raises(OfficialCheckpointError, match="use --format refusion_ae"):
        convert("refusion", fixture("refusion_ae")[0])
    with pytest.raises(OfficialCheckpointError, match="not a latent Refusion autoencoder"):
        convert("refusion_ae", fixture("refusion")[0])


def test_refusion_imports_as_an_irsde_model(tmp_path):
    import irdiff

    path, io, _ = fixture("refusion")
    out = import_checkpoint("refusion", path, tmp_path / "m", task="deblur", sets=["sample.steps=4"])
    meta = json.loads((out / "model.json").read_text())
    assert meta["config"]["method"]["lam"] == 50.0 and meta["config"]["sample"]["sampler"] == "sde"
    r = irdiff.load(out)
    assert r.multiple == 16
    restored = r.restore(io["lq"][0], progress=False, generator=torch.Generator().manual_seed(0))
    assert restored.shape == io["lq"][0].shape
    # the latent formats convert but do not make a model folder (no latent Refusion method yet)
    with pytest.raises(OfficialCheckpointError, match="has no model settings"):
        import_checkpoint("refusion_latent", fixture("refusion_latent")[0], tmp_path / "l")
    assert not (tmp_path / "l").exists()
