"""Atomic checkpoints: a directory of safetensors files + state.json; nothing is ever unpickled.

Layout of a run directory::

    run/config.yaml                 the resolved config
    run/checkpoints/step_00001000/  model.safetensors, ema.safetensors, optimizer.safetensors, state.json
    run/checkpoints/latest          text file naming the newest complete checkpoint (written last)

A checkpoint is written into a temporary sibling directory, every file fsynced, then renamed into
place; `latest` is replaced atomically after that, so a crash (SIGKILL, power loss) at any moment
leaves `latest` naming a complete checkpoint: the old one or the new one (tests/test_kill.py). A write
that fails (disk full, read-only folder) removes its temporary files and raises a one-line
:class:`WriteError` that says the previous file or checkpoint is intact.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file


class CheckpointError(ValueError):
    pass


class WriteError(OSError):
    """A file or checkpoint could not be written (disk full, read-only folder...); the message is one
    line naming the target and saying that what was there before is unchanged."""

    def __init__(self, message: str, errno: int | None = None):
        super().__init__(message)
        self.errno = errno


def _why(e: OSError) -> str:
    return e.strerror or " ".join(str(e).split()) or type(e).__name__


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_bytes_atomic(path: str | os.PathLike, payload: bytes) -> Path:
    """The one atomic file write of irdiff: a temporary sibling, fsynced, renamed over ``path``, then the
    folder fsynced. A crash leaves the old file or the new one, never a mix; parents are created. On
    failure the temporary file is removed and a one-line WriteError is raised; ``path`` is unchanged."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a run's files and images are meant to be shared
        os.replace(tmp, path)
    except OSError as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        kept = "the previous file is unchanged" if path.exists() else "nothing was written"
        raise WriteError(f"{path}: cannot write ({_why(e)}); {kept}", e.errno) from None
    except BaseException:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def save_tensors_atomic(path: str | Path, tensors: dict[str, torch.Tensor]) -> Path:
    """safetensors file written like :func:`write_bytes_atomic` (e.g. a run's model.safetensors)."""
    from safetensors.torch import save

    return write_bytes_atomic(path, save(_contiguous(tensors)))


def truncate_log(path: str | Path, step: int) -> None:
    """Keep the JSON-lines log entries up to `step` (a resumed run logs the later steps again) and drop
    a line torn by a crash; rewritten atomically. A missing log is left missing."""
    path = Path(path)
    if not path.is_file():
        return
    kept, changed = [], False
    for line in path.read_text(errors="replace").splitlines():
        try:
            row = json.loads(line)
            ok = isinstance(row, dict) and int(row.get("step", 0)) <= step
        except (ValueError, TypeError):
            ok = False
        if ok:
            kept.append(line)
        changed |= not ok
    if changed:
        write_text_atomic(path, "".join(f"{line}\n" for line in kept))


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(path, text.encode())


def _contiguous(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses shared or non-contiguous storage; clone to be safe.
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in sd.items()}


