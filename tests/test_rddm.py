"""RDDM math: schedules, marginal vs the residual+noise chain, oracle DDIM for every mode."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from irdiff.methods.rddm import RDDM, SAMPLERS, coefficients
from irdiff.registry import METHODS

T = 1000


def images(seed=0, shape=(2, 3, 8, 8)):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1
    cond = (x0 + 0.5 * torch.randn(shape, generator=g, dtype=torch.float64)).clamp(-1, 1)
    return x0, cond


def oracle(method, x0):
    """Returns the true residual and/or noise of I_t given the known x0, reading (ᾱ_t, β̄_t/β̄_T)
    from the noise level, so it also follows a schedule changed at sampling time."""

    def net(x, level, cond=None):
        a = level[:, 0].view(-1, 1, 1, 1)
        b = level[:, 1].view(-1, 1, 1, 1) * float(method.beta_bar[-1])
        res = cond - x0
        eps = (x - x0 - a * res) / b
        return {"res_noise": torch.cat([res, eps], 1), "res": res, "noise": eps}[method.mode]

    return net


class TinyNet(nn.Module):
    def __init__(self, c=3, out=6):
        super().__init__()
        self.conv = nn.Conv2d(2 * c, out, 3, padding=1)
        self.lin = nn.Linear(2, out)

    def forward(self, x, noise_level, cond=None):
        return self.conv(torch.cat([x, cond], 1)) + self.lin(noise_level.to(x.dtype))[..., None, None]


def test_registry_and_defaults():
    m = METHODS.get("rddm")()
    assert isinstance(m, RDDM) and m.num_steps == T and m.default_steps == 10 and m.samplers[0] == "ddim"
    assert m.noise_level_dim == 2 and m.net_in_channels(3) == 6 and m.net_out_channels(3) == 6
    assert RDDM(mode="res").net_out_channels(3) == 3 and RDDM(mode="noise").net_out_channels(3) == 3
    with pytest.raises(ValueError):
        RDDM(mode="x0")
    with pytest.raises(ValueError):
        RDDM(alpha_schedule="cubic")


@pytest.mark.parametrize("sum_scale", [0.01, 1.0])
def test_schedules(sum_scale):
    m = RDDM(sum_scale=sum_scale)
    for s in (m.alpha_bar, m.beta_bar):
        assert s.dtype == np.float64 and s.shape == (T + 1,) and s[0] == 0 and np.all(np.diff(s) > 0)
    assert m.alpha_bar[T] == 1.0
    assert m.beta_bar[T] ** 2 == pytest.approx(sum_scale, rel=1e-12)
    # α "decreased": α_1 = T / (T(T+1)/2) is the largest; β² "increased": β_1² the smallest
    assert m.alpha_bar[1] == pytest.approx(2 / (T + 1), rel=1e-12)
    assert m.beta_bar[1] ** 2 == pytest.approx(sum_scale * 2 / (T * (T + 1)), rel=1e-12)
    for name in ("decreased", "increased", "average"):
        w = coefficients(T, name)
        assert w[0] == 0 and w.sum() == pytest.approx(1, abs=1e-12)


def test_terminal_state_is_input_plus_noise():
    m = RDDM()
    x0, cond = images()
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    got = m.q_sample(x0, cond, torch.full((2,), T), noise)
    torch.testing.assert_close(got, cond + math.sqrt(0.01) * noise, rtol=0, atol=1e-15)
    torch.testing.assert_close(m.q_sample(x0, cond, torch.zeros(2, dtype=torch.long), noise), x0)


def test_marginal_matches_step_chain():
    """I_t = I_{t−1} + α_t I_res + β_t ε_{t−1} simulated step by step vs the closed form."""
    m = RDDM(sum_scale=0.5)
    alphas = np.diff(m.alpha_bar)
    betas = np.sqrt(np.diff(m.beta_bar**2))
    g = torch.Generator().manual_seed(2)
    n, x0, cin = 20_000, 0.3, -0.8
    res = cin - x0
    x = torch.full((n,), x0, dtype=torch.float64)
    for t in range(1, T + 1):
        x = x + alphas[t - 1] * res + betas[t - 1] * torch.randn(n, generator=g, dtype=torch.float64)
        if t in (1, 100, 500, T):
            tt = torch.tensor([t])
            mean = m.q_sample(torch.tensor([[x0]]), torch.tensor([[cin]]), tt, torch.zeros(1, 1)).item()
            sd = m.beta_bar[t]
            assert abs(x.mean().item() - mean) < 5 * sd / math.sqrt(n)
            assert x.std().item() == pytest.approx(sd, rel=0.03)
    assert abs(x.mean().item() - cin) < 5 * m.beta_bar[T] / math.sqrt(n)


def test_eta_one_step_draws_from_the_posterior_of_the_simulated_chain():
    """η = 1, one step t → t−1 with an oracle: I_{t−1} ~ q(I_{t−1} | I_t, I_0). That posterior is measured
    from the forward chain I_k = I_{k−1} + α_k I_res + β_k ε simulated step by step (Gaussian, so the
    least-squares line of I_{t−1} on I_t gives its mean and the residual variance its variance)."""
    Tn, t, n = 50, 20, 400_000
    m = RDDM(num_steps=Tn, sum_scale=0.5, eta=1.0, clip_x0=False)
    alphas, betas = np.diff(m.alpha_bar), np.sqrt(np.diff(m.beta_bar**2))
    g = torch.Generator().manual_seed(7)
    x0, cin = 0.3, -0.8
    x = torch.full((n,), x0, dtype=torch.float64)
    for k in range(1, t + 1):
        prev = x
        x = x + alphas[k - 1] * (cin - x0) + betas[k - 1] * torch.randn(n, generator=g, dtype=torch.float64)
    slope = torch.cov(torch.stack([prev, x]))[0, 1] / x.var()
    intercept = prev.mean() - slope * x.mean()
    resid_var = (prev - intercept - slope * x).var().item()

    value = float(x.mean() + x.std())  # condition on one I_t, a std above its mean
    shape = (n, 1, 1, 1)
    truth = torch.full(shape, x0, dtype=torch.float64)
    seen = {}
    ddim = SAMPLERS["ddim"]
    x_t, cond = torch.full(shape, value, dtype=torch.float64), torch.full(shape, cin, dtype=torch.float64)
    ddim(m, oracle(m, truth), x_t, cond, [t, t - 1, 0], torch.Generator().manual_seed(8),
         lambda i, k, out: seen.setdefault(i, out.flatten()))
    step = seen[0]
    sd = math.sqrt(resid_var)
    assert abs(step.mean().item() - (intercept + slope * value).item()) < 5 * sd / math.sqrt(n) + 1e-3 * sd
    assert step.var().item() == pytest.approx(resid_var, rel=0.02)


@pytest.mark.parametrize("mode", ["res_noise", "res", "noise"])
@pytest.mark.parametrize("steps", [1, 2, 5, 10, T, [T, 999, 500, 3, 1, 0]])
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_ddim_oracle_exact(mode, steps, eta):
    if mode == "noise" and steps == 1:
        pytest.skip("SM-N at t = T: ᾱ_T = 1, so I_T = I_in + β̄_T ε holds no trace of x0 (see next test)")
    m = RDDM(mode=mode)
    x0, cond = images(3)
    g = torch.Generator().manual_seed(4)
    calls = []
    out = SAMPLERS["ddim"](m, oracle(m, x0), m.start(cond, g), cond, steps, g,
                           lambda i, n, x: calls.append(i), eta=eta)
    # exact for any η: every step lands on I_0 + ᾱ_s I_res + β̄_s ε' for some ε' the oracle recovers
    torch.testing.assert_close(out, x0, rtol=0, atol=1e-9)
    assert len(calls) == (steps if isinstance(steps, int) else len(steps) - 1)


def test_noise_mode_single_step_is_not_identifiable():
    m = RDDM(mode="noise")
    x0, cond = images(5)
    g = torch.Generator().manual_seed(6)
    out = SAMPLERS["ddim"](m, oracle(m, x0), m.start(cond, g), cond, 1, g, None)
    assert (out - x0).abs().max() > 0.1 and out.abs().max() <= 1  # garbage, but clamped


@pytest.mark.parametrize("alpha_schedule,beta_schedule", [("average", None), ("increased", "average")])
def test_schedule_change_at_sampling(alpha_schedule, beta_schedule):
    m = RDDM()
    x0, cond = images(7)
    out = m.sample(oracle(m, x0), cond, steps=5, generator=torch.Generator().manual_seed(0),
                   alpha_schedule=alpha_schedule, beta_schedule=beta_schedule)
    torch.testing.assert_close(out, x0, rtol=0, atol=1e-9)
    assert m.alpha_schedule == "decreased"  # the method itself is untouched


@pytest.mark.parametrize("mode", ["res_noise", "res", "noise"])
def test_losses(mode):
    torch.manual_seed(0)
    m = RDDM(mode=mode)
    x0, cond = images(8, (3, 3, 8, 8))
    batch = {"gt": x0, "lq": cond}
    assert m.loss(oracle(m, x0), batch, t=torch.tensor([1, 500, T]),
                  noise=torch.randn(x0.shape, dtype=torch.float64)).abs().max() < 1e-8
    net = TinyNet(out=m.net_out_channels(3))
    fb = {k: v.float() for k, v in batch.items()}
    for loss_type in ("l1", "l2"):
        m = RDDM(mode=mode, loss_type=loss_type)
        a = m.loss(net, fb, generator=torch.Generator().manual_seed(1))
        b = m.loss(net, fb, generator=torch.Generator().manual_seed(1))
        assert a.shape == (3,) and torch.equal(a, b) and torch.all(a > 0)
        a.mean().backward()
