"""SR3 / Palette: a conditional DDPM whose network sees the continuous noise level γ (docs/methods/sr3.md).

Forward: y_t = √γ · y0 + √(1−γ) · ε with γ = ᾱ_t = ∏_{s≤t}(1−β_s), ᾱ_0 = 1 (float64 schedule).
Training draws, per *sample*, t ~ U{1..T} and then γ ~ U(ᾱ_t, ᾱ_{t−1}); the network is fed γ (the
Palette convention; the SR3 repo feeds √γ — a checkpoint from it needs γ ↦ √γ before its net) and
predicts ε. Loss ‖ε − f(y_t, γ, c)‖_p, p ∈ {1, 2}, averaged per sample. ``noise_level_input`` picks
what the net is fed: √(1−γ) (irdiff's default), γ (Palette) or √γ (the SR3 repo), so the authors'
checkpoints run under this method unchanged (``irdiff import --format sr3 / palette``).

Conditioning ``c`` is the LQ image (bicubic-upsampled LR for SR, noisy/blurry/rainy image...). In
inpainting mode it is the LQ image with the hole filled by N(0, 1) noise plus the mask as one extra
channel (net input 2C+1; ``mask_channel: false`` leaves the mask out, as Palette's nets: 2C); the
known pixels of the noisy input are replaced by the GT in training, the loss is averaged over the hole
only, and sampling re-pastes the known pixels after every step. Unlike the reference repos (condition
first), our nets concatenate ``[x, cond]`` (the official_sr3 / official_palette nets put it first, as
the authors'); images are in [−1, 1].

Because the net sees γ, not t, sampling may use any subset of the training levels: ``ddim`` (default,
η from the config, 0 = deterministic) and ``ddpm`` (ancestral, β re-derived from consecutive ᾱ of the
subset, posterior variance β̃). Both clamp the predicted y0 to [−1, 1] when ``clip_x0``.

``prediction`` (eps | x0 | v, default eps) picks what the net outputs (``irdiff.methods.targets``: with
α = √γ, σ = √(1−γ), v = α ε − σ y0); the loss compares it to that target and the samplers turn it back
into (ε̂, ŷ0) in ``predict``. ``min_snr_gamma`` weights each sample's loss by min(SNR, γ_w) over the
target's SNR factor (Hang et al. 2023), SNR = γ/(1−γ).
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
    SampleOptions,
    cosine_alpha_bar,
    linear_betas,
    loss_type_name,
    option,
    pixel_error,
    rand,
    randint,
    randn_like,
    run_steps,
    step_indices,
)
from irdiff.registry import METHODS


@dataclass(frozen=True)
class SR3Options(SampleOptions):
    eta: float | None = option("DDIM stochasticity: 0 deterministic, 1 DDPM-like (default: the model's eta)",
                               samplers=("ddim",), low=0)


@METHODS.register("sr3")
class SR3(Method):
    """SR3 / Palette conditional DDPM with continuous-γ conditioning.

    Args:
        num_steps: training T (2000 in both reference repos).
        schedule: "linear" (β from ``beta_start`` to ``beta_end``) or "cosine" (Nichol & Dhariwal).
        loss_type: the norm of the ε loss, "l1" (SR3 repo, more conservative outputs) or "l2" (Palette, more
            diverse); 1 / 2 as older configs wrote it.
        inpainting: Palette inpainting/uncropping mode (needs ``mask`` in batches and at sampling).
        clip_x0: clamp the predicted y0 to [−1, 1] at every sampling step.
        eta: DDIM stochasticity (0 = deterministic DDIM, 1 = DDPM-like variance).
        noise_level_input: what the net is fed as its continuous noise level: "noise_std" = √(1−γ)
            (default), "gamma" = γ (Palette's convention) or "sqrt_gamma" = √γ (the SR3 repo's). All are
            the same continuous level, reparametrised; we default to √(1−γ) because the net embeds
            sinusoids of 1000·value, and γ stays within 1e-4 of 1 for the first ~50 of 2000 steps, so
            γ-fed nets cannot tell the low-noise levels apart (where the final detail is decided);
            √(1−γ) spreads them out. (Training draws γ uniformly in [ᾱ_t, ᾱ_{t−1}] whatever is fed; the
            SR3 repo draws √γ uniformly in [√ᾱ_t, √ᾱ_{t−1}]: the same intervals, a slightly different
            density inside each.) "log_snr" feeds log(γ/(1−γ)) / 10 (about −1 … 1.4 for the linear
            schedule), which spreads both ends of the schedule evenly.
        prediction: the net's output: "eps" (default), "x0" or "v" (see the module docstring).
        min_snr_gamma: None (unweighted) or γ_w > 0 for the min-SNR-γ loss weight (5 in the paper).
        mask_channel: inpainting only: append the mask to the net's condition (irdiff's default); False
            gives the net [x, lq with noise in the hole] only, as Palette's released nets (in_channel 6).
        init_from_cond: inpainting only: sampling starts from the condition image itself (the known
            pixels, and in the hole the very noise that fills the condition's hole), as Palette's test
            code does (``restoration(y_cond, y_t=y_cond, ...)``); False draws fresh noise for the hole.
    """

    samplers = ("ddim", "ddpm")
    default_steps = 50
    Options = SR3Options

    def __init__(self, num_steps: int = 2000, schedule: str = "linear", beta_start: float = 1e-6,
                 beta_end: float = 1e-2, loss_type: str = "l1", inpainting: bool = False, clip_x0: bool = True,
                 eta: float = 0.0, noise_level_input: str = "noise_std", mask_channel: bool = True,
                 init_from_cond: bool = False, prediction: str = "eps", min_snr_gamma: float | None = None):
        if noise_level_input not in ("noise_std", "gamma", "sqrt_gamma", "log_snr"):
            raise ValueError("noise_level_input must be noise_std, gamma, sqrt_gamma or log_snr, "
                             f"got {noise_level_input!r}")
        self.prediction = targets.check_prediction(prediction)
        if min_snr_gamma is not None and min_snr_gamma <= 0:
            raise ValueError(f"min_snr_gamma must be > 0 (or null), got {min_snr_gamma}")
        self.min_snr_gamma = None if min_snr_gamma is None else float(min_snr_gamma)
        if init_from_cond and not inpainting:
            raise ValueError("init_from_cond needs inpainting: true (it starts from the masked condition image)")
        self.noise_level_input = noise_level_input
        self.mask_channel = bool(mask_channel)
        self.init_from_cond = bool(init_from_cond)
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        self.num_steps = int(num_steps)
        self.schedule = schedule
        self.beta_start = float(beta_start)
        self.beta_end = float(beta_end)
        self.loss_type = loss_type_name(loss_type)
        self.inpainting = bool(inpainting)
        self.clip_x0 = bool(clip_x0)
        self.eta = float(eta)
        if schedule == "linear":
            betas = linear_betas(self.num_steps, self.beta_start, self.beta_end)
            self.alpha_bar = np.cumprod(1.0 - betas)  # betas[0] = 0, so ᾱ_0 = 1
        elif schedule == "cosine":
            self.alpha_bar = cosine_alpha_bar(self.num_steps)
        else:
            raise ValueError(f"unknown schedule {schedule!r}; known: linear, cosine")

    @property
    def needs_mask(self) -> bool:
        return self.inpainting

    def net_in_channels(self, img_channels: int) -> int:
        return 2 * img_channels + (1 if self.inpainting and self.mask_channel else 0)

    # --- conditioning -------------------------------------------------------------------------
    def net_cond(self, lq: torch.Tensor, mask: torch.Tensor | None, generator: torch.Generator | None
                 ) -> torch.Tensor:
        """The net's condition: ``lq``, or in inpainting mode cat([lq with noise in the hole, mask])."""
        if not self.inpainting:
            return lq
        if mask is None:
            raise ValueError("SR3(inpainting=True) needs a mask (B, 1, H, W), 1 = missing pixel")
        mask = mask.to(lq.dtype)
        filled = lq * (1 - mask) + mask * randn_like(lq, generator)
        return torch.cat([filled, mask], dim=1)

    def net_view(self, cond: torch.Tensor, img_channels: int) -> torch.Tensor:
        """What the net sees of ``net_cond``'s output: without ``mask_channel``, the mask channel is dropped."""
        return cond if not self.inpainting or self.mask_channel else cond[:, :img_channels]

    def paste_known(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Inpainting: put the known pixels (stored in ``cond``) back into ``x``; identity otherwise."""
        if not self.inpainting:
            return x
        c = x.shape[1]
        known, mask = cond[:, :c], cond[:, c:c + 1]
        return torch.where(mask > 0.5, x, known)

    # --- the contract ---------------------------------------------------------------------------
    def q_sample(self, x0: torch.Tensor, cond: torch.Tensor | None, t: torch.Tensor, noise: torch.Tensor
                 ) -> torch.Tensor:
        """y_t = √ᾱ_t · y0 + √(1−ᾱ_t) · ε at integer t (B,) in 0..T (``cond`` unused)."""
        return self.add_noise(x0, torch.from_numpy(self.alpha_bar)[t.detach().long().cpu()], noise)

    def sample_gamma(self, t: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """γ ~ U(ᾱ_t, ᾱ_{t−1}) per sample, float64 (B,) on the CPU, for integer t in 1..T."""
        ti = t.detach().long().cpu()
        if ti.numel() and (int(ti.min()) < 1 or int(ti.max()) > self.num_steps):
            raise ValueError(f"t must lie in 1..{self.num_steps}")
        ab = torch.from_numpy(self.alpha_bar)
        # drawn where the generator lives, so a pinned CPU t works with a CUDA generator too
        u = rand(ti.shape[0], generator, generator.device if generator is not None else t.device).cpu()
        return ab[ti] + u * (ab[ti - 1] - ab[ti])

    def loss(self, net: nn.Module, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None,
             t: torch.Tensor | None = None, noise: torch.Tensor | None = None) -> torch.Tensor:
        x0, lq = batch["gt"], batch["lq"]
        b = x0.shape[0]
        if t is None:
            t = randint(1, self.num_steps, b, generator, x0.device)
        gamma = self.sample_gamma(t, generator)
        if noise is None:
            noise = randn_like(x0, generator)
        x_t = self.add_noise(x0, gamma, noise)
        mask = batch.get("mask")
        cond = self.net_cond(lq, mask, generator)
        if self.inpainting:
            x_t = torch.where(mask.to(x0.device) > 0.5, x_t, x0)
        pred = net(x_t, self.net_level(gamma).to(device=x0.device, dtype=x0.dtype), self.net_view(cond, x0.shape[1]))
        shape = (-1,) + (1,) * (x0.dim() - 1)
        alpha, sigma = (c.to(device=x0.device, dtype=x0.dtype).view(shape) for c in (gamma.sqrt(), (1 - gamma).sqrt()))
        err = pixel_error(pred - targets.target(self.prediction, x0, noise, alpha, sigma), self.loss_type)
        if not self.inpainting:
            per_sample = err.flatten(1).mean(1)
        else:
            hole = mask.to(err.dtype).expand_as(err)
            per_sample = (err * hole).flatten(1).sum(1) / hole.flatten(1).sum(1).clamp_min(1.0)
        if self.min_snr_gamma is None:
            return per_sample
        snr = gamma / (1 - gamma).clamp_min(1e-300)
        weight = targets.min_snr_weight(self.prediction, snr, self.min_snr_gamma)
        return per_sample * weight.to(device=per_sample.device, dtype=per_sample.dtype)

    def sample(self, net: nn.Module, cond: torch.Tensor, steps: int | None = None, sampler: str | None = None,
               generator: torch.Generator | None = None, callback: Callback = None, **extra: Any
               ) -> torch.Tensor:
        """Restore ``cond`` (the LQ batch); ``mask=`` is required in inpainting mode; options: SR3Options."""
        mask = extra.pop("mask", None)
        name = self.check_sampler(sampler)
        opts = self.sample_options(name, **extra)
        net_cond = self.net_cond(cond, mask, generator)
        if self.init_from_cond:  # the condition image, its hole noise included (Palette's test-time start)
            x_T = net_cond[:, : cond.shape[1]]
        else:
            x_T = self.paste_known(randn_like(cond, generator), net_cond)
        if name == "ddim":
            return sample_ddim(self, net, x_T, net_cond, steps or self.default_steps, generator, callback, opts.eta)
        return sample_ddpm(self, net, x_T, net_cond, steps or self.default_steps, generator, callback)

    # --- helpers --------------------------------------------------------------------------------
    def net_level(self, gamma: torch.Tensor | float) -> torch.Tensor:
        """The net's noise-level input for level γ (computed in float64): √(1−γ), γ, √γ or log-SNR / 10."""
        g = torch.as_tensor(gamma, dtype=torch.float64)
        if self.noise_level_input == "noise_std":
            return (1 - g).clamp_min(0).sqrt()
        if self.noise_level_input == "log_snr":  # 1 − γ floored: a γ drawn within rounding of 1 stays finite
            return (g.log() - (1 - g).clamp_min(1e-20).log()) / 10
        return g.sqrt() if self.noise_level_input == "sqrt_gamma" else g

    def add_noise(self, x0: torch.Tensor, gamma: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """y = √γ · x0 + √(1−γ) · noise for a (B,) level γ; coefficients in float64, cast once."""
        shape = (-1,) + (1,) * (x0.dim() - 1)
        g = gamma.to(torch.float64)
        a = g.sqrt().to(device=x0.device, dtype=x0.dtype).view(shape)
        s = (1 - g).sqrt().to(device=x0.device, dtype=x0.dtype).view(shape)
        return a * x0 + s * noise

    def predict(self, net: nn.Module, x: torch.Tensor, gamma: float, cond: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """(ε̂, ŷ0) at level γ; ŷ0 clamped when ``clip_x0`` and ε̂ then made consistent with it."""
        level = torch.full((x.shape[0],), float(self.net_level(gamma)), device=x.device, dtype=x.dtype)
        out = net(x, level, self.net_view(cond, x.shape[1]))
        eps, x0 = targets.split(self.prediction, out, x, math.sqrt(gamma), math.sqrt(1 - gamma))
        if self.clip_x0:
            x0 = x0.clamp(-1, 1)
            eps = (x - math.sqrt(gamma) * x0) / math.sqrt(1 - gamma)
        return eps, x0


def sample_ddim(method: SR3, net: nn.Module, x_T: torch.Tensor, cond: torch.Tensor, steps: int,
                generator: torch.Generator | None, callback: Callback, eta: float | None = None) -> torch.Tensor:
    """DDIM on a subset of the training levels; η (default ``method.eta``; 0: deterministic)."""
    eta = method.eta if eta is None else float(eta)
    ab = method.alpha_bar

    def update(x: torch.Tensor, t: int, s: int) -> torch.Tensor:
        g_t, g_s = float(ab[t]), float(ab[s])
        eps, x0 = method.predict(net, x, g_t, cond)
        if s == 0:
            x = x0
        else:
            sigma = eta * math.sqrt((1 - g_s) / (1 - g_t) * (1 - g_t / g_s))
            x = math.sqrt(g_s) * x0 + math.sqrt(max(1 - g_s - sigma**2, 0.0)) * eps
            if sigma > 0:
                x = x + sigma * randn_like(x, generator)
        return method.paste_known(x, cond)

    return run_steps(x_T, step_indices(method.num_steps, steps), update, callback)


def sample_ddpm(method: SR3, net: nn.Module, x_T: torch.Tensor, cond: torch.Tensor, steps: int,
                generator: torch.Generator | None, callback: Callback) -> torch.Tensor:
    """Ancestral DDPM on any subset of levels: β = 1 − ᾱ_t/ᾱ_s between consecutive kept levels."""
    ab = method.alpha_bar

    def update(x: torch.Tensor, t: int, s: int) -> torch.Tensor:
        g_t, g_s = float(ab[t]), float(ab[s])
        alpha = g_t / g_s
        beta = 1 - alpha
        _, x0 = method.predict(net, x, g_t, cond)
        # posterior q(y_s | y_t, y0): mean coefficients and variance β̃
        c0 = beta * math.sqrt(g_s) / (1 - g_t)
        ct = (1 - g_s) * math.sqrt(alpha) / (1 - g_t)
        x = c0 * x0 + ct * x
        if s > 0:
            var = beta * (1 - g_s) / (1 - g_t)
            x = x + math.sqrt(var) * randn_like(x, generator)
        return method.paste_known(x, cond)

    return run_steps(x_T, step_indices(method.num_steps, steps), update, callback)
