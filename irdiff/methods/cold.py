"""Cold Diffusion: a deterministic degradation D(x0, s) and an L1 restorer R (docs/methods/cold.md).

One index convention everywhere: ``s`` = number of per-step operators applied, s = 0..T, and
D(x0, 0) = x0. Training draws s ~ U{1..T} per sample and minimises |R(D(x0, s), s/T) − x0| (the net
predicts x0; there is no noise anywhere). Sampling starts from x_T = the degraded input (``cond``)
and walks a decreasing subset of steps s → s':

- ``improved`` (Algorithm 2, default): x_{s'} = x_s − D(x̂0, s) + D(x̂0, s'), x̂0 = R(x_s, s/T);
- ``naive`` (Algorithm 1): x_{s'} = D(x̂0, s').

The reference code trains with a 0-based index t meaning t+1 operators and samples with s−1; here
the net sees s/T for the state with s operators applied, in training and sampling alike, or, with
``level: index``, the reference's own time input s − 1 (for its released weights, see
``irdiff.official.cold``).

Built-in degradations (``degradation``):

- ``blur``: per-step depthwise Gaussian blur (kernel ``blur_kernel_size``, std
  ``blur_std + blur_std_increment·(i−1)`` at step i, or ``exp(blur_std·(i−1))`` with
  ``blur_schedule: exponential``), ``blur_padding`` reflect (default) or circular border, composed
  step by step (the data pipeline's ``gaussian_blur`` degradation at a fixed std; the reference's blur
  routines: Incremental = linear with increment = std, Constant = increment 0, Exponential(_reflect) =
  exponential; its default border is circular);
  ``blur_discrete`` (the reference's generation models): D(x0, T) is the per-channel mean colour;
- ``mask``: product of centred smooth holes z_i = 1 − exp(−r²/2σ_i²), σ_i = ``mask_std``·(i − 1 +
  ``mask_initial``) pixels (the reference's Incremental routine); the hole fades to 0 (mid-grey);
- ``pixelate`` / ``downsample``: step i down-samples by 2^i (``pixelate_mode`` "area" or antialiased
  "bicubic") and blows the result back up with nearest neighbour, so T = 2 is ×4 SR;
- ``snow``: x + a_s ⊙ (1 − x), a_s = snow field above a threshold that falls linearly
  from ``snow_threshold_start`` to ``snow_threshold_end``, streaked by the data pipeline's ``motion_blur``
  (``snow_blur_length`` px at ``snow_angle``°); the field comes from ``snow_seed`` only, so D
  is deterministic (it depends on the image size);
- ``interp``: D(x0, s, lq) = (1 − s/T)·x0 + (s/T)·lq, for any paired task (x_T = lq).

The net sees only x_s (``net_in_channels(C) = C``), even for ``interp``: with lq as a condition the net
could invert D algebraically for every s < T, and sampling would collapse to one direct R(lq, 1).
For blur / mask / pixelate / snow the data pipeline must build its LQ images with :meth:`degrade`
(``lq = method.degrade(gt, T)``) so that training and sampling see the very same D; the ``lq`` and
``mask`` entries of a batch are not used by these degradations.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from irdiff.data.degradations import build_degradation
from irdiff.methods.base import Callback, Method, loss_type_name, pixel_error, randint, run_steps, step_indices
from irdiff.registry import METHODS

DEGRADATIONS = ("blur", "mask", "pixelate", "downsample", "snow", "interp")
DEFAULT_STEPS = {"blur": 20, "mask": 50, "pixelate": 2, "downsample": 2, "snow": 20, "interp": 10}


@METHODS.register("cold")
class ColdDiffusion(Method):
    """Cold Diffusion with a built-in deterministic degradation (blur, mask, pixelate, snow or interp).

    ``num_steps`` None picks a per-degradation T (blur 20, mask 50, pixelate 2, snow 20, interp 10).
    """

    samplers = ("improved", "naive")

    def __init__(self, degradation: str = "interp", num_steps: int | None = None,
                 blur_kernel_size: int = 11, blur_std: float = 1.0, blur_std_increment: float = 0.0,
                 blur_schedule: str = "linear", blur_padding: str = "reflect", blur_discrete: bool = False,
                 level: str = "fraction",
                 mask_std: float = 0.2, mask_initial: float = 1.0,
                 pixelate_mode: str = "area",
                 snow_seed: int = 0, snow_mean: float = 0.55, snow_std: float = 0.3, snow_zoom: int = 4,
                 snow_threshold_start: float = 1.15, snow_threshold_end: float = 0.7,
                 snow_blur_length: int = 9, snow_angle: float = -60.0,
                 loss_type: str = "l1"):
        if degradation not in DEGRADATIONS:
            raise ValueError(f"unknown degradation {degradation!r}; known: {', '.join(DEGRADATIONS)}")
        self.degradation = degradation
        self.num_steps = int(num_steps if num_steps is not None else DEFAULT_STEPS[degradation])
        if self.num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {self.num_steps}")
        self.default_steps = self.num_steps
        if blur_kernel_size < 1 or blur_kernel_size % 2 == 0:
            raise ValueError(f"blur_kernel_size must be odd and >= 1, got {blur_kernel_size}")
        self.blur_kernel_size = int(blur_kernel_size)
        self.blur_std = float(blur_std)
        self.blur_std_increment = float(blur_std_increment)
        if blur_schedule not in ("linear", "exponential"):
            raise ValueError(f"blur_schedule must be 'linear' or 'exponential', got {blur_schedule!r}")
        if blur_padding not in ("reflect", "circular"):
            raise ValueError(f"blur_padding must be 'reflect' or 'circular', got {blur_padding!r}")
        if level not in ("fraction", "index"):
            raise ValueError(f"level must be 'fraction' (s/T) or 'index' (s − 1), got {level!r}")
        self.blur_schedule, self.blur_padding, self.level = blur_schedule, blur_padding, level
        self.blur_discrete = bool(blur_discrete)
        self.mask_std = float(mask_std)
        self.mask_initial = float(mask_initial)
        if pixelate_mode not in ("area", "bicubic"):
            raise ValueError(f"pixelate_mode must be 'area' or 'bicubic', got {pixelate_mode!r}")
        self.pixelate_mode = pixelate_mode
        self.snow_seed = int(snow_seed)
        self.snow_mean = float(snow_mean)
        self.snow_std = float(snow_std)
        self.snow_zoom = int(snow_zoom)
        if snow_blur_length < 1 or snow_zoom < 1:
            raise ValueError("snow_blur_length and snow_zoom must be >= 1")
        self.snow_blur_length = int(snow_blur_length)
        self.snow_angle = float(snow_angle)
        self.snow_threshold_start = float(snow_threshold_start)
        self.snow_threshold_end = float(snow_threshold_end)
        self.loss_type = loss_type_name(loss_type)
        # per-step parameters, index 0 unused (no operator at s = 0)
        steps = np.arange(self.num_steps + 1, dtype=np.float64)
        if blur_schedule == "exponential":
            self.blur_sigma = np.exp(self.blur_std * (steps - 1))
        else:
            self.blur_sigma = self.blur_std + self.blur_std_increment * (steps - 1)
        self.mask_sigma = self.mask_std * (steps - 1 + self.mask_initial)
        self.snow_threshold = np.concatenate(
            [[np.inf], np.linspace(self.snow_threshold_start, self.snow_threshold_end, self.num_steps)])
        if self.degradation == "blur" and np.any(self.blur_sigma[1:] <= 0):
            raise ValueError("blur std must stay > 0 at every step")
        if self.degradation == "mask" and np.any(self.mask_sigma[1:] <= 0):
            raise ValueError("mask std must stay > 0 at every step")
        # the blur operators and the snow streaks are the data pipeline's registered degradations, with
        # fixed parameters (so deterministic: a fixed value draws nothing from a generator)
        self._blur_ops = [None] + [
            build_degradation({"name": "gaussian_blur", "sigma": float(sigma), "kernel_size": self.blur_kernel_size,
                               "border": self.blur_padding})
            for sigma in self.blur_sigma[1:]] if self.degradation == "blur" else []
        self._streaks = build_degradation({"name": "motion_blur", "length": self.snow_blur_length,
                                           "angle": self.snow_angle})

    def net_in_channels(self, img_channels: int) -> int:
        return img_channels

    @property
    def scale(self) -> int:
        """Pixelation with T steps is 2^T-fold super-resolution: a user's LR image is D(x0, T) shrunk."""
        return 2**self.num_steps if self.degradation in ("pixelate", "downsample") else 1

    def upsample_input(self, lr: torch.Tensor, scale: int) -> torch.Tensor:
        if self.degradation not in ("pixelate", "downsample"):
            return super().upsample_input(lr, scale)
        # D(x0, T) blows its 2^T-down-sampled image up with nearest neighbour: so must the input
        return lr.repeat_interleave(scale, dim=-2).repeat_interleave(scale, dim=-1)

    def degraded_input(self, gt: torch.Tensor, lq: torch.Tensor) -> torch.Tensor:
        return lq if self.degradation == "interp" else self.degrade(gt, self.num_steps)

    # --- the degradation ------------------------------------------------------------------------
    def degrade(self, x0: torch.Tensor, s: int | torch.Tensor, lq: torch.Tensor | None = None
                ) -> torch.Tensor:
        """D(x0, s): ``s`` operators applied; ``s`` an int or a (B,) integer tensor; ``lq`` for interp."""
        if isinstance(s, torch.Tensor):
            s_list = [int(v) for v in s.detach().cpu().long()]
            if len(s_list) != x0.shape[0]:
                raise ValueError(f"s has {len(s_list)} entries for a batch of {x0.shape[0]}")
        else:
            s_list = [int(s)] * x0.shape[0]
        if any(v < 0 or v > self.num_steps for v in s_list):
            raise ValueError(f"s must lie in 0..{self.num_steps}")
        wanted = sorted(set(s_list))
        states = dict(self._chain(x0, wanted, lq))
        if len(wanted) == 1:
            return states[wanted[0]]
        return torch.stack([states[v][b] for b, v in enumerate(s_list)])

    def degrade_pair(self, x0: torch.Tensor, s: int, s_prev: int, lq: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """(D(x0, s), D(x0, s_prev)) in one pass over the operators (same values as two degrade calls)."""
        states = dict(self._chain(x0, sorted({s, s_prev}), lq))
        return states[s], states[s_prev]

    def _chain(self, x0: torch.Tensor, wanted: list[int], lq: torch.Tensor | None
               ) -> Iterator[tuple[int, torch.Tensor]]:
        # Yields (s, D(x0, s)) for s in ``wanted`` (sorted). Composite degradations apply their
        # operators one at a time from x0, so D(x0, s) is bit-identical whoever asks for it.
        if self.degradation == "interp":
            if lq is None:
                raise ValueError("the 'interp' degradation needs lq (D(x0, s) = (1 − s/T)·x0 + (s/T)·lq)")
            for s in wanted:
                w = s / self.num_steps
                yield s, x0 if s == 0 else (lq if s == self.num_steps else (1 - w) * x0 + w * lq)
            return
        if self.degradation == "snow":
            field = self._snow_field(x0)
            for s in wanted:
                if s == 0:
                    yield s, x0
                else:
                    alpha = self._snow_alpha(field, s).to(device=x0.device, dtype=x0.dtype)
                    yield s, x0 + alpha * (1 - x0)
            return
        x = x0
        done = 0
        for s in wanted:
            while done < s:
                done += 1
                x = self._op(x, done)
            yield s, x

    def _op(self, x: torch.Tensor, i: int) -> torch.Tensor:
        if self.degradation == "blur":
            x = self._blur_ops[i](x, None)
            if self.blur_discrete and i == self.num_steps:  # the reference's generation models: D(x0, T) = mean
                x = x.mean(dim=(2, 3), keepdim=True).expand_as(x)
            return x
        if self.degradation == "mask":
            return x * self._mask_factor(x, i)
        return self._pixelate(x, i)

    def _mask_factor(self, x: torch.Tensor, i: int) -> torch.Tensor:
        h, w = x.shape[-2:]
        yy = np.arange(h, dtype=np.float64)[:, None] - h // 2
        xx = np.arange(w, dtype=np.float64)[None, :] - w // 2
        z = 1.0 - np.exp(-(yy**2 + xx**2) / (2 * float(self.mask_sigma[i]) ** 2))
        return torch.from_numpy(z).to(device=x.device, dtype=x.dtype)

    def _pixelate(self, x: torch.Tensor, i: int) -> torch.Tensor:
        f = 2**i
        h, w = x.shape[-2:]
        if h % f or w % f:
            raise ValueError(f"pixelate with T={self.num_steps} needs H and W divisible by "
                             f"{2 ** self.num_steps}, got {h}x{w}")
        if self.pixelate_mode == "area":
            small = F.avg_pool2d(x, f)
        else:
            small = F.interpolate(x, size=(h // f, w // f), mode="bicubic", antialias=True,
                                  align_corners=False)
        return small.repeat_interleave(f, dim=-2).repeat_interleave(f, dim=-1)

    def _snow_field(self, x: torch.Tensor) -> torch.Tensor:
        # Drawn on the CPU in float64 from the fixed seed: the same field on every device and call.
        h, w = x.shape[-2:]
        g = torch.Generator().manual_seed(self.snow_seed)
        z = self.snow_zoom
        small = torch.randn((1, 1, -(-h // z), -(-w // z)), generator=g, dtype=torch.float64)
        field = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)
        return self.snow_mean + self.snow_std * field

    def _snow_alpha(self, field: torch.Tensor, s: int) -> torch.Tensor:
        flakes = torch.where(field >= float(self.snow_threshold[s]), field, torch.zeros_like(field))
        return self._streaks(flakes, None).clamp(0, 1)  # (1, 1, H, W), float64 on the CPU

    # --- the contract ---------------------------------------------------------------------------
    def q_sample(self, x0: torch.Tensor, cond: torch.Tensor | None, t: torch.Tensor,
                 noise: torch.Tensor | None = None) -> torch.Tensor:
        """D(x0, t) per sample (``cond`` = lq, used by 'interp'; ``noise`` ignored: D is deterministic)."""
        return self.degrade(x0, t, cond)

    def loss(self, net: nn.Module, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None,
             t: torch.Tensor | None = None, noise: torch.Tensor | None = None) -> torch.Tensor:
        """|R(D(x0, s), s/T) − x0| per sample (squared if ``loss_type`` is "l2"); ``noise`` is unused."""
        x0 = batch["gt"]
        if t is None:
            t = randint(1, self.num_steps, x0.shape[0], generator, x0.device)
        x_s = self.degrade(x0, t, batch.get("lq"))
        pred = net(x_s, self.net_level(t).to(device=x0.device, dtype=x0.dtype), None)
        err = pixel_error(pred - x0, self.loss_type)
        return err.flatten(1).mean(1)

    def sample(self, net: nn.Module, cond: torch.Tensor, steps: int | None = None, sampler: str | None = None,
               generator: torch.Generator | None = None, callback: Callback = None, **extra: Any
               ) -> torch.Tensor:
        """Restore ``cond`` = x_T (the degraded batch: lq for 'interp', D(x0, T) otherwise).

        A ``mask`` in ``extra`` is accepted and ignored: Cold's masking is its own fixed D. With
        ``blur_discrete`` only the per-channel mean of ``cond`` is used (x_T is a flat colour).
        """
        extra.pop("mask", None)
        if self.degradation == "blur" and self.blur_discrete:
            cond = cond.mean(dim=(2, 3), keepdim=True).expand_as(cond)
        self.sample_options(sampler, **extra)  # takes no option: any is an error naming it
        fn = {"improved": sample_improved, "naive": sample_naive}[self.check_sampler(sampler)]
        return fn(self, net, cond, cond, steps or self.default_steps, generator, callback)

    def net_level(self, s: torch.Tensor) -> torch.Tensor:
        """What the net sees for s operators applied (B,) integers: s/T, or s − 1 with ``level: index``."""
        s = s.to(torch.float64)
        return s - 1 if self.level == "index" else s / self.num_steps

    def restore_step(self, net: nn.Module, x: torch.Tensor, s: int) -> torch.Tensor:
        """x̂0 = R(x_s, level(s))."""
        level = self.net_level(torch.full((x.shape[0],), s)).to(device=x.device, dtype=x.dtype)
        return net(x, level, None)


def sample_improved(method: ColdDiffusion, net: nn.Module, x_T: torch.Tensor, cond: torch.Tensor, steps: int,
                    generator: torch.Generator | None, callback: Callback) -> torch.Tensor:
    """Algorithm 2: x_{s'} = x_s − D(x̂0, s) + D(x̂0, s') (exact for any R when D(x, s) = x + s·e)."""

    def update(x: torch.Tensor, s: int, s_prev: int) -> torch.Tensor:
        d_s, d_prev = method.degrade_pair(method.restore_step(net, x, s), s, s_prev, cond)
        return x - d_s + d_prev

    return run_steps(x_T, step_indices(method.num_steps, steps), update, callback)


def sample_naive(method: ColdDiffusion, net: nn.Module, x_T: torch.Tensor, cond: torch.Tensor, steps: int,
                 generator: torch.Generator | None, callback: Callback) -> torch.Tensor:
    """Algorithm 1: x_{s'} = D(x̂0, s')."""

    def update(x: torch.Tensor, s: int, s_prev: int) -> torch.Tensor:
        return method.degrade(method.restore_step(net, x, s), s_prev, cond)

    return run_steps(x_T, step_indices(method.num_steps, steps), update, callback)
