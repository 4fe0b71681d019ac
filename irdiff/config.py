"""Typed run configuration: dataclasses + YAML, `--set a.b=c` overrides, validation with clear errors.

A config file is YAML whose keys mirror the dataclasses below. Sections that select a registered
class by name (``method``, ``net``, ``degradation``) are free-form mappings with a ``name`` key; their
other keys are checked against that class's constructor, so a misspelt key is an error naming it.
Strings may use ``${VAR}`` / ``${VAR:-default}`` to read environment variables (for data roots); an unset
``${IRDIFF_DATA}`` is the data root of ``irdiff data fetch`` (``~/.cache/irdiff/data``).
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A bad config: the message names the key (dotted path) or the file."""


@dataclass
class DataSpec:
    """One data stream. ``name`` picks the dataset class: paired | synthetic | unpaired | deadleaves."""

    name: str = "synthetic"  # which dataset: paired | synthetic | unpaired | deadleaves
    gt_dir: str | None = None  # clean images (paired, synthetic)
    lq_dir: str | None = None  # degraded images matched to gt by file stem (paired), or real images (unpaired)
    degradation: dict[str, Any] | None = None  # synthetic: {name: awgn, sigma: 25}
    scale: int = 1  # SR: lq is 1/scale of gt and is bicubic-upsampled back to gt size for the methods
    patch_size: int | None = 64  # random crop size in gt pixels; None = whole images
    augment: bool = True  # random flips / 90° rotations (training streams only)
    first_image: int = 0  # skip the first files (sorted): split one folder into disjoint streams
    max_images: int | None = None  # then use N files, e.g. a fast validation subset
    num_images: int = 64  # deadleaves: how many procedural images
    image_size: int = 128  # deadleaves: their size
    cache: bool = True  # keep decoded files in memory (small sets)
    # synthetic: this share of items is made grey (luma in all channels, the same degradation in each), so
    # a colour model also restores grey photos, which inference feeds to it as three equal channels
    grey_fraction: float = 0.0


@dataclass
class DataConfig:
    train: DataSpec = field(default_factory=DataSpec)  # the training pairs
    val: DataSpec | None = None  # validation stream (None: no validation)
    real: DataSpec | None = None  # Noise-DA: unpaired real degraded images


@dataclass
class TrainConfig:
    # keys that older runs saved and that mean nothing now: accepted and ignored, so their model.json loads
    __retired__: typing.ClassVar[tuple[str, ...]] = ("num_workers",)

    steps: int = 1000  # optimisation steps of the whole run (may grow on resume)
    batch_size: int = 8  # global batch, split across processes
    lr: float = 2e-4  # AdamW learning rate
    weight_decay: float = 0.0  # AdamW weight decay
    betas: tuple[float, float] = (0.9, 0.99)  # AdamW betas
    warmup_steps: int = 0  # linear warm-up from 0
    lr_schedule: str = "constant"  # constant | cosine
    min_lr_ratio: float = 0.1  # cosine floor
    ema_decay: float = 0.999  # EMA of the weights (the exported, validated and sampled net)
    ema_start: int = 0  # EMA copies the weights until this step
    grad_clip: float | None = 1.0  # clip the global gradient norm (None: off)
    mixed_precision: str = "no"  # no | bf16 | fp16 | auto (bf16 where the hardware has it natively, else no)
    channels_last: bool = False  # channels-last memory format (GPU convolutions)
    log_every: int = 50  # log.jsonl / TensorBoard every N steps
    val_every: int = 0  # 0 = only at the end
    ckpt_every: int = 500  # checkpoint every N steps (and at the end)
    keep_ckpts: int = 2  # newest checkpoints kept (0: all)
    max_bad_steps: int = 20  # stop after this many steps in a row with a non-finite loss or gradient
    threads: int | None = None  # torch threads per process (None: torch's default)
    init_from: str | None = None  # start from these weights (bundled name, run or model folder); not on resume
    device: str = "auto"  # auto | cpu | cuda


@dataclass
class SampleConfig:
    steps: int | None = None  # None: the method's default
    sampler: str | None = None  # None: the method's default
    color_fix: str = "none"  # none | wavelet | adain: colour taken from the input after sampling (colorfix.py)
    val_max_images: int = 4  # validation restores the first N items of data.val
    val_save_images: int = 2  # and writes the first N restorations under val/step_N/


@dataclass
class PriorConfig:
    """Predict-and-refine (``irdiff.prior``): a trained one-pass restorer runs first and its output becomes the
    method's condition / mean (SR3 and Cold: the condition, IR-SDE: μ, RDDM: I_in)."""

    model: str = ""  # the prior: a bundled name (denoise) or a run / model folder of a one-pass model
    freeze: bool = True  # true: the prior's weights stay fixed (run under no_grad); false: fine-tuned with the method
    # the prior's own config, copied from `model` when training starts, so a saved model rebuilds its prior alone
    config: dict[str, Any] | None = None


@dataclass
class Config:
    name: str = "run"  # the run's name (default output folder runs/<name>)
    seed: int = 0  # seeds the init, every training step, data items and validation sampling
    img_channels: int = 3  # 3 (RGB) or 1 (grey)
    method: dict[str, Any] = field(default_factory=lambda: {"name": "regression"})  # see the methods below
    net: dict[str, Any] = field(default_factory=lambda: {"name": "nafnet"})  # see the nets below
    data: DataConfig = field(default_factory=DataConfig)  # data streams
    train: TrainConfig = field(default_factory=TrainConfig)  # optimisation, checkpoints, devices
    sample: SampleConfig = field(default_factory=SampleConfig)  # sampling for validation and inference
    prior: PriorConfig | None = None  # predict-and-refine: a one-pass restorer whose output the method refines


