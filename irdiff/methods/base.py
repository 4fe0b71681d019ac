"""The Method contract shared by every restoration method, and small float64 schedule helpers.

A method holds only scalars and float64 numpy schedules (index 0 = clean). Tensors come in as
arguments; nothing is stored on the method. Images inside methods are in [-1, 1], NCHW.

Batches are dicts: ``gt`` (clean, [-1, 1]), ``lq`` (degraded at the same size as ``gt``: for SR the
bicubic-upsampled LR), optionally ``mask`` (1 = missing pixel, shape (B, 1, H, W)) and, for
Noise-DA, ``real`` (unpaired real degraded images).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

Callback = Callable[[int, int, torch.Tensor], None] | None


@dataclass(frozen=True)
class SampleOptions:
    """The sampling options a method takes by name (``Restorer.restore(eta=...)``, ``irdiff restore --eta``).

    Each method declares a subclass with one field per option, made with :func:`option`; a field's
    default None means "the model's configured value". This base class has no field: the method
    takes none. The CLI builds its checks from these declarations.
    """


def option(help: str, samplers: tuple[str, ...] = (), low: float | None = None, low_open: bool = False) -> Any:
    """A sampling-option field (default None). samplers: the samplers it applies to (empty: all);
    low: its smallest value (excluded with low_open)."""
    return dataclasses.field(default=None, metadata={"help": help, "samplers": samplers, "low": low,
                                                     "low_open": low_open})


class OptionError(ValueError, TypeError):
    """A sampling option the model cannot use, or a value out of range. ``option`` is its name as the
    API spells it (the CLI turns it into its flag). A TypeError too, as Python's own unknown keyword."""

    def __init__(self, option: str, problem: str):
        super().__init__(f"{option}: {problem}")
        self.option, self.problem = option, problem


