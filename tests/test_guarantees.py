"""The README's "Guarantees" (issue 16, items 2 and 4): failed writes keep what was there, and odd or bad
inputs through every entry point (API and CLI: restore, eval, train data loading, import) either work
(16-bit, grey, RGBA, palette, CMYK, EXIF-rotated, 1x1, 37x53) or stop with one line naming the file or key,
a non-zero exit and no partial output; in a batch the good files are still processed."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from irdiff.checkpoint import CheckpointError, WriteError, latest_checkpoint, load_tensors, save_checkpoint
from irdiff.cli import main
from irdiff.data.io import ImageReadError, read_array, write_image


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("clean")
    g = torch.Generator().manual_seed(0)
    for i in range(4):
        write_image(d / f"img{i}.png", torch.rand(3, 32, 32, generator=g))
    return d


@pytest.fixture(scope="module")
def run(tmp_path_factory, images):
    """A tiny trained run: checkpoints at steps 3 and 6, log, export."""
    from test_train import tiny_config

    from irdiff.train import train

    out = tmp_path_factory.mktemp("runs") / "tiny"
    train(tiny_config(images, steps=6), out, progress=False)
    return out


def digest(*folders: Path) -> dict[str, str]:
    """Content hash of every file under the folders: 'every input intact'."""
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest()
            for d in folders for p in sorted(Path(d).rglob("*")) if p.is_file()}


def stderr_lines(capsys) -> list[str]:
    return capsys.readouterr().err.strip().splitlines()


def one_line(capsys, *needles: str) -> str:
    lines = stderr_lines(capsys)
    assert len(lines) == 1, lines
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def enospc(*_a, **_k):
    raise OSError(errno.ENOSPC, "No space left on device")


def erofs(*_a, **_k):
    raise OSError(errno.EROFS, "Read-only file system")


# ------------------------------------------------------------------------ 2. disk full and read-only


def test_checkpoint_save_on_a_full_disk_keeps_the_previous_one(tmp_path, monkeypatch):
    import irdiff.checkpoint as ck

    sd = {"w": torch.arange(6.0)}
    save_checkpoint(tmp_path, 1, {"model": sd}, {"step": 1})

    def half_then_full(tensors, filename, metadata=None):  # a torn file, then ENOSPC
        Path(filename).write_bytes(b"\0" * 10)
        enospc()

    monkeypatch.setattr(ck, "save_file", half_then_full)
    with pytest.raises(WriteError) as e:
        save_checkpoint(tmp_path, 2, {"model": sd}, {"step": 2})
    msg = str(e.value)
    assert "\n" not in msg and "step_00000002" in msg and "No space left on device" in msg
    assert "the previous checkpoint step_00000001 is intact" in msg
    assert latest_checkpoint(tmp_path).name == "step_00000001"
    assert torch.equal(load_tensors(latest_checkpoint(tmp_path) / "model.safetensors")["w"], sd["w"])
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest", "step_00000001"]


def test_checkpoint_save_in_a_read_only_folder_says_so(tmp_path, monkeypatch):
    # root ignores chmod, so a read-only file system is simulated where it bites: creating the temp dir
    import irdiff.checkpoint as ck

    save_checkpoint(tmp_path, 1, {"model": {"w": torch.ones(2)}}, {"step": 1})
    monkeypatch.setattr(ck.tempfile, "mkdtemp", erofs)
    with pytest.raises(WriteError, match="Read-only file system.*previous checkpoint step_00000001 is intact"):
        save_checkpoint(tmp_path, 2, {"model": {"w": torch.ones(2)}}, {"step": 2})
    assert latest_checkpoint(tmp_path).name == "step_00000001"


def test_training_on_a_full_disk_stops_in_one_line_and_resumes_later(tmp_path, images, monkeypatch, capsys):
    from test_train import tiny_config

    import irdiff.checkpoint as ck
    from irdiff.config import dump_yaml

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(dump_yaml(tiny_config(images, steps=6)))
    before = digest(images)
    real, calls = ck.save_file, []

    def full_on_second_save(tensors, filename, metadata=None):
        calls.append(filename)
        if len(calls) > 3:  # model, ema, optimizer of step 3 go through; step 6 hits a full disk
            enospc()
        real(tensors, filename, metadata)

    monkeypatch.setattr(ck, "save_file", full_on_second_save)
    out = tmp_path / "run"
    assert main(["train", "--config", str(cfg), "--out", str(out), "--no-progress"]) == 2
    line = one_line(capsys, "step_00000006", "No space left on device", "step_00000003 is intact")
    assert line.startswith("irdiff: error:")
    assert latest_checkpoint(out).name == "step_00000003"
    assert not (out / "model.safetensors").exists()  # no export of a run that did not finish
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]
    assert digest(images) == before
    monkeypatch.setattr(ck, "save_file", real)  # space freed: the same command resumes and finishes
    assert main(["train", "--config", str(cfg), "--out", str(out), "--no-progress"]) == 0
    assert latest_checkpoint(out).name == "step_00000006"


@pytest.mark.parametrize("failure", [enospc, erofs], ids=["disk full", "read-only"])
def test_restore_output_write_failure_keeps_inputs_and_previous_output(tmp_path, run, monkeypatch, capsys, failure):
    import irdiff.checkpoint as ck

    src = tmp_path / "in"
    write_image(src / "a.png", torch.rand(3, 20, 24))
    out = tmp_path / "out"
    write_image(out / "a.png", torch.zeros(3, 5, 5))  # an earlier result
    before, old = digest(src), digest(out)
    monkeypatch.setattr(ck.os, "fsync", failure)  # the write itself fails late, after bytes went out
    assert main(["restore", str(src / "a.png"), "-o", str(out / "a.png"), "--model", str(run), "--no-progress"]) == 1
    lines = stderr_lines(capsys)
    assert len(lines) == 2 and "a.png: cannot write" in lines[0] and "the previous file is unchanged" in lines[0]
    assert lines[1] == "irdiff: 1 of 1 inputs failed; 0 restored"
    assert digest(src) == before and digest(out) == old  # no temp file left either


def test_eval_json_on_a_full_disk_and_export_on_a_read_only_disk(tmp_path, run, images, monkeypatch, capsys):
    import irdiff.checkpoint as ck

    monkeypatch.setattr(ck.tempfile, "mkstemp", enospc)
    target = tmp_path / "scores.json"
    assert main(["eval", "--pred", str(images), "--gt", str(images), "--json", str(target)]) == 2
    assert "scores.json: cannot write (No space left on device); nothing was written" in stderr_lines(capsys)[-1]
    assert not target.exists()

    from irdiff.train import export_inference

    monkeypatch.setattr(ck.tempfile, "mkstemp", erofs)
    before = digest(run)
    with pytest.raises(WriteError, match="model.safetensors: cannot write .Read-only.*previous file is unchanged"):
        export_inference(run, None, _Inference(), None, 0, {})
    assert digest(run) == before


class _Inference:  # the least export_inference needs: a method whose inference net has a state_dict
    def inference_net(self, _):
        return torch.nn.Linear(2, 2)


# ------------------------------------------------------------------------------- 4. bad inputs

def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _jpeg(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95, **kw)
    return buf.getvalue()


def _rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


def bomb_png() -> bytes:
    """A valid PNG header claiming 10 gigapixels with a tiny body: refused before decoding."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def exif_rotated() -> bytes:
    """Stored 40 wide x 30 high with EXIF orientation 6 (rotate 90° clockwise to view): shown 30 x 40.
    The stored top-left quarter is white, so viewed upright the white block is at the top right."""
    a = np.zeros((30, 40, 3), np.uint8)
    a[:15, :20] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    return _jpeg(Image.fromarray(a), exif=exif.tobytes())


