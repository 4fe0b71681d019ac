"""Hostile files (issue 16, item 3): pickles that would run code, safetensors headers that lie, model.json
files that name foreign keys or paths. Each is refused with a one-line error naming the file, and the
payload never runs: it would create a file, and the tests check that the file does not exist."""

from __future__ import annotations

import io
import json
import pickle
import shutil
import struct

import pytest
import torch

from irdiff.checkpoint import CheckpointError, load_tensors
from irdiff.cli import main
from irdiff.inference import load


class Payload:
    """Unpickling this calls open(target, "w"): it creates `target`."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (io.open, (self.target, "w"))


def pickled(target) -> bytes:
    return pickle.dumps({"state_dict": {"w": Payload(target)}}, protocol=2)


def torch_pickled(target) -> bytes:
    buf = io.BytesIO()
    torch.save({"state_dict": {"w": Payload(target)}}, buf)  # the zip format torch.save writes
    return buf.getvalue()


def test_the_payload_really_runs_code_when_unpickled(tmp_path):
    """The control: without the guards below, loading these bytes creates the file."""
    pickle.loads(pickled(tmp_path / "a"))
    torch.load(io.BytesIO(torch_pickled(tmp_path / "b")), weights_only=False)
    assert (tmp_path / "a").exists() and (tmp_path / "b").exists()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from test_train import tiny_config

    from irdiff.data.io import write_image
    from irdiff.train import train

    d = tmp_path_factory.mktemp("imgs")
    g = torch.Generator().manual_seed(0)
    for i in range(4):
        write_image(d / f"img{i}.png", torch.rand(3, 24, 24, generator=g))
    out = tmp_path_factory.mktemp("runs") / "tiny"
    train(tiny_config(d, steps=3), out, progress=False)
    return out


def one_line_error(capsys, *names):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for name in names:
        assert name in err, err
    return err


@pytest.mark.parametrize("make", [pickled, torch_pickled], ids=["pickle", "torch.save"])
def test_pickle_as_model_weights_is_refused_unexecuted(tmp_path, run, capsys, make):
    model = tmp_path / "model"
    model.mkdir()
    shutil.copy(run / "model.json", model / "model.json")
    marker = tmp_path / "pwned"
    (model / "model.safetensors").write_bytes(make(marker))
    with pytest.raises(CheckpointError, match="model.safetensors: not a valid safetensors file"):
        load(model)
    from irdiff.data.io import write_image

    src = write_image(tmp_path / "in.png", torch.rand(3, 20, 20))
    assert main(["restore", str(src), "-o", str(tmp_path / "o.png"), "--model", str(model), "--no-progress"]) != 0
    one_line_error(capsys, "model.safetensors")
    assert not marker.exists()


@pytest.mark.parametrize("name", ["model", "ema", "optimizer"])
def test_pickle_in_a_checkpoint_is_refused_unexecuted_on_load_and_resume(tmp_path, run, capsys, name):
    from irdiff.checkpoint import latest_checkpoint
    from irdiff.config import load_config
    from irdiff.train import train

    victim = tmp_path / "run"
    shutil.copytree(run, victim)
    (victim / "model.json").unlink()  # restore reads the checkpoint's EMA weights
    (victim / "model.safetensors").unlink()
    marker = tmp_path / "pwned"
    ckpt = latest_checkpoint(victim)
    (ckpt / f"{name}.safetensors").write_bytes(torch_pickled(marker))
    if name == "ema":  # what restore reads from a run without an export
        from irdiff.data.io import write_image

        with pytest.raises(CheckpointError, match="ema.safetensors"):
            load(victim)
        src = write_image(tmp_path / "in.png", torch.rand(3, 20, 20))
        assert main(["restore", str(src), "-o", str(tmp_path / "o.png"), "--model", str(victim), "--no-progress"]) == 2
        one_line_error(capsys, "ema.safetensors")
        assert not (tmp_path / "o.png").exists()
    cfg = load_config(victim / "config.yaml", ["train.steps=6"])  # the run's own config, longer: it resumes
    with pytest.raises(CheckpointError, match=f"{name}.safetensors: not a valid safetensors file"):
        train(cfg, victim, progress=False)
    assert not marker.exists()


def test_pickle_as_json_files_is_refused_unexecuted(tmp_path, run):
    from irdiff.checkpoint import latest_checkpoint, load_state

    marker = tmp_path / "pwned"
    victim = tmp_path / "run"
    shutil.copytree(run, victim)
    (victim / "model.json").write_bytes(pickled(marker))
    with pytest.raises(CheckpointError, match="model.json: invalid JSON"):
        load(victim)
    state = latest_checkpoint(victim) / "state.json"
    state.write_bytes(pickled(marker))
    with pytest.raises(CheckpointError, match="state.json: invalid JSON"):
        load_state(state.parent)
    assert not marker.exists()


def test_pickle_in_a_safetensors_header_is_refused_unexecuted(tmp_path):
    marker = tmp_path / "pwned"
    body = pickled(marker)
    f = tmp_path / "w.safetensors"
    f.write_bytes(struct.pack("<Q", len(body)) + body)
    with pytest.raises(CheckpointError, match="w.safetensors: not a valid safetensors file"):
        load_tensors(f)
    assert not marker.exists()


@pytest.mark.parametrize("make", [pickled, torch_pickled], ids=["pickle", "torch.save"])
def test_pickle_as_official_checkpoint_is_refused_unexecuted(tmp_path, monkeypatch, make):
    from irdiff.official import FORMATS, OfficialCheckpointError, OfficialFormat, convert, read_checkpoint

    marker = tmp_path / "pwned"
    f = tmp_path / "official.pth"
    f.write_bytes(make(marker))
    with pytest.raises(OfficialCheckpointError, match="official.pth: not a readable weights-only checkpoint"):
        read_checkpoint(f)
    # through convert, with a stand-in format (the per-paper formats land separately)
    fmt = OfficialFormat(name="hostile-test", defaults={}, build=lambda: torch.nn.Conv2d(3, 3, 1),
                         select=lambda c: c["state_dict"])
    monkeypatch.setitem(FORMATS, fmt.name, fmt)
    with pytest.raises(OfficialCheckpointError) as e:
        convert("hostile-test", f)
    assert "\n" not in str(e.value) and "official.pth" in str(e.value)
    assert not marker.exists()


def header_file(path, header: dict, body: bytes):
    h = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(h)) + h + body)
    return path


LYING_HEADERS = {
    "shape larger than its bytes": ({"w": {"dtype": "F32", "shape": [100, 100], "data_offsets": [0, 16]}}, 16),
    "offsets past the end": ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, 8),
    "overlapping tensors": ({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                             "b": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, 16),
    "reversed offsets": ({"w": {"dtype": "F32", "shape": [0], "data_offsets": [16, 0]}}, 16),
    "shape overflows": ({"w": {"dtype": "F32", "shape": [2**62, 2**62], "data_offsets": [0, 16]}}, 16),
    "negative dimension": ({"w": {"dtype": "F32", "shape": [-1, 4], "data_offsets": [0, 16]}}, 16),
    "unknown dtype": ({"w": {"dtype": "Q99", "shape": [4], "data_offsets": [0, 16]}}, 16),
    "trailing bytes": ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, 32),
}


@pytest.mark.parametrize("case", list(LYING_HEADERS))
def test_safetensors_header_that_lies_is_refused_in_one_line(tmp_path, case):
    header, size = LYING_HEADERS[case]
    f = header_file(tmp_path / "w.safetensors", header, b"\0" * size)
    with pytest.raises(CheckpointError) as e:
        load_tensors(f)
    assert str(f) in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("prefix", [struct.pack("<Q", 1 << 40) + b"{}", struct.pack("<Q", 500) + b'{"a":1}', b"\1\2"],
                         ids=["header length huge", "header length past the end", "shorter than a header"])
def test_safetensors_header_length_that_lies_is_refused(tmp_path, prefix):
    f = tmp_path / "w.safetensors"
    f.write_bytes(prefix)
    with pytest.raises(CheckpointError, match="w.safetensors: not a valid safetensors file"):
        load_tensors(f)


def test_lying_header_in_a_model_folder_through_the_cli(tmp_path, run, capsys):
    model = tmp_path / "model"
    model.mkdir()
    shutil.copy(run / "model.json", model / "model.json")
    header, size = LYING_HEADERS["shape larger than its bytes"]
    header_file(model / "model.safetensors", header, b"\0" * size)
    from irdiff.data.io import write_image

    src = write_image(tmp_path / "in.png", torch.rand(3, 20, 20))
    out = tmp_path / "out.png"
    assert main(["restore", str(src), "-o", str(out), "--model", str(model), "--no-progress"]) != 0
    one_line_error(capsys, "model.safetensors", "invalid shape")
    assert not out.exists()


def edited_model(tmp_path, run, edit) -> object:
    model = tmp_path / "model"
    model.mkdir()
    shutil.copy(run / "model.safetensors", model / "model.safetensors")
    meta = json.loads((run / "model.json").read_text())
    edit(meta)
    (model / "model.json").write_text(json.dumps(meta))
    return model


def test_model_json_unknown_key_is_refused(tmp_path, run):
    model = edited_model(tmp_path, run, lambda m: m.update(lodaer="x"))
    with pytest.raises(CheckpointError, match="model.json: unknown key 'lodaer'"):
        load(model)


def test_model_json_unknown_config_key_is_refused(tmp_path, run):
    from irdiff.config import ConfigError

    model = edited_model(tmp_path, run, lambda m: m["config"]["train"].update(stpes=3))
    with pytest.raises(ConfigError, match="train.stpes"):
        load(model)


@pytest.mark.parametrize("weights", ["../outside.safetensors", "/etc/passwd", "sub/../../outside.safetensors",
                                     "link.safetensors", 7])
def test_model_json_path_outside_the_folder_is_refused(tmp_path, run, weights):
    shutil.copy(run / "model.safetensors", tmp_path / "outside.safetensors")
    model = edited_model(tmp_path, run, lambda m: m.update(weights=weights))
    (model / "link.safetensors").symlink_to(tmp_path / "outside.safetensors")
    with pytest.raises(CheckpointError, match="model.json: weights"):
        load(model)


def test_model_json_weights_inside_the_folder_are_used(tmp_path, run):
    model = edited_model(tmp_path, run, lambda m: m.update(weights="net.safetensors"))
    (model / "model.safetensors").rename(model / "net.safetensors")
    assert load(model).net is not None
    (model / "net.safetensors").unlink()
    with pytest.raises(CheckpointError, match="net.safetensors: missing"):
        load(model)
