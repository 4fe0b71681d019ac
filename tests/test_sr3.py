"""SR3 / Palette math: schedule, forward marginal, γ draw, loss, and samplers with analytic nets."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from irdiff.methods.sr3 import SR3
from irdiff.registry import METHODS, check_kwargs


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class OracleEps(nn.Module):
    """Knows x0: returns the exact ε = (x − √γ x0)/√(1−γ) for whatever (x, γ) it is given."""

    def __init__(self, x0: torch.Tensor):
        super().__init__()
        self.x0 = x0
        self.levels: list[torch.Tensor] = []

    def forward(self, x, level, cond=None):
        self.levels.append(level.clone())
        g = 1 - level.to(torch.float64).view(-1, 1, 1, 1) ** 2  # the net is fed √(1−γ)
        return ((x.double() - g.sqrt() * self.x0.double()) / (1 - g).sqrt()).to(x.dtype)


class GaussianDataEps(nn.Module):
    """Optimal ε-predictor when every pixel of y0 is N(0, σ_d²): E[ε | y_t] = √(1−γ) y_t / (γσ_d² + 1 − γ)."""

    def __init__(self, sigma_d: float):
        super().__init__()
        self.var = sigma_d**2

    def forward(self, x, level, cond=None):
        g = 1 - level.to(x.dtype).view(-1, 1, 1, 1) ** 2  # the net is fed √(1−γ)
        return (1 - g).sqrt() * x / (g * self.var + 1 - g)


class Recorder(nn.Module):
    """Returns a fixed function of its inputs and remembers them."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = []

    def forward(self, x, level, cond=None):
        self.calls.append((x.clone(), level.clone(), None if cond is None else cond.clone()))
        out = 0.3 * x + level.view(-1, 1, 1, 1)
        if cond is not None:
            out = out + 0.1 * cond[:, : x.shape[1]]
        return out


def image(b=2, c=3, h=8, w=8, seed=1, dtype=torch.float32) -> torch.Tensor:
    return (torch.rand((b, c, h, w), generator=gen(seed), dtype=torch.float64) * 1.8 - 0.9).to(dtype)


# ---- construction and schedule --------------------------------------------------------------------

def test_registered_and_default_constructible():
    assert METHODS.get("sr3") is SR3
    m = SR3()
    assert m.num_steps == 2000 and m.samplers[0] == "ddim" and set(m.samplers) == {"ddim", "ddpm"}
    assert m.default_steps and m.net_in_channels(3) == 6
    assert SR3(inpainting=True).net_in_channels(3) == 7
    cfg = {"num_steps": 10, "loss_type": 2, "eta": 0.5, "clip_x0": False, "schedule": "cosine"}
    check_kwargs(SR3, cfg, "m")
    assert SR3(**cfg).num_steps == 10
    with pytest.raises(KeyError):
        check_kwargs(SR3, {"bogus": 1}, "m")
    with pytest.raises(ValueError):
        SR3(loss_type=3)
    with pytest.raises(ValueError):
        SR3(schedule="nope")


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_alpha_bar_schedule(schedule):
    m = SR3(schedule=schedule)
    ab = m.alpha_bar
    assert ab.dtype == np.float64 and ab.shape == (m.num_steps + 1,)
    assert ab[0] == 1.0 and np.all(np.diff(ab) < 0) and ab[-1] > 0
    if schedule == "linear":
        betas = np.linspace(1e-6, 1e-2, 2000)
        np.testing.assert_allclose(ab[1:], np.cumprod(1 - betas), rtol=1e-12)
        np.testing.assert_allclose(1 - ab[1] / ab[0], 1e-6, rtol=1e-9)


# ---- forward process ------------------------------------------------------------------------------