# name -> (bytes, problem in the one-line error)
BAD_FILES = {
    "truncated.png": (lambda: _png(Image.fromarray(_rgb(40, 48)))[:200], "corrupt or truncated image"),
    "truncated.jpg": (lambda: _jpeg(Image.fromarray(_rgb(64, 64)))[:300], "corrupt or truncated image"),
    "empty.png": (lambda: b"", "empty file"),
    "text.png": (lambda: b"this is not an image\n", "not an image (unrecognised format)"),
    "bomb.png": (bomb_png, "image too large"),
}

# name -> (bytes, (height, width) read and restored)
ODD_FILES = {
    "deep16.png": (lambda: None, (30, 40)),  # written with write_image(bits=16) below
    "grey.png": (lambda: _png(Image.fromarray(_rgb(30, 40)[..., 0])), (30, 40)),
    "rgba.png": (lambda: _png(Image.fromarray(np.dstack([_rgb(30, 40), np.full((30, 40), 128, np.uint8)]))),
                 (30, 40)),
    "palette.png": (lambda: _png(Image.fromarray(_rgb(30, 40)).convert("P")), (30, 40)),
    "cmyk.jpg": (lambda: _jpeg(Image.fromarray(_rgb(30, 40)).convert("CMYK")), (30, 40)),
    "exif.jpg": (exif_rotated, (40, 30)),
    "one.png": (lambda: _png(Image.fromarray(_rgb(1, 1))), (1, 1)),
    "odd.png": (lambda: _png(Image.fromarray(_rgb(37, 53))), (37, 53)),
}


