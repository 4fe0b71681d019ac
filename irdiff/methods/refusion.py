"""Refusion (Luo et al., CVPRW 2023 / NTIRE 2023): IR-SDE run in the latent of a frozen U-shaped autoencoder.

With the autoencoder E/D of the ``autoencoder`` stage (irdiff/methods/autoencoder.py): z_gt = E(gt)[0],
(z_lq, h_lq) = E(lq). Training is IR-SDE's loss with x0 = z_gt and μ = z_lq; restoring an image runs
IR-SDE's sampler from z_lq and decodes the result with the degraded image's skip features:
x̂ = D(ẑ0, h_lq). Images are 64× (×8 autoencoder) fewer positions in the latent, so every sampler
step costs a fraction of a pixel-space step; E and D run once per image.

Nothing of IR-SDE is re-implemented: ``Refusion`` *is* an ``IRSDE`` (its schedules, loss, posterior /
SDE / ODE samplers) whose ``loss`` and ``sample`` encode first and decode last; the latent SDE goes
through ``IRSDE.loss`` / ``IRSDE.sample`` exactly as pixels do (with an identity autoencoder both give
bit-identical results: tests/test_refusion.py). λ = 50 (0–255 scale) by default, as every official
Refusion config; the autoencoder's latent regulariser puts latents on the scale of [−1, 1] images,
where irdiff's λ lives (see irdiff/methods/autoencoder.py).

The trained module is a ``LatentModel``: the latent denoiser (trained) and the autoencoder (frozen;
``requires_grad`` off, always in eval mode). Its weights are exported together, so a Refusion model
folder restores on its own. ``method.autoencoder`` names the trained autoencoder (a run directory or
model folder) whose weights are copied in when training starts (``init_frozen``, called by
``irdiff.build.build_model``); ``method.autoencoder_net`` is its architecture, read from that folder when
the config is validated (``link_config``: a value written in the config must agree) and kept in the
run's config, so that loading a Refusion model never needs the autoencoder's folder.

Differences from the official code: the general ones of IR-SDE (irdiff/methods/irsde.py: [−1, 1]
images, float64 schedules, samplers that may skip steps); the Denoising-SDE variant (``mean_target:
clean``) does not apply (a noisy image's latent is not a state of a latent noise chain), so
``mean_target`` and ``noise_sigma`` are not keys of this method.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from irdiff.methods.base import Callback, Steps
from irdiff.methods.irsde import IRSDE
from irdiff.registry import METHODS, NETS

# IR-SDE keys that mean nothing in a latent (the Denoising-SDE variant) or only for old configs
_NOT_IN_LATENT = ("mean_target", "noise_sigma", "loss_norm")
_AE_RESERVED = ("in_channels", "out_channels", "noise_level_dim")


class LatentModel(nn.Module):
    """The latent denoiser and the frozen autoencoder (state-dict keys ``denoiser.*``, ``autoencoder.*``).

    ``forward(fn)`` returns ``fn(denoiser, autoencoder)``: a training step runs through one call of the
    top-level module, so a DistributedDataParallel wrapper sees it. ``multiple``: tiles must start on the
    autoencoder's padding grid and on whole latent cells of the denoiser's grid (lcm of the two).
    """

    def __init__(self, denoiser: nn.Module, autoencoder: nn.Module):
        super().__init__()
        self.denoiser, self.autoencoder = denoiser, autoencoder
        self.autoencoder.requires_grad_(False)
        ae_multiple, scale = int(getattr(autoencoder, "multiple", 1)), int(getattr(autoencoder, "scale", 1))
        self.multiple = math.lcm(ae_multiple, scale * int(getattr(denoiser, "multiple", 1) or 1))
        self.autoencoder.eval()

    def train(self, mode: bool = True) -> LatentModel:
        super().train(mode)
        self.autoencoder.eval()  # frozen: never in training mode
        return self

    def forward(self, fn: Callable[[nn.Module, nn.Module], Any]) -> Any:
        return fn(self.denoiser, self.autoencoder)


def _run(net: nn.Module, fn: Callable[[nn.Module, nn.Module], Any]) -> Any:
    if not isinstance(getattr(net, "module", net), LatentModel):
        raise TypeError(f"refusion runs a LatentModel (latent denoiser + autoencoder), got {type(net).__name__}")
    return net(fn)


def full_net_config(section: dict[str, Any], where: str) -> dict[str, Any]:
    """A net section with every constructor default filled in (lists for tuples), for comparisons."""
    name = section.get("name", "refusion_ae")
    params = inspect.signature(NETS.get(name).__init__).parameters
    out: dict[str, Any] = {"name": name}
    for key, p in params.items():
        if key in ("self", *_AE_RESERVED) or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        out[key] = section.get(key, p.default)
    for key in section:
        if key not in out:
            raise ValueError(f"{where}.{key}: not a key of net {name}")
    return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


def autoencoder_config(path: str) -> dict[str, Any] | None:
    """The config (a dict) of the autoencoder model named by ``path``; None when there is nothing there yet
    (training refuses that later). A model of another method is an error naming it."""
    from irdiff.inference import pretrained_names, resolve_model

    if not Path(path).exists() and path not in pretrained_names():
        return None
    cfg = resolve_model(path)[2]["config"]
    kind = (cfg.get("method") or {}).get("name")
    if kind != "autoencoder":
        raise ValueError(f"autoencoder: {path} is a {kind} model, not an autoencoder (train one with "
                         "configs/refusion_ae_denoise.yaml)")
    return cfg


@METHODS.register("refusion")
class Refusion(IRSDE):
    """IR-SDE in the latent of a frozen autoencoder. Config: ``autoencoder`` (run directory or model folder of
    an ``autoencoder`` model), ``autoencoder_net`` (its net section; read from that folder), ``lam`` (50),
    and IR-SDE's keys (``num_steps``, ``eps``, ``schedule``, ``objective``, ``loss_type``, ``eta``,
    ``net_input``, ``prediction``, ...). ``net`` is the latent denoiser (``refusion_nafnet`` with
    ``intro_skip`` as the official latent configs; its channels follow the latent's)."""

    def __init__(self, autoencoder: str | None = None, autoencoder_net: dict[str, Any] | None = None,
                 lam: float = 50.0, **irsde: Any):
        for key in irsde:
            if key in _NOT_IN_LATENT or key not in _IRSDE_KEYS:
                raise TypeError(f"unknown key {key!r} for refusion (IR-SDE keys it takes: {', '.join(_IRSDE_KEYS)})")
        super().__init__(lam=lam, **irsde)
        self.autoencoder = autoencoder
        self.autoencoder_net = None if autoencoder_net is None else full_net_config(
            autoencoder_net, "method.autoencoder_net")
        self.latent_channels = None if self.autoencoder_net is None else int(self.autoencoder_net["embed_dim"])

    @classmethod
    def link_config(cls, method: dict[str, Any], data: Any) -> None:
        """``autoencoder_net`` from the autoencoder's folder when it exists (an explicit one must agree)."""
        path = method.get("autoencoder")
        cfg = autoencoder_config(str(path)) if path else None
        if cfg is None:
            return
        found = full_net_config(cfg["net"], f"{path}: net")
        given = method.get("autoencoder_net")
        if given is None:
            method["autoencoder_net"] = found
        elif full_net_config(given, "autoencoder_net") != found:
            raise ValueError(f"autoencoder_net {given} disagrees with the net of the autoencoder in {path} {found}; "
                             "leave autoencoder_net out to read it from there")

    # --- net plumbing -------------------------------------------------------------------------
    def _latent_channels(self) -> int:
        if self.latent_channels is None:
            raise ValueError("method.autoencoder_net: unknown; it is read from method.autoencoder's folder "
                             "(train the autoencoder first: configs/refusion_ae_denoise.yaml) or given in the config")
        return self.latent_channels

    def net_in_channels(self, img_channels: int) -> int:
        return 2 * self._latent_channels()  # the denoiser sees cat[latent x_t (or x_t − μ), latent μ]

    def net_out_channels(self, img_channels: int) -> int:
        return self._latent_channels()

    def build_net(self, net_cfg: dict[str, Any], img_channels: int) -> nn.Module:
        self._latent_channels()
        ae_cfg = {k: v for k, v in self.autoencoder_net.items() if k != "name"}
        ae = NETS.build(self.autoencoder_net["name"], where="method.autoencoder_net", in_channels=img_channels,
                        out_channels=img_channels, noise_level_dim=0, **ae_cfg)
        return LatentModel(super().build_net(net_cfg, img_channels), ae)

    def init_frozen(self, model: nn.Module) -> None:
        """Copy the trained autoencoder's weights into the fresh model (training only; a saved Refusion model
        holds them itself)."""
        if not self.autoencoder:
            raise ValueError("method.autoencoder: not set; name the trained autoencoder (its run directory or "
                             "model folder)")
        from irdiff.checkpoint import CheckpointError
        from irdiff.inference import load

        if autoencoder_config(str(self.autoencoder)) is None:
            raise ValueError(f"method.autoencoder: {self.autoencoder}: no such run directory or model folder (train "
                             "the autoencoder first, e.g. irdiff train --config configs/refusion_ae_denoise.yaml)")
        try:
            trained = load(self.autoencoder).net
        except CheckpointError as e:
            raise ValueError(f"method.autoencoder: {e}") from None
        target = getattr(model, "module", model).autoencoder
        try:
            target.load_state_dict(trained.state_dict())
        except RuntimeError as e:
            raise ValueError(f"method.autoencoder: {self.autoencoder} does not fit method.autoencoder_net "
                             f"({str(e).splitlines()[0]})") from None

    # --- the contract: IR-SDE's, on latents -----------------------------------------------------
    def loss(self, net: nn.Module, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None,
             t: torch.Tensor | None = None, noise: torch.Tensor | None = None) -> torch.Tensor:
        """IR-SDE's loss on (z_gt, z_lq); ``noise``, if given, has the latent's shape."""

        def step(denoiser: nn.Module, ae: nn.Module) -> torch.Tensor:
            with torch.no_grad():
                latents = {"gt": ae.encode(batch["gt"])[0], "lq": ae.encode(batch["lq"])[0]}
            return IRSDE.loss(self, denoiser, latents, generator, t, noise)

        return _run(net, step)

    def sample(self, net: nn.Module, cond: torch.Tensor, steps: Steps | None = None,
               sampler: str | None = None, generator: torch.Generator | None = None,
               callback: Callback = None, **extra: Any) -> torch.Tensor:
        """Encode ``cond``, IR-SDE's sampler on its latent (the callback sees latents), decode with cond's
        skip features; ``clamp`` (default True) clamps the decoded image to [−1, 1]."""
        clamp = extra.pop("clamp", True)
        self.sample_options(self.check_sampler(sampler), **extra)  # a bad option fails before any work

        def restore(denoiser: nn.Module, ae: nn.Module) -> torch.Tensor:
            z_lq, hidden = ae.encode(cond)
            z0 = IRSDE.sample(self, denoiser, z_lq, steps, sampler, generator, callback, clamp=False, **extra)
            return ae.decode(z0, hidden)

        with torch.no_grad():
            out = _run(net, restore)
        return out.clamp(-1, 1) if clamp else out


# The IR-SDE keys a latent SDE takes; the constructor's signature lists them, so that config validation
# (registry.check_kwargs) names a misspelt key before any work, as for the other methods.
_IRSDE_KEYS = tuple(k for k in inspect.signature(IRSDE.__init__).parameters
                    if k not in ("self", "lam", *_NOT_IN_LATENT))


def _signature() -> inspect.Signature:
    own = inspect.signature(Refusion.__init__).parameters
    base = inspect.signature(IRSDE.__init__).parameters
    params = [own["self"], own["autoencoder"], own["autoencoder_net"], own["lam"]]
    params += [base[k] for k in _IRSDE_KEYS]
    return inspect.Signature(params)


Refusion.__init__.__signature__ = _signature()
