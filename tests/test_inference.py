"""Restorer: input types round-trip, tiled == untiled where the math says so, loading runs and exports."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from irdiff.checkpoint import CheckpointError
from irdiff.config import Config, from_dict
from irdiff.data.resize import imresize
from irdiff.inference import Restorer, _axis_tiles, _axis_weights, load, tile_grid
from irdiff.methods.regression import Regression


class Affine(nn.Module):
    """Per-pixel affine residual: restored = x + a*x + b on the [-1, 1] scale (a, b per channel)."""

    def __init__(self, a=(-0.3, -0.2, -0.1), b=(0.1, 0.0, -0.05)):
        super().__init__()
        self.a = torch.tensor(a).view(1, -1, 1, 1)
        self.b = torch.tensor(b).view(1, -1, 1, 1)

    def forward(self, x, noise_level=None, cond=None):
        return self.a[:, : x.shape[1]] * x + self.b[:, : x.shape[1]]


class Zero(nn.Module):
    """Residual 0: the regression method returns its input (identity restorer)."""

    def forward(self, x, noise_level=None, cond=None):
        return torch.zeros_like(x)


class LocalNet(nn.Module):
    """A small fixed conv net with a stride-2 down/up path: receptive radius of a few px, multiple 2."""

    multiple = 2

    def __init__(self, channels=3):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.down = nn.Conv2d(channels, 8, 2, stride=2)
        self.mid = nn.Conv2d(8, 8, 3, padding=1)
        self.up = nn.ConvTranspose2d(8, channels, 2, stride=2)
        self.head = nn.Conv2d(channels, channels, 3, padding=1)
        for p in self.parameters():
            p.data = torch.randn(p.shape, generator=g) * 0.2

    def forward(self, x, noise_level=None, cond=None):
        from irdiff.nets.layers import pad_to_multiple

        h, (height, width) = pad_to_multiple(x, self.multiple)
        h = self.head(self.up(torch.tanh(self.mid(self.down(h)))) + h) * 0.5
        return h[..., :height, :width]


def restorer(net, scale=1, channels=3, method=None):
    cfg = from_dict(Config, {"img_channels": channels, "data": {"train": {"scale": scale}}})
    return Restorer(method or Regression(), net, cfg, {})


def expected_affine(x, net):
    xs = x * 2 - 1
    return ((xs + net(xs)).clamp(-1, 1) + 1) / 2


def ramp(h, w):
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return np.stack([xx / w, yy / h, (xx + yy) / (h + w)], axis=2).astype(np.float32)


# ------------------------------------------------------------------------------------------- tiling


@pytest.mark.parametrize("size,tile,overlap,multiple", [(517, 64, 16, 1), (301, 128, 32, 8), (1000, 256, 48, 8),
                                                        (129, 128, 8, 8), (40, 16, 4, 4), (4096, 512, 32, 8)])
def test_tiles_cover_align_and_weights_sum_to_one(size, tile, overlap, multiple):
    spans = _axis_tiles(size, tile, overlap, multiple)
    assert spans[0][0] == 0 and spans[-1][1] == size
    assert all(a % multiple == 0 for a, _ in spans)
    assert all(b - a == tile for a, b in spans[:-1]) and tile <= spans[-1][1] - spans[-1][0] < tile + multiple
    assert all(a2 < b1 - overlap + 1 for (_, b1), (a2, _) in zip(spans, spans[1:]))  # overlap >= requested
    total = torch.zeros(size)
    for w, (a, b) in zip(_axis_weights(spans, size, overlap), spans):
        assert w.shape == (b - a,) and (w >= 0).all()
        total[a:b] += w
    torch.testing.assert_close(total, torch.ones(size), atol=1e-6, rtol=0)


def test_tile_larger_than_image_is_one_tile():
    assert tile_grid(37, 53, 64, 16, 8) == [(0, 37, 0, 53)]
    assert tile_grid(37, 53, None, 16, 8) == [(0, 37, 0, 53)]


@pytest.mark.parametrize("shape", [(64, 64), (301, 517), (37, 53), (130, 67)])
@pytest.mark.parametrize("kind", ["constant", "ramp"])
def test_affine_net_tiled_equals_untiled_and_the_math(shape, kind):
    net = Affine()
    r = restorer(net)
    img = np.full(shape + (3,), 0.37, np.float32) if kind == "constant" else ramp(*shape)
    whole = r.restore(img, progress=False)
    tiled = r.restore(img, tile=32, overlap=8, progress=False)
    want = expected_affine(torch.from_numpy(img).permute(2, 0, 1)[None], net)[0].permute(1, 2, 0).numpy()
    assert np.abs(whole - want).max() < 1e-6
    assert np.abs(tiled - whole).max() < 1e-6
    if kind == "constant":  # no seam: still exactly one value per channel
        assert np.ptp(tiled.reshape(-1, 3), axis=0).max() < 1e-6


def test_local_conv_net_tiled_equals_untiled():
    """A net with a small receptive field: the discarded margins hide every tile border exactly."""
    r = restorer(LocalNet())
    img = np.random.default_rng(0).random((203, 161, 3)).astype(np.float32)
    whole = r.restore(img, progress=False)
    for tile, overlap in [(64, 16), (48, 20), (100, 32)]:
        tiled = r.restore(img, tile=tile, overlap=overlap, progress=False)
        assert np.abs(tiled - whole).max() < 1e-5, (tile, overlap)


def test_tiny_nafnet_tiled_close_to_untiled():
    """NAFNet's channel attention pools over the whole input, so tiles differ slightly everywhere;
    measured here: max 4.3e-4, mean 2.8e-5 (on [0, 1]) with 128-px tiles and a 32-px overlap."""
    from irdiff.nets.restorers import NAFNet

    torch.manual_seed(0)
    net = NAFNet(3, 3, 0, width=8, enc_blocks=[1, 1], dec_blocks=[1, 1], middle_blocks=1)
    for name, p in net.named_parameters():
        if name.endswith(("beta", "gamma")):  # trained blocks are not the identity they start as
            p.data.fill_(0.5)
    r = restorer(net)
    img = (np.random.default_rng(0).random((301, 517, 3)) * 255).astype(np.uint8)
    whole = r.restore(img.astype(np.float32) / 255, progress=False)
    tiled = r.restore(img.astype(np.float32) / 255, tile=128, overlap=32, progress=False)
    d = np.abs(tiled - whole)
    assert d.max() < 2e-3 and d.mean() < 1e-4, (d.max(), d.mean())
    t8, w8 = r.restore(img, tile=128, progress=False), r.restore(img, progress=False)
    assert np.abs(t8.astype(int) - w8.astype(int)).max() <= 1
    assert (t8 != w8).mean() < 0.01


# ------------------------------------------------------------------------------------- input types


@pytest.mark.parametrize("make", [
    lambda: (np.random.default_rng(1).random((33, 47)) * 255).astype(np.uint8),
    lambda: (np.random.default_rng(1).random((33, 47, 1)) * 255).astype(np.uint8),
    lambda: (np.random.default_rng(1).random((33, 47, 3)) * 255).astype(np.uint8),
    lambda: (np.random.default_rng(1).random((33, 47, 4)) * 255).astype(np.uint8),
    lambda: (np.random.default_rng(1).random((33, 47, 2)) * 255).astype(np.uint8),
    lambda: (np.random.default_rng(1).random((33, 47, 3)) * 65535).astype(np.uint16),
    lambda: np.random.default_rng(1).random((33, 47, 3)).astype(np.float32),
    lambda: np.random.default_rng(1).random((33, 47)).astype(np.float64),
])
@pytest.mark.parametrize("tile", [None, 16])
def test_numpy_round_trip_identity(make, tile):
    img = make()
    out = restorer(Zero()).restore(img, tile=tile, overlap=4, progress=False)
    assert out.dtype == img.dtype and out.shape == img.shape
    if img.dtype.kind == "u":
        assert np.array_equal(out, img)
    else:
        assert np.abs(out - img).max() < 1e-6


@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA", "I;16", "I", "F"])
def test_pil_modes_round_trip(mode):
    rng = np.random.default_rng(2)
    base = Image.fromarray((rng.random((29, 31, 4)) * 255).astype(np.uint8))
    if mode == "I;16":
        img = Image.fromarray((rng.random((29, 31)) * 65535).astype(np.uint16))
    elif mode == "I":
        img = Image.fromarray((rng.random((29, 31)) * 65535).astype(np.int32))
    elif mode == "F":
        img = Image.fromarray(rng.random((29, 31)).astype(np.float32))
    else:
        img = base.convert(mode)
    out = restorer(Zero()).restore(img, tile=16, overlap=4, progress=False)
    assert isinstance(out, Image.Image) and out.mode == img.mode and out.size == img.size
    a, b = np.asarray(out), np.asarray(img)
    assert np.abs(a.astype(np.float64) - b).max() <= (1e-6 if mode == "F" else 0)


def test_pil_palette_comes_back_rgb():
    img = Image.fromarray((np.random.default_rng(3).random((20, 24, 3)) * 255).astype(np.uint8)).convert("P")
    out = restorer(Zero()).restore(img, progress=False)
    assert out.mode == "RGB" and np.array_equal(np.asarray(out), np.asarray(img.convert("RGB")))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.uint8])
@pytest.mark.parametrize("shape", [(3, 35, 41), (2, 3, 35, 41), (1, 35, 41), (4, 35, 41)])
def test_tensor_round_trip(dtype, shape):
    g = torch.Generator().manual_seed(0)
    img = torch.rand(shape, generator=g)
    img = (img * 255).round().to(dtype) if dtype == torch.uint8 else img.to(dtype)
    out = restorer(Zero()).restore(img, tile=16, overlap=4, progress=False)
    assert out.dtype == img.dtype and out.shape == img.shape and out.device == img.device
    assert (out.double() - img.double()).abs().max() <= (0 if dtype == torch.uint8 else 1e-6)


def test_grey_into_colour_model_and_alpha_passthrough():
    net = Affine()
    r = restorer(net)
    grey = np.random.default_rng(4).random((30, 40)).astype(np.float32)
    out = r.restore(grey, progress=False)
    x = torch.from_numpy(grey)[None, None].expand(1, 3, -1, -1)
    want = expected_affine(x, net)[0].mean(0).numpy()
    assert out.shape == grey.shape and np.abs(out - want).max() < 1e-6
    rgba = (np.random.default_rng(5).random((30, 40, 4)) * 255).astype(np.uint8)
    out = r.restore(rgba, tile=16, overlap=4, progress=False)
    assert np.array_equal(out[..., 3], rgba[..., 3])
    want = expected_affine(torch.from_numpy(rgba[..., :3] / 255.0).float().permute(2, 0, 1)[None], net)
    assert np.abs(out[..., :3].astype(int) - np.rint(want[0].permute(1, 2, 0).numpy() * 255)).max() <= 1


def test_colour_into_grey_model_is_restored_per_channel():
    net = Affine(a=(-0.3,), b=(0.1,))
    r = restorer(net, channels=1)
    img = np.random.default_rng(6).random((25, 27, 3)).astype(np.float32)
    out = r.restore(img, tile=16, overlap=4, progress=False)
    want = expected_affine(torch.from_numpy(img).permute(2, 0, 1)[:, None], net)[:, 0].permute(1, 2, 0).numpy()
    assert np.abs(out - want).max() < 1e-6


@pytest.mark.parametrize("scale", [2, 4])
def test_sr_output_size_and_tiled_bicubic_is_exact(scale):
    r = restorer(Zero(), scale=scale)
    img = np.random.default_rng(7).random((23, 37, 4)).astype(np.float32)
    whole = r.restore(img, progress=False)
    tiled = r.restore(img, tile=32, overlap=8, progress=False)
    assert whole.shape == (23 * scale, 37 * scale, 4)
    want = imresize(torch.from_numpy(img).permute(2, 0, 1), scale=scale).clamp(0, 1).permute(1, 2, 0).numpy()
    assert np.abs(whole - want).max() < 1e-5
    assert np.abs(tiled - whole).max() < 1e-5
    pil = r.restore(Image.fromarray((img[..., :3] * 255).astype(np.uint8)), progress=False)
    assert pil.size == (37 * scale, 23 * scale)


def test_bad_inputs_raise_clear_errors():
    r = restorer(Zero())
    with pytest.raises(ValueError, match="dtype"):
        r.restore(np.zeros((8, 8, 3), np.int32), progress=False)
    with pytest.raises(ValueError, match="shape"):
        r.restore(np.zeros((8, 8, 5), np.uint8), progress=False)
    with pytest.raises(ValueError, match="overlap"):
        r.restore(np.zeros((80, 80, 3), np.uint8), tile=32, overlap=16, progress=False)
    with pytest.raises(ValueError, match="tensor"):
        r.restore(torch.zeros(8, 8), progress=False)
    with pytest.raises(TypeError):
        r.restore([[0.0]], progress=False)


def test_diffusion_method_same_generator_same_result_and_progress(capsys):
    from irdiff.methods.sr3 import SR3
    from irdiff.nets.unet import UNet

    method = SR3(num_steps=20)
    torch.manual_seed(0)
    net = UNet(in_channels=6, out_channels=3, base_channels=8, channel_mults=[1, 2], num_res_blocks=1,
               attn_levels=[], norm_groups=4)
    r = restorer(net, method=method)
    img = np.random.default_rng(8).random((40, 36, 3)).astype(np.float32)
    a = r.restore(img, steps=3, tile=16, overlap=4, generator=torch.Generator().manual_seed(1), progress=True)
    b = r.restore(img, steps=3, tile=16, overlap=4, generator=torch.Generator().manual_seed(1), progress=False)
    assert np.array_equal(a, b) and np.isfinite(a).all()


# ------------------------------------------------------------------------------------------- loading


@pytest.fixture
def tiny_run(tmp_path, image_folder):
    from test_train import tiny_config

    from irdiff.train import train

    train(tiny_config(image_folder, steps=3), tmp_path / "run", progress=False)
    return tmp_path / "run"


def test_load_run_export_checkpoint_and_fp16(tiny_run, tmp_path, monkeypatch):
    img = (np.random.default_rng(9).random((45, 50, 3)) * 255).astype(np.uint8)
    state = torch.random.get_rng_state()
    r = load(tiny_run)
    assert torch.equal(state, torch.random.get_rng_state())  # loading does not move the global RNG
    ref = r.restore(img, progress=False)
    assert ref.shape == img.shape and ref.dtype == np.uint8 and not np.array_equal(ref, img)

    ckpt_only = tmp_path / "ckpt_only"
    shutil.copytree(tiny_run, ckpt_only)
    (ckpt_only / "model.json").unlink()
    assert np.array_equal(load(ckpt_only).restore(img, progress=False), ref)  # EMA weights either way

    from safetensors.torch import load_file, save_file

    half = tmp_path / "pretrained" / "tiny"
    half.mkdir(parents=True)
    save_file({k: v.half() for k, v in load_file(str(tiny_run / "model.safetensors")).items()},
              str(half / "model.safetensors"))
    shutil.copy(tiny_run / "model.json", half / "model.json")
    monkeypatch.setattr("irdiff.inference.PRETRAINED_DIR", tmp_path / "pretrained")
    monkeypatch.chdir(tmp_path)
    out = load("tiny").restore(img, progress=False)  # a bundled name, fp16 weights
    assert np.abs(out.astype(int) - ref.astype(int)).max() <= 1


def test_load_errors_name_the_problem(tmp_path, tiny_run):
    with pytest.raises(CheckpointError, match="no such run directory or bundled model"):
        load(tmp_path / "nope")
    bad = tmp_path / "bad"
    shutil.copytree(tiny_run, bad)
    meta = json.loads((bad / "model.json").read_text())
    meta["config"]["net"]["width"] = 16
    (bad / "model.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="do not fit"):
        load(bad)


def test_auto_tiling_above_a_megapixel_and_empty_images(monkeypatch):
    import irdiff.inference as inf

    calls = []
    real = inf._axis_tiles
    monkeypatch.setattr(inf, "_axis_tiles", lambda size, tile, *a: calls.append(tile) or real(size, tile, *a))
    net = Affine()
    r = restorer(net)
    img = ramp(1100, 1000)
    auto = r.restore(img, progress=False)
    assert calls[-1] == 512
    whole = r.restore(img, tile=0, progress=False)
    assert calls[-1] is None and np.abs(auto - whole).max() < 1e-6
    with pytest.raises(ValueError, match="empty"):
        r.restore(np.zeros((0, 5, 3), np.uint8), progress=False)


def test_restore_tensor_keeps_the_old_float_api():
    r = restorer(Zero())
    img = torch.rand(3, 20, 30, dtype=torch.float64)
    out = r.restore_tensor(img)
    assert out.dtype == torch.float32 and torch.allclose(out.double(), img, atol=1e-6)