def make_files(folder: Path, which: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, (make, _) in which.items():
        if name == "deep16.png":
            write_image(folder / name, (np.random.default_rng(4).random((30, 40, 3)) * 65535).astype(np.uint16),
                        bits=16)
        else:
            (folder / name).write_bytes(make())
    return folder


@pytest.mark.parametrize("name", list(BAD_FILES))
def test_bad_image_api_one_line_naming_the_file(tmp_path, name):
    make_files(tmp_path, {name: BAD_FILES[name]})
    with pytest.raises(ImageReadError) as e:
        read_array(tmp_path / name)
    assert str(tmp_path / name) in str(e.value) and BAD_FILES[name][1] in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("name", list(ODD_FILES))
def test_odd_image_api_reads_as_rgb(tmp_path, name):
    make_files(tmp_path, {name: ODD_FILES[name]})
    arr = read_array(tmp_path / name)
    assert arr.shape[:2] == ODD_FILES[name][1] and arr.shape[2] in (1, 3)


def test_exif_orientation_is_applied_upright(tmp_path):
    (tmp_path / "exif.jpg").write_bytes(exif_rotated())
    arr = read_array(tmp_path / "exif.jpg").astype(float)
    assert arr.shape == (40, 30, 3)
    # rotated 90° clockwise: the stored top-left block is now the top-right block
    assert arr[:20, 15:].mean() > 240 and arr[:20, :15].mean() < 15 and arr[20:].mean() < 15


def test_restore_batch_of_odd_and_bad_files(tmp_path, run, capsys):
    d = make_files(tmp_path / "in", {**ODD_FILES, **BAD_FILES})
    before = digest(d)
    out = tmp_path / "out"
    rc = main(["restore", str(d), "-o", str(out), "--model", str(run), "--no-progress"])
    assert rc == 1
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    # good files restored, upright, at their size
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{Path(n).stem}.png" for n in ODD_FILES)
    for name, (_, (h, w)) in ODD_FILES.items():
        assert read_array(out / f"{Path(name).stem}.png").shape[:2] == (h, w), name
    # bad ones: one line each, after the good ones' output, then the summary
    assert len(err) == len(BAD_FILES) + 1, err
    for line, (name, (_, problem)) in zip(err, sorted(BAD_FILES.items(), key=lambda kv: kv[0])):
        assert line.startswith("irdiff: error:") and name in line and problem in line, (name, line)
    assert err[-1] == f"irdiff: {len(BAD_FILES)} of {len(BAD_FILES) + len(ODD_FILES)} inputs failed; " \
                      f"{len(ODD_FILES)} restored"
    assert digest(d) == before
    # an exif-rotated input comes out upright (white block top right)
    up = read_array(out / "exif.png").astype(float)
    assert up[:20, 15:].mean() > 200 and up[:20, :15].mean() < 60


@pytest.mark.parametrize("name", list(BAD_FILES))
def test_restore_one_bad_file_one_line_no_output(tmp_path, run, capsys, name):
    make_files(tmp_path, {name: BAD_FILES[name]})
    out = tmp_path / "out.png"
    assert main(["restore", str(tmp_path / name), "-o", str(out), "--model", str(run), "--no-progress"]) == 1
    err = stderr_lines(capsys)
    assert len(err) == 2 and name in err[0] and BAD_FILES[name][1] in err[0], err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_restore_empty_folder(tmp_path, run, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["restore", str(tmp_path / "empty"), "-o", str(tmp_path / "out"), "--model", str(run)]) == 1
    err = stderr_lines(capsys)
    assert err[0] == f"irdiff: error: {tmp_path / 'empty'}: folder holds no image (.png, .jpg, .jpeg, .tif, " \
                     ".tiff, .bmp, .webp)"
    assert not (tmp_path / "out").exists()


NET_TINY = {
    "nafnet": {"width": 8, "enc_blocks": [1, 1], "dec_blocks": [1, 1], "middle_blocks": 1},
    "unet": {"base_channels": 8, "channel_mults": [1, 2, 2], "num_res_blocks": 1, "attn_levels": [2],
             "norm_groups": 4, "head_channels": 8},
}


def registered_nets() -> list[str]:
    from irdiff.registry import NETS, _import_builtins

    _import_builtins()
    # irdiff's own nets; the authors' architectures (irdiff/nets/official_*.py) keep their official
    # constructors and input conventions and are checked against the official code in test_official_*.py
    return [n for n in NETS.names() if not NETS.get(n).__module__.startswith("irdiff.nets.official_")]


@pytest.mark.parametrize("net_name", registered_nets())
@pytest.mark.parametrize("size", [(1, 1), (37, 53)])
def test_every_net_takes_any_size_and_crops_back(net_name, size):
    from irdiff.registry import NETS

    torch.manual_seed(0)
    net = NETS.build(net_name, where="net", in_channels=6, out_channels=3, **NET_TINY.get(net_name, {})).eval()
    x = torch.rand(2, 3, *size) * 2 - 1
    with torch.no_grad():
        y = net(x, torch.rand(2), x)
        y1 = net(x[:1], torch.rand(2)[:1], x[:1])
    assert y.shape == (2, 3, *size) and torch.isfinite(y).all()
    assert y1.shape == (1, 3, *size)


def test_eval_bad_inputs(tmp_path, images, capsys):
    gt = images
    pred = tmp_path / "pred"
    shutil.copytree(images, pred)
    target = tmp_path / "scores.json"

    def ev(p, g=gt):
        return main(["eval", "--pred", str(p), "--gt", str(g), "--json", str(target)])

    (pred / "img1.png").write_bytes((pred / "img1.png").read_bytes()[:100])  # truncated
    assert ev(pred) == 2
    one_line(capsys, "img1.png", "corrupt or truncated image")
    shutil.copy(gt / "img1.png", pred / "img1.png")
    write_image(pred / "img2.png", torch.rand(3, 20, 20))  # wrong size
    assert ev(pred) == 2
    one_line(capsys, "size mismatch", "img2.png", "20x20", "32x32")
    (pred / "img2.png").rename(pred / "other.png")  # mismatched names
    assert ev(pred) == 2
    one_line(capsys, "folders do not match", "img2.png", "other.png")
    (tmp_path / "empty").mkdir()
    assert ev(tmp_path / "empty") == 2
    one_line(capsys, "empty", "folder holds no image")
    assert not target.exists()


def _train_cli(tmp_path, images, capsys, edit, *sets) -> tuple[int, str]:
    from test_train import tiny_config

    from irdiff.config import to_dict

    data = to_dict(tiny_config(images, steps=2))
    edit(data)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(data))
    out = tmp_path / "run"
    rc = main(["train", "--config", str(cfg), "--out", str(out), "--no-progress",
               *[a for s in sets for a in ("--set", s)]])
    err = stderr_lines(capsys)
    assert len(err) == 1, err
    assert not out.exists(), "nothing may be written for a run that cannot start"
    return rc, err[0]


