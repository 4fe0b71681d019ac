"""Authors' released checkpoints -> irdiff nets (issue 12).

``convert(fmt, path, **arch) -> nn.Module`` reads an official checkpoint (a pickle, read only through
``torch.load(weights_only=True)``, which never runs code), picks the network's state_dict out of the
container the official code writes, renames its keys to ours and loads it into our re-implementation
of the official architecture. The returned net follows irdiff's contract ``net(x, noise_level, cond)``.

Each format is an :class:`OfficialFormat` registered in ``FORMATS`` by a module of this package
(one module per paper: irsde.py, sr3.py, palette.py, cold.py, noise_da.py, rddm.py).

``import_checkpoint`` (the CLI's ``irdiff import``) converts and then writes a model folder,
``model.safetensors`` + ``model.json`` (+ ``card.md``), that ``irdiff.load`` / ``irdiff restore`` use like
any other model: every check runs before anything is written, and the folder appears in one rename.
irdiff never downloads anything: the user brings the authors' file.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn


class OfficialCheckpointError(ValueError):
    """A file that is not a usable official checkpoint: the message names the file and the problem."""


@dataclass(frozen=True)
class OfficialFormat:
    """How one paper's checkpoints map onto an irdiff net.

    name:      the ``--format`` name (``irsde``, ``sr3``, ...)
    defaults:  the official constructor's arguments (its own names) as in the official training config
    build:     ``build(**arch) -> nn.Module``, our net following ``net(x, noise_level, cond)``
    select:    ``select(container) -> state_dict``: pick the net's tensors out of what the official code
               saved (plain state_dict, ``module.`` prefixes, whole-Network dicts, {'model', 'ema'} dicts),
               with official key names; raise OfficialCheckpointError when it is another format. It may
               return a :class:`Picked` instead, to say which copy it took (e.g. "ema"), for model.json.
    rename:    ``rename(state_dict) -> state_dict``: official key names -> ours (identity when they agree)
    model_json: ``model_json(arch, task) -> dict``: the irdiff config (method, sampler, schedules, value
               range, padding multiple...) the official code uses with that checkpoint, for model.json.
               Keys that are :class:`irdiff.config.Config` fields (``method``, ``net``, ``sample``, ``data``,
               ``img_channels``, ``name``) form the model's config; any other key (``value_range``,
               ``padding_multiple``, ``reference``...) is recorded under model.json's ``official``.
    tasks:     the ``--task`` names this format knows (each may change defaults / settings); the first
               is the default
    paper:     a short citation, for model cards
    """

    name: str
    defaults: dict[str, Any]
    build: Callable[..., nn.Module]
    select: Callable[[dict[str, Any]], dict[str, torch.Tensor]]
    rename: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] = lambda sd: sd
    model_json: Callable[[dict[str, Any], str | None], dict[str, Any]] | None = None
    tasks: tuple[str, ...] = field(default_factory=tuple)
    paper: str = ""
    #: per-task changes to ``defaults`` (e.g. a task whose released net is narrower); used by import
    task_defaults: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: ``infer_arch(state_dict) -> dict``: architecture arguments read off the (official-named) tensors'
    #: shapes; they override the defaults, arguments given explicitly override them
    infer_arch: Callable[[dict[str, torch.Tensor]], dict[str, Any]] | None = None


@dataclass(frozen=True)
class Picked:
    """What ``select`` took out of a container: the state_dict and which copy it was ("ema", "model"...)."""

    state_dict: dict[str, torch.Tensor]
    taken: str


FORMATS: dict[str, OfficialFormat] = {}


def register_format(fmt: OfficialFormat) -> OfficialFormat:
    if fmt.name in FORMATS and FORMATS[fmt.name] is not fmt:
        raise KeyError(f"official format {fmt.name!r} is registered twice")
    FORMATS[fmt.name] = fmt
    return fmt


def read_checkpoint(path: str | Path) -> Any:
    """Load an official file with ``torch.load(weights_only=True)``: tensors and plain containers only;
    anything that would need code to unpickle is refused with a one-line error (nothing is executed)."""
    p = Path(path)
    if not p.is_file():
        raise OfficialCheckpointError(f"{p}: no such file")
    if p.stat().st_size == 0:
        raise OfficialCheckpointError(f"{p}: empty file")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError, truncated zip, ...: one line, the first of torch's message
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise OfficialCheckpointError(f"{p}: not a readable weights-only checkpoint ({first})") from None


def is_state_dict(obj: Any) -> bool:
    """A non-empty mapping of string keys to tensors."""
    return (isinstance(obj, dict) and bool(obj) and all(isinstance(k, str) for k in obj)
            and all(isinstance(v, torch.Tensor) for v in obj.values()))


def unwrap(container: Any, fmt: str, keys: tuple[str, ...] = ("state_dict", "params_ema", "params")) -> Picked:
    """The state_dict in ``container``: the container itself, or the first of ``keys`` holding one
    (``module.`` prefixes stripped; from an ema_pytorch ``EMA`` state_dict, its ``ema_model.`` weights).
    Anything else is refused, naming the top-level keys found."""
    if is_state_dict(container):
        return ema_weights(Picked(strip_prefix(container), "state_dict"))
    if isinstance(container, dict):
        for key in keys:
            if is_state_dict(container.get(key)):
                return ema_weights(Picked(strip_prefix(container[key]), key))
        found = ", ".join(repr(k) for k in list(container)[:5]) or "none"
        raise OfficialCheckpointError(f"not a {fmt} checkpoint: no state_dict of tensors found "
                                      f"(top-level keys: {found})")
    raise OfficialCheckpointError(f"not a {fmt} checkpoint: holds a {type(container).__name__}, not a state_dict")


def ema_weights(picked: Picked) -> Picked:
    """An ema_pytorch ``EMA`` wrapper's state_dict holds ``ema_model.*`` (the average), ``online_model.*``
    (the trained net, when kept) and counters: take the average, and say so."""
    sd = picked.state_dict
    if not any(k.startswith("ema_model.") for k in sd):
        return picked
    return Picked(strip_prefix({k[len("ema_model."):]: v for k, v in sd.items() if k.startswith("ema_model.")}),
                  f"{picked.taken}: ema_model (the EMA average)")


def strip_prefix(sd: dict[str, Any], prefix: str = "module.") -> dict[str, Any]:
    """DataParallel / DDP saves keys as ``module.<name>``."""
    if sd and all(k.startswith(prefix) for k in sd):
        return {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def load_into(net: nn.Module, sd: dict[str, torch.Tensor], where: str) -> nn.Module:
    """Strict load with one-line errors: missing / unexpected keys (the first few), wrong shapes (the layer)."""
    own = net.state_dict()
    missing = [k for k in own if k not in sd]
    extra = [k for k in sd if k not in own]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys (e.g. {', '.join(missing[:3])})")
        if extra:
            parts.append(f"unexpected {len(extra)} keys (e.g. {', '.join(extra[:3])})")
        raise OfficialCheckpointError(f"{where}: does not fit this architecture: {'; '.join(parts)}")
    for k, v in own.items():
        if not isinstance(sd[k], torch.Tensor):
            raise OfficialCheckpointError(f"{where}: {k} is not a tensor")
        if tuple(sd[k].shape) != tuple(v.shape):
            raise OfficialCheckpointError(f"{where}: layer {k} has shape {tuple(sd[k].shape)}, "
                                          f"the architecture needs {tuple(v.shape)}")
    net.load_state_dict({k: sd[k].to(v.dtype) for k, v in own.items()})
    return net


def get_format(fmt: str) -> OfficialFormat:
    _import_formats()
    if fmt not in FORMATS:
        raise OfficialCheckpointError(f"--format {fmt!r}: unknown (known: {', '.join(sorted(FORMATS))})")
    return FORMATS[fmt]


def convert(fmt: str, path: str | Path, **arch: Any) -> nn.Module:
    """Read an official checkpoint of format ``fmt`` and return our net with its weights (eval mode).

    ``arch`` takes the official constructor's own argument names and defaults to the official config.
    """
    return convert_with_info(fmt, path, **arch)[0]


def convert_with_info(fmt: str, path: str | Path, task_arch: dict[str, Any] | None = None,
                      **arch: Any) -> tuple[nn.Module, dict[str, Any]]:
    """``convert`` plus what model.json records: the file, its sha256, the architecture, which copy was taken.

    The architecture is, by priority: ``arch`` (explicit), what ``infer_arch`` reads off the file, ``task_arch``
    (the task's defaults), the format's defaults."""
    spec = get_format(fmt)
    unknown = [k for k in arch if k not in spec.defaults]
    if unknown:
        raise OfficialCheckpointError(f"{fmt}: unknown architecture argument {unknown[0]!r} "
                                      f"(allowed: {', '.join(spec.defaults)})")
    container = read_checkpoint(path)
    try:
        picked = spec.select(container)
    except OfficialCheckpointError as e:
        msg = str(e)
        raise OfficialCheckpointError(msg if msg.startswith(str(path)) else f"{path}: {msg}") from None
    if not isinstance(picked, Picked):
        picked = Picked(picked, "state_dict")
    inferred = spec.infer_arch(picked.state_dict) if spec.infer_arch is not None else {}
    sd = spec.rename(picked.state_dict)
    full_arch = {**spec.defaults, **(task_arch or {}), **inferred, **arch}
    try:
        net = spec.build(**full_arch)
    except (TypeError, ValueError) as e:
        raise OfficialCheckpointError(f"{fmt}: cannot build the architecture {full_arch} ({e})") from None
    net = load_into(net, sd, str(path)).eval()
    info = {"format": fmt, "file": Path(path).name, "sha256": _sha256(path), "arch": full_arch,
            "taken": picked.taken}
    return net, info


def _sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---- model folders ----------------------------------------------------------------------------------

_CONFIG_KEYS = ("name", "seed", "img_channels", "method", "net", "data", "train", "sample")


def model_config(fmt: str, arch: dict[str, Any], task: str | None,
                 overrides: list[str] | tuple[str, ...] = ()) -> tuple[dict[str, Any], dict[str, Any]]:
    """(config dict, notes) for a model folder of this format / task; ``overrides`` are ``a.b=value``
    assignments on the config (as ``irdiff train --set``). The config is validated (ConfigError names the key)."""
    from irdiff.config import Config, apply_override, from_dict, to_dict, validate

    spec = get_format(fmt)
    if spec.model_json is None:
        raise OfficialCheckpointError(f"--format {fmt}: has no model settings yet (convert() works, import does not)")
    task = _check_task(spec, task)
    settings = spec.model_json({**spec.defaults, **arch}, task)
    data = {k: v for k, v in settings.items() if k in _CONFIG_KEYS}
    notes = {k: v for k, v in settings.items() if k not in _CONFIG_KEYS}
    data.setdefault("name", f"{fmt}_{task}" if task else fmt)
    for o in overrides:
        apply_override(data, o)
    cfg = from_dict(Config, data)
    validate(cfg)
    return to_dict(cfg), notes


def _check_task(spec: OfficialFormat, task: str | None) -> str | None:
    if task is None:
        return spec.tasks[0] if spec.tasks else None
    if task not in spec.tasks:
        known = ", ".join(spec.tasks) or "none"
        raise OfficialCheckpointError(f"--task {task!r}: unknown for format {spec.name} (known: {known})")
    return task


def write_model(net: nn.Module, fmt: str, arch: dict[str, Any], task: str | None, out_dir: str | Path,
                overrides: list[str] | tuple[str, ...] = (), info: dict[str, Any] | None = None) -> Path:
    """Write ``out_dir`` = model.safetensors + model.json + card.md for ``net`` (a converted checkpoint).

    Everything is checked first (config, that ``irdiff.load`` would rebuild the same net from it); the files
    are written into a temporary sibling folder, fsynced, then renamed to ``out_dir`` in one step. An
    existing non-empty ``out_dir`` is refused.
    """
    from safetensors.torch import save_file

    from irdiff import __version__
    from irdiff.config import Config, from_dict
    from irdiff.train import build_method

    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise OfficialCheckpointError(f"-o {out}: exists and is not an empty folder (choose another or remove it)")
    spec = get_format(fmt)
    task = _check_task(spec, task)
    config, notes = model_config(fmt, arch, task, overrides)
    cfg = from_dict(Config, config)
    # the folder must load: irdiff.load rebuilds the net from the config and loads these tensors strictly
    method = build_method(cfg)
    with torch.random.fork_rng(devices=[]):
        rebuilt = method.build_net(dict(cfg.net), cfg.img_channels)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in net.state_dict().items()}
    try:
        rebuilt.load_state_dict(tensors)
    except RuntimeError as e:
        raise OfficialCheckpointError(f"{fmt}: the model config does not rebuild the converted net "
                                      f"({str(e).splitlines()[0]})") from None
    official = {**(info or {}), "format": fmt, "task": task, "arch": {**spec.defaults, **arch}, **notes}
    meta = {"config": config, "step": None, "metrics": {}, "name": out.name, "task": task,
            "official": official, "irdiff": __version__, "torch": torch.__version__}
    parent = out.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f".{out.name}.tmp_"))
    try:
        os.chmod(tmp, 0o755)
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": f"official:{fmt}"})
        (tmp / "model.json").write_text(json.dumps(meta, indent=1) + "\n")
        (tmp / "card.md").write_text(_card(spec, meta))
        for f in tmp.iterdir():
            os.chmod(f, 0o644)
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if out.is_dir():
            out.rmdir()  # empty (checked above)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _card(spec: OfficialFormat, meta: dict[str, Any]) -> str:
    cfg, off = meta["config"], meta["official"]
    method = ", ".join(f"{k}={v}" for k, v in cfg["method"].items())
    net = ", ".join(f"{k}={v}" for k, v in cfg["net"].items())
    lines = [f"# {meta['name']}", "",
             f"Authors' checkpoint imported with `irdiff import --format {spec.name}`"
             + (f" ({spec.paper})" if spec.paper else "") + ".", "",
             f"- source file: {off.get('file', '?')} (sha256 {off.get('sha256', '?')})",
             f"- task: {meta['task']}",
             f"- weights taken: {off.get('taken', '?')}",
             f"- method: {method}",
             f"- net: {net}",
             f"- sampling: sampler={cfg['sample']['sampler']}, steps={cfg['sample']['steps']}",
             f"- output scale: {cfg['data']['train']['scale']}"]
    for k, v in off.items():
        if k not in ("file", "sha256", "taken", "format", "task", "arch"):
            lines.append(f"- {k}: {v}")
    lines += ["", "No metrics were measured by irdiff for this model; see docs/official_checkpoints.md for "
              "the paper's numbers and the command that reproduces them.", ""]
    return "\n".join(lines)


def import_checkpoint(fmt: str, path: str | Path, out_dir: str | Path, task: str | None = None,
                      sets: list[str] | tuple[str, ...] = ()) -> Path:
    """``irdiff import``: convert ``path`` and write the model folder. ``sets`` are ``key=value``: an
    architecture argument of the format (official name, no dot, e.g. ``nf=32``) or a config override
    (dotted, e.g. ``sample.steps=50``)."""
    import yaml

    spec = get_format(fmt)
    arch: dict[str, Any] = {}
    overrides = []
    for item in sets:
        if "=" not in item:
            raise OfficialCheckpointError(f"--set {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        if "." in key:
            overrides.append(item)
        elif key in spec.defaults:
            arch[key] = yaml.safe_load(raw)
        else:
            raise OfficialCheckpointError(f"--set {key}: not an architecture argument of {fmt} "
                                          f"({', '.join(spec.defaults)}) nor a dotted config key")
    task = _check_task(spec, task)
    model_config(fmt, {**spec.task_defaults.get(task, {}), **arch}, task, overrides)  # errors before reading
    net, info = convert_with_info(fmt, path, task_arch=spec.task_defaults.get(task), **arch)
    return write_model(net, fmt, info["arch"], task, out_dir, overrides, info)


def _import_formats() -> None:
    # each module registers its formats on import (one line per paper, added as each lands)
    import irdiff.official.cold  # noqa: F401
    import irdiff.official.irsde  # noqa: F401
    import irdiff.official.noise_da  # noqa: F401
    import irdiff.official.palette  # noqa: F401
    import irdiff.official.rddm  # noqa: F401
    import irdiff.official.refusion  # noqa: F401
    import irdiff.official.sr3  # noqa: F401
