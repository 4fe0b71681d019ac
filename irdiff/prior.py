"""Predict-and-refine: any method stacked on a trained one-pass restorer (``prior:`` in the config).

    prior: {model: denoise, freeze: true}

The prior P (a regression or Noise-DA model: a bundled name, a run or a model folder) maps the degraded image y
to P(y) in one pass; the method then sees P(y) wherever it would have seen y: SR3's and Cold Diffusion's
condition (Cold's ``interp``: its x_T), IR-SDE's mean μ (so the SDE runs between the clean image and the prior's
output), RDDM's I_in (its residual is x0 − P(y)). Nothing else in the method changes: its marginals, losses and
samplers are the ones it has without a prior, with y replaced by P(y).

It is written once, as a composition: :class:`Refine` is a Method that holds the method and the prior's method
and delegates everything to the former after computing P(y); its trainable module is a :class:`PriorStack`
(``prior``: the prior's inference net, ``refiner``: the method's net). The trainer, the evaluation path and the
Restorer see an ordinary Method and net. With ``freeze: true`` the prior's parameters do not require gradients,
P(y) is computed under no_grad and the prior stays in eval mode; with ``freeze: false`` it is fine-tuned through
the method's loss.

Saved models are self-contained: the exported model.safetensors holds both nets (keys ``prior.*`` and
``refiner.*``) and model.json's ``config.prior.config`` the prior's own config (copied from ``prior.model`` when
the run starts), so a model loads without its prior's source and does not change when a bundled prior is
re-trained later. The price is the prior's weights stored again (6.9 MB for ``denoise``).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from irdiff.config import Config, ConfigError, from_dict, to_dict
from irdiff.methods.base import Callback, Method, SampleOptions


class PriorStack(nn.Module):
    """The trainable module of a predict-and-refine model: ``prior`` (one-pass restorer) + ``refiner``.

    ``forward(fn)`` returns ``fn(prior, refiner)``: losses run through the top-level call so that a
    DistributedDataParallel wrapper sees the whole computation (as Noise-DA's two nets do).
    """

    def __init__(self, prior: nn.Module, refiner: nn.Module, freeze: bool = True):
        super().__init__()
        self.prior, self.refiner, self.freeze = prior, refiner, bool(freeze)
        if self.freeze:
            self.prior.requires_grad_(False)
        a, b = (int(getattr(n, "multiple", 1) or 1) for n in (prior, refiner))
        self.multiple = a * b // math.gcd(a, b)  # tiles must suit both nets' down-sampling

    def train(self, mode: bool = True) -> PriorStack:
        super().train(mode)
        if self.freeze:  # a frozen prior always runs as it was exported (dropout off)
            self.prior.eval()
        return self

    def forward(self, fn: Callable[[nn.Module, nn.Module], Any]) -> Any:
        return fn(self.prior, self.refiner)


def _parts(net: nn.Module, fn: Callable[[nn.Module, nn.Module], Any]) -> Any:
    """fn(prior, refiner) through the top-level forward (a DDP wrapper), or directly on a bare PriorStack."""
    inner = getattr(net, "module", net)
    if not isinstance(inner, PriorStack):
        raise TypeError(f"a predict-and-refine model needs a PriorStack net, got {type(inner).__name__}")
    return net(fn) if inner is not net else fn(inner.prior, inner.refiner)


class Refine(Method):
    """``method`` refining the output of a one-pass ``prior_method`` (see the module docstring).

    The Method API is the refining method's (samplers, options, steps, its own attributes through
    ``__getattr__``); only ``loss``, ``sample``, ``build_net`` and ``inference_net`` know about the prior.
    """

    def __init__(self, method: Method, prior_method: Method, prior_cfg: Config, freeze: bool = True,
                 source: str = ""):
        self.method, self.prior_method, self.prior_cfg = method, prior_method, prior_cfg
        self.freeze, self.source = bool(freeze), source
        # the refining method's declarations (Method's class attributes would otherwise shadow __getattr__)
        self.num_steps, self.noise_level_dim = method.num_steps, method.noise_level_dim
        self.default_steps, self.samplers, self.Options = method.default_steps, method.samplers, method.Options

    def __getattr__(self, name: str) -> Any:  # the refining method's own attributes (eta, prediction, ...)
        if name in ("method", "prior_method"):  # not set yet (copy / unpickle): no recursion
            raise AttributeError(name)
        return getattr(self.method, name)

    def __repr__(self) -> str:
        return f"Refine({type(self.method).__name__} on prior {self.source!r}, freeze={self.freeze})"

    # ---- the prior -----------------------------------------------------------------------------
    def prior_output(self, prior: nn.Module, lq: torch.Tensor) -> torch.Tensor:
        """P(y) in the method's range [-1, 1], through the prior method's own one-pass ``sample``."""
        return self.prior_method.sample(prior, lq)

    # ---- the Method API, delegated ------------------------------------------------------------
    def net_in_channels(self, img_channels: int) -> int:
        return self.method.net_in_channels(img_channels)

    def net_out_channels(self, img_channels: int) -> int:
        return self.method.net_out_channels(img_channels)

    def build_net(self, net_cfg: dict[str, Any], img_channels: int) -> nn.Module:
        refiner = self.method.build_net(net_cfg, img_channels)  # first: the refiner's init follows cfg.seed as alone
        pm, pc = self.prior_method, self.prior_cfg
        prior = pm.inference_net(pm.build_net(dict(pc.net), pc.img_channels))
        return PriorStack(prior, refiner, self.freeze)

    def init_frozen(self, model: nn.Module) -> None:
        """A fresh run: the trained prior's inference weights into ``model.prior`` (its source must still have
        the config recorded in ``prior.config``), then the refining method's own frozen weights (Refusion's
        autoencoder) into the refiner."""
        from irdiff.inference import load

        restorer = load(self.source)
        if to_dict(restorer.cfg) != to_dict(self.prior_cfg):
            raise ConfigError(f"prior.model: {self.source} no longer has the config recorded in prior.config "
                              "(re-trained since?); remove prior.config or use another --out directory")
        stack = getattr(model, "module", model)
        stack.prior.load_state_dict(restorer.net.state_dict())
        self.method.init_frozen(stack.refiner)

    def inference_net(self, model: nn.Module) -> nn.Module:
        model = getattr(model, "module", model)
        return PriorStack(model.prior, self.method.inference_net(model.refiner), self.freeze)

    def degraded_input(self, gt: torch.Tensor, lq: torch.Tensor) -> torch.Tensor:
        return self.method.degraded_input(gt, lq)

    @property
    def scale(self) -> int:
        return self.method.scale

    def upsample_input(self, lr: torch.Tensor, scale: int) -> torch.Tensor:
        return self.method.upsample_input(lr, scale)

    @property
    def needs_mask(self) -> bool:
        return self.method.needs_mask

    def check_sampler(self, sampler: str | None) -> str:
        return self.method.check_sampler(sampler)

    def option_names(self, sampler: str | None = None) -> list[str]:
        return self.method.option_names(sampler)

    def sample_options(self, sampler: str | None = None, **given: Any) -> SampleOptions:
        return self.method.sample_options(sampler, **given)

    def max_steps(self, options: SampleOptions | None = None) -> int | None:
        return self.method.max_steps(options)

    def check_steps(self, steps: Any, options: SampleOptions | None = None) -> None:
        self.method.check_steps(steps, options)

    def q_sample(self, x0: torch.Tensor, cond: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The method's forward marginal; ``cond`` is the prior's output P(y), as in ``loss``."""
        return self.method.q_sample(x0, cond, t, noise)

    # ---- the contract --------------------------------------------------------------------------
    def loss(self, net: nn.Module, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None,
             t: torch.Tensor | None = None, noise: torch.Tensor | None = None) -> torch.Tensor:
        def run(prior: nn.Module, refiner: nn.Module) -> torch.Tensor:
            with torch.no_grad() if self.freeze else contextlib.nullcontext():
                refined_input = self.prior_output(prior, batch["lq"])
            return self.method.loss(refiner, {**batch, "lq": refined_input}, generator, t=t, noise=noise)

        return _parts(net, run)

    def sample(self, net: nn.Module, cond: torch.Tensor, steps: Any = None, sampler: str | None = None,
               generator: torch.Generator | None = None, callback: Callback = None, **extra: Any) -> torch.Tensor:
        """P(cond), then the method's sampler on it (its options, steps and callback unchanged)."""

        def run(prior: nn.Module, refiner: nn.Module) -> torch.Tensor:
            with torch.no_grad():
                refined_input = self.prior_output(prior, cond)
            return self.method.sample(refiner, refined_input, steps=steps, sampler=sampler, generator=generator,
                                      callback=callback, **extra)

        stack = getattr(net, "module", net)
        return run(stack.prior, stack.refiner)


