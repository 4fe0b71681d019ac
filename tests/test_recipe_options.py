"""The options the training recipes need (issue 13): clipped / quantised AWGN, NAFNet's pixel-unshuffle front
end, the noise-map regression with its blind sigma estimate, and fine-tuning a noise-map net from a blind one.
Oracles: real 8- and 16-bit PNG files, the identity net, the known sigma of synthetic noise, the bundled model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from irdiff.data.degradations import build_degradation
from irdiff.data.io import read_image, write_image
from irdiff.methods.base import OptionError
from irdiff.nets.restorers import NAFNet
from irdiff.noise_level import estimate_sigma

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _seeded(seed: int = 7) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _clean(h: int = 40, w: int = 56, c: int = 3) -> torch.Tensor:
    y, x = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    return torch.stack([(0.1 + 0.8 * x * y + 0.05 * k) % 1 for k in range(c)])


# ---- AWGN clip / quantize -------------------------------------------------------------------------

@pytest.mark.parametrize("bits", [8, 16])
def test_quantized_noise_is_what_a_png_file_holds(tmp_path, bits):
    """quantize: N equals the float-noise image written to an N-bit PNG and read back (same noise draw)."""
    clean = _clean()
    noisy = build_degradation({"name": "awgn", "sigma": 40})(clean, _seeded())
    filed = build_degradation({"name": "awgn", "sigma": 40, "quantize": bits})(clean, _seeded())
    assert noisy.min() < 0 and noisy.max() > 1  # the draw really leaves [0, 1]
    path = tmp_path / "noisy.png"
    write_image(path, noisy.clamp(0, 1), bits=bits)
    assert torch.equal(filed, read_image(path))


def test_clip_only_clips_the_same_draw():
    clean = _clean()
    noisy = build_degradation({"name": "awgn", "sigma": 40})(clean, _seeded())
    clipped = build_degradation({"name": "awgn", "sigma": 40, "clip": True})(clean, _seeded())
    assert clipped.min() == 0 and clipped.max() == 1
    inside = (noisy > 0) & (noisy < 1)
    assert torch.equal(clipped[inside], noisy[inside])


def test_clip_fraction_files_that_share_of_images_and_keeps_the_others_float():
    clean = _clean(16, 16).expand(400, -1, -1, -1).contiguous()
    spec = {"name": "awgn", "sigma": [10, 50], "quantize": 8}
    noisy = build_degradation({"name": "awgn", "sigma": [10, 50]})(clean, _seeded())
    mixed = build_degradation({**spec, "clip_fraction": 0.3})(clean, _seeded())
    filed = build_degradation(spec)(clean, _seeded())
    as_filed = (mixed == filed).flatten(1).all(1)
    as_float = (mixed == noisy).flatten(1).all(1)
    assert bool((as_filed ^ as_float).all())  # every image is one or the other, with the same noise
    assert 0.3 * 400 - 4 * 9.2 < int(as_filed.sum()) < 0.3 * 400 + 4 * 9.2  # binomial(400, 0.3): std 9.2
    single = build_degradation({**spec, "clip_fraction": 0.3})(clean[0], _seeded())  # (C, H, W) works too
    assert single.shape == clean[0].shape


def test_clip_fraction_zero_is_float_noise():
    clean = _clean()
    spec = {"name": "awgn", "sigma": 25}
    assert torch.equal(build_degradation({**spec, "quantize": 8, "clip_fraction": 0.0})(clean, _seeded()),
                       build_degradation(spec)(clean, _seeded()))


@pytest.mark.parametrize("key, value", [("quantize", 7), ("quantize", True), ("clip_fraction", 1.5),
                                        ("clip_fraction", -0.1), ("clip", "yes")])
def test_bad_awgn_option_names_the_key(key, value):
    with pytest.raises(ValueError, match=f"awgn.{key}"):
        build_degradation({"name": "awgn", key: value})


# ---- NAFNet pixel-unshuffle front end ---------------------------------------------------------------

def test_unshuffle_one_is_the_plain_net():
    a, b = NAFNet(3, 3, 0, width=8), NAFNet(3, 3, 0, width=8, unshuffle=1)
    assert {k: v.shape for k, v in a.state_dict().items()} == {k: v.shape for k, v in b.state_dict().items()}
    assert a.multiple == b.multiple == 8


@torch.no_grad()
@pytest.mark.parametrize("size", [(32, 48), (37, 50)])
def test_unshuffle_round_trip_with_an_identity_body(size):
    """intro / ending set to the identity on the unshuffled channels and the up-sampling branch zeroed: the body
    is the identity (NAFNet blocks start as one), so the output must be the input, pixel for pixel."""
    net = NAFNet(3, 3, 0, width=12, enc_blocks=(1, 1), dec_blocks=(1, 1), middle_blocks=1, unshuffle=2)
    assert net.multiple == 8
    eye = torch.zeros(12, 12, 3, 3)
    eye[range(12), range(12), 1, 1] = 1
    net.intro.weight.copy_(eye)
    net.intro.bias.zero_()
    net.ending.weight.copy_(eye)
    net.ending.bias.zero_()
    for up in net.ups:
        up[0].weight.zero_()
    x = torch.rand(2, 3, *size)
    out = net(x)
    assert out.shape == x.shape
    torch.testing.assert_close(out, x, atol=1e-5, rtol=0)


def test_unshuffle_costs_a_quarter_of_the_flops():
    from torch.utils.flop_counter import FlopCounterMode

    def flops(net):
        with FlopCounterMode(display=False) as counter:
            net(torch.rand(1, 3, 64, 64))
        return counter.get_total_flops()

    plain, small = NAFNet(3, 3, 0, width=16), NAFNet(3, 3, 0, width=16, unshuffle=2)
    assert 0.2 < flops(small) / flops(plain) < 0.3


def test_bad_unshuffle_is_refused():
    with pytest.raises(ValueError, match="unshuffle"):
        NAFNet(3, 3, 0, unshuffle=0)


# ---- sigma estimate ---------------------------------------------------------------------------------

@pytest.mark.parametrize("sigma", [5, 15, 25, 50])
def test_estimate_reads_the_sigma_of_noise_on_a_smooth_image(sigma):
    clean = _clean(128, 128) * 0.6 + 0.2  # smooth and away from the clip
    noisy = clean + sigma / 255 * torch.randn(clean.shape, generator=_seeded(sigma))
    assert abs(float(estimate_sigma(noisy)) - sigma) < 0.05 * sigma
    batch = estimate_sigma(torch.stack([noisy, clean]))
    assert batch.shape == (2,) and float(batch[1]) < 0.5


@pytest.mark.skipif(not (DATA / "CBSD68").is_dir(), reason="CBSD68 not present")
def test_estimate_on_photos_within_ten_percent_at_sigma_25_and_above():
    """Texture reads as noise (it adds roughly in quadrature), so on photos the estimate never reads low and
    is within 10% from sigma 25 up."""
    from irdiff.data.io import list_images

    for path in list_images(DATA / "CBSD68")[::17]:
        clean = read_image(path)
        for sigma in (5, 15, 25, 50):
            noisy = clean + sigma / 255 * torch.randn(clean.shape, generator=_seeded(sigma))
            est = float(estimate_sigma(noisy))
            assert est > 0.95 * sigma, (path.name, sigma)
            if sigma >= 25:
                assert est < 1.1 * sigma, (path.name, sigma)


def test_estimate_refuses_a_bad_shape():
    with pytest.raises(ValueError, match="estimate_sigma"):
        estimate_sigma(torch.rand(3, 1, 9))


# ---- noise-map regression ---------------------------------------------------------------------------

def _noise_map_method():
    from irdiff.methods.regression import Regression

    return Regression(noise_map=True)


def test_noise_map_takes_noise_sigma_and_a_blind_model_refuses_it():
    from irdiff.methods.regression import Regression

    method = _noise_map_method()
    assert method.net_in_channels(3) == 4 and method.option_names() == ["noise_sigma"]
    with pytest.raises(OptionError, match="noise_sigma"):
        Regression().sample_options(None, noise_sigma=25.0)
    with pytest.raises(OptionError, match="noise_sigma"):
        method.sample_options(None, noise_sigma=-1.0)


class _SeesMap(torch.nn.Module):
    """Records the noise map it is given; predicts no change."""

    def forward(self, x, noise_level=None, cond=None):
        self.map = cond
        return torch.zeros_like(x)


def test_noise_map_holds_the_noise_std_in_the_input_units():
    """The map is the std of the noise actually in the [-1, 1] input: given, estimated, or (training) measured."""
    method, net = _noise_map_method(), _SeesMap()
    gt = _clean(64, 64)[None] * 1.2 - 0.6  # [-1, 1] range, away from the ends
    noise = 2 * 25 / 255 * torch.randn(gt.shape, generator=_seeded())  # sigma 25 on the 0-255 scale
    lq = gt + noise
    method.sample(net, lq, noise_sigma=25.0)
    assert net.map.shape == (1, 1, 64, 64) and torch.allclose(net.map, torch.full_like(net.map, 2 * 25 / 255))
    method.sample(net, lq)  # estimated
    assert abs(float(net.map.mean()) - 2 * 25 / 255) < 0.05 * 2 * 25 / 255
    method.loss(net, {"lq": lq, "gt": gt})  # training: the measured std of lq - gt
    torch.testing.assert_close(net.map, torch.full_like(net.map, float(noise.std())))


@torch.no_grad()
def test_noise_map_net_fine_tuned_from_the_blind_model_starts_as_it():
    """init_from a blind model: the sigma channel's weights start at zero, so the output equals the blind one's
    for any sigma."""
    import irdiff
    from irdiff.train import _init_weights

    blind = irdiff.load("denoise")
    method = _noise_map_method()
    torch.manual_seed(0)
    net = method.build_net(dict(blind.cfg.net), 3).eval()
    _init_weights(net, method, "denoise")
    x = (torch.rand(1, 3, 40, 48) * 2 - 1)
    want = blind.method.sample(blind.net, x)
    for sigma in (0.0, 25.0, 50.0):
        torch.testing.assert_close(method.sample(net, x, noise_sigma=sigma), want)


def test_init_from_still_refuses_a_net_that_does_not_fit(tmp_path):
    from irdiff.config import ConfigError
    from irdiff.methods.regression import Regression
    from irdiff.train import _init_weights

    method = Regression()
    net = method.build_net({"name": "nafnet", "width": 32, "enc_blocks": [1, 1, 2], "middle_blocks": 2,
                            "dec_blocks": [1, 1, 1], "unshuffle": 2}, 3)
    with pytest.raises(ConfigError, match="init_from"):
        _init_weights(net, method, "denoise")


# ---- the committed recipe configs -------------------------------------------------------------------

RECIPES = sorted((Path(__file__).resolve().parents[1] / "configs" / "recipes").glob("*.yaml"))


def test_there_are_recipes():
    assert len(RECIPES) >= 8


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_config_builds(path):
    """Each recipe builds its net; the fine-tuning ones fit the bundled weights (a noise map through the widened
    first convolution)."""
    from irdiff.build import build_method, build_model
    from irdiff.config import load_config
    from irdiff.train import _init_weights

    cfg = load_config(path)
    method = build_method(cfg)
    net = build_model(cfg, method)
    assert net(torch.rand(1, method.net_in_channels(3), 32, 32)).shape == (1, 3, 32, 32)
    if cfg.train.init_from == "denoise":
        _init_weights(net, method, "denoise")