@pytest.mark.parametrize("name", list(BAD_FILES))
def test_train_data_with_a_bad_file_is_named_before_work_starts(tmp_path, images, capsys, name):
    d = tmp_path / "data"
    shutil.copytree(images, d)
    make_files(d, {name: BAD_FILES[name]})
    rc, err = _train_cli(tmp_path, images, capsys, lambda c: c["data"]["train"].update(gt_dir=str(d)))
    assert rc == 2 and name in err and BAD_FILES[name][1] in err


@pytest.mark.parametrize("name", [n for n in ODD_FILES if n not in ("one.png",)])
def test_train_data_with_odd_files_trains(tmp_path, images, name):
    from test_train import tiny_config

    from irdiff.train import train

    d = make_files(tmp_path / "data", {name: ODD_FILES[name]})
    cfg = tiny_config(d, steps=1, ckpt_every=0)
    train(cfg, tmp_path / "run", progress=False)
    assert (tmp_path / "run" / "model.safetensors").is_file()


def test_train_data_smaller_than_the_patch_is_named(tmp_path, images, capsys):
    d = make_files(tmp_path / "data", {"one.png": ODD_FILES["one.png"]})
    rc, err = _train_cli(tmp_path, images, capsys, lambda c: c["data"].update(
        train={**c["data"]["train"], "gt_dir": str(d)}, val=None))
    assert rc == 2 and "one.png: image 1x1 is smaller than patch_size 16" in err