# ---- dict <-> dataclass ------------------------------------------------------------------------

def to_dict(cfg: Any) -> Any:
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    return cfg


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(tp, value, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        if len(args) != len(value):
            raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
        return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return _expand_env(value)
    return value


def from_dict(cls: type, data: dict[str, Any], where: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    data = {k: v for k, v in data.items() if k not in getattr(cls, "__retired__", ())}
    for key in data:
        if key not in names:
            path = f"{where}.{key}" if where else key
            raise ConfigError(f"unknown config key {path!r} (allowed here: {', '.join(sorted(names))})")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    return cls(**kwargs)


_ENV = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")


def _env_default(name: str) -> str:
    if name == "IRDIFF_DATA":  # unset: the folder `irdiff data fetch` downloads to
        from irdiff.data.catalog import data_root

        return str(data_root())
    return ""


def _expand_env(s: str) -> str:
    return _ENV.sub(lambda m: os.environ.get(m.group(1), m.group(2) if m.group(2) is not None
                                             else _env_default(m.group(1))), s)


# ---- loading, overrides, validation -------------------------------------------------------------

def read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ConfigError(f"{p}: cannot read config ({e.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: invalid YAML ({str(e).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: top level must be a mapping")
    return data


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply one `a.b.c=value` (value parsed as YAML) to a nested dict, creating mappings as needed."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: expected key=value")
    key, raw = assignment.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else None
    except yaml.YAMLError:
        value = raw
    node = data
    parts = key.strip().split(".")
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                base: dict[str, Any] | None = None) -> Config:
    data = base if base is not None else (read_yaml(path) if path else {})
    for o in overrides or []:
        apply_override(data, o)
    defaults = Config()
    for section in ("method", "net"):  # a section without a name extends the default one
        sec = data.get(section)
        if isinstance(sec, dict) and "name" not in sec:
            data[section] = {**getattr(defaults, section), **sec}
    cfg = from_dict(Config, data)
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Check values and registry-selected sections; raise ConfigError naming the key."""
    from irdiff.registry import DATASETS, DEGRADATIONS, METHODS, NETS, check_kwargs

    def need(cond: bool, key: str, msg: str) -> None:
        if not cond:
            raise ConfigError(f"{key}: {msg}")

    for section, reg in (("method", METHODS), ("net", NETS)):
        sec = getattr(cfg, section)
        need("name" in sec, f"{section}.name", "missing")
        try:
            check_kwargs(reg.get(sec["name"]), {k: v for k, v in sec.items() if k != "name"}, section)
        except KeyError as e:
            raise ConfigError(str(e).strip("\"'")) from None
        if section == "method":  # values the data section states are written once (Method.link_config)
            try:
                reg.get(sec["name"]).link_config(sec, cfg.data)
            except ValueError as e:
                raise ConfigError(f"method: {e}") from None
    if cfg.prior is not None:
        need(bool(cfg.prior.model), "prior.model", "missing (a bundled name or a run / model folder)")
    t = cfg.train
    need(t.steps >= 1, "train.steps", f"must be >= 1, got {t.steps}")
    from irdiff.colorfix import COLOR_FIXES

    need(cfg.sample.color_fix in COLOR_FIXES, "sample.color_fix",
         f"must be one of {', '.join(COLOR_FIXES)}, got {cfg.sample.color_fix!r}")
    need(t.batch_size >= 1, "train.batch_size", f"must be >= 1, got {t.batch_size}")
    need(t.lr > 0, "train.lr", f"must be > 0, got {t.lr}")
    need(0 <= t.ema_decay < 1, "train.ema_decay", f"must be in [0, 1), got {t.ema_decay}")
    need(t.mixed_precision in ("no", "bf16", "fp16", "auto"), "train.mixed_precision",
         "must be no, bf16, fp16 or auto")
    need(t.lr_schedule in ("constant", "cosine"), "train.lr_schedule", "must be constant or cosine")
    need(t.device in ("auto", "cpu", "cuda"), "train.device", "must be auto, cpu or cuda")
    need(cfg.img_channels in (1, 3), "img_channels", "must be 1 or 3")
    for key in ("train", "val", "real"):
        spec = getattr(cfg.data, key)
        if spec is None:
            continue
        where = f"data.{key}"
        if spec.name not in DATASETS:
            raise ConfigError(f"{where}.name: unknown dataset {spec.name!r}; known: {', '.join(DATASETS.names())}")
        # 8: the SR3 face models (16->128, 64->512) imported with irdiff import --format sr3
        need(spec.scale in (1, 2, 3, 4, 8), f"{where}.scale", f"must be 1, 2, 3, 4 or 8, got {spec.scale}")
        need(0 <= spec.grey_fraction <= 1, f"{where}.grey_fraction", f"must be in [0, 1], got {spec.grey_fraction}")
        if spec.patch_size is not None:
            need(spec.patch_size >= 8 and spec.patch_size % spec.scale == 0, f"{where}.patch_size",
                 f"must be >= 8 and a multiple of scale, got {spec.patch_size}")
        if spec.degradation is not None:
            deg = spec.degradation
            need("name" in deg, f"{where}.degradation.name", "missing")
            try:
                DEGRADATIONS.build(deg["name"], where=f"{where}.degradation",
                                   **{k: v for k, v in deg.items() if k != "name"})
            except KeyError as e:
                raise ConfigError(str(e).strip("\"'")) from None
            except (ValueError, TypeError) as e:
                raise ConfigError(f"{where}.degradation: {e}") from None


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
