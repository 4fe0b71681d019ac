"""Prediction targets (ε, x0, v), log-SNR input and min-SNR-γ weights across SR3, IR-SDE and Noise-DA.

The oracles here know the clean image and return the TRUE target for whatever state they are given,
decoding the noise level from the net input on their own (γ from √(1−γ) or from log-SNR; IR-SDE's α, σ
from probing ``q_sample``, whose marginal test_irsde checks against simulated chains). Besides "the last
step returns x0" (which holds for ANY update rule, since the last step only reads x̂0), every intermediate
state is checked against the forward marginal, so a wrong update fails here.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from irdiff.methods import targets
from irdiff.methods.irsde import IRSDE, SAMPLERS
from irdiff.methods.noise_da import NoiseDA
from irdiff.methods.sr3 import SR3

PREDICTIONS = ("eps", "x0", "v")


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def image(seed: int, shape=(2, 3, 8, 8)) -> torch.Tensor:
    return torch.rand(shape, generator=gen(seed), dtype=torch.float64) * 1.8 - 0.9


def true_target(prediction: str, y0, eps, alpha, sigma):
    """Written out here, not taken from irdiff: ε, x0, or v = (α ε − σ x0)/√(α²+σ²) (Salimans & Ho for α²+σ²=1)."""
    return {"eps": eps, "x0": y0, "v": (alpha * eps - sigma * y0) / (alpha**2 + sigma**2) ** 0.5}[prediction]


# ---- SR3 oracle -----------------------------------------------------------------------------------

def sr3_betas(T=2000, start=1e-6, end=1e-2):
    return np.linspace(start, end, T)


def sr3_alpha_bar(T=2000, start=1e-6, end=1e-2):
    """ᾱ_0..ᾱ_T by a cumulative product of the paper's linear β, independent of the method's code."""
    ab = [1.0]
    for b in sr3_betas(T, start, end):
        ab.append(ab[-1] * (1.0 - b))
    return np.array(ab)


class SR3Oracle(nn.Module):
    """Returns the true target of the given state; γ decoded from the level as fed by ``level_input``."""

    def __init__(self, x0: torch.Tensor, prediction: str, level_input: str = "noise_std"):
        super().__init__()
        self.x0, self.prediction, self.level_input = x0, prediction, level_input
        self.inputs: list[torch.Tensor] = []

    def forward(self, x, level, cond=None):
        self.inputs.append(x.clone())
        lv = level.to(torch.float64).view(-1, 1, 1, 1)
        g = 1 - lv**2 if self.level_input == "noise_std" else torch.sigmoid(10 * lv)
        a, s = g.sqrt(), (1 - g).sqrt()
        eps = (x - a * self.x0) / s
        return true_target(self.prediction, self.x0, eps, a, s)


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("steps", [1, 2, 10, 2000])
@pytest.mark.parametrize("level_input", ["noise_std", "log_snr"])
def test_sr3_ddim_oracle_returns_x0_and_walks_the_forward_marginal(prediction, steps, level_input):
    m = SR3(prediction=prediction, noise_level_input=level_input, eta=0.0)
    x0 = image(1)
    net = SR3Oracle(x0, prediction, level_input)
    states = []
    out = m.sample(net, x0, steps=steps, sampler="ddim", generator=gen(2),
                   callback=lambda i, n, x: states.append(x.clone()))
    torch.testing.assert_close(out, x0, rtol=0, atol=1e-9)
    # x_T is whatever the sampler started from; it defines ε through x_T = √ᾱ_T x0 + √(1−ᾱ_T) ε
    ab = sr3_alpha_bar()
    x_T = net.inputs[0]
    eps = (x_T - math.sqrt(ab[-1]) * x0) / math.sqrt(1 - ab[-1])
    kept = np.round(np.linspace(2000, 0, min(steps, 2000) + 1)).astype(int)[1:]
    assert len(states) == len(kept)
    for s, state in zip(kept, states):
        torch.testing.assert_close(state, math.sqrt(ab[s]) * x0 + math.sqrt(1 - ab[s]) * eps, rtol=0, atol=1e-9)


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("sampler,eta", [("ddpm", 0.0), ("ddim", 1.0)])
def test_sr3_stochastic_samplers_keep_the_forward_marginal(prediction, sampler, eta):
    """With an oracle, x_s ~ q(x_s | x_t, x0) for x_t ~ q(x_t | x0) is distributed as q(x_s | x0):
    (x_s − √ᾱ_s x0)/√(1−ᾱ_s) must be N(0, 1) over 3·64·64 pixels at every kept step."""
    m = SR3(prediction=prediction, eta=eta, num_steps=200, beta_start=1e-4, beta_end=0.1)
    ab = sr3_alpha_bar(200, 1e-4, 0.1)
    x0 = image(3, (1, 3, 64, 64))
    states = []
    m.sample(SR3Oracle(x0, prediction), x0, steps=8, sampler=sampler, generator=gen(4),
             callback=lambda i, n, x: states.append(x.clone()))
    kept = np.round(np.linspace(200, 0, 9)).astype(int)[1:]
    for s, state in zip(kept[:-1], states[:-1]):
        z = (state - math.sqrt(ab[s]) * x0) / math.sqrt(1 - ab[s])
        assert abs(z.mean().item()) < 0.05 and abs(z.std().item() - 1) < 0.04, (s, z.mean(), z.std())
    torch.testing.assert_close(states[-1], x0, rtol=0, atol=1e-9)


@pytest.mark.parametrize("prediction", ["x0", "v"])
@pytest.mark.parametrize("sampler,eta", [("ddpm", 0.0), ("ddim", 0.7)])
def test_sr3_every_sampler_agrees_across_targets(prediction, sampler, eta):
    """The same oracle parametrised two ways gives the same trajectory (same generator)."""
    x0 = image(5)
    outs = {}
    for p in ("eps", prediction):
        outs[p] = SR3(prediction=p, eta=eta, clip_x0=False).sample(SR3Oracle(x0, p), x0, steps=6, sampler=sampler,
                                                                  generator=gen(6))
    torch.testing.assert_close(outs[prediction], outs["eps"], rtol=0, atol=1e-9)


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_sr3_loss_of_the_true_target_is_zero_and_of_eps_is_not(prediction):
    m = SR3(prediction=prediction, loss_type=2, noise_level_input="log_snr")
    x0, lq = image(7, (4, 3, 8, 8)), image(8, (4, 3, 8, 8))
    t = torch.tensor([1, 10, 500, 2000])
    assert m.loss(SR3Oracle(x0, prediction, "log_snr"), {"gt": x0, "lq": lq}, generator=gen(9), t=t).max() < 1e-16
    if prediction != "eps":  # a net trained for ε does not satisfy another target's loss (v ≈ ε at low noise)
        wrong = m.loss(SR3Oracle(x0, "eps", "log_snr"), {"gt": x0, "lq": lq}, generator=gen(9), t=t)
        assert wrong[2:].min() > 1e-3


def test_sr3_log_snr_input_values():
    m = SR3(noise_level_input="log_snr")
    g = torch.tensor([0.999, 0.5, 1e-4], dtype=torch.float64)
    want = torch.tensor([math.log(0.999 / 0.001), 0.0, math.log(1e-4 / (1 - 1e-4))], dtype=torch.float64) / 10
    torch.testing.assert_close(m.net_level(g), want, rtol=1e-12, atol=1e-15)
    assert torch.isfinite(m.net_level(torch.tensor([1.0], dtype=torch.float64))).all()


# ---- min-SNR-γ ------------------------------------------------------------------------------------

def paper_weight(prediction: str, snr: float, gamma: float) -> float:
    """Hang et al. 2023, Table/§3.4: ε: min(SNR,γ)/SNR, x0: min(SNR,γ), v: min(SNR,γ)/(SNR+1)."""
    w = min(snr, gamma)
    return {"eps": w / snr, "x0": w, "v": w / (snr + 1)}[prediction]


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_min_snr_weight_matches_the_paper_on_known_snrs(prediction):
    ab = sr3_alpha_bar(1000, 1e-4, 0.02)  # DDPM's schedule
    snr = ab[1:] / (1 - ab[1:])
    got = targets.min_snr_weight(prediction, snr, 5.0)
    want = [paper_weight(prediction, float(s), 5.0) for s in snr]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    # sanity of the formula at hand-picked points: SNR 20 (clipped) and SNR 0.25 (not)
    assert paper_weight("eps", 20.0, 5.0) == 0.25 and paper_weight("x0", 0.25, 5.0) == 0.25
    tgot = targets.min_snr_weight(prediction, torch.from_numpy(snr), 5.0)
    np.testing.assert_allclose(tgot.numpy(), want, rtol=1e-12)


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_sr3_loss_is_weighted_per_sample_by_its_own_gamma(prediction):
    x0, lq = image(10, (3, 3, 8, 8)), image(11, (3, 3, 8, 8))
    t = torch.tensor([2, 300, 1900])
    noise = torch.randn(x0.shape, generator=gen(12), dtype=torch.float64)

    def bad_net(x, level, cond=None):  # a fixed, wrong output so the loss is not 0
        return 0.5 * x + 0.1

    plain = SR3(prediction=prediction, loss_type=2).loss(bad_net, {"gt": x0, "lq": lq}, gen(13), t, noise)
    weighted = SR3(prediction=prediction, loss_type=2, min_snr_gamma=5.0).loss(bad_net, {"gt": x0, "lq": lq},
                                                                               gen(13), t, noise)
    gamma = SR3().sample_gamma(t, gen(13))  # the same draw the loss made (first use of the generator)
    want = [paper_weight(prediction, g / (1 - g), 5.0) for g in gamma.tolist()]
    np.testing.assert_allclose((weighted / plain).numpy(), want, rtol=1e-10)


# ---- IR-SDE ---------------------------------------------------------------------------------------

def irsde_coefs(m: IRSDE, ou: bool = False):
    """α_t (weight of y0 in the net's coordinates) and σ_t (noise std) for t = 0..T, probed from q_sample
    alone; with ``ou`` the mean-reversion weight e^{−θ̄_t} of x0 − μ instead (= α_t except in the clean
    variant, whose y0 = x0 has α = 1 although the process still reverts towards μ = x0)."""
    T = m.num_steps
    t = torch.arange(T + 1)
    one = torch.ones(T + 1, 1, 1, 1, dtype=torch.float64)
    zero = torch.zeros_like(one)
    alpha = m.q_sample(one, zero, t, zero).flatten()
    sigma = m.q_sample(zero, zero, t, one).flatten()
    if m.clean_mean and not ou:
        alpha = torch.ones_like(alpha)
    return alpha, sigma


class IRSDEOracle(nn.Module):
    """True target of y_t = α y0 + σ ε (y = x_t − μ, y0 = x0 − μ; clean variant y = x_t, y0 = x0)."""

    def __init__(self, m: IRSDE, x0: torch.Tensor, mu: torch.Tensor | None, prediction: str):
        super().__init__()
        self.m, self.x0, self.mu, self.prediction = m, x0, mu, prediction
        self.alpha, self.sigma = irsde_coefs(m)
        self.inputs: list[torch.Tensor] = []

    def forward(self, x, level, cond=None):
        if self.m.noise_level_input == "log_snr":
            table = 2 * (self.alpha.log() - self.sigma.log())
            t = torch.stack([torch.argmin((table[1:] - 10 * lv).abs()) + 1 for lv in level.double()])
        else:
            t = torch.round(level * self.m.num_steps).long()
        a, s = self.alpha[t].view(-1, 1, 1, 1), self.sigma[t].view(-1, 1, 1, 1)
        y0 = self.x0 if self.m.clean_mean else self.x0 - self.mu
        self.inputs.append(x.clone())
        return true_target(self.prediction, y0, (x - a * y0) / s, a, s)


def irsde_methods():
    return {"general": IRSDE(lam=30), "clean": IRSDE(num_steps=1000, lam=70, eps=0.04, mean_target="clean")}


def run_irsde(variant, m, net, x0, mu, steps, sampler="posterior", eta=0.0, seed=3, callback=None):
    if variant == "clean":
        y = x0 + 50 / 255 * torch.randn(x0.shape, generator=gen(seed + 100), dtype=x0.dtype)
        t_star = m.start_step(25)
        steps = min(steps, t_star)
        kw = {"eta": eta} if sampler == "posterior" else {}
        return m.sample(net, y, steps=steps, sampler=sampler, generator=gen(seed), callback=callback, clamp=False,
                        **kw), t_star, steps
    x_T = m.start(mu, gen(seed))
    kw = {"eta": eta} if sampler == "posterior" else {}
    return SAMPLERS[sampler](m, net, x_T, mu, steps, gen(seed), callback, **kw), m.num_steps, steps


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("variant", ["general", "clean"])
@pytest.mark.parametrize("steps", [1, 2, 10, "T"])
def test_irsde_posterior_eta0_oracle_returns_x0_and_its_states_follow_the_gaussian_posterior(prediction, variant,
                                                                                              steps):
    """η = 0 is the posterior *mean* (not DDIM): the state keeps the start's ε, scaled at each jump t → s by
    the Gaussian-conditioning factor Cov(x_s, x_t | x0)/Var(x_t | x0) = (α_t/α_s)·σ_s²/σ_t²."""
    m = irsde_methods()[variant]
    m.prediction = prediction
    x0, mu = image(20), image(21)
    net = IRSDEOracle(m, x0, mu, prediction)
    states = []
    T_start = m.start_step(25) if variant == "clean" else m.num_steps
    n = T_start if steps == "T" else steps
    out, t0, n = run_irsde(variant, m, net, x0, mu, n, callback=lambda i, k, x: states.append(x.clone()))
    torch.testing.assert_close(out, x0, rtol=0, atol=1e-10)
    ou, sigma = (c.numpy() for c in irsde_coefs(m, ou=True))
    if variant == "clean":  # x_t = x0 + σ_t ε; the net sees x_t
        x_T = net.inputs[0]
        mean_at = lambda k: x0  # noqa: E731
    else:  # x_t = μ + α_t (x0 − μ) + σ_t ε; the net sees x_t − μ
        x_T = net.inputs[0] + mu
        mean_at = lambda k: mu + ou[k] * (x0 - mu)  # noqa: E731
    eps = (x_T - mean_at(t0)) / sigma[t0]
    kept = np.round(np.linspace(t0, 0, n + 1)).astype(int)
    k = sigma[t0]
    for t, s, state in zip(kept[:-1], kept[1:], states):
        k = k * (ou[t] / ou[s]) * sigma[s] ** 2 / sigma[t] ** 2
        torch.testing.assert_close(state, mean_at(s) + k * eps, rtol=0, atol=1e-10)


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_irsde_posterior_eta1_keeps_the_forward_marginal(prediction):
    m = IRSDE(lam=30, prediction=prediction)
    x0, mu = image(22, (1, 3, 64, 64)), image(23, (1, 3, 64, 64))
    alpha, sigma = irsde_coefs(m)
    x_T = mu + alpha[-1] * (x0 - mu) + sigma[-1] * torch.randn(x0.shape, generator=gen(24), dtype=torch.float64)
    states = []
    SAMPLERS["posterior"](m, IRSDEOracle(m, x0, mu, prediction), x_T, mu, 8, gen(25),
                          lambda i, n, x: states.append(x.clone()), eta=1.0)
    kept = np.round(np.linspace(m.num_steps, 0, 9)).astype(int)[1:]
    for s, state in zip(kept[:-1], states[:-1]):
        z = (state - mu - alpha[s] * (x0 - mu)) / sigma[s]
        assert abs(z.mean().item()) < 0.05 and abs(z.std().item() - 1) < 0.04, (s, z.mean(), z.std())


@pytest.mark.parametrize("prediction", ["x0", "v"])
@pytest.mark.parametrize("variant", ["general", "clean"])
@pytest.mark.parametrize("sampler", ["posterior", "sde", "ode"])
def test_irsde_every_sampler_agrees_across_targets(prediction, variant, sampler):
    x0, mu = image(26), image(27)
    outs = {}
    for p in ("eps", prediction):
        m = irsde_methods()[variant]
        m.prediction = p
        outs[p] = run_irsde(variant, m, IRSDEOracle(m, x0, mu, p), x0, mu, 7, sampler=sampler, eta=0.5)[0]
    torch.testing.assert_close(outs[prediction], outs["eps"], rtol=0, atol=1e-8)


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("level_input", ["t", "log_snr"])
def test_irsde_losses_with_the_true_target(prediction, level_input):
    x0, mu = image(28, (4, 3, 8, 8)), image(29, (4, 3, 8, 8))
    t = torch.tensor([1, 10, 50, 100])
    noise = torch.randn(x0.shape, generator=gen(30), dtype=torch.float64)
    batch = {"gt": x0, "lq": mu}
    m = IRSDE(lam=30, objective="noise", prediction=prediction, noise_level_input=level_input)
    assert m.loss(IRSDEOracle(m, x0, mu, prediction), batch, t=t, noise=noise).max() < 1e-12
    # the optimal-path loss sees ε̂ only: identical for every parametrisation of the same oracle
    ref = IRSDE(lam=30, noise_level_input=level_input)
    m = IRSDE(lam=30, prediction=prediction, noise_level_input=level_input)
    torch.testing.assert_close(m.loss(IRSDEOracle(m, x0, mu, prediction), batch, t=t, noise=noise),
                               ref.loss(IRSDEOracle(ref, x0, mu, "eps"), batch, t=t, noise=noise), rtol=1e-9, atol=0)


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_irsde_min_snr_weight(prediction):
    x0, mu = image(31, (3, 3, 8, 8)), image(32, (3, 3, 8, 8))
    t = torch.tensor([1, 30, 100])
    noise = torch.randn(x0.shape, generator=gen(33), dtype=torch.float64)

    def bad_net(x, level, cond=None):
        return 0.3 * x - 0.2

    kw = {"lam": 30, "objective": "noise", "loss_type": "l2", "prediction": prediction}
    plain = IRSDE(**kw).loss(bad_net, {"gt": x0, "lq": mu}, t=t, noise=noise)
    weighted = IRSDE(min_snr_gamma=5.0, **kw).loss(bad_net, {"gt": x0, "lq": mu}, t=t, noise=noise)
    alpha, sigma = irsde_coefs(IRSDE(lam=30))
    want = [paper_weight(prediction, float(alpha[k] ** 2 / sigma[k] ** 2), 5.0) for k in t.tolist()]
    np.testing.assert_allclose((weighted / plain).numpy(), want, rtol=1e-10)
    with pytest.raises(ValueError, match="min_snr_gamma"):
        IRSDE(min_snr_gamma=5.0)  # the optimal-path loss has its own weighting
    with pytest.raises(ValueError, match="min_snr_gamma"):  # an older config's spelling of the same objective
        IRSDE(loss_type="optimal_path", loss_norm="l2", min_snr_gamma=5.0)
    # an older config's spelling of the noise objective takes the weight too
    old = IRSDE(lam=30, loss_type="noise", loss_norm="l2", prediction=prediction, min_snr_gamma=5.0)
    torch.testing.assert_close(old.loss(bad_net, {"gt": x0, "lq": mu}, t=t, noise=noise), weighted, rtol=0, atol=0)


def test_irsde_official_nets_predict_eps():
    with pytest.raises(ValueError, match="net_input: official"):
        IRSDE(net_input="official", prediction="x0")
    with pytest.raises(ValueError, match="net_input: official"):
        IRSDE(net_input="official", noise_level_input="log_snr")


# ---- Noise-DA teacher -----------------------------------------------------------------------------

@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_noise_da_teacher_target(prediction):
    m = NoiseDA(lambda_dif=1.0, prediction=prediction, contrastive=False)
    y, x_s, x_r = image(40, (3, 3, 8, 8)), image(41, (3, 3, 8, 8)), image(42, (3, 3, 8, 8))
    noise = torch.randn(y.shape, generator=gen(43), dtype=torch.float64)

    class Zero(nn.Module):
        def forward(self, x, level=None, cond=None):
            return torch.zeros_like(x)

    class Teacher(nn.Module):  # knows y; γ is fed raw
        def forward(self, x, level, cond=None):
            g = level.double().view(-1, 1, 1, 1)
            return true_target(prediction, y, (x - g.sqrt() * y) / (1 - g).sqrt(), g.sqrt(), (1 - g).sqrt())

    net = nn.ModuleDict({"restorer": Zero(), "diffusion": Teacher()})
    terms = m.loss_terms(net, {"gt": y, "lq": x_s, "real": x_r}, gen(44), noise=noise)
    assert terms["mse_pos"].max() < 1e-20


# ---- the conversions themselves -------------------------------------------------------------------

@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("alpha,sigma", [(0.8, 0.6), (1.0, 0.3), (0.005, 0.117), (0.999, 0.0447)])
def test_split_inverts_target(prediction, alpha, sigma):
    x0, eps = image(50), torch.randn((2, 3, 8, 8), generator=gen(51), dtype=torch.float64)
    x_t = alpha * x0 + sigma * eps
    out = true_target(prediction, x0, eps, alpha, sigma)
    torch.testing.assert_close(targets.target(prediction, x0, eps, alpha, sigma), out, rtol=0, atol=1e-14)
    e, x = targets.split(prediction, out, x_t, alpha, sigma)
    torch.testing.assert_close(e, eps, rtol=0, atol=1e-10)
    torch.testing.assert_close(x, x0, rtol=0, atol=1e-10)


def test_v_of_a_variance_preserving_process_is_salimans_and_ho():
    x0, eps = image(52), torch.randn((2, 3, 8, 8), generator=gen(53), dtype=torch.float64)
    phi = 0.7  # α = cos φ, σ = sin φ: v = dz/dφ = −sin φ x0 + cos φ ε, and x0 = cos φ z − sin φ v
    a, s = math.cos(phi), math.sin(phi)
    v = targets.target("v", x0, eps, a, s)
    torch.testing.assert_close(v, -s * x0 + a * eps, rtol=0, atol=1e-14)
    torch.testing.assert_close(a * (a * x0 + s * eps) - s * v, x0, rtol=0, atol=1e-14)


def test_bad_prediction_names_are_refused():
    for cls in (SR3, IRSDE, NoiseDA):
        with pytest.raises(ValueError, match="prediction"):
            cls(prediction="score")
    with pytest.raises(ValueError, match="noise_level_input"):
        IRSDE(noise_level_input="gamma")
    with pytest.raises(ValueError, match="min_snr_gamma"):
        SR3(min_snr_gamma=0)
