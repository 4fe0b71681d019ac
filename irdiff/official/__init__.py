"""Authors' released checkpoints -> irdiff nets (issue 12).

``convert(fmt, path, **arch) -> nn.Module`` reads an official checkpoint (a pickle, read only through
``torch.load(weights_only=True)``, which never runs code), picks the network's state_dict out of the
container the official code writes, renames its keys to ours and loads it into our re-implementation
of the official architecture. The returned net follows irdiff's contract ``net(x, noise_level, cond)``.

Each format is an :class:`OfficialFormat` registered in ``FORMATS`` by a module of this package
(one module per paper: irsde.py, sr3.py, palette.py, cold.py, noise_da.py, rddm.py).
"""

from __future__ import annotations

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
               with official key names; raise OfficialCheckpointError when it is another format
    rename:    ``rename(state_dict) -> state_dict``: official key names -> ours (identity when they agree)
    model_json: ``model_json(arch, task) -> dict``: the irdiff config (method, sampler, schedules, value
               range, padding multiple...) the official code uses with that checkpoint, for model.json
    tasks:     the ``--task`` names this format knows (each may change defaults / settings)
    """

    name: str
    defaults: dict[str, Any]
    build: Callable[..., nn.Module]
    select: Callable[[dict[str, Any]], dict[str, torch.Tensor]]
    rename: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] = lambda sd: sd
    model_json: Callable[[dict[str, Any], str | None], dict[str, Any]] | None = None
    tasks: tuple[str, ...] = field(default_factory=tuple)


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


def convert(fmt: str, path: str | Path, **arch: Any) -> nn.Module:
    """Read an official checkpoint of format ``fmt`` and return our net with its weights (eval mode).

    ``arch`` takes the official constructor's own argument names and defaults to the official config.
    """
    _import_formats()
    if fmt not in FORMATS:
        raise OfficialCheckpointError(f"--format {fmt!r}: unknown (known: {', '.join(sorted(FORMATS))})")
    spec = FORMATS[fmt]
    unknown = [k for k in arch if k not in spec.defaults]
    if unknown:
        raise OfficialCheckpointError(f"{fmt}: unknown architecture argument {unknown[0]!r} "
                                      f"(allowed: {', '.join(spec.defaults)})")
    container = read_checkpoint(path)
    sd = spec.rename(spec.select(container))
    net = spec.build(**{**spec.defaults, **arch})
    return load_into(net, sd, str(path)).eval()


def _import_formats() -> None:
    # each module registers its formats on import (one line per paper, added as each lands)
    import irdiff.official.cold  # noqa: F401
    import irdiff.official.noise_da  # noqa: F401
    import irdiff.official.rddm  # noqa: F401
