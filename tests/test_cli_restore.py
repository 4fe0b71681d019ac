"""`irdiff restore` and `irdiff info` through irdiff.cli.main, and scripts/export_pretrained.py."""

import json
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import load_script
from PIL import Image

from irdiff.cli import main
from irdiff.data.io import write_image

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("clean")
    g = torch.Generator().manual_seed(0)
    for i in range(6):
        write_image(d / f"img{i}.png", torch.rand(3, 36, 40, generator=g))
    return d


@pytest.fixture(scope="module")
def run(tmp_path_factory, images):
    from test_train import tiny_config

    from irdiff.train import train

    out = tmp_path_factory.mktemp("runs") / "tiny"
    train(tiny_config(images, steps=3), out, progress=False)
    return out


@pytest.fixture(scope="module")
def sr_run(tmp_path_factory, images):
    from test_train import tiny_config

    from irdiff.config import load_config, to_dict
    from irdiff.train import train

    data = to_dict(tiny_config(images, steps=2))
    for stream in ("train", "val"):
        data["data"][stream]["degradation"] = {"name": "bicubic_down", "scale": 4}
    out = tmp_path_factory.mktemp("runs") / "tiny_sr"
    train(load_config(base=data), out, progress=False)
    return out


def rgb(h=30, w=44, seed=1):
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


