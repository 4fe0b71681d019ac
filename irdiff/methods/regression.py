"""The one-pass restorer trained by plain regression: the baseline, and the R of Noise-DA.

The network predicts a residual: restored = lq + net(lq). No noise level, one "step".

``noise_map: true`` makes it a non-blind denoiser as FFDNet: the net also sees a constant channel holding
the input's noise std (in the units of its [-1, 1] input: 2 sigma / 255). Training feeds each image's
actual noise, std(lq - gt); sampling takes ``noise_sigma`` (0-255, given by the user) or, when none is
given, estimates it from the input (``irdiff.noise_level.estimate_sigma``, per image or per tile).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from irdiff.methods.base import (
    Callback,
    Method,
    SampleOptions,
    loss_type_name,
    option,
    per_sample_mean,
    pixel_error,
)
from irdiff.registry import METHODS


@dataclass(frozen=True)
class NoiseMapOptions(SampleOptions):
    noise_sigma: float | None = option("the input's noise std (0-255) written into the noise map "
                                       "(default: estimated from the image)", low=0)


@METHODS.register("regression")
class Regression(Method):
    num_steps = 1
    noise_level_dim = 0
    default_steps = 1
    samplers = ("direct",)

    def __init__(self, loss_type: str = "l1", residual: bool = True, charbonnier_eps: float = 1e-3,
                 noise_map: bool = False):
        self.loss_type = loss_type_name(loss_type, ("l1", "l2", "charbonnier"))
        self.residual, self.charbonnier_eps = residual, charbonnier_eps
        if not isinstance(noise_map, bool):
            raise ValueError(f"noise_map must be true or false, got {noise_map!r}")
        self.noise_map = noise_map
        if noise_map:
            self.Options = NoiseMapOptions

    def net_in_channels(self, img_channels: int) -> int:
        return img_channels + 1 if self.noise_map else img_channels

    def sigma_map(self, lq: torch.Tensor, sigma: torch.Tensor | float | None) -> torch.Tensor:
        """The (B, 1, H, W) noise-map channel for ``lq`` in [-1, 1]: sigma (0-255, scalar or (B,)) as a
        std in the input's units; None estimates it from lq."""
        from irdiff.noise_level import estimate_sigma

        b, _, h, w = lq.shape
        if sigma is None:
            sigma = estimate_sigma(lq.detach(), scale=255.0 / 2)  # lq spans [-1, 1]: half the 0-255 scale
        s = torch.as_tensor(sigma, dtype=lq.dtype, device=lq.device).reshape(-1, 1, 1, 1) * (2 / 255.0)
        return s.expand(b, 1, h, w)

    def restore(self, net: nn.Module, lq: torch.Tensor, sigma: torch.Tensor | float | None = None) -> torch.Tensor:
        out = net(lq, None, self.sigma_map(lq, sigma)) if self.noise_map else net(lq, None)
        return lq + out if self.residual else out

    def pixel_loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return per_sample_mean(pixel_error(pred - target, self.loss_type, self.charbonnier_eps))

    def loss(self, net: nn.Module, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None,
             t: torch.Tensor | None = None, noise: torch.Tensor | None = None) -> torch.Tensor:
        lq, gt = batch["lq"], batch["gt"]
        sigma = None
        if self.noise_map:  # each image's actual noise std, 0-255 (the [-1, 1] range is twice [0, 1])
            sigma = (lq - gt).float().flatten(1).std(dim=1) * (255.0 / 2)
        return self.pixel_loss(self.restore(net, lq, sigma), gt)

    def sample(self, net: nn.Module, cond: torch.Tensor, steps: int | None = None, sampler: str | None = None,
               generator: torch.Generator | None = None, callback: Callback = None, **extra: Any) -> torch.Tensor:
        extra.pop("mask", None)  # not an inpainting model: a mask in the batch is ignored
        opts = self.sample_options(sampler, **extra)  # unknown options are an error naming them
        out = self.restore(net, cond, getattr(opts, "noise_sigma", None)).clamp(-1, 1)
        if callback is not None:
            callback(0, 1, out)
        return out
