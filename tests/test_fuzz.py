"""Property-based tests (issue 16, item 5): image IO, degradations, tiling and metrics on random sizes, dtypes
and value ranges. Each property runs twice: a short run in the default suite and a long one under
``-m slow`` (more examples). Run with ``-s`` to see how many examples each property was tried on."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from irdiff.data.io import from_numpy, read_array, read_image, to_uint8, to_uint16, write_image
from irdiff.metrics import psnr, ssim

_COMMON = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
               derandomize=False)
PROFILES = [
    pytest.param(settings(max_examples=12, **_COMMON), id="short"),
    pytest.param(settings(max_examples=300, **_COMMON), id="long", marks=pytest.mark.slow),
]


def report(name: str, n: int) -> None:
    print(f"\nfuzz {name}: {n} examples")


def images(dtype, min_side: int = 1, max_side: int = 40, channels=(1, 3)):
    """H x W x C arrays of `dtype` with random sizes and full-range values."""
    shapes = st.tuples(st.integers(min_side, max_side), st.integers(min_side, max_side), st.sampled_from(channels))
    if np.dtype(dtype).kind == "f":
        elements = st.floats(0, 1, width=32)
    else:
        elements = st.integers(0, np.iinfo(dtype).max)
    return shapes.flatmap(lambda s: arrays(dtype, s, elements=elements))


# ------------------------------------------------------------------------------------------- image IO


@pytest.mark.parametrize("profile", PROFILES)
def test_lossless_formats_round_trip_exactly(tmp_path, profile):
    seen = []

    @profile
    @given(arr=st.one_of(images(np.uint8), images(np.uint16)), ext=st.sampled_from([".png", ".bmp", ".tif"]))
    def prop(arr, ext):
        bits = 16 if arr.dtype == np.uint16 else 8
        if bits == 16:
            ext = ".png"  # the only 16-bit format written
        path = write_image(tmp_path / f"x{ext}", arr, bits=bits)
        back = read_array(path)
        assert back.dtype == arr.dtype and back.shape == arr.shape
        assert np.array_equal(back, arr)
        t = read_image(path)
        assert t.dtype == torch.float32 and t.shape == (3, *arr.shape[:2])
        assert torch.isfinite(t).all() and t.min() >= 0 and t.max() <= 1
        seen.append(1)

    prop()
    report("lossless round trip", len(seen))


@pytest.mark.parametrize("profile", PROFILES)
def test_float_images_are_written_rounded_and_lossy_formats_keep_shape(tmp_path, profile):
    seen = []

    @profile
    @given(arr=images(np.float32), ext=st.sampled_from([".png", ".jpg", ".webp"]))
    def prop(arr, ext):
        back = read_array(write_image(tmp_path / f"x{ext}", arr))
        assert back.dtype == np.uint8 and back.shape[:2] == arr.shape[:2]
        if ext == ".png":  # BasicSR convention: clip, x255, round
            assert np.array_equal(back, np.round(arr * np.float32(255)).astype(np.uint8))
        seen.append(1)

    prop()
    report("float write + lossy formats", len(seen))


@pytest.mark.parametrize("profile", PROFILES)
def test_conversions_of_any_float_stay_in_range(profile):
    seen = []
    anything = st.floats(allow_nan=True, allow_infinity=True, width=32)

    @profile
    @given(arr=st.tuples(st.integers(1, 4), st.integers(1, 9), st.integers(1, 9)).flatmap(
        lambda s: arrays(np.float32, s, elements=anything)))
    def prop(arr):
        t = torch.from_numpy(arr)
        for conv, top in ((to_uint8, 255), (to_uint16, 65535)):
            out = conv(t)
            assert out.shape == (arr.shape[1], arr.shape[2], arr.shape[0])
            assert out.dtype == (np.uint8 if top == 255 else np.uint16)
        finite = np.nan_to_num(arr, nan=0.0, posinf=1.0, neginf=0.0).clip(0, 1)
        assert np.array_equal(to_uint8(t), np.round(finite.transpose(1, 2, 0) * np.float32(255)).astype(np.uint8))
        back = from_numpy(to_uint8(t))
        assert back.dtype == torch.float32 and back.min() >= 0 and back.max() <= 1
        seen.append(1)

    prop()
    report("tensor conversions", len(seen))


# --------------------------------------------------------------------------------------- degradations

DEGRADATION_ARGS = {"chain": {"ops": [{"name": "gaussian_blur"}, {"name": "awgn"}]},
                    "one_of": {"ops": [{"name": "gaussian_blur"}, {"name": "motion_blur"}]}}
# degradations whose output stays in [0, 1] for inputs in [0, 1] (noise and bicubic overshoot are not clipped)
IN_RANGE = {"gaussian_blur", "motion_blur", "jpeg", "mask", "rain", "haze"}


def degradation_names() -> list[str]:
    from irdiff.registry import DEGRADATIONS, _import_builtins

    _import_builtins()
    return DEGRADATIONS.names()


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("name", degradation_names())
def test_degradations_keep_shape_dtype_and_range(profile, name):
    from irdiff.registry import DEGRADATIONS

    deg = DEGRADATIONS.build(name, where="degradation", **DEGRADATION_ARGS.get(name, {}))
    scale = getattr(deg, "scale", 1) if name == "bicubic_down" else 1
    seen = []

    @profile
    @given(h=st.integers(4, 48), w=st.integers(4, 48), c=st.sampled_from([1, 3]), seed=st.integers(0, 2**32),
           low=st.floats(0, 1), high=st.floats(0, 1))
    def prop(h, w, c, seed, low, high):
        h, w = h * scale, w * scale
        g = torch.Generator().manual_seed(seed)
        lo, hi = min(low, high), max(low, high)
        img = lo + (hi - lo) * torch.rand(c, h, w, generator=g)  # any sub-range of [0, 1], flat images too
        out = deg(img, g)
        if isinstance(out, tuple):  # (degraded, mask)
            out, mask = out
            assert mask.shape[-2:] == (h, w)
        assert out.dtype == torch.float32 and out.shape == (c, h // scale, w // scale)
        assert torch.isfinite(out).all()
        if name in IN_RANGE:
            assert out.min() >= -1e-6 and out.max() <= 1 + 1e-6, (out.min(), out.max())
        seen.append(1)

    prop()
    report(f"degradation {name}", len(seen))


# -------------------------------------------------------------------------------------------- tiling


class Pointwise(torch.nn.Module):
    """A 1x1 convolution following net(x, noise_level, cond): every output pixel depends on its input
    pixel only, so tiled and whole-image restoration must agree up to the blending's float rounding."""

    def __init__(self, multiple: int):
        super().__init__()
        self.multiple = multiple
        self.conv = torch.nn.Conv2d(3, 3, 1)
        torch.nn.init.normal_(self.conv.weight, 0, 0.3)

    def forward(self, x, noise_level=None, cond=None):
        return self.conv(x)


