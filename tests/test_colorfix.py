"""Colour correction: what it keeps from the output, what it takes from the reference, and its plumbing."""

import numpy as np
import pytest
import torch

from irdiff.colorfix import adain_fix, color_fix, low_pass, wavelet_fix


def _img(seed, shape=(2, 3, 48, 64)):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_low_pass_keeps_constants_and_smooth_ramps_and_kills_checkerboards():
    const = torch.full((1, 3, 40, 40), 0.3)
    torch.testing.assert_close(low_pass(const), const)
    ramp = torch.linspace(-1, 1, 80).view(1, 1, 1, 80).expand(1, 3, 80, 80).contiguous()
    inner = (..., slice(31, -31), slice(31, -31))  # beyond the 1+2+4+8+16 px reach of the replicate border
    torch.testing.assert_close(low_pass(ramp)[inner], ramp[inner], atol=1e-6, rtol=0)
    checker = ((torch.arange(80)[:, None] + torch.arange(80)[None, :]) % 2).float().expand(1, 3, 80, 80) * 2 - 1
    assert low_pass(checker)[inner].abs().max() < 1e-6


def test_wavelet_fix_takes_the_reference_colour_and_keeps_the_output_detail():
    out, ref = _img(0), _img(1)
    shifted = out + torch.tensor([0.3, -0.2, 0.1]).view(1, 3, 1, 1)  # a colour drift
    fixed = wavelet_fix(shifted, ref)
    # the output's detail band plus the reference's coarse band
    torch.testing.assert_close(fixed - (shifted - low_pass(shifted)), low_pass(ref), atol=1e-5, rtol=0)
    # a constant offset is removed entirely: fixing the drifted and the clean output gives the same image
    torch.testing.assert_close(fixed, wavelet_fix(out, ref), atol=1e-5, rtol=0)


def test_adain_matches_channel_statistics():
    out, ref = _img(0), _img(1) * 0.3 + 0.2
    fixed = adain_fix(out, ref)
    torch.testing.assert_close(fixed.mean((-2, -1)), ref.mean((-2, -1)), atol=1e-5, rtol=0)
    torch.testing.assert_close(fixed.std((-2, -1)), ref.std((-2, -1)), atol=1e-4, rtol=0)


def test_color_fix_dispatch_and_errors():
    out, ref = _img(0), _img(1)
    assert color_fix("none", out, ref) is out and color_fix(None, out, ref) is out
    with pytest.raises(ValueError, match="unknown color_fix 'hsv'"):
        color_fix("hsv", out, ref)
    with pytest.raises(ValueError, match="differ"):
        color_fix("wavelet", out, ref[..., :-1])


def test_restorer_color_fix_removes_a_colour_drift():
    from irdiff.config import Config, from_dict
    from irdiff.inference import Restorer
    from irdiff.methods.regression import Regression

    class Drift(torch.nn.Module):  # residual = a constant colour offset: restored = input + drift
        def forward(self, x, noise_level=None, cond=None):
            return torch.tensor([0.4, -0.3, 0.2]).view(1, 3, 1, 1).expand_as(x)

    cfg = from_dict(Config, {"method": {"name": "regression"}, "net": {"name": "nafnet"}})
    r = Restorer(Regression(), Drift(), cfg, {})
    img = np.random.default_rng(0).integers(60, 190, (40, 56, 3), dtype=np.uint8)
    drifted = r.restore(img, progress=False)
    assert np.abs(drifted.astype(int) - img).mean() > 20
    for tile in (0, 32):
        fixed = r.restore(img, progress=False, color_fix="wavelet", tile=tile, overlap=8)
        assert np.abs(fixed.astype(int) - img).max() <= 1  # input + constant, low band swapped back: the input
    with pytest.raises(ValueError, match="unknown color_fix"):
        r.restore(img, progress=False, color_fix="hsv")


def test_config_rejects_unknown_color_fix():
    from irdiff.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="sample.color_fix"):
        load_config(base={"sample": {"color_fix": "hsv"}})
