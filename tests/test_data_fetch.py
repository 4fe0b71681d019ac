"""`irdiff data list | fetch`: the catalog, and downloads from a local HTTP server on 127.0.0.1 (never the internet).

The server serves a small fake set (and, when the shared data is here, real sets from it under the
raw.githubusercontent.com layout), honours Range requests, and can be told to break a download halfway,
to ignore Range, or to serve wrong bytes.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import socket
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import SHARED_DATA, shared_data

from irdiff.cli import main
from irdiff.config import load_config
from irdiff.data import catalog
from irdiff.data.catalog import Dataset, RemoteFile, data_root
from irdiff.data.download import FetchError, OfflineError, SourceError, fetch

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
        srv = self.server
        rng = self.headers.get("Range")
        srv.requests.append((self.path, rng))
        body = srv.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        start = 0
        if rng and not srv.ignore_range:
            start = int(rng.removeprefix("bytes=").split("-")[0])
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        chunk = body[start:]
        self.send_header("Content-Length", str(len(chunk)))
        self.end_headers()
        if self.path in srv.break_once:  # promise the whole body, send half, hang up
            srv.break_once.discard(self.path)
            self.wfile.write(chunk[: len(chunk) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(chunk)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.files, srv.requests, srv.break_once, srv.ignore_range = {}, [], set(), False
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def closed_port_url() -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now: connection refused
    return f"http://127.0.0.1:{port}"


TINY_CONTENT = {"a.png": 300_000, "b.png": 1_000, "input/1.png": 5_000}  # path -> size


@pytest.fixture
def tiny(server):
    """A fake pinned set of three files (one in a subfolder), served by `server` under /<repo>/<commit>/<remote>."""
    rnd = random.Random(0)
    files, blobs = [], {}
    for path, size in TINY_CONTENT.items():
        data = rnd.randbytes(size)
        blobs[path] = data
        remote = f"deep/set/{path}"
        files.append(RemoteFile(path=path, remote=remote, size=size, sha256=hashlib.sha256(data).hexdigest()))
        server.files[f"/owner/tiny/{'c' * 40}/{remote}"] = data
    ds = Dataset(name="Tiny", title="tiny", use="tests", homepage="https://example.org/tiny", licence="none",
                 cite="-", layout="Tiny/*.png", repo="owner/tiny", commit="c" * 40, files=tuple(files))
    return ds, blobs


def url_path(ds: Dataset, path: str) -> str:
    f = next(f for f in ds.files if f.path == path)
    return f"/{ds.repo}/{ds.commit}/{f.remote}"


def quiet(msg: str) -> None:
    pass


def test_fetch_downloads_verifies_and_writes_checksums(server, tiny, tmp_path):
    ds, blobs = tiny
    counts = fetch(ds, tmp_path, base_url=server.url, log=quiet)
    assert counts == {"downloaded": 3, "present": 0}
    for path, data in blobs.items():
        assert (tmp_path / "Tiny" / path).read_bytes() == data
    assert not list((tmp_path / "Tiny").rglob("*.part"))
    if shutil.which("sha256sum"):  # the written SHA256SUMS checks out with coreutils
        done = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=tmp_path / "Tiny", capture_output=True)
        assert done.returncode == 0, done.stdout
    # again: everything is there with the right hash, nothing is requested
    n = len(server.requests)
    assert fetch(ds, tmp_path, base_url=server.url, log=quiet) == {"downloaded": 0, "present": 3}
    assert len(server.requests) == n


def test_interrupted_download_resumes_with_a_range_request(server, tiny, tmp_path):
    ds, blobs = tiny
    big = url_path(ds, "a.png")
    server.break_once.add(big)
    with pytest.raises(FetchError, match="broke off after 150000 of 300000 bytes.*run the same command again"):
        fetch(ds, tmp_path, base_url=server.url, log=quiet)
    part = tmp_path / "Tiny" / "a.png.part"
    assert part.stat().st_size == 150_000 and not (tmp_path / "Tiny" / "a.png").exists()
    assert (tmp_path / "Tiny" / "b.png").read_bytes() == blobs["b.png"]  # the others completed

    fetch(ds, tmp_path, base_url=server.url, log=quiet)
    assert server.requests[-1] == (big, "bytes=150000-")  # only the missing half was asked for
    assert (tmp_path / "Tiny" / "a.png").read_bytes() == blobs["a.png"]
    assert not part.exists()


def test_server_that_ignores_range_gets_the_file_rewritten(server, tiny, tmp_path):
    ds, blobs = tiny
    server.ignore_range = True
    part = tmp_path / "Tiny" / "a.png.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"x" * 1000)  # a stale prefix that is not the file's: must not be kept
    fetch(ds, tmp_path, base_url=server.url, log=quiet)
    assert (tmp_path / "Tiny" / "a.png").read_bytes() == blobs["a.png"]


def test_checksum_mismatch_deletes_the_part_and_says_so(server, tiny, tmp_path):
    ds, blobs = tiny
    bad = bytearray(blobs["b.png"])
    bad[10] ^= 0xFF
    server.files[url_path(ds, "b.png")] = bytes(bad)
    with pytest.raises(FetchError) as err:
        fetch(ds, tmp_path, base_url=server.url, log=quiet)
    msg = str(err.value)
    assert "checksum mismatch" in msg and url_path(ds, "b.png") in msg and "deleted" in msg and "\n" not in msg
    assert hashlib.sha256(bad).hexdigest() in msg
    assert not (tmp_path / "Tiny" / "b.png.part").exists() and not (tmp_path / "Tiny" / "b.png").exists()
    assert not (tmp_path / "Tiny" / "SHA256SUMS").exists()  # the set is not marked complete


def test_missing_remote_file_is_reported_with_the_way_by_hand(server, tiny, tmp_path):
    ds, _ = tiny
    del server.files[url_path(ds, "b.png")]
    with pytest.raises(SourceError) as err:
        fetch(ds, tmp_path, base_url=server.url, log=quiet)
    msg = str(err.value)
    assert "HTTP 404" in msg and url_path(ds, "b.png") in msg and "github.com/owner/tiny/tree/" in msg
    assert (tmp_path / "Tiny" / "a.png").is_file()  # the rest was fetched and stays


def test_wrong_local_file_is_replaced(server, tiny, tmp_path):
    ds, blobs = tiny
    (tmp_path / "Tiny").mkdir()
    (tmp_path / "Tiny" / "b.png").write_bytes(b"not the file")
    assert fetch(ds, tmp_path, base_url=server.url, log=quiet)["downloaded"] == 3
    assert (tmp_path / "Tiny" / "b.png").read_bytes() == blobs["b.png"]


def test_offline_says_what_to_download_by_hand_and_where(tiny, tmp_path):
    ds, _ = tiny
    url = closed_port_url()
    with pytest.raises(OfflineError) as err:
        fetch(ds, tmp_path, base_url=url, log=quiet)
    msg = str(err.value)
    assert "\n" not in msg and f"cannot reach {url.removeprefix('http://')}" in msg
    assert f"https://github.com/owner/tiny/tree/{'c' * 40}/deep/set" in msg  # what to download by hand
    assert str(tmp_path / "Tiny/*.png") in msg and "irdiff data fetch Tiny" in msg  # where, and how to verify
    assert not (tmp_path / "Tiny").exists()  # no empty folder that would look fetched


def test_cli_fetch_and_list_status(server, tiny, tmp_path, monkeypatch, capsys):
    ds, _ = tiny
    monkeypatch.setattr(catalog, "catalog", lambda: {"Tiny": ds})
    assert main(["data", "fetch", "tiny", "--dest", str(tmp_path), "--base-url", server.url]) == 0
    out = capsys.readouterr().out
    assert f"Tiny: 3 files verified in {tmp_path / 'Tiny'}" in out and f"IRDIFF_DATA={tmp_path}" in out
    assert main(["data", "list", "--dest", str(tmp_path)]) == 0
    assert "Tiny  [present]  3 files, 0.3 MB" in capsys.readouterr().out
    (tmp_path / "Tiny" / "b.png").unlink()
    assert main(["data", "list", "--dest", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["datasets"][0]["status"] == "partial"


def test_cli_offline_is_one_line_and_nonzero(tiny, tmp_path, monkeypatch, capsys):
    ds, _ = tiny
    monkeypatch.setattr(catalog, "catalog", lambda: {"Tiny": ds})
    monkeypatch.setenv("IRDIFF_DATA_URL", closed_port_url())  # the env override, no --base-url
    assert main(["data", "fetch", "Tiny", "--dest", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("irdiff: error: cannot reach 127.0.0.1:")


def test_cli_unknown_name_is_a_usage_error(capsys):
    assert main(["data", "fetch", "CBSD86"]) == 2
    err = capsys.readouterr().err
    assert "unknown dataset 'CBSD86'" in err and "CBSD68" in err


# ---- the real catalog ---------------------------------------------------------------------------------------

# From the data folders' own README (file counts and sizes), not from the manifests.
EXPECTED = {"CBSD68": (68, "18.3 MB"), "Kodak24": (24, "15.4 MB"), "Set5": (5, "0.9 MB"), "Set14": (14, "5.0 MB"),
            "BSDS500-train400": (400, "29.5 MB"), "Rain100L-subset3": (6, "1.9 MB")}


def test_list_shows_every_set_with_source_size_checksum_licence(tmp_path, capsys):
    assert main(["data", "list", "--dest", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"data root: {tmp_path}" in out
    for name, (n, size) in EXPECTED.items():
        assert f"{name}  [absent]  {n} files, {size}" in out
    for name in ("Rain100L", "GoPro"):
        assert f"{name}  [absent, fetched by hand]" in out
    for url in ("https://www2.eecs.berkeley.edu/Research/Projects/CS/vision/bsds/", "http://r0k.us/graphics/kodak/",
                "https://seungjunnah.github.io/Datasets/gopro.html"):
        assert url in out
    blocks = out.split("\n\n")[1:]
    assert len(blocks) == 8
    for block in blocks:
        assert "  licence: " in block and "  layout:  " in block and "  fetch:   irdiff data fetch " in block
        assert ("fetched by hand" in block) != ("  sha256:  " in block)


def test_manual_set_says_what_to_do_and_accepts_a_hand_placed_copy(tmp_path, capsys):
    assert main(["data", "fetch", "GoPro", "--dest", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "GOPRO_Large.zip" in err and "https://seungjunnah.github.io" in err
    assert f"directly in {tmp_path / 'GoPro'}" in err
    for split in ("train", "test"):
        (tmp_path / "GoPro" / split).mkdir(parents=True)
    assert main(["data", "fetch", "GoPro", "--dest", str(tmp_path)]) == 0
    assert "GoPro: found in" in capsys.readouterr().out


def test_data_root_default_is_the_user_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("IRDIFF_DATA", str(tmp_path / "mine"))
    assert data_root() == tmp_path / "mine"
    monkeypatch.delenv("IRDIFF_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data_root() == tmp_path / "xdg" / "irdiff" / "data"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data_root() == tmp_path / "home" / ".cache" / "irdiff" / "data"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_configs_read_catalog_sets_under_the_data_root(path, monkeypatch, tmp_path):
    assert "../shared" not in path.read_text() and "/shared/data" not in path.read_text()
    monkeypatch.delenv("IRDIFF_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    root = tmp_path / "xdg" / "irdiff" / "data"  # unset IRDIFF_DATA: the folder `irdiff data fetch` fills
    cfg = load_config(path)
    for spec in (cfg.data.train, cfg.data.val, cfg.data.real):
        for folder in (spec.gt_dir, spec.lq_dir) if spec else ():
            if folder:
                rel = Path(folder).relative_to(root)
                assert rel.parts[0] in catalog.catalog(), f"{path.name}: {folder} is no catalog set"


@pytest.mark.parametrize("folder", ["BSDS500-train400", "Rain100L-subset3/target"])
def test_missing_data_folder_error_names_the_set_and_the_fetch_command(folder, monkeypatch, tmp_path):
    from irdiff.config import DataSpec
    from irdiff.data.datasets import DataError, build_dataset

    monkeypatch.setenv("IRDIFF_DATA", str(tmp_path))
    config = Path(__file__).resolve().parents[1] / "configs" / "irsde_derain.yaml"
    cfg = load_config(config)  # train: BSDS500-train400, val: Rain100L-subset3 pairs
    spec = cfg.data.train if folder.startswith("BSDS") else cfg.data.val
    assert spec.gt_dir == str(tmp_path / folder)
    with pytest.raises(DataError) as err:
        build_dataset(spec, seed=0, train=True)
    name = folder.split("/")[0]
    assert str(tmp_path / folder) in str(err.value) and f"`irdiff data fetch {name}`" in str(err.value)
    with pytest.raises(DataError, match="no such folder") as err:  # not a catalog folder: no hint
        build_dataset(DataSpec(gt_dir=str(tmp_path / "mine"), degradation={"name": "awgn", "sigma": 25}), seed=0,
                      train=True)
    assert "irdiff data fetch" not in str(err.value)


# ---- against the real files (skipped where the data folder is absent) -------------------------------------------

@pytest.mark.parametrize("name", list(EXPECTED))
def test_manifest_matches_the_real_files(name):
    folder = shared_data(name)
    ds = catalog.get(name)
    sums = dict(line.split("  ", 1)[::-1] for line in (folder / "SHA256SUMS").read_text().splitlines())
    assert {f.path: f.sha256 for f in ds.files} == sums
    for f in ds.files:
        data = (folder / f.path).read_bytes()
        assert len(data) == f.size and hashlib.sha256(data).hexdigest() == f.sha256
    # the set's one checksum is that of its SHA256SUMS file (what `sha256sum <NAME>/SHA256SUMS` prints)
    assert ds.digest == hashlib.sha256((folder / "SHA256SUMS").read_bytes()).hexdigest()


def test_real_sets_fetch_from_a_mirror_layout(server, tmp_path, capsys):
    """Set5 and the Rain100L pairs from a local mirror of raw.githubusercontent.com (the real manifests' URLs)."""
    names = ["Set5", "Rain100L-subset3"]
    for name in names:
        ds = catalog.get(name)
        for f in ds.files:
            server.files[f"/{ds.repo}/{ds.commit}/{f.remote}"] = (shared_data(name) / f.path).read_bytes()
    assert main(["data", "fetch", *names, "--dest", str(tmp_path), "--base-url", server.url]) == 0
    for name in names:
        for f in catalog.get(name).files:
            assert (tmp_path / name / f.path).read_bytes() == (SHARED_DATA / name / f.path).read_bytes()
    assert "Rain100L-subset3: 6 files verified" in capsys.readouterr().out