class Method:
    """Base class: subclasses implement ``loss`` and ``sample`` (the contract in docs/architecture.md)."""

    #: training T (number of diffusion / degradation steps); 1 for one-pass methods
    num_steps: int = 1
    #: how many scalars the net receives per sample as its noise level (RDDM feeds (ᾱ_t, β̄_t))
    noise_level_dim: int = 1
    #: default number of sampling steps used by `sample` when steps is None
    default_steps: int | None = None
    #: samplers by name; the first one is the default
    samplers: tuple[str, ...] = ()
    #: the sampling options this method takes by name (see SampleOptions); none by default
    Options: type[SampleOptions] = SampleOptions

    @classmethod
    def link_config(cls, method: dict[str, Any], data: Any) -> None:
        """Fill in or check, in place, the method keys that the config's ``data`` section already states,
        so that a value is written once (called by config validation). Default: nothing is linked."""

    # --- network plumbing ---------------------------------------------------------------------
    def net_in_channels(self, img_channels: int) -> int:
        """Channels of ``cat([x, cond])`` as the net sees them."""
        return 2 * img_channels

    def net_out_channels(self, img_channels: int) -> int:
        return img_channels

    def build_net(self, net_cfg: dict[str, Any], img_channels: int) -> nn.Module:
        """Build the trainable module from the config's ``net`` section (name + kwargs)."""
        from irdiff.registry import NETS

        kwargs = {k: v for k, v in net_cfg.items() if k != "name"}
        for reserved in ("in_channels", "out_channels", "noise_level_dim"):
            if reserved in kwargs:
                raise ValueError(f"net.{reserved}: set by the method, remove it from the config")
        return NETS.build(
            net_cfg["name"],
            where=f"net({net_cfg['name']})",
            in_channels=self.net_in_channels(img_channels),
            out_channels=self.net_out_channels(img_channels),
            noise_level_dim=self.noise_level_dim,
            **kwargs,
        )

    def degraded_input(self, gt: torch.Tensor, lq: torch.Tensor) -> torch.Tensor:
        """The image sampling starts from, for a pair from the data pipeline (default: its lq).

        Methods whose degradation is part of the method (Cold Diffusion's blur, mask, pixelate,
        snow) build it themselves from gt, so validation sees the same D as training.
        """
        return lq

    @property
    def scale(self) -> int:
        """Output size / input size implied by the method's own degradation (Cold's pixelate: 2^T);
        1 when the data pipeline decides (see ``irdiff.inference.model_scale``)."""
        return 1

    def upsample_input(self, lr: torch.Tensor, scale: int) -> torch.Tensor:
        """An LR image (C, h, w) in [0, 1] at the output size, as sampling expects it: MATLAB bicubic,
        the convention of the SR data pipeline (Cold's pixelation overrides it with nearest neighbour)."""
        from irdiff.data.resize import imresize

        return imresize(lr, scale=scale)

    @property
    def needs_mask(self) -> bool:
        """True when sampling needs a ``mask`` of missing pixels (Palette-style inpainting)."""
        return False

    def inference_net(self, model: nn.Module) -> nn.Module:
        """The part of the trained module used at inference (Noise-DA drops its diffusion net)."""
        return model

    def init_frozen(self, model: nn.Module) -> None:
        """Load, into a freshly built model, the weights a method takes from outside the run and keeps frozen
        (Refusion: its trained autoencoder; predict-and-refine: the prior). Called when a fresh training run
        builds the model, never on resume or when a saved model loads (their files hold them). A problem is a
        ValueError naming the config key. Default: nothing."""

    # --- the contract ---------------------------------------------------------------------------
    def loss(self, net: nn.Module, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None,
             t: torch.Tensor | None = None, noise: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def sample(self, net: nn.Module, cond: torch.Tensor, steps: int | None = None, sampler: str | None = None,
               generator: torch.Generator | None = None, callback: Callback = None, **extra: Any) -> torch.Tensor:
        raise NotImplementedError

    def q_sample(self, x0: torch.Tensor, cond: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no forward marginal")

    # --- validation -----------------------------------------------------------------------------
    @classmethod
    def canonical_kwargs(cls, kwargs: dict[str, Any]) -> dict[str, Any]:
        """The config's keyword arguments with the spellings of older configs renamed to today's (so an
        old model.json still loads, and a run resumes under a config that spells a key the new way)."""
        out = dict(kwargs)
        if out.get("loss_type") in (1, 2) and not isinstance(out["loss_type"], bool):
            out["loss_type"] = loss_type_name(out["loss_type"])
        return out

    def check_sampler(self, sampler: str | None) -> str:
        name = sampler or self.samplers[0]
        if name not in self.samplers:
            raise ValueError(f"unknown sampler {name!r} for {type(self).__name__}; known: {', '.join(self.samplers)}")
        return name

    def option_names(self, sampler: str | None = None) -> list[str]:
        """The sampling options this model takes with ``sampler`` (default: the default sampler)."""
        name = self.check_sampler(sampler) if self.samplers else None
        return [f.name for f in dataclasses.fields(self.Options)
                if not f.metadata.get("samplers") or name in f.metadata["samplers"]]

    def sample_options(self, sampler: str | None = None, **given: Any) -> SampleOptions:
        """Options given by name (None = not given) checked against ``Options``, like config keys: an
        unknown or inapplicable name, or a value below the field's range, is an OptionError naming it."""
        valid = self.option_names(sampler)
        fields = {f.name: f for f in dataclasses.fields(self.Options)}
        for key, value in given.items():
            if value is None:
                continue
            if key not in valid:
                why = (f"applies only to the {' / '.join(fields[key].metadata['samplers'])} sampler"
                       if key in fields else f"not a sampling option of {type(self).__name__}")
                raise OptionError(key, f"{why} (this model's options: {', '.join(valid) or 'none'})")
            low, open_ = fields[key].metadata.get("low"), fields[key].metadata.get("low_open")
            if low is not None and (value < low or (open_ and value == low)):
                raise OptionError(key, f"must be {'>' if open_ else '>='} {low:g}, got {value:g}")
        return self.Options(**{k: v for k, v in given.items() if v is not None})

    def max_steps(self, options: SampleOptions | None = None) -> int | None:
        """The largest sampling step count (1..this); None for a one-pass method, which takes no steps."""
        return self.num_steps if self.num_steps > 1 else None

    def check_steps(self, steps: Any, options: SampleOptions | None = None) -> None:
        """An int step count must lie in 1..max_steps (never clamped); None is the model's default.
        Explicit step lists are checked by the samplers."""
        if steps is None or not isinstance(steps, int | np.integer):
            return
        top = self.max_steps(options)
        if top is None:
            raise OptionError("steps", f"{type(self).__name__} restores in one pass and takes no steps")
        if not 1 <= steps <= top:
            raise OptionError("steps", f"must be in 1..{top} for this model, got {steps}")


# ---- losses --------------------------------------------------------------------------------------

def loss_type_name(value: Any, allowed: tuple[str, ...] = ("l1", "l2")) -> str:
    """A validated ``loss_type``: "l1" | "l2" (| "charbonnier" where allowed). Every method names its
    pixel norm so; the integers 1 and 2 of older SR3 / Cold configs mean "l1" and "l2"."""
    name = {1: "l1", 2: "l2"}.get(value, value) if not isinstance(value, bool) else value
    if name not in allowed:
        raise ValueError(f"loss_type must be one of {', '.join(allowed)}, got {value!r}")
    return name


def charbonnier(x: torch.Tensor, eps: float) -> torch.Tensor:
    return torch.sqrt(x * x + eps * eps)


def pixel_error(diff: torch.Tensor, loss_type: str, charbonnier_eps: float = 1e-3) -> torch.Tensor:
    """Element-wise |d| (l1), d² (l2) or √(d² + ε²) (charbonnier)."""
    if loss_type == "l1":
        return diff.abs()
    if loss_type == "l2":
        return diff * diff
    return charbonnier(diff, charbonnier_eps)


# ---- tensor helpers ------------------------------------------------------------------------------

def to_method_range(x: torch.Tensor) -> torch.Tensor:
    """Images are [0, 1] outside methods (data, files, metrics) and [-1, 1] inside: the one conversion in."""
    return x * 2 - 1


def from_method_range(x: torch.Tensor) -> torch.Tensor:
    """The one conversion out: [-1, 1] -> [0, 1], clamped."""
    return ((x + 1) / 2).clamp(0, 1)


def gather(schedule: np.ndarray, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """schedule[t] as a (B, 1, 1, 1) tensor of ``like``'s dtype/device (schedules stay float64 until here)."""
    values = torch.from_numpy(np.asarray(schedule, dtype=np.float64))[t.detach().long().cpu()]
    return values.to(device=like.device, dtype=like.dtype).view(-1, *([1] * (like.dim() - 1)))


def per_sample_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean over all but the batch dimension: losses return one value per sample."""
    return x.flatten(1).mean(1)


def randn_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def randint(low: int, high: int, n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """Integers in [low, high], inclusive, one per sample."""
    return torch.randint(low, high + 1, (n,), generator=generator, device=device)


def rand(n: int, generator: torch.Generator | None, device: torch.device, dtype=torch.float64) -> torch.Tensor:
    return torch.rand((n,), generator=generator, device=device, dtype=dtype)


def step_indices(total: int, steps: int) -> list[int]:
    """A decreasing list of ``steps + 1`` integers from ``total`` to 0 (even spacing, no repeats)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    steps = min(steps, total)
    idx = np.round(np.linspace(total, 0, steps + 1)).astype(int)
    return [int(i) for i in idx]


def run_steps(x: torch.Tensor, ts: Sequence[int], update: Callable[[torch.Tensor, int, int], torch.Tensor],
              callback: Callback = None) -> torch.Tensor:
    """The loop every sampler shares: ``x = update(x, t, s)`` for each consecutive pair (t, s) of the
    decreasing steps ``ts``, then ``callback(i, n, x)`` (step i of n) for progress bars."""
    n = len(ts) - 1
    for i, (t, s) in enumerate(zip(ts[:-1], ts[1:])):
        x = update(x, int(t), int(s))
        if callback is not None:
            callback(i, n, x)
    return x


Steps = int | Sequence[int]  # a step count, or an explicit decreasing list of steps ending at 0


def timesteps(T: int, steps: Steps) -> list[int]:
    """An int -> evenly spaced T..0; a sequence -> that decreasing list of steps (must end at 0)."""
    if isinstance(steps, int | np.integer):
        return step_indices(T, int(steps))
    ts = [int(t) for t in steps]
    if len(ts) < 2 or ts[-1] != 0 or ts[0] > T or any(a <= b for a, b in zip(ts, ts[1:])):
        raise ValueError(f"steps must be an int or a strictly decreasing list from <= {T} to 0, got {ts}")
    return ts


# ---- float64 schedules ---------------------------------------------------------------------------

def linear_betas(T: int, start: float, end: float) -> np.ndarray:
    """β_1..β_T linear, returned with a leading 0 so index 0 means 'clean' (length T+1)."""
    return np.concatenate([[0.0], np.linspace(start, end, T, dtype=np.float64)])


def cosine_alpha_bar(T: int, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    """Nichol & Dhariwal cosine ᾱ_0..ᾱ_T (ᾱ_0 = 1), via clipped β."""
    f = lambda t: math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    betas = np.array([min(1 - f(i) / f(i - 1), max_beta) for i in range(1, T + 1)], dtype=np.float64)
    return np.concatenate([[1.0], np.cumprod(1.0 - betas)])
