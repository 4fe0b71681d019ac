import math

import numpy as np
import pytest
import torch

from irdiff.data import degradations as D
from irdiff.registry import DEGRADATIONS


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def img(shape=(3, 16, 16), seed=1):
    return torch.rand(shape, generator=gen(seed))


ALL_SPECS = [
    {"name": "awgn", "sigma": [5, 50]},
    {"name": "poisson_gaussian", "peak": [10, 60], "read_sigma": [0, 10]},
    {"name": "poisson_gaussian", "correlation": 1.0},
    {"name": "gaussian_blur", "sigma": [0.5, 2.0]},
    {"name": "motion_blur"},
    {"name": "bicubic_down", "scale": 2},
    {"name": "jpeg", "quality": [10, 90]},
    {"name": "mask", "kind": "free_form"},
    {"name": "mask", "kind": "box"},
    {"name": "mask", "kind": "mixed"},
    {"name": "rain"},
    {"name": "haze"},
    {"name": "chain", "ops": [{"name": "gaussian_blur", "sigma": 1.0}, {"name": "bicubic_down", "scale": 2},
                              {"name": "awgn", "sigma": 10}]},
    {"name": "one_of", "ops": [{"name": "gaussian_blur", "sigma": [0.5, 3]}, {"name": "motion_blur"}]},
]


def _equal(a, b):
    if isinstance(a, tuple):
        return all(torch.equal(u, v) for u, v in zip(a, b))
    return torch.equal(a, b)


@pytest.mark.parametrize("spec", ALL_SPECS, ids=lambda s: s["name"] + str(len(s)))
def test_deterministic_and_rank_preserving(spec):
    d = D.build_degradation(spec)
    for x in (img((3, 16, 16)), img((2, 3, 16, 16))):
        a, b = d(x, gen(7)), d(x, gen(7))
        assert _equal(a, b)
        out = a[0] if isinstance(a, tuple) else a
        assert out.dim() == x.dim() and out.dtype == x.dtype
        assert torch.isfinite(out).all()
    if spec["name"] not in ("bicubic_down", "chain", "mask"):
        # a different seed gives a different result (mask "center" excepted, not listed)
        assert not _equal(d(x, gen(7)), d(x, gen(8)))


def test_registry_names():
    for name in ["awgn", "poisson_gaussian", "gaussian_blur", "motion_blur", "bicubic_down", "jpeg", "mask",
                 "rain", "haze", "chain", "one_of"]:
        assert name in DEGRADATIONS


def test_awgn_std_and_no_clipping():
    x = torch.full((3, 64, 64), 0.5)
    y = D.AWGN(sigma=25)(x, gen())
    assert abs((y - x).std().item() - 25 / 255) < 0.003
    assert abs((y - x).mean().item()) < 0.003
    z = D.AWGN(sigma=50)(torch.zeros(1, 32, 32), gen())
    assert z.min() < 0  # noise is not clipped


def test_awgn_range_drawn_per_image():
    x = torch.zeros(4, 1, 64, 64)
    y = D.AWGN(sigma=[0, 50])(x, gen(3))
    stds = y.flatten(1).std(1) * 255
    assert (stds >= 0).all() and (stds < 52).all() and stds.max() - stds.min() > 1


def test_poisson_gaussian_variance():
    x = torch.full((1, 128, 128), 0.5)
    y = D.PoissonGaussian(peak=40, read_sigma=5)(x, gen())
    expect = 0.5 / 40 + (5 / 255) ** 2
    assert abs((y - x).var().item() / expect - 1) < 0.1
    yc = D.PoissonGaussian(peak=40, read_sigma=5, correlation=1.0)(x, gen())
    assert abs((yc - x).var().item() / expect - 1) < 0.25  # variance is kept, roughly
    # correlated noise: neighbouring pixels correlate
    n = (yc - x)[0]
    corr = torch.corrcoef(torch.stack([n[:, :-1].flatten(), n[:, 1:].flatten()]))[0, 1]
    assert corr > 0.3


@pytest.mark.parametrize("spec", [{"name": "gaussian_blur", "sigma": 1.5},
                                  {"name": "motion_blur", "length": 7},
                                  {"name": "bicubic_down", "scale": 4},
                                  {"name": "bicubic_down", "scale": 3}])
def test_blur_and_resize_keep_constant(spec):
    x = torch.full((2, 3, 24, 24), 0.37, dtype=torch.float64)
    y = D.build_degradation(spec)(x, gen())
    assert torch.allclose(y, torch.full_like(y, 0.37), atol=1e-12)


