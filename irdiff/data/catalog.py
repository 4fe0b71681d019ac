"""The standard data sets: where they come from, their terms, their files and checksums, where they go.

Each set is one JSON manifest in ``irdiff/data/manifests/``. A *pinned* set names a public GitHub repository at a
fixed commit and lists every file with its path in that repository, its size and its SHA-256, so ``irdiff data
fetch`` can download it file by file and verify it. A *manual* set (no pinned, verifiable copy is known) says what
to download by hand and where to put it. Everything lands in ``<data root>/<NAME>/`` -- the layout the configs read
as ``${IRDIFF_DATA}/<NAME>``. Standard library only: this module is imported by the config loader.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

MANIFESTS = Path(__file__).resolve().parent / "manifests"
DEFAULT_BASE_URL = "https://raw.githubusercontent.com"
ENV_ROOT = "IRDIFF_DATA"  # the data root
ENV_BASE_URL = "IRDIFF_DATA_URL"  # a mirror of raw.githubusercontent.com (same <repo>/<commit>/<path> layout)
# listing order: test sets by task, then training data, then the sets fetched by hand
ORDER = ("CBSD68", "Kodak24", "Set5", "Set14", "BSDS500-train400", "Rain100L-subset3", "Rain100L", "GoPro")


def data_root() -> Path:
    """``$IRDIFF_DATA``, else the user cache: ``$XDG_CACHE_HOME/irdiff/data`` or ``~/.cache/irdiff/data``."""
    env = os.environ.get(ENV_ROOT)
    if env:
        return Path(env).expanduser()
    cache_home = os.environ.get("XDG_CACHE_HOME")
    base = Path(cache_home) if cache_home and Path(cache_home).is_absolute() else Path.home() / ".cache"
    return base / "irdiff" / "data"


def base_url(override: str | None = None) -> str:
    """Where pinned files are downloaded from: the override, ``$IRDIFF_DATA_URL`` or raw.githubusercontent.com."""
    return (override or os.environ.get(ENV_BASE_URL) or DEFAULT_BASE_URL).rstrip("/")


@dataclass(frozen=True)
class RemoteFile:
    path: str  # relative to the set's folder, '/'-separated
    remote: str  # path in the source repository at the pinned commit
    size: int
    sha256: str


@dataclass(frozen=True)
class Dataset:
    name: str
    title: str
    use: str
    homepage: str  # the official source
    licence: str
    cite: str
    layout: str
    notes: str = ""
    repo: str | None = None  # pinned sets: owner/name on GitHub ...
    commit: str | None = None  # ... at this commit
    files: tuple[RemoteFile, ...] = ()
    manual: dict = field(default_factory=dict)  # manual sets: {size, steps, expect: [relative paths]}

    @classmethod
    def from_dict(cls, d: dict) -> Dataset:
        src = d.get("source") or {}
        files = tuple(RemoteFile(**f) for f in d.get("files", ()))
        keys = ("name", "title", "use", "homepage", "licence", "cite", "layout", "notes")
        return cls(**{k: d[k] for k in keys if k in d}, repo=src.get("repo"), commit=src.get("commit"),
                   files=files, manual=d.get("manual") or {})

    @property
    def pinned(self) -> bool:
        return bool(self.files)

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    def url(self, f: RemoteFile, base: str | None = None) -> str:
        return f"{base_url(base)}/{self.repo}/{self.commit}/{f.remote}"

    def source_tree(self) -> str:
        """The pinned copy on GitHub, for people: the repository at the commit, in the folder the files share."""
        common = os.path.commonpath([f.remote for f in self.files]) if len(self.files) > 1 else ""
        return f"https://github.com/{self.repo}/tree/{self.commit}/{common}".rstrip("/")

    def sums_text(self) -> str:
        """The set's SHA256SUMS (``sha256sum`` format, sorted by path), written next to the fetched files."""
        return "".join(f"{f.sha256}  {f.path}\n" for f in sorted(self.files, key=lambda f: f.path))

    @property
    def digest(self) -> str:
        """One SHA-256 for the whole set: that of its SHA256SUMS file (``sha256sum <root>/<NAME>/SHA256SUMS``)."""
        return hashlib.sha256(self.sums_text().encode()).hexdigest()

    def status(self, root: Path) -> str:
        """'present', 'partial' or 'absent' under ``root`` (pinned: by file sizes, not hashes; manual: the
        expected folders). ``irdiff data fetch`` verifies the hashes."""
        folder = root / self.name
        if not self.pinned:
            expect = self.manual.get("expect", [])
            found = [e for e in expect if (folder / e).exists()]
            return "present" if expect and len(found) == len(expect) else "partial" if found else "absent"
        ok = sum((folder / f.path).is_file() and (folder / f.path).stat().st_size == f.size for f in self.files)
        return "present" if ok == len(self.files) else "partial" if ok else "absent"

    def by_hand(self, root: Path) -> str:
        """What to download by hand and where to put it (one sentence)."""
        folder = root / self.name
        if self.pinned:
            return (f"download the {len(self.files)} files of {self.source_tree()} (official source: {self.homepage}) "
                    f"as {root}/{self.layout}, then run `irdiff data fetch {self.name}` to verify them")
        steps = self.manual.get("steps", "download it and put it in {folder}").format(folder=folder)
        return f"from {self.homepage} {steps}, giving {root}/{self.layout}"


@cache
def catalog() -> dict[str, Dataset]:
    """All sets by name, in listing order."""
    sets = [Dataset.from_dict(json.loads(p.read_text())) for p in sorted(MANIFESTS.glob("*.json"))]
    sets.sort(key=lambda d: (ORDER.index(d.name) if d.name in ORDER else len(ORDER), d.name))
    return {d.name: d for d in sets}


def get(name: str) -> Dataset:
    sets = catalog()
    if name in sets:
        return sets[name]
    folded = {k.lower(): v for k, v in sets.items()}
    if name.lower() in folded:
        return folded[name.lower()]
    raise KeyError(f"unknown dataset {name!r} (known: {', '.join(sets)})")


def fetch_hint(folder: str | os.PathLike) -> str:
    """For a data folder that is missing or empty: which set it belongs to and how to get it, or ''.

    The set is recognised by name anywhere in the path (``.../CBSD68``, ``.../Rain100L-subset3/input``)."""
    parts = Path(folder).parts
    for name in reversed(parts):
        if name in catalog():
            return f" (the {name} dataset: run `irdiff data fetch {name}`, or see `irdiff data list`)"
    return ""


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def describe(d: Dataset, root: Path) -> list[str]:
    """The lines `irdiff data list` prints for one set."""
    if d.pinned:
        head = f"{d.name}  [{d.status(root)}]  {len(d.files)} files, {_mb(d.size)}: {d.use}"
        source = f"  source:  {d.homepage}  (files: {d.repo}@{d.commit[:7]}, each SHA-256 checked)"
        sha = [f"  sha256:  {d.digest}  (of its SHA256SUMS)"]
    else:
        head = f"{d.name}  [{d.status(root)}, fetched by hand]  {d.manual.get('size', '')}: {d.use}"
        source = f"  source:  {d.homepage}"
        sha = []
    return [head, source, *sha, f"  licence: {d.licence}", f"  layout:  {d.layout}",
            f"  fetch:   irdiff data fetch {d.name}"]
