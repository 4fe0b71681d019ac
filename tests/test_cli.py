import json

import pytest
import yaml

from irdiff.cli import main


def write_cfg(tmp_path, image_folder, **extra):
    cfg = {
        "name": "cli",
        "net": {"name": "nafnet", "width": 8, "enc_blocks": [1], "dec_blocks": [1], "middle_blocks": 1},
        "data": {"train": {"name": "synthetic", "gt_dir": str(image_folder), "patch_size": 16,
                           "degradation": {"name": "awgn", "sigma": 25}}},
        "train": {"steps": 2, "batch_size": 2, "log_every": 1, "ckpt_every": 1},
        **extra,
    }
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def test_dry_run_prints_resolved_config(tmp_path, image_folder, capsys):
    cfg = write_cfg(tmp_path, image_folder)
    assert main(["train", "--config", str(cfg), "--set", "train.lr=0.01", "--dry-run"]) == 0
    out = yaml.safe_load(capsys.readouterr().out)
    assert out["train"]["lr"] == 0.01 and out["train"]["steps"] == 2 and out["method"]["name"] == "regression"
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("override, needle", [("train.stepz=1", "train.stepz"), ("train.steps=-1", "train.steps"),
                                              ("data.train.degradation.sigma=-3", "sigma")])
def test_bad_config_is_one_line_and_nonzero(tmp_path, image_folder, capsys, override, needle):
    cfg = write_cfg(tmp_path, image_folder)
    assert main(["train", "--config", str(cfg), "--set", override, "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err and err.startswith("irdiff: error:")
    assert not (tmp_path / "r").exists()  # nothing written


def test_missing_data_folder_is_named(tmp_path, image_folder, capsys):
    cfg = write_cfg(tmp_path, image_folder)
    code = main(["train", "--config", str(cfg), "--set", f"data.train.gt_dir={tmp_path}/nowhere",
                 "--out", str(tmp_path / "r")])
    assert code == 2 and "nowhere" in capsys.readouterr().err


def test_train_resume_and_eval(tmp_path, image_folder, capsys):
    cfg = write_cfg(tmp_path, image_folder)
    run = tmp_path / "r"
    assert main(["train", "--config", str(cfg), "--out", str(run), "--no-progress"]) == 0
    assert main(["train", "--config", str(cfg), "--out", str(run), "--no-progress",
                 "--set", "train.steps=3"]) == 0
    assert "resuming" in capsys.readouterr().out
    steps = [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]
    # eval: the folder against itself is perfect; against another folder gives finite numbers
    json_path = str(tmp_path / "m.json")
    assert main(["eval", "--pred", str(image_folder), "--gt", str(image_folder), "--json", json_path]) == 0
    out = capsys.readouterr().out
    assert "mean" in out and "img0" in out
    res = json.loads((tmp_path / "m.json").read_text())
    assert res["ssim"] == pytest.approx(1.0) and res["count"] == 6


def test_eval_mismatch_is_an_error(tmp_path, image_folder, capsys):
    other = tmp_path / "other"
    other.mkdir()
    (other / "img0.png").write_bytes((image_folder / "img0.png").read_bytes())
    assert main(["eval", "--pred", str(other), "--gt", str(image_folder)]) == 2
    assert "img1" in capsys.readouterr().err


def test_quickstart_runs_offline(tmp_path, capsys):
    assert main(["quickstart", "--out", str(tmp_path / "qs"), "--steps", "3", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "bundled sample" in out and (tmp_path / "qs" / "sample_restored.png").is_file()
