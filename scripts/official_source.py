"""Load chosen class / function definitions from an official repository's source file, without running
its top-level imports (torchvision, comet_ml, accelerate, datasets...). Used by the parity scripts.

``load_definitions(path, names, imports)`` parses the file, keeps only the top-level ``def`` / ``class``
statements named in ``names`` and executes them in a namespace pre-filled with ``imports`` (the few
modules those definitions use: torch, nn, F, math, einops...). Nothing else in the file runs.
"""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path
from typing import Any


def load_definitions(path: str | Path, names: list[str], imports: dict[str, Any]) -> dict[str, Any]:
    src = Path(path).read_text()
    tree = ast.parse(src, filename=str(path))
    keep = [n for n in tree.body if isinstance(n, ast.FunctionDef | ast.ClassDef) and n.name in names]
    found = {n.name for n in keep}
    missing = [n for n in names if n not in found]
    if missing:
        raise SystemExit(f"{path}: definitions not found: {', '.join(missing)}")
    # the last definition of a name wins, as when the module is imported
    module = ast.Module(body=keep, type_ignores=[])
    ns: dict[str, Any] = dict(imports)
    ns["__name__"] = "official_" + Path(path).stem
    exec(compile(module, str(path), "exec"), ns)
    return ns


def git_commit(repo: str | Path) -> str:
    """The checked-out commit of ``repo`` (a work tree or a bare git directory)."""
    try:
        return subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
