"""IR-SDE math: schedule identities, marginals vs simulated chains, posterior, oracle samplers."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from irdiff.methods.irsde import IRSDE, SAMPLERS, theta_schedule
from irdiff.registry import METHODS

T = 100


def images(seed=0, shape=(2, 3, 8, 8)):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1
    mu = (x0 + 0.3 * torch.randn(shape, generator=g, dtype=torch.float64)).clamp(-1, 1)
    return x0, mu


def oracle(method, x0):
    """A net that returns the true ε of its input x_t given the known x0 (net input is x_t − μ)."""

    def net(x, level, cond=None):
        t = torch.round(level * method.num_steps).long().numpy()
        w = torch.from_numpy(method.mean_weight(t)).view(-1, 1, 1, 1).to(x)
        sd = torch.from_numpy(np.sqrt(method.variance(t))).view(-1, 1, 1, 1).to(x)
        return (x - w * (x0 - cond)) / sd

    return net


class TinyNet(nn.Module):
    def __init__(self, c=3):
        super().__init__()
        self.conv = nn.Conv2d(2 * c, c, 3, padding=1)
        self.lin = nn.Linear(1, c)

    def forward(self, x, noise_level, cond=None):
        h = self.conv(torch.cat([x, cond], 1))
        return h + self.lin(noise_level.view(-1, 1).to(x.dtype))[..., None, None]


# --- schedule ------------------------------------------------------------------------------------

def test_registry_and_defaults():
    m = METHODS.get("irsde")()
    assert isinstance(m, IRSDE) and m.num_steps == T and m.samplers[0] == "posterior"
    assert m.net_in_channels(3) == 6 and m.net_out_channels(3) == 3 and m.noise_level_dim == 1
    assert m.lam == pytest.approx(2 * 10 / 255)
    assert IRSDE(lam=30).lam == pytest.approx(60 / 255)


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
@pytest.mark.parametrize("eps", [0.005, 0.04])
def test_theta_bar_identities(schedule, eps):
    m = IRSDE(schedule=schedule, eps=eps)
    assert m.theta_bar.dtype == np.float64 and m.theta_bar.shape == (T + 1,)
    assert m.theta_bar[0] == 0.0
    assert math.exp(-m.theta_bar[T]) == pytest.approx(eps, rel=1e-12)
    theta = theta_schedule(T, schedule)
    # θ̄ already holds dt: per-step increments are θ_t·dt with dt = −ln ε / Σ_{t≥1} θ_t, not 1/T
    dt = -math.log(eps) / theta[1:].sum()
    assert m.dt == pytest.approx(dt, rel=1e-12)
    np.testing.assert_allclose(np.diff(m.theta_bar), theta[1:] * dt, rtol=1e-12)
    assert np.all(np.diff(m.theta_bar) > 0)
    assert m.variance(0) == 0.0
    assert m.variance(T) == pytest.approx(m.lam**2 * (1 - eps**2))


def test_cosine_theta_is_one_minus_alpha_bar():
    theta = theta_schedule(T, "cosine")
    f = lambda k: math.cos((k / (T + 2) + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    for i in (0, 1, 50, T):
        assert theta[i] == pytest.approx(1 - f(i + 1) / f(0), rel=1e-12)
    assert np.all(np.diff(theta) > 0) and 0 < theta[0] < 1e-3 and theta[T] < 1


# --- forward marginal vs simulated chains ------------------------------------------------------

def _chain_stats(x):
    return x.mean().item(), x.var().item()


@pytest.mark.parametrize("t_check", [5, 40, T])
def test_marginal_matches_exact_transition_chain(t_check):
    m = IRSDE(lam=30)
    g = torch.Generator().manual_seed(1)
    n, x0, mu = 200_000, 0.7, -0.4
    x = torch.full((n,), x0, dtype=torch.float64)
    for t in range(1, t_check + 1):  # exact one-step Gaussian transitions of the OU process
        a = math.exp(-(m.theta_bar[t] - m.theta_bar[t - 1]))
        z = torch.randn(n, generator=g, dtype=torch.float64)
        x = mu + a * (x - mu) + m.lam * math.sqrt(1 - a * a) * z
    mean, var = _chain_stats(x)
    tt = torch.tensor([t_check])
    m_t = m.q_sample(torch.tensor([[x0]]), torch.tensor([[mu]]), tt, torch.zeros(1, 1)).item()
    v_t = m.variance(t_check)
    assert abs(mean - m_t) < 5 * math.sqrt(v_t / n)
    assert var == pytest.approx(v_t, rel=0.02)


def test_marginal_matches_euler_maruyama_sde():
    """Simulate dx = θ(μ − x)dt + σ dw, σ² = 2λ²θ, with 10 Euler substeps per step."""
    m = IRSDE(lam=30)
    g = torch.Generator().manual_seed(2)
    n, k, x0, mu = 50_000, 10, 0.9, -0.5
    x = torch.full((n,), x0, dtype=torch.float64)
    for t in range(1, T + 1):
        h = (m.theta_bar[t] - m.theta_bar[t - 1]) / k  # θ_t dt / k
        for _ in range(k):
            z = torch.randn(n, generator=g, dtype=torch.float64)
            x = x + h * (mu - x) + math.sqrt(2 * m.lam**2 * h) * z
        if t in (10, T):
            mean, var = _chain_stats(x)
            m_t = mu + (x0 - mu) * m.mean_weight(t)
            assert abs(mean - m_t) < 5 * math.sqrt(m.variance(t) / n) + 1e-3 * abs(x0 - mu)
            assert var == pytest.approx(m.variance(t), rel=0.03)
    # at T the mean keeps only ε_T of x0 − μ: x_T ≈ μ + λ ε
    assert abs(x.mean().item() - mu) < 0.01


# --- posterior / optimal path -------------------------------------------------------------------

def test_optimal_prev_is_the_reference_formula():
    m = IRSDE(lam=30)
    x0, mu = images()
    g = torch.Generator().manual_seed(3)
    t = torch.tensor([1, 57])
    xt = m.q_sample(x0, mu, t, torch.randn(x0.shape, generator=g, dtype=torch.float64))
    got = m.optimal_prev(xt, x0, mu, t)
    for b, tb in enumerate(t.tolist()):  # the paper's A, B, C form, written independently
        A = math.exp(-(m.theta_bar[tb] - m.theta_bar[tb - 1]))
        B, C = math.exp(-m.theta_bar[tb]), math.exp(-m.theta_bar[tb - 1])
        ref = mu[b] + A * (1 - C**2) / (1 - B**2) * (xt[b] - mu[b])
        ref = ref + C * (1 - A**2) / (1 - B**2) * (x0[b] - mu[b])
        torch.testing.assert_close(got[b], ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("t,s", [(2, 1), (60, 20), (T, 0), (30, 0)])
def test_posterior_jump_matches_simulated_joint(t, s):
    """Draw x_s from the marginal and x_t from the exact s -> t transition; regress x_s on x_t."""
    m = IRSDE(lam=30)
    g = torch.Generator().manual_seed(4)
    n, x0, mu = 400_000, 0.6, -0.2
    xs = mu + (x0 - mu) * m.mean_weight(s) + math.sqrt(m.variance(s)) * torch.randn(n, generator=g,
                                                                                    dtype=torch.float64)
    a = math.exp(-(m.theta_bar[t] - m.theta_bar[s]))
    xt = mu + a * (xs - mu) + m.lam * math.sqrt(1 - a * a) * torch.randn(n, generator=g, dtype=torch.float64)
    c_t, c_0, var = m.posterior_coefs(t, s)
    if s == 0:
        assert c_t == 0 and var == 0 and c_0 == pytest.approx(1.0)
        return
    cov = ((xt - xt.mean()) * (xs - xs.mean())).mean()
    slope = (cov / xt.var()).item()
    resid = xs - xs.mean() - slope * (xt - xt.mean())
    se = math.sqrt(resid.var().item() / (n * xt.var().item()))  # standard error of the slope
    assert abs(slope - c_t) < 5 * se
    assert resid.var().item() == pytest.approx(var, rel=0.02)
    # intercept: E[x_s | x_t] = μ + c_t (x_t − μ) + c_0 (x0 − μ)
    pred = mu + c_t * (xt - mu) + c_0 * (x0 - mu)
    assert abs((xs - pred).mean().item()) < 5 * math.sqrt(var / n)


# --- samplers with an oracle ---------------------------------------------------------------------

@pytest.mark.parametrize("steps", [1, 2, 5, T, [T, 73, 40, 39, 3, 0], [T, 1, 0]])
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_posterior_sampler_oracle_exact(steps, eta):
    m = IRSDE(lam=30)
    x0, mu = images(5)
    g = torch.Generator().manual_seed(6)
    out = SAMPLERS["posterior"](m, oracle(m, x0), m.start(mu, g), mu, steps, g, None, eta=eta)
    # exact (float64 round-off): x̂0 = x0 at every step and the last step has zero variance
    torch.testing.assert_close(out, x0, rtol=0, atol=1e-12)


def test_euler_samplers_with_oracle_land_close():
    """Not exact: first-order Euler in a stiff region near t = 0, and the SDE's last step
    (t = 1 -> 0) still adds noise of std √(2λ²θ_1 dt) ≈ √v_1 (as the reference code does)."""
    m = IRSDE(lam=30)
    x0, mu = images(7)
    g = torch.Generator().manual_seed(8)
    sd1 = math.sqrt(m.variance(1))  # ≈ 0.0044 on [-1, 1]
    err = {}
    for name in ("sde", "ode"):
        for steps in (5, 20, T):
            out = SAMPLERS[name](m, oracle(m, x0), m.start(mu, g), mu, steps, g, None)
            err[name, steps] = (out - x0).abs().mean().item()
    assert err["ode", T] < err["ode", 20] < err["ode", 5]
    assert err["sde", T] < err["sde", 20] < err["sde", 5]
    assert err["ode", T] < 2 * sd1 and err["sde", T] < 2 * sd1


def test_sample_clamps_and_counts_callbacks():
    m = IRSDE()
    net = TinyNet().double()
    x0, mu = images(9)
    for name in m.samplers:
        calls = []
        out = m.sample(net, mu, steps=7, sampler=name, generator=torch.Generator().manual_seed(0),
                       callback=lambda i, n, x, calls=calls: calls.append((i, n, x.shape)))
        assert out.shape == mu.shape and out.abs().max() <= 1
        assert [c[0] for c in calls] == list(range(7)) and all(c[1] == 7 for c in calls)
    with pytest.raises(ValueError):
        m.sample(net, mu, sampler="nope")
    with pytest.raises(ValueError):
        m.sample(net, mu, steps=[T, 50, 60, 0])


def test_oracle_losses():
    x0, mu = images(11, (4, 3, 8, 8))
    t = torch.tensor([1, 10, 50, T])
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    batch = {"gt": x0, "lq": mu}
    m = IRSDE(lam=30, loss_type="noise")
    assert m.loss(oracle(m, x0), batch, t=t, noise=noise).abs().max() < 1e-10
    m = IRSDE(lam=30)
    # the Euler step from the true score misses x*_{t−1} only by a discretisation error, much
    # smaller than the step itself
    got = m.loss(oracle(m, x0), batch, t=t, noise=noise)
    xt = m.q_sample(x0, mu, t, noise)
    step = (xt - m.optimal_prev(xt, x0, mu, t)).abs().flatten(1).mean(1)
    assert got.shape == (4,) and torch.all(got < 0.1 * step)


# --- Denoising-SDE variant (mean_target = "clean") ---------------------------------------------------

def clean_oracle(method, x0):
    """The true ε of x_t = x0 + √v_t ε (the clean variant's net sees x_t alone)."""

    def net(x, level, cond=None):
        assert cond is None
        t = torch.round(level * method.num_steps).long().numpy()
        sd = torch.from_numpy(np.sqrt(method.variance(t))).view(-1, 1, 1, 1).to(x)
        return (x - x0) / sd

    return net


def noisy(x0, sigma, seed):
    g = torch.Generator().manual_seed(seed)
    return x0 + 2 * sigma / 255 * torch.randn(x0.shape, generator=g, dtype=x0.dtype)


def test_clean_variant_basics():
    m = IRSDE(num_steps=1000, lam=70, eps=0.04, mean_target="clean", noise_sigma=25)
    assert m.net_in_channels(3) == 3 and m.clean_mean
    t_star = m.start_step(25)
    assert math.sqrt(m.variance(t_star)) == pytest.approx(50 / 255, rel=0.01)  # one grid step of tolerance
    x0, _ = images()
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    t = torch.tensor([3, 700])
    # the marginal: x0 + √v_t ε, whatever μ the caller passes (μ = x0 by definition)
    want = x0 + torch.from_numpy(np.sqrt(m.variance(t.numpy()))).view(-1, 1, 1, 1) * noise
    torch.testing.assert_close(m.q_sample(x0, x0, t, noise), want, rtol=0, atol=1e-15)
    with pytest.raises(ValueError, match="noise_sigma"):
        IRSDE(lam=10, mean_target="clean", noise_sigma=25)
    with pytest.raises(ValueError, match="mean_target"):
        IRSDE(mean_target="gt")


def test_clean_variant_loss_ignores_the_degraded_image():
    m = IRSDE(num_steps=100, lam=70, mean_target="clean")

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1).double()

        def forward(self, x, level, cond=None):
            assert cond is None
            return self.conv(x) * level.view(-1, 1, 1, 1)

    x0, mu = images(2)
    net, t = Net(), torch.tensor([5, 80])
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    a = m.loss(net, {"gt": x0, "lq": mu}, t=t, noise=noise)
    b = m.loss(net, {"gt": x0, "lq": -mu}, t=t, noise=noise)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_clean_variant_drift_through_the_score_equals_the_mean_reverting_drift():
    """θ_t(x0 − x_t) = θ_t v_t·score: with the oracle ε the rewritten reverse step equals the generic one."""
    clean = IRSDE(num_steps=100, lam=70, mean_target="clean")
    generic = IRSDE(num_steps=100, lam=70)
    x0, _ = images(3)
    t = torch.tensor([1, 64])
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    xt = clean.q_sample(x0, x0, t, noise)
    got = clean.reverse_sde_mean(xt, noise, None, t)
    want = generic.reverse_sde_mean(xt, noise, x0, t)  # μ = x0 known to the generic formula
    torch.testing.assert_close(got, want, rtol=0, atol=1e-13)


