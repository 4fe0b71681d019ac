"""The one-pass restorer trained by plain regression: the baseline, and the R of Noise-DA.

The network predicts a residual: restored = lq + net(lq). No noise level, one "step".
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from irdiff.methods.base import Callback, Method, loss_type_name, per_sample_mean, pixel_error
from irdiff.registry import METHODS


@METHODS.register("regression")
class Regression(Method):
    num_steps = 1
    noise_level_dim = 0
    default_steps = 1
    samplers = ("direct",)

    def __init__(self, loss_type: str = "l1", residual: bool = True, charbonnier_eps: float = 1e-3):
        self.loss_type = loss_type_name(loss_type, ("l1", "l2", "charbonnier"))
        self.residual, self.charbonnier_eps = residual, charbonnier_eps

    def net_in_channels(self, img_channels: int) -> int:
        return img_channels

    def restore(self, net: nn.Module, lq: torch.Tensor) -> torch.Tensor:
        out = net(lq, None)
        return lq + out if self.residual else out

    def pixel_loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return per_sample_mean(pixel_error(pred - target, self.loss_type, self.charbonnier_eps))

    def loss(self, net: nn.Module, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None,
             t: torch.Tensor | None = None, noise: torch.Tensor | None = None) -> torch.Tensor:
        return self.pixel_loss(self.restore(net, batch["lq"]), batch["gt"])

    def sample(self, net: nn.Module, cond: torch.Tensor, steps: int | None = None, sampler: str | None = None,
               generator: torch.Generator | None = None, callback: Callback = None, **extra: Any) -> torch.Tensor:
        extra.pop("mask", None)  # not an inpainting model: a mask in the batch is ignored
        self.sample_options(sampler, **extra)  # takes no option: any is an error naming it
        out = self.restore(net, cond).clamp(-1, 1)
        if callback is not None:
            callback(0, 1, out)
        return out