# ---- construction ------------------------------------------------------------------------------

def prior_config(cfg: Config) -> Config:
    """The prior's own config: ``cfg.prior.config``, filled in (in place) from ``cfg.prior.model``'s model.json
    or run when missing, so that every config saved afterwards (checkpoints, model.json) rebuilds the prior."""
    from irdiff.checkpoint import CheckpointError
    from irdiff.inference import resolve_model

    spec = cfg.prior
    if spec.config is None:
        try:
            _, _, meta = resolve_model(spec.model)
        except CheckpointError as e:
            raise ConfigError(f"prior.model: {e}") from None
        spec.config = to_dict(from_dict(Config, meta["config"]))
    try:
        return from_dict(Config, spec.config)
    except ConfigError as e:
        raise ConfigError(f"prior.config: {e}") from None


def stack_on_prior(method: Method, cfg: Config) -> Refine:
    """``method`` (built from ``cfg.method``) refining the one-pass model ``cfg.prior``; checks that they fit."""
    from irdiff.build import build_method
    from irdiff.inference import model_scale

    pcfg = prior_config(cfg)
    pm = build_method(pcfg)
    src = cfg.prior.model
    if pm.max_steps() is not None:
        raise ConfigError(f"prior.model: {src} is a {pcfg.method['name']} model with sampling steps; a prior must be "
                          "a one-pass restorer (regression, noise_da)")
    if pcfg.img_channels != cfg.img_channels:
        raise ConfigError(f"prior.model: {src} has {pcfg.img_channels} image channels, this config "
                          f"{cfg.img_channels}")
    if model_scale(pcfg, pm) != model_scale(cfg, method):
        raise ConfigError(f"prior.model: {src} restores at scale {model_scale(pcfg, pm)}, this config at "
                          f"{model_scale(cfg, method)}")
    if getattr(method, "clean_mean", False):
        raise ConfigError("prior: IR-SDE's Denoising-SDE variant (mean_target: clean) starts from the noisy input "
                          "itself and has no mean to take from a prior; use mean_target: lq (μ = the prior's output)")
    return Refine(method, pm, pcfg, freeze=cfg.prior.freeze, source=src)


def describe(cfg: dict[str, Any]) -> str | None:
    """One line on a saved model's prior (``irdiff info``), or None without one."""
    spec = cfg.get("prior")
    if not spec:
        return None
    pc = spec.get("config") or {}
    method, net = (pc.get(k, {}).get("name", "?") for k in ("method", "net"))
    how = "frozen" if spec.get("freeze", True) else "fine-tuned"
    return (f"prior: {spec.get('model')} ({method} / {net}, {how}, weights stored in this model) -> "
            f"refined by {cfg['method']['name']} / {cfg['net']['name']}")