def optimizer_to_flat(opt_state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state_dict into tensors (for safetensors) and JSON-able metadata."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, st in opt_state["state"].items():
        for key, val in st.items():
            if torch.is_tensor(val):
                tensors[f"{pid}.{key}"] = val
            else:
                scalars.setdefault(str(pid), {})[key] = val
    return tensors, {"param_groups": opt_state["param_groups"], "scalars": scalars}


def optimizer_from_flat(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, val in tensors.items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = val
    for pid, st in meta.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(st)
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(run_dir: str | Path, step: int, tensors: dict[str, dict[str, torch.Tensor]],
                    state: dict[str, Any], keep: int = 2) -> Path:
    """Write ``{name}.safetensors`` for each entry of `tensors` and ``state.json``; update `latest`.

    A failed write (disk full, read-only folder) raises a one-line WriteError; `latest` and the
    checkpoint it names are untouched and no temporary directory is left behind.
    """
    ckpt_root = Path(run_dir) / "checkpoints"
    final = ckpt_root / f"step_{step:08d}"
    state_json = json.dumps(state, indent=1)  # a state that is not JSON-able fails before any write
    tmp = None
    try:
        ckpt_root.mkdir(parents=True, exist_ok=True)
        _remove_leftovers(ckpt_root)
        tmp = Path(tempfile.mkdtemp(dir=ckpt_root, prefix=f".tmp_step_{step:08d}_"))
        os.chmod(tmp, 0o755)
        for name, sd in tensors.items():
            save_file(_contiguous(sd), str(tmp / f"{name}.safetensors"))
        (tmp / "state.json").write_text(state_json)
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        _fsync_dir(tmp)
        if final.exists():
            # re-saving a step: an earlier run was killed after writing it but before `latest` named it
            # (the trainer saves each step once per run), so `latest` does not point here
            _discard(final)
        os.rename(tmp, final)
        tmp = None
        _fsync_dir(ckpt_root)
    except OSError as e:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        prev = _pointer(ckpt_root)
        kept = f"the previous checkpoint {prev} is intact" if prev else "no earlier checkpoint exists"
        raise WriteError(f"{final}: cannot write checkpoint ({_why(e)}); {kept}", e.errno) from None
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    write_text_atomic(ckpt_root / "latest", final.name + "\n")
    _prune(ckpt_root, keep)
    return final


def _pointer(ckpt_root: Path) -> str | None:
    try:
        return (ckpt_root / "latest").read_text().strip() or None
    except OSError:
        return None


def _discard(path: Path) -> None:
    """Remove a checkpoint directory: renamed out of the step_* namespace first (atomic), so a crash
    in the middle of the deletion never leaves a half-deleted step_* directory behind."""
    trash = path.with_name(f".trash_{path.name}_{os.getpid()}")
    os.rename(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def _remove_leftovers(ckpt_root: Path) -> None:
    """Temporary directories and files of saves that a crash interrupted (only the main process saves)."""
    for p in ckpt_root.iterdir():
        if p.name.startswith((".tmp_step_", ".trash_")) and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        elif p.name.startswith(".latest.") and p.name.endswith(".tmp"):
            p.unlink(missing_ok=True)


def _prune(ckpt_root: Path, keep: int) -> None:
    if keep <= 0:
        return
    current = _pointer(ckpt_root)
    done = sorted(p for p in ckpt_root.glob("step_*") if p.is_dir())
    for old in done[:-keep]:
        if old.name != current:  # never the one `latest` names
            try:
                _discard(old)
            except OSError:
                pass  # pruning is housekeeping: a failure must not fail the save


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    root = Path(run_dir) / "checkpoints"
    pointer = root / "latest"
    if not pointer.is_file():
        return None
    name = pointer.read_text().strip()
    path = root / name
    if not name.startswith("step_") or "/" in name or "\\" in name:
        raise CheckpointError(f"{pointer}: names {name!r}, not a step_N checkpoint directory")
    if not (path / "state.json").is_file():
        raise CheckpointError(f"{pointer}: points to {path.name}, which is missing or incomplete")
    return path


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: missing")
    try:
        return load_file(str(p))
    except Exception as e:  # safetensors raises its own error types
        why = " ".join(str(e).split()) or type(e).__name__
        raise CheckpointError(f"{p}: not a valid safetensors file ({why})") from None


def load_state(ckpt_dir: str | Path) -> dict[str, Any]:
    p = Path(ckpt_dir) / "state.json"
    try:
        state = json.loads(p.read_bytes())
    except FileNotFoundError:
        raise CheckpointError(f"{p}: missing") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{p}: invalid JSON ({e.msg} at line {e.lineno})") from None
    except UnicodeDecodeError:
        raise CheckpointError(f"{p}: invalid JSON (not UTF-8 text)") from None
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise CheckpointError(f"{p}: not a checkpoint state (no integer 'step')")
    return state
