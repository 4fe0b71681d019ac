"""RDDM (Liu et al., CVPR 2024): residual + noise diffusion.

Residual I_res = I_in − I_0. Forward: I_t = I_{t−1} + α_t I_res + β_t ε_{t−1}, hence
    I_t = I_0 + ᾱ_t I_res + β̄_t ε,   ᾱ_t = Σ_{i≤t} α_i (ᾱ_T = 1),   β̄_t² = Σ_{i≤t} β_i²,
so I_T = I_in + β̄_T ε: sampling starts from the degraded image plus a little noise.

Index convention: t = 1..T, index 0 = clean (ᾱ_0 = β̄_0 = 0). The reference code's 0-based t is
our t − 1. Images are in [−1, 1] (as the reference), so the residual lies in [−2, 2].

The net sees x = I_t, cond = I_in and, as noise level, the pair (ᾱ_t, β̄_t / β̄_T) packed as (B, 2),
both in [0, 1] (the second is ≈ t/T for the default schedule). Conditioning on the coefficients
rather than on t (the reference restoration code feeds t) is what lets the α / β schedule shapes
be changed at sampling time (``sample(..., alpha_schedule=..., beta_schedule=...)``).

The reference's released / trained nets (``irdiff.official.rddm``) need three options: ``level: index``
feeds its restoration code's time input t − 1 (twice, one column per U-Net) instead of the
coefficients; ``res_clip: 1`` clamps the predicted residual to [−1, 1] as its sampler does (it is in
[−2, 2] in truth); ``step_spacing: trunc`` picks the sampling steps as it does
(``torch.linspace(−1, T − 1, S + 1).int()`` + 1, which differs from even rounding when S does not divide T).

Unconditional generation (the released weights: ``condition: false``): I_in = 0, so I_T is noise; the net
sees x alone (cond None), sampling starts from ε ~ N(0, I) as the reference, and the input image only sets
the output size. ``alpha_schedule`` / ``beta_schedule`` ``ddpm`` are the reference's DDIM-converted
coefficients: ᾱ_t = 1 − √ᾱᴰᴰᴾᴹ_t, β̄_t² = 1 − ᾱᴰᴰᴾᴹ_t with DDPM's linear β 1e-4 … 0.02 (computed in float32
as the reference; ᾱ_T < 1, so only for I_in = 0). ``level: raw`` feeds (ᾱ_t, β̄_t) unnormalised (the
generation code's time input is T times that). The ``two_stage`` sampler is the reference's partially
path-independent generation: all the residual removal first (I_s = I_t − (ᾱ_t − ᾱ_s) I_res^θ, ending in
I_0^θ), then all the noise removal (I_s = I_t − (β̄_t − √(β̄_s² − σ²)) ε^θ + σ z, ending in I_0^θ), each
over the same steps.

Variants (``mode``): "res_noise" (SM-Res-N, one net with 2C outputs: residual first, then noise),
"res" (SM-Res: ε derived from the residual), "noise" (SM-N: I_0 derived from ε; singular where
ᾱ_t = 1, i.e. at t = T, where I_T carries no information about the residual).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from irdiff.methods.base import (
    Callback,
    Method,
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
    timesteps,
)
from irdiff.registry import METHODS

MODES = ("res_noise", "res", "noise")
SCHEDULES = ("decreased", "increased", "average")


def coefficients(T: int, schedule: str) -> np.ndarray:
    """Per-step weights w_1..w_T summing to 1 (float64), with a leading 0 for index 0 (length T+1).

    "increased": w_i ∝ i; "decreased": the same reversed; "average": 1/T (reference exp. 2).
    """
    if schedule == "increased":
        w = np.arange(1, T + 1, dtype=np.float64)
    elif schedule == "decreased":
        w = np.arange(T, 0, -1, dtype=np.float64)
    elif schedule == "average":
        w = np.ones(T, dtype=np.float64)
    else:
        raise ValueError(f"unknown RDDM schedule {schedule!r}; known: {', '.join(SCHEDULES)}")
    return np.concatenate([[0.0], w / w.sum()])


@dataclass(frozen=True)
class RDDMOptions(SampleOptions):
    eta: float | None = option("DDIM stochasticity: 0 deterministic, 1 ancestral (default: the model's eta)",
                               low=0)


@METHODS.register("rddm")
class RDDM(Method):
    """Residual denoising diffusion (RDDM): the degraded image plus a little noise diffuses to the clean one.

    Config: ``num_steps`` T (1000), ``mode`` ("res_noise" | "res" | "noise"), ``alpha_schedule``
    ("decreased"), ``beta_schedule`` ("increased", for β²), ``sum_scale`` = β̄_T² (0.01 for
    restoration, 1 for generation), ``loss_type`` ("l1" as the reference code | "l2" as the paper),
    ``lambda_res`` / ``lambda_noise`` (weights of the two loss terms), ``eta`` (DDIM stochasticity,
    0 = deterministic), ``clip_x0`` (``clip_denoised`` in older configs: clamp the predicted I_0 to
    [−1, 1] and the residual to [−2, 2] while sampling).
    """

    noise_level_dim = 2
    samplers = ("ddim", "two_stage")
    Options = RDDMOptions
    default_steps = 10

    def __init__(self, num_steps: int = 1000, mode: str = "res_noise", alpha_schedule: str = "decreased",
                 beta_schedule: str = "increased", sum_scale: float = 0.01, loss_type: str = "l1",
                 lambda_res: float = 1.0, lambda_noise: float = 1.0, eta: float = 0.0,
                 clip_x0: bool = True, level: str = "coefficients", res_clip: float = 2.0,
                 step_spacing: str = "even", condition: bool = True, clip_denoised: bool | None = None):
        if clip_denoised is not None:  # the older name of clip_x0
            clip_x0 = clip_denoised
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; known: {', '.join(MODES)}")
        if not 0 < sum_scale <= 1:
            raise ValueError(f"sum_scale must be in (0, 1], got {sum_scale}")
        self.num_steps = int(num_steps)
        self.mode = mode
        self.alpha_schedule = alpha_schedule
        self.beta_schedule = beta_schedule
        self.sum_scale = float(sum_scale)
        self.loss_type = loss_type_name(loss_type)
        self.lambda_res = float(lambda_res)
        self.lambda_noise = float(lambda_noise)
        self.eta = float(eta)
        self.clip_x0 = bool(clip_x0)
        if level not in ("coefficients", "index", "raw"):
            raise ValueError(f"level must be 'coefficients', 'raw' or 'index', got {level!r}")
        if not res_clip > 0:
            raise ValueError(f"res_clip must be > 0, got {res_clip}")
        if step_spacing not in ("even", "trunc"):
            raise ValueError(f"step_spacing must be 'even' or 'trunc', got {step_spacing!r}")
        self.level, self.res_clip, self.step_spacing = level, float(res_clip), step_spacing
        self.condition = bool(condition)
        if "ddpm" in (alpha_schedule, beta_schedule):
            if (alpha_schedule, beta_schedule) != ("ddpm", "ddpm") or self.condition:
                raise ValueError("the 'ddpm' (DDIM-converted) schedules go together, for condition: false only")
            self.alpha_bar, self.beta_bar = ddpm_converted(self.num_steps)
            return
        alphas = coefficients(self.num_steps, alpha_schedule)
        betas2 = coefficients(self.num_steps, beta_schedule) * self.sum_scale
        self.alpha_bar = np.clip(np.cumsum(alphas), 0.0, 1.0)
        self.alpha_bar[-1] = 1.0  # exact, so I_T = I_in + β̄_T ε whatever the rounding
        self.beta_bar = np.sqrt(np.clip(np.cumsum(betas2), 0.0, 1.0))

    def _config(self) -> dict[str, Any]:
        return dict(num_steps=self.num_steps, mode=self.mode, alpha_schedule=self.alpha_schedule,
                    beta_schedule=self.beta_schedule, sum_scale=self.sum_scale, loss_type=self.loss_type,
                    lambda_res=self.lambda_res, lambda_noise=self.lambda_noise, eta=self.eta,
                    clip_x0=self.clip_x0, level=self.level, res_clip=self.res_clip,
                    step_spacing=self.step_spacing, condition=self.condition)

    @classmethod
    def canonical_kwargs(cls, kwargs: dict[str, Any]) -> dict[str, Any]:
        out = dict(kwargs)
        if "clip_denoised" in out:
            out["clip_x0"] = out.pop("clip_denoised")
        return out

    def with_schedules(self, alpha_schedule: str | None = None, beta_schedule: str | None = None) -> RDDM:
        """A copy with other α / β² schedule shapes (same T and β̄_T), for path-independent sampling."""
        cfg = self._config()
        cfg["alpha_schedule"] = alpha_schedule or self.alpha_schedule
        cfg["beta_schedule"] = beta_schedule or self.beta_schedule
        return RDDM(**cfg)

    def net_in_channels(self, img_channels: int) -> int:
        return 2 * img_channels if self.condition else img_channels

    def net_out_channels(self, img_channels: int) -> int:
        return 2 * img_channels if self.mode == "res_noise" else img_channels

    # --- net plumbing -------------------------------------------------------------------------
    def noise_level(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """(ᾱ_t, β̄_t / β̄_T) as a (B, 2) tensor; (t − 1, t − 1) with ``level: index``."""
        if self.level == "index":
            v = (t.detach().to("cpu", torch.float64).view(-1) - 1).to(device=like.device, dtype=like.dtype)
            return torch.stack([v, v], dim=1)
        a = gather(self.alpha_bar, t, like).view(-1)
        b = gather(self.beta_bar / (1.0 if self.level == "raw" else self.beta_bar[-1]), t, like).view(-1)
        return torch.stack([a, b], dim=1)

    def predict(self, net: nn.Module, x: torch.Tensor, cond: torch.Tensor, t: torch.Tensor | int,
                clip: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(I_res^θ, ε^θ, I_0^θ) at I_t = x; the missing head is derived from the other per ``mode``.

        With ``clip``, I_0^θ is clamped to [−1, 1] and I_res^θ to ±``res_clip`` (2: its true range); the
        derived quantities are computed from the clamped ones so the three stay consistent.
        """
        if not torch.is_tensor(t):
            t = torch.full((x.shape[0],), int(t), device=x.device)
        a_t, b_t = gather(self.alpha_bar, t, x), gather(self.beta_bar, t, x)
        if not self.condition:
            cond = torch.zeros_like(x)  # I_in = 0; the net sees x alone
        out = net(x, self.noise_level(t, x), cond=cond if self.condition else None)
        if self.mode == "res_noise":
            c = x.shape[1]
            res, eps = out[:, :c], out[:, c:]
            if clip:
                res = res.clamp(-self.res_clip, self.res_clip)
            x0 = x - a_t * res - b_t * eps
        elif self.mode == "res":
            res = out.clamp(-self.res_clip, self.res_clip) if clip else out
            x0 = cond - res
            eps = (x - cond - (a_t - 1) * res) / b_t  # / β̄_t: tiny at small t (docs/methods/rddm.md)
        else:
            eps = out
            # 1 − ᾱ_t is 0 at T and ~1e-6 just below; the floor is the reference's patch
            x0 = (x - a_t * cond - b_t * eps) / (1 - a_t).clamp(min=1e-6)
            if clip:
                x0 = x0.clamp(-1, 1)
            res = cond - x0
            if clip:  # as the reference (a no-op with the default res_clip 2 for inputs in [−1, 1])
                res = res.clamp(-self.res_clip, self.res_clip)
        if clip and self.mode != "noise":
            x0 = x0.clamp(-1, 1)
        return res, eps, x0

    # --- the contract -------------------------------------------------------------------------
    def q_sample(self, x0: torch.Tensor, cond: torch.Tensor, t: torch.Tensor,
                 noise: torch.Tensor) -> torch.Tensor:
        """I_t = I_0 + ᾱ_t (I_in − I_0) + β̄_t ε."""
        return x0 + gather(self.alpha_bar, t, x0) * (cond - x0) + gather(self.beta_bar, t, x0) * noise

    def loss(self, net: nn.Module, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None,
             t: torch.Tensor | None = None, noise: torch.Tensor | None = None) -> torch.Tensor:
        x0 = batch["gt"]
        cond = batch["lq"] if self.condition else torch.zeros_like(x0)
        if t is None:
            t = randint(1, self.num_steps, x0.shape[0], generator, x0.device)
        if noise is None:
            noise = randn_like(x0, generator)
        x_t = self.q_sample(x0, cond, t, noise)
        out = net(x_t, self.noise_level(t, x0), cond=cond if self.condition else None)

        def err(d: torch.Tensor) -> torch.Tensor:
            return pixel_error(d, self.loss_type)

        c = x0.shape[1]
        if self.mode == "res_noise":
            return (self.lambda_res * per_sample_mean(err(out[:, :c] - (cond - x0)))
                    + self.lambda_noise * per_sample_mean(err(out[:, c:] - noise)))
        if self.mode == "res":
            return self.lambda_res * per_sample_mean(err(out - (cond - x0)))
        return self.lambda_noise * per_sample_mean(err(out - noise))

    def start(self, cond: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """I_T = I_in + β̄_T ε (the exact marginal at T, since ᾱ_T = 1); ε alone without a condition (the
        reference's start, whatever β̄_T)."""
        if not self.condition:
            return randn_like(cond, generator)
        return cond + float(self.beta_bar[-1]) * randn_like(cond, generator)

    def sample(self, net: nn.Module, cond: torch.Tensor, steps: Steps | None = None,
               sampler: str | None = None, generator: torch.Generator | None = None,
               callback: Callback = None, **extra: Any) -> torch.Tensor:
        """Restore ``cond`` (I_in, [-1, 1]). extra: the options of RDDMOptions (``eta``); ``alpha_schedule`` /
        ``beta_schedule`` to sample with other schedule shapes than training (the net sees (ᾱ_t, β̄_t/β̄_T),
        so it can; a research knob, not a user option)."""
        name = self.check_sampler(sampler)
        alpha_schedule, beta_schedule = extra.pop("alpha_schedule", None), extra.pop("beta_schedule", None)
        extra = {"eta": self.sample_options(name, **extra).eta}
        method = self
        if alpha_schedule or beta_schedule:
            method = self.with_schedules(alpha_schedule, beta_schedule)
        x_T = method.start(cond, generator)
        if not self.condition:
            cond = torch.zeros_like(cond)  # generation: the input only sets the size
        steps = steps or self.default_steps
        if self.step_spacing == "trunc" and isinstance(steps, int):
            steps = trunc_timesteps(self.num_steps, steps)
        with torch.no_grad():
            return SAMPLERS[name](method, net, x_T, cond, steps, generator, callback, **extra)


def trunc_timesteps(T: int, steps: int) -> list[int]:
    """The reference's sampling steps: ``torch.linspace(−1, T − 1, S + 1).int()`` (0-based, float32,
    truncated toward zero) shifted to our 1-based t, decreasing to 0."""
    if not 1 <= steps <= T:
        raise ValueError(f"steps must be in 1..{T}, got {steps}")
    return [int(v) + 1 for v in reversed(torch.linspace(-1, T - 1, steps + 1).int().tolist())]


# ---- samplers: (method, net, x_T, cond, steps, generator, callback) -> x_0 ------------------------

def _ddim_update(method: RDDM, net: nn.Module, cond: torch.Tensor, generator: torch.Generator | None,
                 eta: float, use_res: bool = True, use_eps: bool = True
                 ) -> Callable[[torch.Tensor, int, int], torch.Tensor]:
    """The DDIM step t -> s for ``run_steps``, with the residual and/or the noise term (σ z always)."""

    def update(x: torch.Tensor, t: int, s: int) -> torch.Tensor:
        res, eps, x0 = method.predict(net, x, cond, t, clip=method.clip_x0)
        if s == 0:
            return x0
        b_t, b_s = float(method.beta_bar[t]), float(method.beta_bar[s])
        var = eta * (b_t**2 - b_s**2) * b_s**2 / b_t**2
        if use_res:
            x = x - (float(method.alpha_bar[t]) - float(method.alpha_bar[s])) * res
        if use_eps:
            x = x - (b_t - math.sqrt(max(b_s**2 - var, 0.0))) * eps
        if var > 0:
            x = x + math.sqrt(var) * randn_like(x, generator)
        return x

    return update


def ddim_sampler(method: RDDM, net: nn.Module, x_T: torch.Tensor, cond: torch.Tensor, steps: Steps,
                 generator: torch.Generator | None, callback: Callback,
                 eta: float | None = None) -> torch.Tensor:
    """Generalised DDIM from t to any s < t, σ² = η (β̄_t² − β̄_s²) β̄_s² / β̄_t²:
        I_s = I_t − (ᾱ_t − ᾱ_s) I_res^θ − (β̄_t − √(β̄_s² − σ²)) ε^θ + σ z.
    The last step (s = 0) returns I_0^θ (clamped to [−1, 1] if ``clip_x0``).
    η = 1 on consecutive steps is the ancestral sampler (σ² is then the posterior variance).
    """
    eta = method.eta if eta is None else float(eta)
    update = _ddim_update(method, net, cond, generator, eta)
    return run_steps(x_T, timesteps(method.num_steps, steps), update, callback)


def two_stage_sampler(method: RDDM, net: nn.Module, x_T: torch.Tensor, cond: torch.Tensor, steps: Steps,
                      generator: torch.Generator | None, callback: Callback,
                      eta: float | None = None) -> torch.Tensor:
    """The reference's partially path-independent generation: the DDIM steps with the residual term only,
    then, from their result, the same steps with the noise term only (σ as in ``ddim_sampler``); each
    pass ends with I_0^θ. The callback counts both passes as one run of 2·(steps) steps."""
    eta = method.eta if eta is None else float(eta)
    ts = timesteps(method.num_steps, steps)
    n = len(ts) - 1

    def progress(offset: int) -> Callback:
        return None if callback is None else (lambda i, _n, x: callback(offset + i, 2 * n, x))

    x = run_steps(x_T, ts, _ddim_update(method, net, cond, generator, eta, use_eps=False), progress(0))
    return run_steps(x, ts, _ddim_update(method, net, cond, generator, eta, use_res=False), progress(n))


def ddpm_converted(T: int) -> tuple[np.ndarray, np.ndarray]:
    """(ᾱ, β̄) of length T + 1 (index 0 = clean) from DDPM's linear β 1e-4 … 0.02: ᾱ_t = 1 − √ᾱᴰᴰᴾᴹ_t,
    β̄_t = √(1 − ᾱᴰᴰᴾᴹ_t), in float32 as the reference computes them (its time input is T·ᾱ_t)."""
    betas = torch.linspace(1e-4, 0.02, T, dtype=torch.float32)
    cumprod = torch.cumprod(1.0 - betas, dim=0)
    alpha_bar = (1 - cumprod**0.5).double().numpy()
    beta_bar = torch.sqrt(1 - cumprod).double().numpy()
    return np.concatenate([[0.0], alpha_bar]), np.concatenate([[0.0], beta_bar])


SAMPLERS = {"ddim": ddim_sampler, "two_stage": two_stage_sampler}
