"""Download a pinned data set file by file: resumable, checksum-verified, atomic (standard library only).

Each file is written to ``<file>.part`` and renamed once its size and SHA-256 match the manifest. A ``.part`` left
by an interrupted run is continued with an HTTP Range request (a server that ignores Range sends the whole file,
which is then written from the start). Files already present with the right hash are not downloaded again, so
running the same command again resumes, and files put in place by hand are verified.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from irdiff.checkpoint import write_text_atomic
from irdiff.data import catalog as _catalog
from irdiff.data.catalog import Dataset, RemoteFile

CHUNK = 1 << 16


class FetchError(RuntimeError):
    """A download that did not complete; the message is one line and says what to do next."""


class OfflineError(FetchError):
    """The server could not be reached at all."""


class SourceError(FetchError):
    """The server answered, but not with the file (HTTP error, or a range it was not asked for)."""


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _open(url: str, start: int, timeout: float):
    headers = {"User-Agent": "irdiff-data-fetch"}
    if start:
        headers["Range"] = f"bytes={start}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)


def _resume_offset(resp, start: int) -> int:
    """Where the response body starts in the file: ``start`` for a matching 206, else 0 (a full 200 body)."""
    if start and resp.status == 206:
        content_range = resp.headers.get("Content-Range", "")  # "bytes START-END/TOTAL"
        if content_range.startswith(f"bytes {start}-"):
            return start
        raise SourceError(f"{resp.url}: the server answered range {start}- with {content_range!r}")
    return 0


def download_file(url: str, part: Path, size: int, sha256: str, timeout: float = 30.0) -> None:
    """Complete ``part`` from ``url`` (continuing what it holds) and check it; a bad file is deleted."""
    have = part.stat().st_size if part.exists() else 0
    if have > size:  # not a prefix of this file
        part.unlink()
        have = 0
    if have < size:
        try:
            resp = _open(url, have, timeout)
        except urllib.error.HTTPError as e:
            if e.code == 416 and have:  # nothing left to send: check what we have
                resp = None
            else:
                raise SourceError(f"{url}: HTTP {e.code} {e.reason}") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            reason = getattr(reason, "strerror", None) or str(reason)
            raise OfflineError(f"cannot reach {urllib.parse.urlsplit(url).netloc} ({reason})") from None
        if resp is not None:
            with resp:
                offset = _resume_offset(resp, have)
                got = offset
                try:
                    with open(part, "r+b" if offset else "wb") as fh:
                        fh.seek(offset)
                        fh.truncate()
                        while got <= size and (block := resp.read(CHUNK)):  # more than size: a wrong file
                            fh.write(block)
                            got += len(block)
                except (http.client.HTTPException, OSError) as e:  # OSError covers timeouts and resets
                    raise FetchError(f"download of {url} broke off after {got} of {size} bytes "
                                     f"({type(e).__name__}); run the same command again to resume") from None
                if got < size:  # http.client returns a short body without an error when the server hangs up
                    raise FetchError(f"download of {url} broke off after {got} of {size} bytes (connection "
                                     "closed); run the same command again to resume")
    actual_size = part.stat().st_size
    actual = sha256_of(part) if actual_size == size else None
    if actual != sha256:
        part.unlink()
        what = f"sha256 {actual}" if actual else f"{actual_size} bytes"
        raise FetchError(f"checksum mismatch for {url}: expected sha256 {sha256} ({size} bytes), got {what}; "
                         f"the partial file {part} was deleted, run the same command again")


def fetch(ds: Dataset, root: Path, base_url: str | None = None, workers: int = 4, timeout: float = 30.0,
          log: Callable[[str], None] | None = None) -> dict[str, int]:
    """Make ``root/<NAME>`` hold every file of a pinned set, verified; returns counts of files
    {'downloaded', 'present'}. Raises FetchError (one line) if any file could not be completed; the files
    that were completed stay, so running again resumes."""
    if log is None:
        def log(msg: str) -> None:
            print(msg, file=sys.stderr)
    folder = root / ds.name
    if not ds.pinned:
        raise FetchError(f"{ds.name} has no pinned copy to download: {ds.by_hand(root)}")
    todo: list[RemoteFile] = []
    for f in ds.files:
        dest = folder / f.path
        if dest.is_file():
            if dest.stat().st_size == f.size and sha256_of(dest) == f.sha256:
                continue
            log(f"{ds.name}: {dest} differs from the manifest; downloading it again")
        todo.append(f)

    def one(f: RemoteFile) -> None:
        dest = folder / f.path
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = dest.with_name(dest.name + ".part")
        download_file(ds.url(f, base_url), part, f.size, f.sha256, timeout)
        os.replace(part, dest)

    errors: list[FetchError] = []

    def attempt(f: RemoteFile) -> None:
        try:
            one(f)
        except FetchError as e:
            errors.append(e)

    if todo:
        attempt(todo[0])  # alone first: offline fails fast, with one message
    if len(todo) > 1 and not errors:
        log(f"{ds.name}: downloading {len(todo)} of {len(ds.files)} files ({sum(f.size for f in todo) / 1e6:.1f} MB) "
            f"from {_catalog.base_url(base_url)}/{ds.repo}@{ds.commit[:7]} into {folder}")
    if len(todo) > 1 and not any(isinstance(e, OfflineError) for e in errors):
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            list(pool.map(attempt, todo[1:]))
    if errors:
        made = {folder} | {folder / q for f in todo for q in Path(f.path).parents if q != Path(".")}
        for d in sorted(made, key=lambda p: -len(p.parts)):
            if d.is_dir() and not any(d.iterdir()):  # leave no empty folder behind (it would look fetched)
                d.rmdir()
        first = next((e for e in errors if isinstance(e, OfflineError)), errors[0])
        if isinstance(first, OfflineError):
            raise OfflineError(f"{first} to fetch {ds.name} (offline?): {ds.by_hand(root)}")
        if isinstance(first, SourceError):
            raise SourceError(f"{ds.name}: {first}; if the pinned copy is gone: {ds.by_hand(root)}")
        more = f" ({len(errors) - 1} more files failed)" if len(errors) > 1 else ""
        raise FetchError(f"{ds.name}: {first}{more}")
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(folder / "SHA256SUMS", ds.sums_text())
    return {"downloaded": len(todo), "present": len(ds.files) - len(todo)}


# ---- `irdiff data list | fetch` ---------------------------------------------------------------------------------

def run_cli(args) -> int:
    """`irdiff data list [NAME...] [--json]` and `irdiff data fetch NAME... [--dest DIR] [--base-url URL]`."""
    import json

    from irdiff.data.catalog import catalog, data_root, describe, get

    root = Path(args.dest).expanduser() if getattr(args, "dest", None) else data_root()
    try:
        if args.data_command == "fetch" and args.names == ["all"]:
            sets = [d for d in catalog().values() if d.pinned]
        else:
            sets = [get(n) for n in args.names] if args.names else list(catalog().values())
    except KeyError as e:
        print(f"irdiff data {args.data_command}: {e.args[0]}", file=sys.stderr)
        return 2
    if args.data_command == "list":
        if args.json:
            rows = [{"name": d.name, "status": d.status(root), "folder": str(root / d.name), "use": d.use,
                     "homepage": d.homepage, "licence": d.licence, "layout": d.layout, "cite": d.cite,
                     "pinned": d.pinned, "files": len(d.files), "size": d.size if d.pinned else None,
                     "sha256": d.digest if d.pinned else None,
                     "source": f"{d.repo}@{d.commit}" if d.pinned else None, "manual": d.manual or None}
                    for d in sets]
            print(json.dumps({"root": str(root), "datasets": rows}, indent=1))
            return 0
        how = "--dest" if getattr(args, "dest", None) else "IRDIFF_DATA, else the user cache"
        print(f"data root: {root} ({how}); configs read ${{IRDIFF_DATA}}/<NAME>")
        for d in sets:
            print()
            print("\n".join(describe(d, root)))
        return 0
    status = 0
    for d in sets:
        if not d.pinned:
            if d.status(root) == "present":
                print(f"{d.name}: found in {root / d.name} (fetched by hand; no pinned checksums to verify)")
                continue
            print(f"irdiff: error: {d.name} is fetched by hand ({d.manual.get('size', '')}): {d.by_hand(root)}",
                  file=sys.stderr)
            status = 1
            continue
        try:
            counts = fetch(d, root, base_url=args.base_url)
        except FetchError as e:
            print(f"irdiff: error: {e}", file=sys.stderr)
            status = 1
            continue
        hint = "" if root == data_root() else f"; set IRDIFF_DATA={root} so that configs find it"
        print(f"{d.name}: {len(d.files)} files verified in {root / d.name} ({counts['downloaded']} downloaded, "
              f"{counts['present']} already there){hint}")
    return status