@pytest.mark.parametrize("steps", [1, 3, 20, "list"])
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_clean_variant_posterior_sampler_oracle_exact(steps, eta):
    m = IRSDE(num_steps=1000, lam=70, eps=0.04, mean_target="clean", noise_sigma=25)
    t_star = m.start_step(25)
    steps = [t_star, t_star // 2, 2, 0] if steps == "list" else steps
    x0, _ = images(4)
    y = noisy(x0, 25, 5)
    out = m.sample(clean_oracle(m, x0), y, steps=steps, generator=torch.Generator().manual_seed(6), eta=eta,
                   clamp=False)
    torch.testing.assert_close(out, x0, rtol=0, atol=1e-12)
    for wrong in ([t_star + 1, 0], [t_star - 1, 0]):  # must start where the input's noise level is
        with pytest.raises(ValueError, match="noise level is at step"):
            m.sample(clean_oracle(m, x0), y, steps=wrong)


def test_clean_variant_euler_samplers_with_oracle_land_close():
    m = IRSDE(num_steps=1000, lam=70, eps=0.04, mean_target="clean", noise_sigma=25)
    x0, _ = images(7)
    y = noisy(x0, 25, 8)
    err = {}
    for name in ("ode", "sde"):
        for steps in (10, 100):
            out = m.sample(clean_oracle(m, x0), y, steps=steps, sampler=name,
                           generator=torch.Generator().manual_seed(9), clamp=False)
            err[name, steps] = (out - x0).abs().mean().item()
    noise_level = (y - x0).abs().mean().item()
    assert err["ode", 100] < err["ode", 10] < noise_level / 5
    assert err["sde", 100] < noise_level / 3


def test_clean_variant_through_the_restorer_with_noise_sigma():
    from irdiff.config import Config, from_dict
    from irdiff.inference import Restorer

    m = IRSDE(num_steps=1000, lam=70, eps=0.04, mean_target="clean", noise_sigma=25)
    cfg = from_dict(Config, {"method": {"name": "irsde", "mean_target": "clean"}, "net": {"name": "unet"}})
    clean = torch.rand(3, 24, 32, generator=torch.Generator().manual_seed(0)) * 0.8 + 0.1
    y = clean + 15 / 255 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(1))
    class Oracle(nn.Module):
        def forward(self, x, level, cond=None):
            return clean_oracle(m, (clean * 2 - 1)[None])(x, level, cond)

    r = Restorer(m, Oracle(), cfg, {})
    out = r.restore(y, steps=5, progress=False, noise_sigma=15)
    torch.testing.assert_close(out, clean, rtol=0, atol=1e-5)
