"""IR-SDE (Luo et al., ICML 2023): a mean-reverting SDE from the clean image to the degraded one.

    dx = θ_t (μ − x) dt + σ_t dw,   σ_t² / θ_t = 2 λ²,   μ = the degraded image (SR: upsampled LR)

Discretisation as the reference code: θ_i (i = 0..T) is the "cosine" 1 − ᾱ_cos(i+1) schedule,
θ̄_i = Σ_{1≤j≤i} θ_j, and dt = −ln(ε_T) / θ̄_T so that exp(−θ̄_T dt) = ε_T. Here ``theta_bar``
already holds θ̄_i·dt, so the per-step θ_t·dt is ``theta_bar[t] − theta_bar[t−1]`` and
σ_t²·dt = 2 λ² θ_t dt.

Marginal x_t | x0 ~ N(μ + (x0 − μ) e^{−θ̄_t}, λ² (1 − e^{−2θ̄_t})). The net predicts ε from
(x_t − μ, noise level t/T, cond = μ); score = −ε̂ / √v_t.

Gaussian denoising variant (``mean_target: clean``; the reference's Denoising-SDE): μ = x0, so the
marginal is x_t = x0 + √v_t ε, a pure noise-level SDE. The net sees (x_t, t/T) only, and the drift
θ_t (x0 − x_t) is rewritten through the score (x0 − x_t = v_t·score): the reverse drift is
−½σ_t²(1 + e^{−2θ̄_t})·score. A noisy input y = x0 + σ n *is* a state of the chain at the t* with
√v_{t*} = σ, so sampling starts from y itself at t* (σ, ``noise_sigma``, must be known) and the
posterior sampler uses x̂0 = x_t − √v_t ε̂ and q(x_s | x_t, x̂0) with μ = x̂0.

Prediction targets (``prediction``: eps | x0 | v, default eps, ``irdiff.methods.targets``): in the
net's coordinates y_t = x_t − μ = α y0 + σ ε with α = e^{−θ̄_t}, σ = √v_t and y0 = x0 − μ (clean variant:
y_t = x_t, α = 1, y0 = x0), so "x0" means the residual x0 − μ in the general form and v = (α ε − σ y0)/r,
r = √(α² + σ²). Whatever the net outputs is turned into (ε̂, x̂0) before any sampler or the optimal-path
loss uses it; the noise-matching loss compares the output to its own target, optionally weighted by
min-SNR-γ (SNR = α²/σ²). ``noise_level_input: log_snr`` feeds log(α²/σ²)/10 instead of t/T.

Differences from the reference code (deliberate):
- images are in [−1, 1] (the reference uses [0, 1]), so λ is doubled: the config's ``lam`` is on the
  0–255 scale of a [0, 1] image (10 for deraining/deblurring, 30 for SR/inpainting) and the
  attribute ``self.lam`` is 2·lam/255. A reference λ of 10 is ``lam=10`` here.
- the net sees t/T in [0, 1] rather than the integer t (checkpoints are not interchangeable).
- the posterior sampler may jump over steps (any decreasing subset of 1..T ending at 0), with η
  scaling its std; the reference only has the one-step, η = 1 version.
- schedules and every exp are float64 (the reference uses float32).

``net_input: official`` feeds a net trained by the reference code (``irdiff import --format irsde``):
net(x_t, t, cond=μ) with images mapped back to [0, 1] and t the integer step, as the authors' nets
were trained (the clean variant: net(x_t, t)). ε needs no rescaling: x_t and √v_t scale alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from irdiff.methods import targets
from irdiff.methods.base import (
    Callback,
    Method,
    OptionError,
    SampleOptions,
    Steps,
    gather,
    loss_type_name,
    option,
    per_sample_mean,
    pixel_error,
    randint,
    randn_like,
    run_steps,
    step_indices,
    timesteps,
)
from irdiff.registry import METHODS


def theta_schedule(T: int, name: str = "cosine", s: float = 0.008) -> np.ndarray:
    """θ_0..θ_T (float64, length T+1), not yet multiplied by dt, as the reference code builds them."""
    if name == "cosine":
        # improved-DDPM cosine ᾱ on the grid 0..T+2, θ_i = 1 − ᾱ(i+1): both ends dropped
        k = np.arange(T + 3, dtype=np.float64)
        f = np.cos(((k / (T + 2)) + s) / (1 + s) * math.pi * 0.5) ** 2
        return 1.0 - (f / f[0])[1:-1]
    if name == "linear":
        scale = 1000.0 / (T + 1)
        return np.linspace(scale * 1e-4, scale * 0.02, T + 1, dtype=np.float64)
    if name == "constant":
        return np.ones(T + 1, dtype=np.float64)
    raise ValueError(f"unknown theta schedule {name!r}; known: cosine, linear, constant")


OBJECTIVES = ("optimal_path", "noise")


@dataclass(frozen=True)
class IRSDEOptions(SampleOptions):
    eta: float | None = option("std scale of the posterior sampler: 1 the true posterior, 0 deterministic "
                               "(default: the model's eta)", samplers=("posterior",), low=0)


@dataclass(frozen=True)
class DenoisingSDEOptions(IRSDEOptions):
    noise_sigma: float | None = option("the input's noise std (0-255), where sampling starts "
                                       "(default: the model's noise_sigma)", low=0, low_open=True)


@METHODS.register("irsde")
class IRSDE(Method):
    """Mean-reverting SDE restoration (IR-SDE), with the Denoising-SDE variant for Gaussian noise.

    Config: ``num_steps`` T (100), ``lam`` stationary std on the 0–255 scale (10), ``eps`` ε_T = the
    remaining weight of x0 at T (0.005), ``schedule`` of θ ("cosine" | "linear" | "constant"),
    ``objective`` ("optimal_path": the noise-free reverse-SDE step against x*_{t−1}, the paper default;
    "noise": plain noise matching), ``loss_type`` (its norm, "l1" | "l2"; older configs wrote
    ``loss_type: optimal_path | noise`` and ``loss_norm: l1 | l2``, still read), ``eta`` (default
    std scale of the posterior sampler; 1 = the true posterior, 0 = deterministic), ``mean_target``
    ("lq": μ = the degraded image, IR-SDE restoration; "clean": μ = x0, the Denoising-SDE variant for
    Gaussian noise, see the module docstring), ``noise_sigma`` (clean variant: the input's noise std on
    the 0–255 scale, where sampling starts; must be < lam), ``net_input`` ("residual": irdiff's own
    net(x_t − μ, t/T, μ) in [−1, 1]; "official": the reference code's net(x_t, t, μ) in [0, 1] with the
    integer step t, for imported checkpoints), ``lr_upsample`` (SR: how an LR input is brought to the
    output size: "matlab" bicubic, the data pipeline's, or "torch" F.interpolate bicubic, the reference
    code's, for its checkpoints), ``prediction`` (eps | x0 | v), ``min_snr_gamma`` (None or γ_w > 0;
    ``objective: noise`` only), ``noise_level_input`` ("t": t/T, the default; "log_snr": log-SNR / 10).
    """

    noise_level_dim = 1
    samplers = ("posterior", "sde", "ode")
    Options: type[SampleOptions] = IRSDEOptions  # DenoisingSDEOptions for mean_target clean (set per instance)
    # The posterior sampler is exact in its jumps (no discretisation error), so 20 steps suffice
    # where Euler–Maruyama ("sde", the paper's default) wants all T = 100.
    default_steps = 20

    @classmethod
    def canonical_kwargs(cls, kwargs: dict[str, Any]) -> dict[str, Any]:
        out = dict(kwargs)
        norm = out.pop("loss_norm", None)
        if out.get("loss_type") in OBJECTIVES:  # loss_type was the objective, loss_norm (default l1) the norm
            out["objective"] = out.pop("loss_type")
            out["loss_type"] = "l1"
        if norm is not None:
            out["loss_type"] = norm
        return out

    def __init__(self, num_steps: int = 100, lam: float = 10.0, eps: float = 0.005, schedule: str = "cosine",
                 objective: str = "optimal_path", loss_type: str = "l1", eta: float = 1.0,
                 mean_target: str = "lq", noise_sigma: float = 25.0, net_input: str = "residual",
                 lr_upsample: str = "matlab", loss_norm: str | None = None, prediction: str = "eps",
                 min_snr_gamma: float | None = None, noise_level_input: str = "t"):
        if loss_type in OBJECTIVES or loss_norm is not None:  # an older config's spelling
            old = self.canonical_kwargs({"loss_type": loss_type, "loss_norm": loss_norm})
            objective, loss_type = old.get("objective", objective), old.get("loss_type", "l1")
        self.prediction = targets.check_prediction(prediction)
        if min_snr_gamma is not None and (objective != "noise" or min_snr_gamma <= 0):
            raise ValueError(f"min_snr_gamma needs objective: noise and a value > 0, got {min_snr_gamma} with "
                             f"objective {objective}")
        self.min_snr_gamma = None if min_snr_gamma is None else float(min_snr_gamma)
        if noise_level_input not in ("t", "log_snr"):
            raise ValueError(f"noise_level_input must be t or log_snr, got {noise_level_input!r}")
        if net_input == "official" and (prediction != "eps" or noise_level_input != "t"):
            raise ValueError("net_input: official (the reference code's nets) needs prediction: eps and "
                             f"noise_level_input: t, got {prediction} and {noise_level_input}")
        self.noise_level_input = noise_level_input
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        if lam <= 0:
            raise ValueError(f"lam must be > 0 (0-255 scale), got {lam}")
        if not 0 < eps < 1:
            raise ValueError(f"eps must be in (0, 1), got {eps}")
        if objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {objective!r}; known: {', '.join(OBJECTIVES)}")
        if mean_target not in ("lq", "clean"):
            raise ValueError(f"unknown mean_target {mean_target!r}; known: lq, clean")
        if lr_upsample not in ("matlab", "torch"):
            raise ValueError(f"unknown lr_upsample {lr_upsample!r}; known: matlab, torch")
        if net_input not in ("residual", "official"):
            raise ValueError(f"unknown net_input {net_input!r}; known: residual, official")
        if mean_target == "clean" and not 0 < noise_sigma < lam:
            raise ValueError(f"noise_sigma must be in (0, lam = {lam}), got {noise_sigma}")
        self.mean_target = mean_target
        self.net_input = net_input
        self.lr_upsample = lr_upsample
        self.noise_sigma = float(noise_sigma)
        self.Options = DenoisingSDEOptions if mean_target == "clean" else IRSDEOptions
        self.num_steps = int(num_steps)
        self.lam = 2.0 * float(lam) / 255.0  # [-1, 1] scale
        self.eps = float(eps)
        self.schedule = schedule
        self.objective = objective
        self.loss_type = loss_type_name(loss_type)
        self.eta = float(eta)
        theta = theta_schedule(self.num_steps, schedule)
        theta_cumsum = np.cumsum(theta) - theta[0]  # θ̄_0 = 0 exactly: θ_0 is not a step
        self.dt = -math.log(self.eps) / theta_cumsum[-1]
        self.theta_bar = theta_cumsum * self.dt
        # per-step tables for the loss (index t = 1..T; 0 is never used), built once
        k = np.arange(1, self.num_steps + 1)
        self._sd = np.sqrt(self.variance(np.arange(self.num_steps + 1)))  # √v_t
        self._step = np.concatenate([[0.0], np.diff(self.theta_bar)])  # θ_t dt
        self._score_coef = np.concatenate([[0.0], 2 * self.lam**2 * self._step[1:] / np.sqrt(self.variance(k))])
        self._post_ct = self._per_step(lambda k: self.posterior_coefs(k, k - 1)[0])
        self._post_c0 = self._per_step(lambda k: self.posterior_coefs(k, k - 1)[1])

    # --- schedule helpers (float64 numpy, vectorised over integer steps) ------------------------
    def mean_weight(self, t: Any) -> np.ndarray:
        """e^{−θ̄_t}: the weight of (x0 − μ) in the mean of x_t."""
        return np.exp(-self.theta_bar[t])

    def variance(self, t: Any) -> np.ndarray:
        """v_t = λ² (1 − e^{−2θ̄_t}); 0 at t = 0."""
        return self.lam**2 * -np.expm1(-2.0 * self.theta_bar[t])

    def posterior_coefs(self, t: Any, s: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """q(x_s | x_t, x0) for s < t: mean = μ + c_t (x_t − μ) + c_0 (x0 − μ), variance var."""
        tb_t, tb_s = self.theta_bar[t], self.theta_bar[s]
        a = np.exp(-(tb_t - tb_s))
        one_minus_a2 = -np.expm1(-2.0 * (tb_t - tb_s))
        d_t, d_s = -np.expm1(-2.0 * tb_t), -np.expm1(-2.0 * tb_s)
        c_t = a * d_s / d_t
        c_0 = one_minus_a2 * np.exp(-tb_s) / d_t
        var = self.lam**2 * one_minus_a2 * d_s / d_t
        return c_t, c_0, var

    def _per_step(self, fn) -> np.ndarray:
        """fn(t) for t = 1..T as a length-(T+1) array with a 0 at index 0 (for `gather`)."""
        t = np.arange(1, self.num_steps + 1)
        return np.concatenate([[0.0], fn(t)])

    @property
    def clean_mean(self) -> bool:
        """The Denoising-SDE variant (μ = x0)."""
        return self.mean_target == "clean"

    @classmethod
    def link_config(cls, method: dict[str, Any], data: Any) -> None:
        """Denoising-SDE: the noise level is written once, in the data's AWGN degradation. ``noise_sigma``
        (where sampling starts) defaults to the training degradation's fixed sigma; given as well, it must
        agree with it and with the validation degradation's: a model trained and validated at one sigma
        that starts sampling at another is a mistake, not a choice (restore's noise_sigma= is the place for
        another level). Blind training (a sigma range) states no single level: noise_sigma stays as given."""
        if method.get("mean_target") != "clean":
            return
        for key in ("train", "val"):
            spec = getattr(data, key, None)
            deg = (getattr(spec, "degradation", None) or {}) if spec is not None else {}
            sigma = deg.get("sigma")
            if deg.get("name") != "awgn" or not isinstance(sigma, int | float):
                continue
            if "noise_sigma" not in method:
                method["noise_sigma"] = float(sigma)
            elif float(method["noise_sigma"]) != float(sigma):
                raise ValueError(f"noise_sigma {method['noise_sigma']:g} disagrees with data.{key}.degradation.sigma "
                                 f"{sigma:g}; write the noise level once, in the data's degradation")

    def sample_options(self, sampler: str | None = None, **given: Any) -> SampleOptions:
        opts = super().sample_options(sampler, **given)
        lam = self.lam * 255.0 / 2.0
        sigma = getattr(opts, "noise_sigma", None)
        if sigma is not None and sigma >= lam:
            raise OptionError("noise_sigma", f"must be in (0, {lam:g}) for this model (its lam), got {sigma:g}")
        return opts

    def max_steps(self, options: SampleOptions | None = None) -> int | None:
        """T; Denoising-SDE: t*, the step where the input's noise level sits (sampling walks t* -> 0)."""
        if not self.clean_mean:
            return self.num_steps
        sigma = getattr(options, "noise_sigma", None)
        return max(self.start_step(self.noise_sigma if sigma is None else sigma), 1)

    def start_step(self, sigma: float) -> int:
        """Denoising-SDE: the step whose marginal std √v_t is closest to ``sigma`` (0–255 scale)."""
        target = 2.0 * float(sigma) / 255.0
        return int(np.argmin(np.abs(np.sqrt(self.variance(np.arange(self.num_steps + 1))) - target)))

    # --- net plumbing -------------------------------------------------------------------------
    def upsample_input(self, lr: torch.Tensor, scale: int) -> torch.Tensor:
        if self.lr_upsample == "matlab":
            return super().upsample_input(lr, scale)
        # the reference's util.upscale: F.interpolate bicubic (a = −0.75, no antialias), not clamped
        return nn.functional.interpolate(lr[None], scale_factor=scale, mode="bicubic")[0]

    def net_in_channels(self, img_channels: int) -> int:
        return img_channels if self.clean_mean else 2 * img_channels

    def target_coefs(self, t: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(α, σ) of y_t = α y0 + σ ε in the net's coordinates, as (B, 1, 1, 1) tensors like ``like``."""
        k = np.arange(self.num_steps + 1)
        alpha = np.ones(self.num_steps + 1) if self.clean_mean else self.mean_weight(k)
        return gather(alpha, t, like), gather(self._sd, t, like)

    def net_output(self, net: nn.Module, x: torch.Tensor, mu: torch.Tensor | None, t: torch.Tensor
                   ) -> torch.Tensor:
        """net(x_t − μ, level, cond=μ) (clean variant: net(x_t, level)); level t/T or log-SNR / 10.

        ``net_input == "official"``: net((x_t + 1)/2, t, cond=(μ + 1)/2), the reference code's call (ε)."""
        if self.net_input == "official":
            step = t.to(device=x.device, dtype=torch.float32)
            return net((x + 1) / 2, step, None if self.clean_mean else (mu + 1) / 2)
        if self.noise_level_input == "log_snr":
            alpha, sigma = (c.view(-1) for c in self.target_coefs(t, x.double()))
            level = targets.log_snr(alpha, sigma).to(x.dtype) / 10
        else:
            level = t.to(device=x.device, dtype=x.dtype) / self.num_steps
        if self.clean_mean:
            return net(x, level, None)
        return net(x - mu, level, cond=mu)

    def predict(self, net: nn.Module, x: torch.Tensor, mu: torch.Tensor | None, t: torch.Tensor | int
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """(ε̂, x̂0) from the net at step t (an int or a (B,) integer tensor), whatever its ``prediction``."""
        if not torch.is_tensor(t):
            t = torch.full((x.shape[0],), int(t), device=x.device)
        y = x if self.clean_mean else x - mu
        eps_hat, y0_hat = targets.split(self.prediction, self.net_output(net, x, mu, t), y,
                                        *self.target_coefs(t, x))
        return eps_hat, (y0_hat if self.clean_mean else mu + y0_hat)

    def predict_noise(self, net: nn.Module, x: torch.Tensor, mu: torch.Tensor | None,
                      t: torch.Tensor | int) -> torch.Tensor:
        """ε̂ from the net at step t (its output itself for ``prediction: eps``)."""
        return self.predict(net, x, mu, t)[0]

    def predict_x0(self, x: torch.Tensor, mu: torch.Tensor | None, eps_hat: torch.Tensor, t: int) -> torch.Tensor:
        """x̂0 = μ + (x_t − μ − √v_t ε̂) e^{θ̄_t}; clean variant x̂0 = x_t − √v_t ε̂ (t >= 1; not clamped)."""
        if self.clean_mean:
            return x - math.sqrt(self.variance(t)) * eps_hat
        return mu + (x - mu - math.sqrt(self.variance(t)) * eps_hat) * math.exp(self.theta_bar[t])

    # --- the contract -------------------------------------------------------------------------
    def q_sample(self, x0: torch.Tensor, cond: torch.Tensor, t: torch.Tensor,
                 noise: torch.Tensor) -> torch.Tensor:
        mu, k = cond, np.arange(self.num_steps + 1)
        std = gather(np.sqrt(self.variance(k)), t, x0)
        return mu + (x0 - mu) * gather(self.mean_weight(k), t, x0) + std * noise

    def optimal_prev(self, x_t: torch.Tensor, x0: torch.Tensor, mu: torch.Tensor,
                     t: torch.Tensor) -> torch.Tensor:
        """x*_{t−1}: the posterior mean of x_{t−1} given x_t and x0 (the paper's optimal reverse path)."""
        return mu + gather(self._post_ct, t, x_t) * (x_t - mu) + gather(self._post_c0, t, x_t) * (x0 - mu)

    def reversion(self, x_t: torch.Tensor, mu: torch.Tensor | None, eps_hat: torch.Tensor,
                  t: torch.Tensor | int) -> torch.Tensor:
        """μ − x_t, the direction of the drift θ_t (μ − x_t). In the clean variant μ = x0 is unknown and
        estimated by x̂0 = x_t − √v_t ε̂, so μ − x_t = −√v_t ε̂ = v_t·score: the reference's drift rewrite."""
        if not self.clean_mean:
            return mu - x_t
        return -(gather(self._sd, t, x_t) if torch.is_tensor(t) else float(self._sd[t])) * eps_hat

    def reverse_sde_mean(self, x_t: torch.Tensor, eps_hat: torch.Tensor, mu: torch.Tensor,
                         t: torch.Tensor) -> torch.Tensor:
        """Noise-free Euler–Maruyama reverse step x_t − [θ_t (μ − x_t) − σ_t² score] dt, score = −ε̂/√v_t
        (σ_t² dt / √v_t is ``_score_coef``)."""
        gap = self.reversion(x_t, mu, eps_hat, t)
        return x_t - gather(self._step, t, x_t) * gap - gather(self._score_coef, t, x_t) * eps_hat

    def loss(self, net: nn.Module, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None,
             t: torch.Tensor | None = None, noise: torch.Tensor | None = None) -> torch.Tensor:
        x0 = batch["gt"]
        mu = x0 if self.clean_mean else batch["lq"]  # clean variant: trained on clean images alone
        if t is None:
            t = randint(1, self.num_steps, x0.shape[0], generator, x0.device)
        if noise is None:
            noise = randn_like(x0, generator)
        x_t = self.q_sample(x0, mu, t, noise)
        alpha, sigma = self.target_coefs(t, x0)
        out = self.net_output(net, x_t, mu, t)
        if self.objective == "noise":
            pred, target = out, targets.target(self.prediction, x0 if self.clean_mean else x0 - mu, noise, alpha, sigma)
        else:
            y = x_t if self.clean_mean else x_t - mu
            eps_hat = targets.split(self.prediction, out, y, alpha, sigma)[0]
            pred, target = self.reverse_sde_mean(x_t, eps_hat, mu, t), self.optimal_prev(x_t, x0, mu, t)
        err = per_sample_mean(pixel_error(pred - target, self.loss_type))
        if self.min_snr_gamma is None:
            return err
        snr = (alpha / sigma).view(-1) ** 2
        return err * targets.min_snr_weight(self.prediction, snr, self.min_snr_gamma)

    def start(self, cond: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """x_T = μ + λ ε (the reference's start; the exact marginal would need x0). Clean variant: the
        noisy input itself, a state of the chain at ``start_step(noise_sigma)``."""
        if self.clean_mean:
            return cond
        return cond + self.lam * randn_like(cond, generator)

    def sample(self, net: nn.Module, cond: torch.Tensor, steps: Steps | None = None,
               sampler: str | None = None, generator: torch.Generator | None = None,
               callback: Callback = None, **extra: Any) -> torch.Tensor:
        """Restore ``cond`` (the degraded image, [-1, 1]); extra: the options of ``self.Options`` (``eta`` for
        the posterior sampler; ``noise_sigma`` for Denoising-SDE), ``clamp`` (default True) to clamp the
        final output to [-1, 1]."""
        name = self.check_sampler(sampler)
        clamp = extra.pop("clamp", True)
        opts = self.sample_options(name, **extra)
        extra = {"eta": opts.eta} if name == "posterior" else {}
        steps = steps or self.default_steps
        if self.clean_mean:
            # Denoising-SDE: walk from t* (where the chain's std equals the input's noise) down to 0
            sigma = opts.noise_sigma
            t_star = self.start_step(self.noise_sigma if sigma is None else sigma)
            if t_star == 0:  # below the chain's first step: nothing to remove
                return cond.clamp(-1, 1) if clamp else cond
            if isinstance(steps, int | np.integer):
                steps = step_indices(t_star, min(int(steps), t_star))
            elif int(steps[0]) != t_star:
                raise ValueError(f"steps start at {steps[0]} but the input's noise level is at step {t_star}")
        with torch.no_grad():
            x = SAMPLERS[name](self, net, self.start(cond, generator), cond, steps, generator, callback, **extra)
        return x.clamp(-1, 1) if clamp else x


# ---- samplers: (method, net, x_T, cond, steps, generator, callback) -> x_0 ------------------------
# None clamps: clamping happens once, on the final output, in `IRSDE.sample`.

def posterior_sampler(method: IRSDE, net: nn.Module, x_T: torch.Tensor, cond: torch.Tensor,
                      steps: Steps, generator: torch.Generator | None, callback: Callback,
                      eta: float | None = None) -> torch.Tensor:
    """Draw x_s ~ q(x_s | x_t, x̂0) on any decreasing subset of steps; std scaled by η (0: deterministic).

    With a perfect ε̂ this is exact for any step subset (no discretisation error), so few steps work.
    """
    eta = method.eta if eta is None else float(eta)
    mu = cond

    def update(x: torch.Tensor, t: int, s: int) -> torch.Tensor:
        x0_hat = method.predict(net, x, mu, t)[1]
        c_t, c_0, var = method.posterior_coefs(t, s)
        m = x0_hat if method.clean_mean else mu  # clean variant: μ = x0, estimated by x̂0
        x = m + float(c_t) * (x - m) + float(c_0) * (x0_hat - m)
        if eta > 0 and var > 0:
            x = x + eta * math.sqrt(var) * randn_like(x, generator)
        return x

    return run_steps(x_T, timesteps(method.num_steps, steps), update, callback)


def _euler_sampler(method: IRSDE, net: nn.Module, x_T: torch.Tensor, cond: torch.Tensor,
                   steps: Steps, generator: torch.Generator | None, callback: Callback,
                   ode: bool) -> torch.Tensor:
    """Euler(–Maruyama) on the reverse SDE / probability-flow ODE. A jump t -> s uses the θ summed
    over the skipped interval, Δ = θ̄_t − θ̄_s (dt included), with the score frozen at t:
        SDE: x_s = x_t − Δ (μ − x_t) + 2λ²Δ·score + √(2λ²Δ) z
        ODE: x_s = x_t − Δ (μ − x_t) +  λ²Δ·score
    First order: with T steps it matches the reference; with fewer, the error grows (use "posterior").
    """
    mu, lam2 = cond, method.lam**2

    def update(x: torch.Tensor, t: int, s: int) -> torch.Tensor:
        delta = float(method.theta_bar[t] - method.theta_bar[s])
        eps_hat = method.predict_noise(net, x, mu, t)
        score = -eps_hat / math.sqrt(method.variance(t))
        g2 = 2 * lam2 * delta  # σ² dt over the interval
        x = x - delta * method.reversion(x, mu, eps_hat, t) + (0.5 * g2 if ode else g2) * score
        if not ode:
            x = x + math.sqrt(g2) * randn_like(x, generator)
        return x

    return run_steps(x_T, timesteps(method.num_steps, steps), update, callback)


def sde_sampler(method: IRSDE, net: nn.Module, x_T: torch.Tensor, cond: torch.Tensor, steps: Steps,
                generator: torch.Generator | None, callback: Callback) -> torch.Tensor:
    """Reverse SDE, Euler–Maruyama (the paper's sampler with steps = T)."""
    return _euler_sampler(method, net, x_T, cond, steps, generator, callback, ode=False)


def ode_sampler(method: IRSDE, net: nn.Module, x_T: torch.Tensor, cond: torch.Tensor, steps: Steps,
                generator: torch.Generator | None, callback: Callback) -> torch.Tensor:
    """Reverse probability-flow ODE, Euler (deterministic given x_T)."""
    return _euler_sampler(method, net, x_T, cond, steps, generator, callback, ode=True)


SAMPLERS = {"posterior": posterior_sampler, "sde": sde_sampler, "ode": ode_sampler}
