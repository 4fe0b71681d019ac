"""Refusion's first stage (Luo et al., CVPRW 2023): the autoencoder whose latent the ``refusion`` method
diffuses in, trained on (gt, lq) pairs through the one trainer.

The autoencoder E/D (``refusion_ae``, irdiff/nets/official_refusion.py) is U-shaped: ``E(x) = (z, h)``
gives a latent z at 1/8 (or 1/4) of the size and the skip features h; ``D(z, h)`` decodes. Refusion
decodes a restored latent with the skip features of the *degraded* image, so the stage teaches the
decoder exactly that. Per pair, as the authors' stage (codes/config/unet-latent, models/latent_model.py):

    z_lq, h_lq = E(lq),   z_gt = E(gt)[0]
    rec = |D(z_lq, h_lq) − lq|      the degraded image's own round trip
    rep = |D(z_gt, h_lq) − gt|      the clean latent decoded with the degraded image's skips
    reg = |mean z_lq − mean lq| + |std z_lq − ½ std lq|   keeps the latent at an image-like scale
    L = rec_weight·rec + rep_weight·rep + reg_weight·reg      (1, 1, 0.001 as the official config)

No term needs downloaded weights (the authors' code has a perceptual variant, commented out; not here).

Differences from the authors' code: images are in [−1, 1] (theirs: [0, 1]), so the regulariser puts the
latent on the [−1, 1] scale too, where IR-SDE's λ is doubled alike (``IRSDE.lam`` = 2·lam/255): λ = 50
means the same relative noise in the latent as in the official code. ``reg`` is computed per sample
(theirs: over the batch), since a loss here returns one value per sample. The norm is ``loss_type``
(l1 as the official config; l2 possible).

As a model (``irdiff restore --model`` on the stage's run), the autoencoder returns the round trip
D(E(x)); its validation measures the round trip of the *clean* image (``degraded_input`` is gt), so
``val/psnr`` is the reconstruction PSNR (``val/psnr_in`` is then infinite: the input is gt itself).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from irdiff.methods.base import Callback, Method, loss_type_name, per_sample_mean, pixel_error
from irdiff.registry import METHODS


class AutoencoderStage(nn.Module):
    """The autoencoder under training (state-dict keys ``autoencoder.*``). Its ``forward(gt, lq)`` computes
    the stage's three outputs in one call of the top-level module, so that a DistributedDataParallel wrapper
    sees it and all-reduces the gradients (calling ``encode`` / ``decode`` on the inner module would not)."""

    def __init__(self, autoencoder: nn.Module):
        super().__init__()
        self.autoencoder = autoencoder
        self.multiple = getattr(autoencoder, "multiple", 1)

    def forward(self, gt: torch.Tensor, lq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(D(z_lq, h_lq), D(z_gt, h_lq), z_lq)."""
        z_lq, h_lq = self.autoencoder.encode(lq)
        z_gt, _ = self.autoencoder.encode(gt)
        return self.autoencoder.decode(z_lq, h_lq), self.autoencoder.decode(z_gt, h_lq), z_lq


def latent_scale_gap(latent: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """|mean z − mean x| + |std z − ½ std x| per sample: the official regulariser of the latent's scale."""
    z, x = latent.flatten(1), image.flatten(1)
    return (z.mean(1) - x.mean(1)).abs() + (z.std(1) - 0.5 * x.std(1)).abs()


@METHODS.register("autoencoder")
class Autoencoder(Method):
    """Config: ``loss_type`` (l1 | l2), ``rec_weight``, ``rep_weight``, ``reg_weight`` (see the module docstring);
    ``net`` is the autoencoder (``refusion_ae``: ch, ch_mult, embed_dim)."""

    num_steps = 1
    noise_level_dim = 0
    default_steps = 1
    samplers = ("direct",)

    def __init__(self, loss_type: str = "l1", rec_weight: float = 1.0, rep_weight: float = 1.0,
                 reg_weight: float = 0.001):
        for key, value in (("rec_weight", rec_weight), ("rep_weight", rep_weight), ("reg_weight", reg_weight)):
            if value < 0:
                raise ValueError(f"{key} must be >= 0, got {value}")
        if rec_weight == rep_weight == 0:
            raise ValueError("rec_weight and rep_weight are both 0: nothing would train the decoder")
        self.loss_type = loss_type_name(loss_type)
        self.rec_weight, self.rep_weight, self.reg_weight = float(rec_weight), float(rep_weight), float(reg_weight)

    def net_in_channels(self, img_channels: int) -> int:
        return img_channels

    def build_net(self, net_cfg: dict[str, Any], img_channels: int) -> nn.Module:
        ae = super().build_net(net_cfg, img_channels)
        if not (callable(getattr(ae, "encode", None)) and callable(getattr(ae, "decode", None))):
            raise ValueError(f"net.name: {net_cfg['name']} is not an autoencoder (no encode / decode); use refusion_ae")
        return AutoencoderStage(ae)

    def inference_net(self, model: nn.Module) -> nn.Module:
        return model.autoencoder if isinstance(model, AutoencoderStage) else model

    def degraded_input(self, gt: torch.Tensor, lq: torch.Tensor) -> torch.Tensor:
        return gt  # validation: the clean image's round trip

    def loss_terms(self, net: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Every term per sample (B,): ``rec``, ``rep``, ``reg`` and their weighted sum ``loss``."""
        gt, lq = batch["gt"], batch["lq"]
        rec_lq, rep_gt, z_lq = net(gt, lq)
        out = {"rec": per_sample_mean(pixel_error(rec_lq - lq, self.loss_type)),
               "rep": per_sample_mean(pixel_error(rep_gt - gt, self.loss_type)),
               "reg": latent_scale_gap(z_lq, lq)}
        out["loss"] = self.rec_weight * out["rec"] + self.rep_weight * out["rep"] + self.reg_weight * out["reg"]
        return out

    def loss(self, net: nn.Module, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None,
             t: torch.Tensor | None = None, noise: torch.Tensor | None = None) -> torch.Tensor:
        return self.loss_terms(net, batch)["loss"]  # deterministic: nothing is drawn

    def sample(self, net: nn.Module, cond: torch.Tensor, steps: int | None = None, sampler: str | None = None,
               generator: torch.Generator | None = None, callback: Callback = None, **extra: Any) -> torch.Tensor:
        """The round trip D(E(cond)), clamped."""
        extra.pop("mask", None)
        self.check_sampler(sampler)
        self.sample_options(sampler, **extra)  # takes no option: any is an error naming it
        ae = self.inference_net(getattr(net, "module", net))
        with torch.no_grad():
            out = ae.decode(*ae.encode(cond)).clamp(-1, 1)
        if callback is not None:
            callback(0, 1, out)
        return out