def pointwise_restorer(multiple: int):
    from test_train import tiny_config

    from irdiff.inference import Restorer
    from irdiff.train import build_method

    cfg = tiny_config("unused")
    torch.manual_seed(multiple)
    return Restorer(build_method(cfg), Pointwise(multiple), cfg, {})


@pytest.mark.parametrize("profile", PROFILES)
def test_tiled_equals_whole_for_a_pointwise_net(profile):
    restorers = {m: pointwise_restorer(m) for m in (1, 2, 4, 8)}
    seen = []

    @profile
    @given(arr=st.one_of(images(np.float32, 1, 90), images(np.uint8, 1, 90, channels=(1, 2, 3, 4))),
           multiple=st.sampled_from([1, 2, 4, 8]), tile=st.integers(8, 64), overlap_frac=st.floats(0, 0.49),
           batch=st.integers(1, 5))
    def prop(arr, multiple, tile, overlap_frac, batch):
        r = restorers[multiple]
        overlap = int(max(tile // multiple * multiple, multiple) * overlap_frac)  # < half the tile used
        whole = r.restore(arr, tile=0, progress=False)
        tiled = r.restore(arr, tile=tile, overlap=overlap, tile_batch=batch, progress=False)
        assert tiled.shape == whole.shape == arr.shape and tiled.dtype == whole.dtype == arr.dtype
        if arr.dtype == np.uint8:  # rounding to 8 bits may flip at a .5 boundary
            assert np.abs(tiled.astype(int) - whole.astype(int)).max() <= 1
        else:
            assert np.isfinite(tiled).all() and tiled.min() >= 0 and tiled.max() <= 1
            np.testing.assert_allclose(tiled, whole, atol=2e-6)
        seen.append(1)

    prop()
    report("tiled == whole", len(seen))


@pytest.mark.parametrize("profile", PROFILES)
def test_tile_grid_covers_every_pixel_with_aligned_starts(profile):
    from irdiff.inference import tile_grid

    seen = []

    @profile
    @given(h=st.integers(1, 700), w=st.integers(1, 700), tile=st.integers(8, 256), overlap_frac=st.floats(0, 0.49),
           multiple=st.sampled_from([1, 2, 4, 8, 16]))
    def prop(h, w, tile, overlap_frac, multiple):
        tile = max(tile // multiple * multiple, multiple)
        overlap = int(tile * overlap_frac)
        grid = tile_grid(h, w, tile, overlap, multiple)
        cover = np.zeros((h, w), int)
        for y0, y1, x0, x1 in grid:
            assert y0 % multiple == 0 and x0 % multiple == 0 and y1 <= h and x1 <= w
            cover[y0:y1, x0:x1] += 1
        assert cover.min() >= 1
        seen.append(1)

    prop()
    report("tile grid", len(seen))


# ------------------------------------------------------------------------------------------- metrics


@pytest.mark.parametrize("profile", PROFILES)
def test_psnr_and_ssim_are_symmetric_and_infinite_only_for_equal_images(profile):
    seen = []
    pair = st.tuples(st.integers(13, 40), st.integers(13, 40), st.sampled_from([1, 3])).flatmap(
        lambda s: st.tuples(arrays(np.uint8, s), arrays(np.uint8, s)))

    @profile
    @given(ab=pair, same=st.booleans(), crop=st.integers(0, 3))
    def prop(ab, same, crop):
        a, b = ab
        if same:
            b = a.copy()
        p1, p2 = psnr(a, b), psnr(b, a)
        assert p1 == p2
        equal = np.array_equal(a, b)
        assert math.isinf(p1) == equal
        if not equal:
            assert 0 <= p1 < math.inf
        else:
            assert p1 > 0
        s1, s2 = ssim(a, b, crop_border=crop // 2), ssim(b, a, crop_border=crop // 2)
        assert math.isfinite(s1) and abs(s1 - s2) < 1e-10 and -1 <= s1 <= 1 + 1e-12
        if equal:
            assert abs(s1 - 1) < 1e-9
        seen.append(1)

    prop()
    report("psnr / ssim", len(seen))