def test_motion_kernel():
    k = D.motion_kernel(5, 0.0, torch.float64)
    assert math.isclose(k.sum().item(), 1.0, rel_tol=1e-12)
    assert torch.allclose(k[2], torch.full((5,), 0.2, dtype=torch.float64), atol=0.02)
    kv = D.motion_kernel(5, 90.0, torch.float64)
    assert torch.allclose(kv, k.T, atol=1e-9)


def _matlab_imresize_ref(a: np.ndarray, scale: float) -> np.ndarray:
    """Straight loops over MATLAB's imresize formula (bicubic, antialias), H first then W."""

    def cubic(x):
        x = abs(x)
        if x <= 1:
            return 1.5 * x**3 - 2.5 * x**2 + 1
        if x <= 2:
            return -0.5 * x**3 + 2.5 * x**2 - 4 * x + 2
        return 0.0

    def resize_1d(v, out_len):
        n = len(v)
        out = np.zeros(out_len)
        aa = scale < 1
        width = 4 / scale if aa else 4
        for i in range(1, out_len + 1):
            u = i / scale + 0.5 * (1 - 1 / scale)
            left = math.floor(u - width / 2)
            ws, vals = [], []
            for j in range(left, left + math.ceil(width) + 2):
                w = scale * cubic((u - j) * scale) if aa else cubic(u - j)
                jj = j
                while jj < 1 or jj > n:  # symmetric padding with edge repeat
                    jj = 1 - jj if jj < 1 else 2 * n + 1 - jj
                ws.append(w)
                vals.append(v[jj - 1])
            ws = np.array(ws) / sum(ws)
            out[i - 1] = float(np.dot(ws, vals))
        return out

    h, w = a.shape
    oh, ow = math.ceil(h * scale - 1e-9), math.ceil(w * scale - 1e-9)
    tmp = np.stack([resize_1d(a[:, c], oh) for c in range(w)], axis=1)
    return np.stack([resize_1d(tmp[r], ow) for r in range(oh)], axis=0)


def test_imresize_hand_computed():
    # MATLAB: imresize([1 2 3 4], 0.5) = [1.4609375 3.5390625] (worked out by hand from the formula:
    # weights 0.5*cubic(0.5*d) for d = +-0.5, +-1.5, +-2.5, +-3.5, mirrored borders).
    x = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64).expand(1, 4, 4)
    y = D.imresize(x, scale=0.5)
    assert y.shape == (1, 2, 2)
    assert torch.allclose(y[0], torch.tensor([[1.4609375, 3.5390625]] * 2, dtype=torch.float64), atol=1e-12)


@pytest.mark.parametrize("scale,shape", [(0.5, (8, 10)), (1 / 3, (9, 12)), (0.25, (8, 12)), (2, (5, 4)),
                                          (3, (3, 4))])
def test_imresize_matches_numpy_reference(scale, shape):
    a = np.random.default_rng(0).random(shape)
    got = D.imresize(torch.from_numpy(a)[None], scale=scale)[0].numpy()
    ref = _matlab_imresize_ref(a, scale)
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, atol=1e-12)


def test_bicubic_down_shapes_and_mod_crop():
    x = img((2, 3, 24, 36))
    assert D.BicubicDown(scale=3)(x, gen()).shape == (2, 3, 8, 12)
    assert D.imresize(x, out_size=(48, 72)).shape == (2, 3, 48, 72)
    with pytest.raises(ValueError, match="multiple of scale"):
        D.BicubicDown(scale=4)(img((3, 18, 16)), gen())
    assert D.mod_crop(img((3, 18, 17)), 4).shape == (3, 16, 16)
    q = D.BicubicDown(scale=2, quantize=True)(x, gen())
    assert torch.equal(q, torch.round(q * 255) / 255) and 0 <= q.min() and q.max() <= 1


def test_jpeg_changes_and_stays_in_range():
    x = img((3, 32, 32))
    y = D.JPEG(quality=10)(x, gen())
    assert 0 <= y.min() and y.max() <= 1 and (y - x).abs().mean() > 0.01
    y95 = D.JPEG(quality=95)(x, gen())
    assert (y95 - x).abs().mean() < (y - x).abs().mean()
    grey = D.JPEG(quality=50)(img((1, 16, 16)), gen())
    assert grey.shape == (1, 16, 16)