def test_q_sample_matches_simulated_chain():
    m = SR3(num_steps=20, beta_start=1e-3, beta_end=0.2)
    betas = 1 - m.alpha_bar[1:] / m.alpha_bar[:-1]
    n = 20000
    x0 = torch.tensor([0.8, -0.5, 0.1], dtype=torch.float64).view(1, 3, 1, 1).expand(n, 3, 1, 1)
    g = gen(3)
    x = x0.clone()
    for t in range(1, m.num_steps + 1):
        x = math.sqrt(1 - betas[t - 1]) * x + math.sqrt(betas[t - 1]) * torch.randn(x.shape, generator=g,
                                                                                    dtype=x.dtype)
        if t in (1, 7, 20):
            tt = torch.full((n,), t)
            xq = m.q_sample(x0, None, tt, torch.randn(x.shape, generator=g, dtype=x.dtype))
            ab = m.alpha_bar[t]
            for sample in (x, xq):
                torch.testing.assert_close(sample.mean(0).flatten(), math.sqrt(ab) * x0[0].flatten(),
                                           atol=0.03, rtol=0)
                torch.testing.assert_close(sample.var(0).flatten(), torch.full((3,), 1 - ab, dtype=x.dtype),
                                           atol=0.03, rtol=0.05)


def test_q_sample_closed_form_and_endpoints():
    m = SR3(num_steps=50, beta_start=1e-4, beta_end=0.05)
    x0, eps = image(), torch.randn((2, 3, 8, 8), generator=gen(2))
    t = torch.tensor([0, 50])
    xt = m.q_sample(x0, None, t, eps)
    assert torch.equal(xt[0], x0[0])
    ab = m.alpha_bar[50]
    torch.testing.assert_close(xt[1], math.sqrt(ab) * x0[1] + math.sqrt(1 - ab) * eps[1])


def test_gamma_per_sample_between_consecutive_alpha_bars():
    m = SR3(num_steps=100, beta_start=1e-3, beta_end=0.05)
    t = torch.randint(1, 101, (5000,), generator=gen(4))
    gamma = m.sample_gamma(t, gen(5))
    ab = torch.from_numpy(m.alpha_bar)
    assert gamma.dtype == torch.float64
    assert torch.all(gamma >= ab[t]) and torch.all(gamma <= ab[t - 1])
    # per sample, not per batch: equal t gets different γ, and the draw fills its interval
    same = m.sample_gamma(torch.full((1000,), 10), gen(6))
    u = (same - ab[10]) / (ab[9] - ab[10])
    assert same.unique().numel() == 1000
    assert abs(u.mean().item() - 0.5) < 0.03 and u.min() < 0.01 and u.max() > 0.99
    with pytest.raises(ValueError):
        m.sample_gamma(torch.tensor([0]), gen(0))


# ---- loss -----------------------------------------------------------------------------------------

def test_loss_feeds_gamma_and_noisy_input():
    m = SR3(num_steps=100, beta_start=1e-3, beta_end=0.05)
    x0, lq = image(b=4), image(b=4, seed=2)
    eps = torch.randn(x0.shape, generator=gen(7))
    t = torch.tensor([1, 5, 50, 100])
    net = Recorder()
    loss = m.loss(net, {"gt": x0, "lq": lq}, generator=gen(8), t=t, noise=eps)
    assert loss.shape == (4,)
    x_in, level, cond = net.calls[0]
    ab = torch.from_numpy(m.alpha_bar).float()
    assert level.shape == (4,)
    lo, hi = m.net_level(ab[t - 1].double()).float(), m.net_level(ab[t].double()).float()
    assert torch.all(level >= lo) and torch.all(level <= hi)  # √(1−γ) rises as γ falls
    g = m.sample_gamma(t, gen(8)).float().view(-1, 1, 1, 1)  # same generator state: same γ
    torch.testing.assert_close(level, m.net_level(g.flatten().double()).float())
    torch.testing.assert_close(x_in, g.sqrt() * x0 + (1 - g).sqrt() * eps)
    assert torch.equal(cond, lq)
    torch.testing.assert_close(loss, (net(x_in, level, cond) - eps).abs().flatten(1).mean(1))
    loss2 = SR3(num_steps=100, beta_start=1e-3, beta_end=0.05, loss_type=2).loss(
        net, {"gt": x0, "lq": lq}, generator=gen(8), t=t, noise=eps)
    torch.testing.assert_close(loss2, ((net(x_in, level, cond) - eps) ** 2).flatten(1).mean(1))


