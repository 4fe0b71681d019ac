"""Build a config's method and trainable model from the registries (used by training and inference).

Kept apart from the trainer so that loading a model for inference never imports the training loop.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from irdiff.config import Config, ConfigError
from irdiff.methods.base import Method
from irdiff.registry import METHODS


def build_method(cfg: Config) -> Method:
    """The method named by ``cfg.method`` with its keyword arguments; a bad value is a ConfigError. With a
    ``prior``, that method stacked on it (``irdiff.prior``; fills in ``cfg.prior.config`` when missing)."""
    m = cfg.method
    try:
        method = METHODS.build(m["name"], where="method", **method_kwargs(m))
    except (ValueError, TypeError) as e:
        raise ConfigError(f"method: {e}") from None
    if cfg.prior is None:
        return method
    from irdiff.prior import stack_on_prior

    return stack_on_prior(method, cfg)


def method_kwargs(section: dict[str, Any]) -> dict[str, Any]:
    """A ``method`` config section's keyword arguments, in today's spelling (``Method.canonical_kwargs``)."""
    kwargs = {k: v for k, v in section.items() if k != "name"}
    cls = METHODS.get(section["name"]) if section.get("name") in METHODS else None
    return cls.canonical_kwargs(kwargs) if cls is not None else kwargs


def build_model(cfg: Config, method: Method, init_frozen: bool = True) -> nn.Module:
    """The trainable module, initialised from ``cfg.seed`` (parameter init is part of the run's seed), with the
    frozen weights the method takes from outside the run (``Method.init_frozen``: a prior, Refusion's
    autoencoder) unless ``init_frozen`` is False (a resumed run: its checkpoint holds them, and their source may
    have changed or gone since)."""
    torch.manual_seed(cfg.seed)
    model = method.build_net(dict(cfg.net), cfg.img_channels)
    if init_frozen:
        try:
            method.init_frozen(model)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    return model