def _paired(tmp_path, images, lq_edit):
    lq = tmp_path / "lq"
    shutil.copytree(images, lq)
    lq_edit(lq)

    def edit(c):
        c["data"]["train"] = {"name": "paired", "gt_dir": str(images), "lq_dir": str(lq), "patch_size": 16}
        c["data"]["val"] = None
    return edit


def test_train_paired_folders_mismatched_names_or_sizes(tmp_path, images, capsys):
    rc, err = _train_cli(tmp_path / "a", images, capsys, _paired(tmp_path / "a", images,
                                                                 lambda d: (d / "img2.png").rename(d / "x.png")))
    assert rc == 2 and "do not match" in err and "img2.png" in err
    rc, err = _train_cli(tmp_path / "b", images, capsys, _paired(
        tmp_path / "b", images, lambda d: write_image(d / "img3.png", torch.rand(3, 30, 32))))
    assert rc == 2 and "img3.png: size 32x30 does not match gt img3.png (32x32)" in err


def test_train_empty_folder(tmp_path, images, capsys):
    (tmp_path / "empty").mkdir()
    rc, err = _train_cli(tmp_path, images, capsys,
                         lambda c: c["data"]["train"].update(gt_dir=str(tmp_path / "empty")))
    assert rc == 2 and "gt_dir:" in err and "empty: folder holds no image" in err


@pytest.mark.parametrize("edit,sets,needle", [
    (lambda c: c["train"].update(stpes=3), (), "unknown config key 'train.stpes'"),
    (lambda c: c.update(trian={}), (), "unknown config key 'trian'"),
    (lambda c: c["train"].update(steps="many"), (), "train.steps: expected an integer, got 'many'"),
    (lambda c: None, ("train.lr=fast",), "train.lr: expected a number, got 'fast'"),
    (lambda c: c["method"].update(num_stepz=3), (), "num_stepz"),
], ids=["unknown key", "unknown section", "wrong type", "wrong type in --set", "unknown method argument"])
def test_train_config_unknown_key_or_wrong_type(tmp_path, images, capsys, edit, sets, needle):
    rc, err = _train_cli(tmp_path, images, capsys, edit, *sets)
    assert rc == 2 and needle in err, err