def test_loss_with_oracle_is_zero():
    m = SR3(num_steps=100, beta_start=1e-3, beta_end=0.05)
    x0 = image(b=6, dtype=torch.float64)
    loss = m.loss(OracleEps(x0), {"gt": x0, "lq": x0}, generator=gen(0))
    assert loss.shape == (6,) and loss.max() < 1e-9


def test_loss_reproducible_and_depends_on_pins():
    m = SR3()
    x0, lq = image(b=3), image(b=3, seed=9)
    batch = {"gt": x0, "lq": lq}
    net = Recorder()
    a = m.loss(net, batch, generator=gen(11))
    b = m.loss(net, batch, generator=gen(11))
    c = m.loss(net, batch, generator=gen(12))
    assert torch.equal(a, b) and not torch.equal(a, c)
    t = torch.tensor([3, 300, 1999])
    eps = torch.randn(x0.shape, generator=gen(13))
    p1 = m.loss(net, batch, generator=gen(14), t=t, noise=eps)
    p2 = m.loss(net, batch, generator=gen(14), t=t, noise=eps)
    p3 = m.loss(net, batch, generator=gen(14), t=t, noise=-eps)
    assert torch.equal(p1, p2) and not torch.equal(p1, p3)


def test_inpainting_loss_only_on_hole_and_known_pixels_are_gt():
    m = SR3(num_steps=100, beta_start=1e-3, beta_end=0.05, inpainting=True)
    x0 = image(b=2)
    mask = torch.zeros(2, 1, 8, 8)
    mask[0, :, 2:6, 2:6] = 1
    mask[1, :, :, :3] = 1
    lq = x0 * (1 - mask)
    eps = torch.randn(x0.shape, generator=gen(1))
    t = torch.tensor([40, 90])
    net = Recorder()
    loss = m.loss(net, {"gt": x0, "lq": lq, "mask": mask}, generator=gen(2), t=t, noise=eps)
    x_in, level, cond = net.calls[0]
    hole = mask.expand_as(x0) > 0.5
    assert torch.equal(x_in[~hole], x0[~hole])  # noisy input outside the hole replaced by GT
    # net input cat([x, cond]) = 3 + (3 + 1) = net_in_channels(3)
    assert x_in.shape[1] + cond.shape[1] == m.net_in_channels(3) and torch.equal(cond[:, 3:], mask)
    assert torch.equal(cond[:, :3][~hole], lq[~hole])
    assert cond[:, :3][hole].abs().mean() > 0.3  # hole filled with N(0, 1) noise
    err = (net(x_in, level, cond) - eps).abs()
    expect = torch.stack([err[i][hole[i]].mean() for i in range(2)])
    torch.testing.assert_close(loss, expect)

    class Outside(nn.Module):  # any prediction outside the hole must not move the loss
        def forward(self, x, level, cond=None):
            return torch.where(hole, net(x, level, cond), torch.full_like(x, 1e3))

    loss_out = m.loss(Outside(), {"gt": x0, "lq": lq, "mask": mask}, generator=gen(2), t=t, noise=eps)
    torch.testing.assert_close(loss_out, loss)
    with pytest.raises(ValueError):
        m.loss(net, {"gt": x0, "lq": lq}, generator=gen(2))


# ---- samplers -------------------------------------------------------------------------------------

@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
@pytest.mark.parametrize("steps", [1, 2, 5, 2000])
def test_oracle_sampler_returns_x0(sampler, steps):
    m = SR3()
    x0 = image(dtype=torch.float64)
    out = m.sample(OracleEps(x0), x0, steps=steps, sampler=sampler, generator=gen(3))
    torch.testing.assert_close(out, x0, atol=1e-9, rtol=0)


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_oracle_sampler_float32_and_eta(sampler):
    for m in (SR3(clip_x0=False), SR3(eta=1.0), SR3(schedule="cosine", num_steps=100)):
        x0 = image()
        out = m.sample(OracleEps(x0), x0, steps=7, sampler=sampler, generator=gen(3))
        torch.testing.assert_close(out, x0, atol=1e-5, rtol=0)


