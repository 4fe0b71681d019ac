"""The benchmark harness: config checks, a tiny methods x datasets x steps run, outputs, merge, CLI hooks."""

from __future__ import annotations

import argparse
import csv
import json

import pytest
import torch
import yaml

from irdiff.bench import add_parser, load_bench_config, merge, run
from irdiff.config import ConfigError, load_config
from irdiff.train import train

TINY_UNET = {"name": "unet", "base_channels": 8, "channel_mults": [1, 2], "num_res_blocks": 1, "attn_levels": [1],
             "norm_groups": 4, "head_channels": 8}


def tiny_run_config(folder, method: dict) -> dict:
    return {
        "name": f"tiny-{method['name']}",
        "seed": 0,
        "method": method,
        "net": dict(TINY_UNET),
        "data": {"train": {"name": "synthetic", "gt_dir": str(folder), "patch_size": 16,
                           "degradation": {"name": "awgn", "sigma": 25}}},
        "train": {"steps": 2, "batch_size": 2, "ckpt_every": 2, "log_every": 1, "threads": 1},
    }


@pytest.fixture
def bench_setup(tmp_path, image_folder):
    """A trained tiny SR3 run, a tiny Cold config (trained by the harness) and a bench YAML using both."""
    train(load_config(base=tiny_run_config(image_folder, {"name": "sr3", "num_steps": 20})), tmp_path / "sr3",
          progress=False)
    cold_cfg = tmp_path / "cold.yaml"
    cold_cfg.write_text(yaml.safe_dump(tiny_run_config(image_folder, {"name": "cold", "degradation": "interp",
                                                                       "num_steps": 2})))
    bench = {
        "name": "tiny", "out": str(tmp_path / "out"), "seed": 0, "threads": 1, "steps": [1, 2, 5], "progress": False,
        "methods": [{"name": "sr3", "run": str(tmp_path / "sr3"), "sampler": "ddim"},
                    {"name": "cold", "config": str(cold_cfg)}],
        "datasets": [{"name": "rand-s25", "center_crop": 32,
                      "data": {"name": "synthetic", "gt_dir": str(image_folder), "patch_size": None,
                               "max_images": 2, "degradation": {"name": "awgn", "sigma": 25}}}],
    }
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(bench))
    return path, tmp_path


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_bench_runs_methods_datasets_steps(bench_setup):
    path, tmp = bench_setup
    assert run(argparse.Namespace(config=str(path), out=None, only=None, steps=None, merge=None,
                                  no_progress=True)) == 0
    out = tmp / "out"
    for name in ("results.json", "results.csv", "results.md", "psnr_vs_steps.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0
    assert (out / "runs" / "cold" / "model.safetensors").is_file()  # the config entry was trained
    rows = _rows(out / "results.csv")
    by = {(r["method"], int(r["steps"])): r for r in rows}
    assert set(by) == {("input", 0)} | {(m, n) for m in ("sr3", "cold") for n in (1, 2, 5)}
    # NFE = the forwards actually run: SR3 one per step; Cold's T = 2 caps every step count at 2
    assert [float(by[("sr3", n)]["nfe"]) for n in (1, 2, 5)] == [1, 2, 5]
    assert [float(by[("cold", n)]["nfe"]) for n in (1, 2, 5)] == [1, 2, 2]
    for r in rows:
        assert int(r["n_images"]) == 2
        assert 0 < float(r["psnr"]) < 100 and -1 <= float(r["ssim"]) <= 1
    data = json.loads((out / "results.json").read_text())
    assert data["meta"]["datasets"]["rand-s25"]["images"] == ["img0", "img1"]
    assert data["meta"]["methods"]["sr3"]["step"] == 2 and "torch" in data["meta"]
    assert len(data["records"]) == 2 * (1 + 3 + 3)  # per image: input + 3 step counts x 2 methods
    assert "| sr3 |" in (out / "results.md").read_text()

    # same seeds -> the same numbers; --only / --steps / --out restrict and redirect a run
    assert run(argparse.Namespace(config=str(path), out=str(tmp / "again"), only="sr3", steps="1,2", merge=None,
                                  no_progress=True)) == 0
    again = {(r["method"], int(r["steps"])): r for r in _rows(tmp / "again" / "results.csv")}
    assert set(again) == {("input", 0), ("sr3", 1), ("sr3", 2)}
    assert again[("sr3", 2)]["psnr"] == by[("sr3", 2)]["psnr"]

    merged = merge([tmp / "again", out], tmp / "merged")
    mrows = _rows(merged["csv"])
    assert {(r["method"], int(r["steps"])) for r in mrows} == set(by)  # duplicates dropped, union kept


def test_bench_center_crop_and_images_are_fixed(image_folder):
    from irdiff.bench import DatasetEntry, load_images
    from irdiff.config import DataSpec

    entry = DatasetEntry(name="x", center_crop=20,
                         data=DataSpec(name="synthetic", gt_dir=str(image_folder), patch_size=None,
                                       degradation={"name": "awgn", "sigma": 25}))
    a, b = load_images(entry, seed=0), load_images(entry, seed=0)
    assert len(a) == 6 and a[0].gt.shape == (3, 20, 20) and a[0].lq.shape == (3, 20, 20)
    assert all(torch.equal(x.lq, y.lq) for x, y in zip(a, b))
    entry.center_crop = 64
    with pytest.raises(ValueError, match="center_crop"):
        load_images(entry, seed=0)


@pytest.mark.parametrize("change, message", [
    ({"methods": []}, "methods"),
    ({"datasets": []}, "datasets"),
    ({"methods": [{"name": "a", "run": "x", "config": "y"}]}, "exactly one of run or config"),
    ({"methods": [{"name": "a", "run": "x"}, {"name": "a", "run": "y"}]}, "used twice"),
    ({"methods": [{"name": "input", "run": "x"}]}, "reserved"),
    ({"steps": [0, 2]}, "steps"),
    ({"methods": [{"name": "a", "run": "x", "colour": 1}]}, "colour"),
    ({"datasets": [{"name": "d"}]}, "datasets\\[0\\].data"),
])
def test_bench_config_errors_name_the_key(change, message):
    base = {"methods": [{"name": "a", "run": "x"}],
            "datasets": [{"name": "d", "data": {"name": "synthetic", "gt_dir": "g",
                                                "degradation": {"name": "awgn", "sigma": 25}}}]}
    load_bench_config(data=base)
    with pytest.raises(ConfigError, match=message):
        load_bench_config(data={**base, **change})


def test_add_parser_registers_bench_subcommand():
    parser = argparse.ArgumentParser(prog="irdiff")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub)
    args = parser.parse_args(["bench", "--config", "b.yaml", "--only", "sr3,rddm", "--steps", "1,10"])
    assert args.command == "bench" and args.config == "b.yaml" and args.only == "sr3,rddm" and args.steps == "1,10"
    assert run(parser.parse_args(["bench"])) == 2  # neither --config nor --merge


def test_bench_scores_cold_on_its_own_degradation(tmp_path, image_folder):
    """Cold's blur is part of the method: it is restored from (and scored against) its own D(gt, T)."""
    from irdiff.bench import run_bench

    cfg = tmp_path / "cold_blur.yaml"
    cfg.write_text(yaml.safe_dump(tiny_run_config(image_folder, {"name": "cold", "degradation": "blur",
                                                                  "num_steps": 3})))
    bench = load_bench_config(data={
        "out": str(tmp_path / "out"), "steps": [1, 3], "progress": False,
        "methods": [{"name": "cold-blur", "config": str(cfg)}],
        "datasets": [{"name": "d", "center_crop": 32,
                      "data": {"name": "synthetic", "gt_dir": str(image_folder), "patch_size": None, "max_images": 2,
                               "degradation": {"name": "awgn", "sigma": 25}}}]})
    rows = {(r["method"], r["steps"]): r for r in run_bench(bench)["summary"]}
    assert set(rows) == {("input", 0), ("input (cold-blur)", 0), ("cold-blur", 1), ("cold-blur", 3)}
    assert rows[("input (cold-blur)", 0)]["psnr"] != rows[("input", 0)]["psnr"]  # blurred, not noisy