def bomb_png(path, width=100_000, height=100_000):
    """A valid PNG header claiming 10 gigapixels, with a tiny body: must be refused before decoding."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def test_one_file_to_a_file_matches_the_api(run, tmp_path, capsys):
    import irdiff

    src = tmp_path / "a.png"
    Image.fromarray(rgb()).save(src)
    assert main(["restore", str(src), "-o", str(tmp_path / "out.png"), "--model", str(run), "--no-progress"]) == 0
    got = np.asarray(Image.open(tmp_path / "out.png"))
    want = irdiff.load(run).restore(rgb(), progress=False)
    assert np.array_equal(got, want)
    assert main(["restore", str(src), "-o", str(tmp_path / "sub" / "out.jpg"), "--model", str(run),
                 "--no-progress"]) == 0
    assert Image.open(tmp_path / "sub" / "out.jpg").format == "JPEG"
    assert main(["restore", str(src), "-o", str(tmp_path / "dir"), "--model", str(run), "--no-progress"]) == 0
    assert (tmp_path / "dir" / "a.png").is_file()  # OUT without an extension is a directory


def test_files_folders_globs_to_a_directory_with_tiles_and_progress(run, images, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # progress bars are for terminals only
    extra = tmp_path / "extra"
    extra.mkdir()
    Image.fromarray(rgb(seed=2)).save(extra / "x.jpg")
    Image.fromarray(rgb(seed=3)).save(extra / "y.png")
    out = tmp_path / "out"
    rc = main(["restore", str(images), str(extra / "*.jpg"), str(extra / "y.png"), "-o", str(out),
               "--model", str(run), "--tile", "16", "--overlap", "4"])
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == sorted([f"img{i}.png" for i in range(6)] + ["x.png", "y.png"])
    err = capsys.readouterr()
    assert "images" in err.err and "y.png ->" in err.out  # progress bar and one line per image


def test_duplicate_names_do_not_overwrite_each_other(run, tmp_path):
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        Image.fromarray(rgb(seed=len(sub))).save(tmp_path / sub / "same.png")
    Image.fromarray(rgb(seed=9)).save(tmp_path / "a" / "same.jpg")
    Image.fromarray(rgb(seed=8)).save(tmp_path / "a" / "same_1.png")
    rc = main(["restore", str(tmp_path / "a"), str(tmp_path / "b"), "-o", str(tmp_path / "out"),
               "--model", str(run), "--no-progress"])
    assert rc == 0 and len(list((tmp_path / "out").iterdir())) == 4


def test_never_overwrites_an_input(run, tmp_path, capsys):
    src = tmp_path / "a.png"
    Image.fromarray(rgb()).save(src)
    before = src.read_bytes()
    assert main(["restore", str(src), "-o", str(src), "--model", str(run), "--no-progress"]) == 1
    assert src.read_bytes() == before
    assert "refusing to overwrite" in capsys.readouterr().err
    # OUT = the input folder: every target is an input, none is written
    assert main(["restore", str(tmp_path), "-o", str(tmp_path), "--model", str(run), "--no-progress"]) == 1
    assert src.read_bytes() == before


def test_bad_inputs_are_reported_and_the_rest_is_restored(run, tmp_path, capsys):
    d = tmp_path / "in"
    d.mkdir()
    Image.fromarray(rgb()).save(d / "good.png")
    (d / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    (d / "empty.jpg").write_bytes(b"")
    (d / "text.png").write_text("not an image\n")
    bomb_png(d / "bomb.png")
    Image.fromarray(rgb(200, 200)).save(d / "large.png")
    Image.fromarray(np.full((8, 8), 70_000, np.int32)).save(d / "wide.tif")  # 32-bit values > 16 bits
    (d / "truncated.jpg").write_bytes(_jpeg_bytes()[:300])
    out = tmp_path / "out"
    rc = main(["restore", str(d), str(tmp_path / "missing.png"), str(tmp_path / "nothing*.png"), "-o", str(out),
               "--model", str(run), "--no-progress", "--max-pixels", "20000"])
    assert rc == 1
    assert sorted(p.name for p in out.iterdir()) == ["good.png"]
    err = capsys.readouterr().err.strip().splitlines()
    bad = ["corrupt.png", "empty.jpg", "text.png", "bomb.png", "large.png", "wide.tif", "truncated.jpg",
           "missing.png", "nothing*.png"]
    for name in bad:
        lines = [line for line in err if name in line]
        assert len(lines) == 1 and lines[0].startswith("irdiff: error:"), (name, err)
    assert any("too large" in line for line in err if "bomb.png" in line)
    assert any("too large" in line for line in err if "large.png" in line)
    assert err[-1] == f"irdiff: {len(bad)} of {len(bad) + 1} inputs failed; 1 restored"


def _jpeg_bytes():
    import io

    buf = io.BytesIO()
    Image.fromarray(rgb(64, 64)).save(buf, format="JPEG")
    return buf.getvalue()


def test_grey_and_16_bit_inputs_keep_their_format(run, tmp_path):
    grey = (np.random.default_rng(3).random((30, 40)) * 255).astype(np.uint8)
    Image.fromarray(grey).save(tmp_path / "grey.png")
    deep = (np.random.default_rng(4).random((30, 40, 3)) * 65535).astype(np.uint16)
    write_image(tmp_path / "deep.png", deep, bits=16)
    out = tmp_path / "out"
    assert main(["restore", str(tmp_path / "grey.png"), str(tmp_path / "deep.png"), "-o", str(out),
                 "--model", str(run), "--no-progress"]) == 0
    assert Image.open(out / "grey.png").mode == "L"
    from irdiff.data.io import read_array

    assert read_array(out / "deep.png").dtype == np.uint16


def test_usage_errors_exit_2_with_one_line(run, tmp_path, capsys):
    src = tmp_path / "a.png"
    Image.fromarray(rgb()).save(src)
    assert main(["restore", str(src), "-o", str(tmp_path / "out.txt"), "--model", str(run)]) == 2
    assert main(["restore", str(src), "-o", str(tmp_path / "o.png"), "--model", str(tmp_path / "nope")]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 2 and all(line.startswith("irdiff restore: error: argument ") for line in errors)
    assert "-o/--out" in errors[0] and "image extension" in errors[0]
    assert "--model" in errors[1] and "nope" in errors[1]


def test_sr_model_restores_at_4x(sr_run, tmp_path):
    src = tmp_path / "lr.png"
    Image.fromarray(rgb(12, 10)).save(src)
    assert main(["restore", str(src), "-o", str(tmp_path / "sr.png"), "--model", str(sr_run), "--tile", "16",
                 "--overlap", "4", "--no-progress"]) == 0
    assert Image.open(tmp_path / "sr.png").size == (40, 48)


def test_info_prints_summary_card_and_list(run, tmp_path, capsys):
    assert main(["info", str(run)]) == 0
    out = capsys.readouterr().out
    assert "method: regression" in out and "val/psnr" in out
    (tmp_path / "m").mkdir()
    for f in ("model.safetensors", "model.json"):
        (tmp_path / "m" / f).write_bytes((run / f).read_bytes())
    (tmp_path / "m" / "card.md").write_text("# my card\n")
    assert main(["info", str(tmp_path / "m")]) == 0
    assert capsys.readouterr().out == "# my card\nirdiff restore: it takes no sampling option (a one-pass model)\n"
    assert main(["info"]) == 0
    assert capsys.readouterr().out.startswith("bundled models:")
    assert main(["info", str(tmp_path / "nope")]) == 2


# ----------------------------------------------------------------------------- export_pretrained.py


def export_script():
    return load_script("scripts/export_pretrained.py", "export_pretrained")


@pytest.fixture(scope="module")
def test_sets(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    g = torch.Generator().manual_seed(5)
    for name, (h, w) in {"CBSD68": (24, 20), "Kodak24": (20, 28), "Set5": (32, 36), "Set14": (28, 24)}.items():
        for i in range(2):
            write_image(d / name / f"{name}_{i}.png", torch.rand(3, h, w, generator=g))
    write_image(d / "Set14" / "grey.png", torch.rand(1, 24, 24, generator=g))
    return d


def test_export_denoise(run, test_sets, tmp_path, capsys, monkeypatch):
    import irdiff

    mod = export_script()
    dest = tmp_path / "pretrained"
    assert mod.main([str(run), "tiny", "--eval", "denoise", "--data", str(test_sets), "--dest", str(dest),
                     "--fp16"]) == 0
    meta = json.loads((dest / "tiny" / "model.json").read_text())
    assert set(meta["metrics"]) == {"CBSD68", "Kodak24"}
    assert set(meta["metrics"]["Kodak24"]) == {"sigma15", "sigma25", "sigma50"}
    m = meta["metrics"]["CBSD68"]["sigma25"]
    assert m["images"] == 2 and 5 < m["psnr"] < 60 and 0 < m["ssim"] <= 1
    prov = meta["provenance"]
    assert prov["training"]["logged_step"] == 3 and prov["machine"] and prov["command"].endswith("--fp16")
    card = (dest / "tiny" / "card.md").read_text()
    assert "σ=25" in card and "CBM3D" in card and "steps" in card
    for text in (card, (dest / "tiny" / "model.json").read_text()):  # no path of this machine in the bundle
        assert str(run.parent) not in text and f"runs/{run.name}" in text
    monkeypatch.setattr("irdiff.inference.PRETRAINED_DIR", dest)
    img = (np.random.default_rng(0).random((20, 20, 3)) * 255).astype(np.uint8)
    r = irdiff.load("tiny")
    ref = irdiff.load(run).restore(img, progress=False)
    assert np.abs(r.restore(img, progress=False).astype(int) - ref.astype(int)).max() <= 1
    capsys.readouterr()
    assert main(["info", "tiny"]) == 0 and "irdiff pretrained model `tiny`" in capsys.readouterr().out


def test_export_sr4_with_bicubic_baseline(sr_run, run, test_sets, tmp_path):
    mod = export_script()
    dest = tmp_path / "pretrained"
    assert mod.main([str(sr_run), "sr", "--eval", "sr4", "--data", str(test_sets), "--dest", str(dest)]) == 0
    meta = json.loads((dest / "sr" / "model.json").read_text())
    assert meta["metrics"]["Set14"]["images"] == 3 and "bicubic_psnr_y" in meta["metrics"]["Set5"]
    assert "bicubic (published)" in (dest / "sr" / "card.md").read_text()
    with pytest.raises(SystemExit, match="x4"):
        mod.main([str(run), "bad", "--eval", "sr4", "--data", str(test_sets), "--dest", str(dest)])


def test_export_on_the_shared_sets_smoke(run, tmp_path):
    from conftest import shared_data

    data = shared_data("Kodak24").parent
    shared_data("CBSD68")
    mod = export_script()
    assert mod.main([str(run), "tiny", "--eval", "denoise", "--data", str(data), "--dest", str(tmp_path),
                     "--max-images", "1"]) == 0
    meta = json.loads((tmp_path / "tiny" / "model.json").read_text())
    assert meta["metrics"]["Kodak24"]["sigma50"]["images"] == 1
    assert "smoke test only" in (tmp_path / "tiny" / "card.md").read_text()