def test_sampler_feeds_gamma_of_the_subset():
    m = SR3()
    x0 = image(b=1)
    net = OracleEps(x0)
    m.sample(net, x0, steps=4, sampler="ddpm", generator=gen(0))
    expect = np.sqrt(1 - m.alpha_bar[[2000, 1500, 1000, 500]])
    got = [lv[0].item() for lv in net.levels]
    np.testing.assert_allclose(got, expect, rtol=1e-6)
    assert all(lv.shape == (1,) for lv in net.levels)


def _predicted_final_std(m: SR3, sampler: str, steps: int, var_d: float) -> float:
    """Exact output std of a sampler for y0 ~ N(0, var_d) and the optimal ε-predictor (all maps linear)."""
    idx = np.round(np.linspace(m.num_steps, 0, steps + 1)).astype(int)
    var = 1.0
    for t, s in zip(idx[:-1], idx[1:]):
        g_t, g_s = m.alpha_bar[t], m.alpha_bar[s]
        v_t = g_t * var_d + 1 - g_t
        k = math.sqrt(g_t) * var_d / v_t  # x̂0 = k·x_t
        if sampler == "ddpm":
            alpha = g_t / g_s
            c0 = (1 - alpha) * math.sqrt(g_s) / (1 - g_t)
            ct = (1 - g_s) * math.sqrt(alpha) / (1 - g_t)
            var = (c0 * k + ct) ** 2 * var + (1 - alpha) * (1 - g_s) / (1 - g_t)
        else:
            var = (math.sqrt(g_s) * k + math.sqrt(1 - g_s) * math.sqrt(1 - g_t) / v_t) ** 2 * var
    return math.sqrt(var)


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
@pytest.mark.parametrize("steps", [3, 20, 1000])
def test_gaussian_data_distribution(sampler, steps):
    """y0 ~ N(0, σ_d²) with its exact ε-predictor: the output std matches the exact linear-Gaussian
    recursion of the sampler (posterior mean, β̃ and DDIM coefficients), and tends to σ_d with many steps."""
    sigma_d = 0.4
    m = SR3(num_steps=1000, beta_start=1e-4, beta_end=0.02, clip_x0=False)
    cond = torch.zeros(20000, 1, 1, 1, dtype=torch.float64)
    out = m.sample(GaussianDataEps(sigma_d), cond, steps=steps, sampler=sampler, generator=gen(5))
    expect = _predicted_final_std(m, sampler, steps, sigma_d**2)
    assert abs(out.mean().item()) < 0.02
    assert abs(out.std().item() / expect - 1) < 0.02
    if steps == 1000:
        assert abs(expect - sigma_d) < 0.005


def test_ddpm_full_schedule_uses_training_betas():
    m = SR3(num_steps=30, beta_start=1e-3, beta_end=0.3, clip_x0=False)
    betas = np.linspace(1e-3, 0.3, 30)
    np.testing.assert_allclose(1 - m.alpha_bar[1:] / m.alpha_bar[:-1], betas, rtol=1e-10)


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_inpainting_sampling_keeps_known_pixels(sampler):
    m = SR3(inpainting=True)
    x0 = image(dtype=torch.float64)
    mask = torch.zeros(2, 1, 8, 8, dtype=torch.float64)
    mask[:, :, 1:5, 3:7] = 1
    lq = x0 * (1 - mask)
    known = mask.expand_as(x0) < 0.5
    states = []
    out = m.sample(Recorder(), lq, steps=5, sampler=sampler, generator=gen(2), mask=mask,
                   callback=lambda i, n, x: states.append(x))
    for x in [*states, out]:
        assert torch.equal(x[known], x0[known])
    assert not torch.allclose(out[~known], x0[~known])
    out = m.sample(OracleEps(x0), lq, steps=3, sampler=sampler, generator=gen(2), mask=mask)
    torch.testing.assert_close(out, x0, atol=1e-9, rtol=0)
    with pytest.raises(ValueError):
        m.sample(Recorder(), lq, steps=2, sampler=sampler, generator=gen(2))