@pytest.mark.parametrize("damage", ["missing", "truncated"])
@pytest.mark.parametrize("file", ["model.safetensors", "ema.safetensors", "optimizer.safetensors", "state.json"])
def test_checkpoint_with_a_missing_or_truncated_file(tmp_path, run, capsys, damage, file):
    victim = tmp_path / "run"
    shutil.copytree(run, victim)
    for f in ("model.json", "model.safetensors"):  # restore falls back to the checkpoint
        (victim / f).unlink()
    ckpt = latest_checkpoint(victim)
    target = ckpt / file
    if damage == "missing":
        target.unlink()
    else:
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    before = digest(victim)
    # resuming the run
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text((victim / "config.yaml").read_text().replace("steps: 6", "steps: 9"))
    assert main(["train", "--config", str(cfg), "--out", str(victim), "--no-progress"]) == 2
    line = one_line(capsys)
    expected = "missing or incomplete" if file == "state.json" and damage == "missing" else file
    assert str(ckpt.name) in line and expected in line, line
    assert digest(victim) == before
    # restoring with it (restore reads state.json and the EMA weights)
    src = write_image(tmp_path / "in.png", torch.rand(3, 20, 20))
    rc = main(["restore", str(src), "-o", str(tmp_path / "out.png"), "--model", str(victim), "--no-progress"])
    if file in ("ema.safetensors", "state.json"):
        assert rc == 2
        one_line(capsys, ckpt.name)
        assert not (tmp_path / "out.png").exists()
    else:
        assert rc == 0


@pytest.mark.parametrize("content,problem", [
    (b"", "empty file"),
    (b"not a checkpoint\n", "not a readable weights-only checkpoint"),
    ("truncated", "not a readable weights-only checkpoint"),
])
def test_import_bad_official_files(tmp_path, content, problem):
    from irdiff.official import OfficialCheckpointError, read_checkpoint

    f = tmp_path / "official.pth"
    if content == "truncated":
        buf = io.BytesIO()
        torch.save({"params": {"w": torch.ones(1000)}}, buf)
        content = buf.getvalue()[:2000]
    f.write_bytes(content)
    with pytest.raises(OfficialCheckpointError) as e:
        read_checkpoint(f)
    assert str(f) in str(e.value) and problem in str(e.value) and "\n" not in str(e.value)


def test_hostile_and_bad_inputs_never_half_write_a_json(tmp_path, run):
    """model.json / state.json damage is reported, never 'repaired' in place."""
    victim = tmp_path / "run"
    shutil.copytree(run, victim)
    (victim / "model.json").write_text(json.dumps({"config": {}})[:-3])
    before = digest(victim)
    from irdiff.inference import load

    with pytest.raises(CheckpointError, match="model.json: invalid JSON"):
        load(victim)
    assert digest(victim) == before


def test_resume_after_a_crash_logs_each_step_once_and_cleans_up(tmp_path, images):
    """The kill test's findings, fast: a crash after steps were logged (and a checkpoint written) but before
    `latest` named it leaves extra log lines, a torn line and a temporary folder; the resumed run redoes those
    steps, logs each step once with the same losses, and replaces the orphan checkpoint."""
    from test_train import losses, tiny_config

    from irdiff.train import train

    cfg = tiny_config(images, steps=6)  # checkpoints at 3 and 6
    run = tmp_path / "run"
    train(cfg, run, progress=False)
    first = losses(run)
    ck = run / "checkpoints"
    (ck / "latest").write_text("step_00000003\n")  # as if killed before `latest` moved on
    (ck / ".tmp_step_00000009_abc").mkdir()  # and an interrupted save
    with open(run / "log.jsonl", "a") as f:
        f.write('{"step": 7, "lo')  # a line torn by the kill
    train(cfg, run, progress=False)
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if "loss" in r]
    assert steps == list(range(1, 7))
    assert losses(run) == first
    assert latest_checkpoint(run).name == "step_00000006"
    assert not [p.name for p in ck.iterdir() if p.name.startswith(".")]