@pytest.mark.parametrize("kind", ["box", "center", "free_form"])
def test_mask_shape_values(kind):
    x = img((3, 32, 32)) * 0.5 + 0.25
    masked, m = D.Mask(kind=kind)(x, gen(4))
    assert m.shape == (1, 32, 32) and masked.shape == x.shape
    assert set(m.unique().tolist()) <= {0.0, 1.0} and 0 < m.mean() < 1
    assert torch.equal(masked, x * (1 - m))
    assert (masked[:, m[0] == 1] == 0).all() and (masked[:, m[0] == 0] > 0).all()
    mb = D.Mask(kind=kind)(img((2, 3, 32, 32)), gen(4))[1]
    assert mb.shape == (2, 1, 32, 32)
    if kind == "center":
        assert m.mean().item() == 0.25 and m[0, 16, 16] == 1 and m[0, 0, 0] == 0


def test_rain_and_haze_ranges():
    x = img((2, 3, 32, 32))
    r = D.Rain(density=0.02)(x, gen())
    assert 0 <= r.min() and r.max() <= 1 and (r >= x - 1e-7).all() and (r > x).any()
    h = D.Haze(beta=1.5, airlight=0.9, depth="gradient")(x, gen())
    t = torch.exp(-1.5 * torch.linspace(1, 0, 32)).view(1, 1, 32, 1)
    assert torch.allclose(h, x * t + 0.9 * (1 - t), atol=1e-6)
    hr = D.Haze(depth="random")(x, gen())
    assert 0 <= hr.min() and hr.max() <= 1


def test_chain_composition():
    x = img((3, 32, 32))
    c = D.build_degradation({"name": "chain", "ops": [{"name": "gaussian_blur", "sigma": 1.0},
                                                      {"name": "bicubic_down", "scale": 2},
                                                      {"name": "awgn", "sigma": 10}]})
    g = gen(5)
    manual = D.AWGN(10)(D.BicubicDown(2)(D.GaussianBlur(1.0)(x, g), g), g)
    assert torch.equal(c(x, gen(5)), manual)
    out, m = D.Chain(ops=["awgn", {"name": "mask", "kind": "center"}])(x, gen())
    assert m.shape == (1, 32, 32) and (out[:, m[0] == 1] == 0).all()


@pytest.mark.parametrize("spec,param", [
    ({"name": "awgn", "sigma": -1}, "sigma"),
    ({"name": "awgn", "sigma": [30, 10]}, "sigma"),
    ({"name": "poisson_gaussian", "peak": 0}, "peak"),
    ({"name": "poisson_gaussian", "read_sigma": -2}, "read_sigma"),
    ({"name": "gaussian_blur", "sigma": 0}, "sigma"),
    ({"name": "gaussian_blur", "kernel_size": 4}, "kernel_size"),
    ({"name": "motion_blur", "length": 0}, "length"),
    ({"name": "bicubic_down", "scale": 5}, "scale"),
    ({"name": "jpeg", "quality": 0}, "quality"),
    ({"name": "jpeg", "quality": 101}, "quality"),
    ({"name": "mask", "kind": "blob"}, "kind"),
    ({"name": "rain", "density": 2}, "density"),
    ({"name": "haze", "airlight": 1.5}, "airlight"),
    ({"name": "haze", "depth": "lidar"}, "depth"),
    ({"name": "chain", "ops": []}, "ops"),
    ({"name": "one_of", "ops": []}, "ops"),
    ({"name": "one_of", "ops": ["awgn", "jpeg"], "weights": [1]}, "weights"),
    ({"name": "one_of", "ops": ["awgn", "jpeg"], "weights": [0, 0]}, "weights"),
])
def test_impossible_params_raise_naming_param(spec, param):
    with pytest.raises(ValueError, match=rf"{spec['name']}\.{param}"):
        D.build_degradation(spec)


def test_unknown_key_and_bad_input():
    with pytest.raises(KeyError, match="bogus"):
        D.build_degradation({"name": "awgn", "bogus": 1})
    with pytest.raises(ValueError, match="tensor"):
        D.AWGN(5)(torch.zeros(8, 8), gen())


def test_one_of_draws_each_op_per_image_in_proportion():
    # weights 3:1 between two degradations whose outputs are told apart exactly (no noise: constant shifts)
    x = torch.full((400, 1, 4, 4), 0.5)
    d = D.build_degradation({"name": "one_of", "weights": [3, 1], "ops": [
        {"name": "haze", "beta": 0.0, "airlight": 0.0, "depth": "gradient"},  # t = 1: identity
        {"name": "jpeg", "quality": 50}]})
    out = d(x, gen(3))
    assert torch.equal(out, d(x, gen(3)))
    picked_identity = (out == x).flatten(1).all(1)
    share = picked_identity.double().mean().item()
    assert 0.68 < share < 0.82  # 0.75 +- ~3.5 sigma for 400 draws
    single = torch.stack([d(x[i], gen(3)) for i in range(2)])
    assert single.shape == (2, 1, 4, 4)
