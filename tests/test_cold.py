"""Cold Diffusion math: the degradations D(x0, s), the loss, and Algorithms 1 and 2 with analytic nets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from irdiff.methods.base import step_indices
from irdiff.methods.cold import ColdDiffusion, sample_improved, sample_naive
from irdiff.registry import METHODS, check_kwargs

ALL = ["blur", "mask", "pixelate", "downsample", "snow", "interp"]


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def image(b=2, c=3, h=16, w=16, seed=1, dtype=torch.float64) -> torch.Tensor:
    return (torch.rand((b, c, h, w), generator=gen(seed), dtype=torch.float64) * 1.8 - 0.9).to(dtype)


class Oracle(nn.Module):
    """Returns x0 whatever it is given, and records its inputs."""

    def __init__(self, x0: torch.Tensor, error=None):
        super().__init__()
        self.x0 = x0
        self.error = error  # optional callable level -> additive error
        self.calls: list[tuple[torch.Tensor, torch.Tensor, object]] = []

    def forward(self, x, level, cond=None):
        self.calls.append((x.clone(), level.clone(), cond))
        out = self.x0.to(x.dtype)
        return out if self.error is None else out + self.error(level)


class Tiny(nn.Module):
    def forward(self, x, level, cond=None):
        return 0.5 * x + 0.1 * level.view(-1, 1, 1, 1)


def make(deg: str, **kw) -> ColdDiffusion:
    defaults = {"blur": {"num_steps": 6}, "mask": {"num_steps": 8, "mask_std": 0.5}, "snow": {"num_steps": 6},
                "interp": {"num_steps": 8}}
    return ColdDiffusion(degradation=deg, **{**defaults.get(deg, {}), **kw})


def lq_for(m: ColdDiffusion, x0: torch.Tensor) -> torch.Tensor:
    """The degraded input a data pipeline would provide: lq for 'interp', D(x0, T) otherwise."""
    if m.degradation == "interp":
        return image(b=x0.shape[0], c=x0.shape[1], h=x0.shape[2], w=x0.shape[3], seed=99, dtype=x0.dtype)
    return m.degrade(x0, m.num_steps)


# ---- construction -------------------------------------------------------------------------------

def test_registered_and_default_constructible():
    assert METHODS.get("cold") is ColdDiffusion
    m = ColdDiffusion()
    assert m.samplers == ("improved", "naive") and m.default_steps == m.num_steps
    assert m.net_in_channels(3) == 3 and m.net_out_channels(3) == 3
    assert ColdDiffusion(degradation="pixelate").num_steps == 2
    cfg = {"degradation": "blur", "num_steps": 5, "blur_kernel_size": 7, "blur_std": 0.5,
           "blur_std_increment": 0.1}
    check_kwargs(ColdDiffusion, cfg, "m")
    assert ColdDiffusion(**cfg).num_steps == 5
    for bad in ({"degradation": "nope"}, {"blur_kernel_size": 4}, {"num_steps": 0}, {"pixelate_mode": "x"}):
        with pytest.raises(ValueError):
            ColdDiffusion(**bad)


# ---- the degradations ---------------------------------------------------------------------------

@pytest.mark.parametrize("deg", ALL)
def test_degrade_zero_is_identity_and_T_degrades(deg):
    m = make(deg)
    x0 = image()
    lq = lq_for(m, x0)
    assert torch.equal(m.degrade(x0, 0, lq), x0)
    assert (m.degrade(x0, m.num_steps, lq) - x0).abs().mean() > 0.05
    # error grows with s
    errs = [(m.degrade(x0, s, lq) - x0).abs().mean().item() for s in range(m.num_steps + 1)]
    assert all(b >= a - 1e-12 for a, b in zip(errs, errs[1:]))


@pytest.mark.parametrize("deg", ALL)
def test_degrade_per_sample_s_matches_scalar_s(deg):
    m = make(deg)
    x0 = image(b=4)
    lq = lq_for(m, x0)
    s = torch.tensor([0, m.num_steps, 1, m.num_steps // 2])
    batched = m.degrade(x0, s, lq)
    for b in range(4):
        assert torch.equal(batched[b], m.degrade(x0, int(s[b]), lq)[b])
    hi, lo = m.degrade_pair(x0, 3 if m.num_steps >= 3 else 2, 1, lq)
    assert torch.equal(hi, m.degrade(x0, 3 if m.num_steps >= 3 else 2, lq))
    assert torch.equal(lo, m.degrade(x0, 1, lq))
    with pytest.raises(ValueError):
        m.degrade(x0, m.num_steps + 1, lq)


def test_blur_is_composed_gaussian_with_reflect_border():
    from kornia.filters import gaussian_blur2d

    m = make("blur", blur_kernel_size=7, blur_std=0.8, blur_std_increment=0.3)
    x0 = image()
    x = x0
    for s in range(1, m.num_steps + 1):
        sigma = 0.8 + 0.3 * (s - 1)
        x = gaussian_blur2d(x, (7, 7), (sigma, sigma), border_type="reflect")
        torch.testing.assert_close(m.degrade(x0, s), x, atol=1e-12, rtol=0)
    # a constant image is a fixed point (normalised kernel, reflect border keeps it flat)
    flat = torch.full((1, 3, 16, 16), 0.3, dtype=torch.float64)
    torch.testing.assert_close(m.degrade(flat, m.num_steps), flat, atol=1e-12, rtol=0)


def test_mask_is_product_of_centred_gaussian_holes():
    m = make("mask", mask_std=0.5, mask_initial=1.0)
    x0 = image(h=16, w=12)
    yy, xx = np.mgrid[0:16, 0:12]
    r2 = (yy - 8.0) ** 2 + (xx - 6.0) ** 2
    z = np.ones((16, 12))
    for s in range(1, m.num_steps + 1):
        z = z * (1 - np.exp(-r2 / (2 * (0.5 * s) ** 2)))
        torch.testing.assert_close(m.degrade(x0, s), x0 * torch.from_numpy(z), atol=1e-12, rtol=0)
    assert m.degrade(x0, 1)[..., 8, 6].abs().max() == 0  # the centre is gone from the first step


@pytest.mark.parametrize("deg", ["pixelate", "downsample"])
def test_pixelate_factor_two_per_step(deg):
    m = ColdDiffusion(degradation=deg, num_steps=2)
    x0 = image(h=16, w=8)
    for s, f in ((1, 2), (2, 4)):
        expect = F.avg_pool2d(x0, f).repeat_interleave(f, -2).repeat_interleave(f, -1)
        torch.testing.assert_close(m.degrade(x0, s), expect, atol=1e-12, rtol=0)
    m_bic = ColdDiffusion(degradation=deg, num_steps=2, pixelate_mode="bicubic")
    out = m_bic.degrade(x0, 2)
    assert torch.equal(out, out[..., ::4, ::4].repeat_interleave(4, -2).repeat_interleave(4, -1))
    with pytest.raises(ValueError):
        m.degrade(image(h=10, w=8), 2)


def test_snow_is_deterministic_monotone_and_bounded():
    m = make("snow")
    x0 = image()
    a = m.degrade(x0, m.num_steps)
    assert torch.equal(a, make("snow").degrade(x0, m.num_steps))  # fresh instance, same seed
    assert torch.equal(a[1:], m.degrade(x0[1:], m.num_steps))  # same snow for every image
    assert not torch.equal(a, make("snow", snow_seed=1).degrade(x0, m.num_steps))
    assert a.min() >= -1 and a.max() <= 1
    # snow only brightens towards white, more with each step
    prev = x0
    for s in range(1, m.num_steps + 1):
        cur = m.degrade(x0, s)
        assert torch.all(cur >= prev - 1e-12)
        prev = cur
    assert torch.equal(m.degrade(x0.float(), 3), m.degrade(x0.float(), 3))


def test_interp_is_linear_interpolation_and_needs_lq():
    m = make("interp")
    x0 = image()
    lq = lq_for(m, x0)
    for s in range(m.num_steps + 1):
        w = s / m.num_steps
        torch.testing.assert_close(m.degrade(x0, s, lq), (1 - w) * x0 + w * lq, atol=1e-12, rtol=0)
    assert torch.equal(m.degrade(x0, m.num_steps, lq), lq)
    with pytest.raises(ValueError):
        m.degrade(x0, 1)


# ---- loss ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("deg", ALL)
def test_loss_uses_the_same_D_and_level(deg):
    m = make(deg)
    x0 = image(b=3, dtype=torch.float32)
    lq = lq_for(m, x0)
    t = torch.tensor([1, m.num_steps, max(1, m.num_steps // 2)])
    net = Oracle(x0, error=lambda lv: 0.25 * lv.view(-1, 1, 1, 1))
    loss = m.loss(net, {"gt": x0, "lq": lq}, generator=gen(0), t=t)
    x_in, level, cond = net.calls[0]
    assert torch.equal(x_in, m.degrade(x0, t, lq)) and torch.equal(x_in, m.q_sample(x0, lq, t, None))
    assert cond is None and level.dtype == x0.dtype
    assert torch.equal(level, (t.double() / m.num_steps).float())
    assert loss.shape == (3,)
    torch.testing.assert_close(loss, 0.25 * t.float() / m.num_steps)  # L1 to x0
    l2 = ColdDiffusion(degradation=deg, num_steps=m.num_steps, loss_type=2, mask_std=m.mask_std).loss(
        net, {"gt": x0, "lq": lq}, generator=gen(0), t=t)
    torch.testing.assert_close(l2, (0.25 * t.float() / m.num_steps) ** 2)


def test_loss_draws_s_per_sample_and_is_reproducible():
    m = make("blur", num_steps=50)
    x0 = image(b=64, h=8, w=8, dtype=torch.float32)
    net = Oracle(x0)
    a = m.loss(Tiny(), {"gt": x0, "lq": x0}, generator=gen(3))
    b = m.loss(Tiny(), {"gt": x0, "lq": x0}, generator=gen(3))
    c = m.loss(Tiny(), {"gt": x0, "lq": x0}, generator=gen(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.all(m.loss(net, {"gt": x0, "lq": x0}, generator=gen(3)) == 0)
    s = torch.round(net.calls[0][1].double() * m.num_steps)
    assert s.min() >= 1 and s.max() <= m.num_steps and s.unique().numel() > 10


# ---- samplers -----------------------------------------------------------------------------------

@pytest.mark.parametrize("deg", ALL)
@pytest.mark.parametrize("sampler", ["improved", "naive"])
def test_oracle_returns_x0_for_any_steps(deg, sampler):
    m = make(deg)
    x0 = image(dtype=torch.float32)
    cond = lq_for(m, x0)
    for steps in sorted({1, 2, 5, m.num_steps}):
        net = Oracle(x0)
        out = m.sample(net, cond, steps=steps, sampler=sampler)
        # x_T = D(x0, T) from the same D, so every state is D(x0, s') bit for bit
        assert torch.equal(out, x0), (steps, (out - x0).abs().max())
        idx = step_indices(m.num_steps, steps)
        assert [round(c[1][0].item() * m.num_steps) for c in net.calls] == idx[:-1]
        assert torch.equal(net.calls[0][0], cond)
        for (x_in, _, c), s in zip(net.calls, idx[:-1]):
            assert c is None and torch.equal(x_in, m.degrade(x0, s, cond))


class AdditiveCold(ColdDiffusion):
    """A test-only 'first-order' degradation D(x, s) = x + (s/T)·e with a fixed e (Bansal et al. §3.3)."""

    def __init__(self, e: torch.Tensor, num_steps: int):
        super().__init__(degradation="interp", num_steps=num_steps)
        self.e = e

    def _chain(self, x0, wanted, lq):
        for s in wanted:
            yield s, x0 + (s / self.num_steps) * self.e


def test_algorithm2_exact_for_first_order_degradation_with_imperfect_restorer():
    x0 = image()
    e = image(seed=5)
    m = AdditiveCold(e, num_steps=10)
    net = Oracle(x0, error=lambda lv: 0.3 * torch.sin(7 * lv).view(-1, 1, 1, 1) + 0.1)  # wrong at every s
    for steps in (1, 3, 10):
        x_T = m.degrade(x0, m.num_steps)
        out = sample_improved(m, net, x_T, x_T, steps, None, None)
        torch.testing.assert_close(out, x0, atol=1e-12, rtol=0)
        naive = sample_naive(m, net, x_T, x_T, steps, None, None)
        assert (naive - x0).abs().max() > 0.05  # Algorithm 1 keeps R's error


def test_algorithm2_on_interp_averages_restorer_errors():
    """interp is affine in x0 but its perturbation depends on x0, so Alg. 2 is exact only for exact R;
    with R = x0 + err(s) the result is x0 + Σ_k (s_k − s_{k+1})/T · err(s_k), the step-weighted mean."""
    m = make("interp", num_steps=12)
    x0 = image()
    lq = lq_for(m, x0)
    err = {s: image(seed=100 + s) * 0.1 for s in range(m.num_steps + 1)}
    net = Oracle(x0, error=lambda lv: err[round(lv[0].item() * m.num_steps)])
    for steps in (1, 4, 12):
        idx = step_indices(m.num_steps, steps)
        expect = x0 + sum((s - sp) / m.num_steps * err[s] for s, sp in zip(idx[:-1], idx[1:]))
        out = m.sample(net, lq, steps=steps, sampler="improved")
        torch.testing.assert_close(out, expect, atol=1e-12, rtol=0)
        naive = m.sample(net, lq, steps=steps, sampler="naive")
        torch.testing.assert_close(naive, x0 + err[idx[-2]], atol=1e-12, rtol=0)


def test_pixelate_restorer_takes_lr_images_and_upsamples_them_nearest():
    """Cold pixelate T = 2 is x4 SR: the Restorer has scale 4 and feeds D(x0, T)'s look (nearest-upsampled LR).
    With R(x) = x every pixelated state is a fixed point of Alg. 2, so the output is exactly that input."""
    from irdiff.config import Config, from_dict
    from irdiff.inference import Restorer

    class Same(torch.nn.Module):
        def forward(self, x, noise_level=None, cond=None):
            return x

    cfg = from_dict(Config, {"method": {"name": "cold", "degradation": "pixelate", "num_steps": 2},
                             "net": {"name": "unet"}})
    method = ColdDiffusion(degradation="pixelate", num_steps=2)
    r = Restorer(method, Same(), cfg, {})
    assert r.scale == 4
    lr = np.random.default_rng(0).integers(0, 256, (12, 20, 3), dtype=np.uint8)
    want = lr.repeat(4, 0).repeat(4, 1)
    for tile in (0, 32):
        out = r.restore(lr, tile=tile, overlap=8, progress=False)
        np.testing.assert_array_equal(out, want)
