"""Arguments and sampling options: checked before any model or image is read, refused when a model cannot use
them (from the methods' SampleOptions declarations), the CLI's manners (alpha, one line per file, --help
without torch, threads), and the typed options of the Python API."""

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from irdiff import cli
from irdiff.cli import main
from irdiff.methods.base import OptionError

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "irdiff" / "assets" / "sample_noisy.png"

TINY_UNET = {"name": "unet", "base_channels": 8, "channel_mults": [1], "num_res_blocks": 1, "attn_levels": [],
             "norm_groups": 4, "head_channels": 8}
METHODS = {
    "sr3": {"name": "sr3", "num_steps": 50},
    "irsde": {"name": "irsde", "num_steps": 100},
    "dsde": {"name": "irsde", "mean_target": "clean", "num_steps": 1000, "lam": 70.0, "eps": 0.04,
             "noise_sigma": 25},
    "rddm": {"name": "rddm", "num_steps": 100},
    "cold": {"name": "cold", "degradation": "blur", "num_steps": 20},
    "regression": {"name": "regression"},
}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Exported model folders whose weights are garbage: any test that gets past the argument checks to the
    weights fails loudly, so a usage error proves the checks ran before the model was loaded."""
    root = tmp_path_factory.mktemp("models")
    out = {}
    for key, method in METHODS.items():
        d = root / key
        d.mkdir()
        net = {"name": "nafnet", "width": 8} if key == "regression" else TINY_UNET
        (d / "model.json").write_text(json.dumps({"config": {"name": key, "method": method, "net": net}}))
        (d / "model.safetensors").write_bytes(b"not safetensors")
        out[key] = d
    return out


@pytest.fixture
def not_an_image(tmp_path):
    p = tmp_path / "in.png"
    p.write_bytes(b"not an image either")  # reading it would fail: a usage error must come first
    return p


def _restore_err(capsys, args):
    code = main(["restore", *args])
    err = capsys.readouterr().err
    return code, err


@pytest.mark.parametrize("model, extra, needle", [
    ("sr3", ["--steps", "5000"], "argument --steps: must be in 1..50 for this model, got 5000"),
    ("sr3", ["--sampler", "bogus"], "argument --sampler: 'bogus' is not a sampler of model"),
    ("sr3", ["--noise-sigma", "15"], "argument --noise-sigma: model"),
    ("sr3", ["--sampler", "ddpm", "--eta", "0.5"], "argument --eta: model"),  # eta is DDIM's only
    ("sr3", ["--eta", "-1"], "argument --eta: must be >= 0, got -1"),
    ("irsde", ["--noise-sigma", "15"], "argument --noise-sigma"),
    ("irsde", ["--sampler", "ode", "--eta", "1"], "does not take it with sampler ode"),
    ("dsde", ["--noise-sigma", "80"], "argument --noise-sigma: must be in (0, 70)"),
    ("dsde", ["--noise-sigma", "0"], "argument --noise-sigma: must be > 0"),
    ("rddm", ["--noise-sigma", "15"], "its options: --steps 1..100, --sampler ddim|two_stage, --eta"),
    ("cold", ["--eta", "0"], "its options: --steps 1..20, --sampler improved|naive"),
    ("regression", ["--steps", "5"], "restores in one pass; it takes no sampling option"),
    ("regression", ["--eta", "1"], "argument --eta"),
    ("regression", ["--mask", str(SAMPLE)], "argument --mask: model"),
    ("regression", ["--tile", "8"], "argument --tile: must be 0 (whole image) or > 2 x overlap = 64, got 8"),
])
def test_bad_arguments_are_usage_errors_before_any_model_or_image_is_read(models, not_an_image, tmp_path, capsys,
                                                                         model, extra, needle):
    code, err = _restore_err(capsys, [str(not_an_image), "-o", str(tmp_path / "o.png"), "--model",
                                      str(models[model]), *extra])
    assert code == 2, err
    assert needle in err and err.startswith("usage: irdiff restore"), err
    assert "cannot read" not in err and "safetensors" not in err
    assert not (tmp_path / "o.png").exists()


@pytest.mark.parametrize("extra, needle", [
    (["--steps", "-1"], "argument --steps: must be >= 1, got -1"),
    (["--steps", "0"], "argument --steps: must be >= 1, got 0"),
    (["--overlap", "-3"], "argument --overlap: must be >= 0, got -3"),
    (["--tile-batch", "0"], "argument --tile-batch: must be >= 1, got 0"),
    (["--threads", "0"], "argument --threads: must be >= 1, got 0"),
])
def test_out_of_range_numbers_are_refused_by_the_parser(tmp_path, capsys, extra, needle):
    with pytest.raises(SystemExit) as e:
        main(["restore", str(SAMPLE), "-o", str(tmp_path / "o.png"), *extra])
    assert e.value.code == 2 and needle in capsys.readouterr().err


def test_valid_options_pass_the_checks_and_reach_the_weights(models, not_an_image, tmp_path, capsys):
    # past the checks, the garbage weights are what fails: the checks accepted these arguments
    for model, extra in [("sr3", ["--steps", "50", "--eta", "1"]), ("dsde", ["--noise-sigma", "15", "--eta", "0"]),
                         ("irsde", ["--sampler", "sde", "--steps", "100"]), ("cold", ["--sampler", "naive"])]:
        code, err = _restore_err(capsys, [str(not_an_image), "-o", str(tmp_path / "o.png"), "--model",
                                          str(models[model]), *extra])
        assert code == 2 and "usage:" not in err and "model.safetensors" in err, (model, err)


def test_denoising_sde_steps_are_bounded_by_the_start_step_of_the_noise_level(models, not_an_image, tmp_path, capsys):
    from irdiff.inference import load_method

    method = load_method(models["dsde"])[0]
    t15 = method.start_step(15)
    assert 1 < t15 < method.start_step(25) < 1000
    code, err = _restore_err(capsys, [str(not_an_image), "-o", str(tmp_path / "o.png"), "--model",
                                      str(models["dsde"]), "--noise-sigma", "15", "--steps", str(t15 + 1)])
    assert code == 2 and f"must be in 1..{t15} for this model" in err


def test_output_folder_is_checked_before_work_and_write_errors_name_the_input(tmp_path, capsys, monkeypatch):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    code, err = _restore_err(capsys, [str(SAMPLE), "-o", str(a_file / "sub" / "o.png"), "--model", "nowhere"])
    assert code == 2 and "argument -o/--out" in err and "is a file" in err  # before the model is looked up

    import irdiff.data.io as io

    def refuse(path, payload):
        raise PermissionError(13, "Permission denied", str(path.parent / f".{path.name}.x1y2.tmp"))

    monkeypatch.setattr(io, "write_bytes_atomic", refuse)
    img = tmp_path / "small.png"
    Image.fromarray(np.full((16, 16, 3), 128, np.uint8)).save(img)
    code, err = _restore_err(capsys, [str(img), "-o", str(tmp_path / "o.png"), "--no-progress"])
    lines = err.strip().splitlines()
    assert code == 1 and lines[0] == f"irdiff: error: {img}: cannot write {tmp_path / 'o.png'}: Permission denied"
    assert ".tmp" not in err


def test_alpha_is_kept_and_one_line_per_file_without_progress(tmp_path, capsys):
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (24, 20, 4), dtype=np.uint8)
    la16 = rng.integers(0, 65536, (20, 16, 2), dtype=np.uint16)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    from irdiff.data.io import read_array, write_image

    write_image(tmp_path / "la16.png", la16, bits=16)
    assert np.array_equal(read_array(tmp_path / "la16.png", alpha=True), la16)
    assert main(["restore", str(tmp_path / "rgba.png"), str(tmp_path / "la16.png"), "-o", str(tmp_path / "out"),
                 "--no-progress"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 2 and all(" -> " in line for line in out)
    got = read_array(tmp_path / "out" / "rgba.png", alpha=True)
    assert got.shape == (24, 20, 4) and np.array_equal(got[..., 3], rgba[..., 3])
    got16 = read_array(tmp_path / "out" / "la16.png", alpha=True)
    assert got16.dtype == np.uint16 and got16.shape == (20, 16, 2) and np.array_equal(got16[..., 1], la16[..., 1])
    # one file, --no-progress: still its line
    assert main(["restore", str(tmp_path / "rgba.png"), "-o", str(tmp_path / "one.png"), "--no-progress"]) == 0
    assert capsys.readouterr().out.count(" -> ") == 1


def test_help_is_fast_and_imports_no_torch():
    code = ("import sys, time; t = time.perf_counter(); import irdiff.cli as c; c.build_parser(); "
            "print(time.perf_counter() - t, 'torch' in sys.modules, 'numpy' in sys.modules)")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    seconds, torch_loaded, numpy_loaded = res.stdout.split()
    assert torch_loaded == "False" and numpy_loaded == "False"
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "irdiff.cli", "--help"], capture_output=True, env=env, check=True)
    assert time.perf_counter() - t0 < 2.0  # ~0.1 s; the limit allows a loaded CI machine
    assert float(seconds) < 0.5


def test_sampling_flags_are_the_union_of_the_declared_options():
    from irdiff.registry import METHODS as REG

    declared = set()
    for name in REG.names():
        cls = REG.get(name)
        declared |= {f.name for f in dataclasses.fields(cls.Options)}
    declared |= {f.name for f in dataclasses.fields(REG.get("irsde")(mean_target="clean", lam=70).Options)}
    assert declared == set(cli.SAMPLING_FLAGS)


def test_default_threads(monkeypatch):
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw1")
    assert cli.default_threads() == 1
    monkeypatch.delenv("PYTEST_XDIST_WORKER")
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert cli.default_threads() == 3
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert cli.default_threads() == len(os.sched_getaffinity(0))


def test_threads_flag_sets_torch_threads(tmp_path, capsys):
    before = torch.get_num_threads()
    try:
        main(["eval", "--pred", str(SAMPLE.parent), "--gt", str(SAMPLE.parent), "--threads", "1"])
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_eval_json_says_where_it_wrote(tmp_path, capsys):
    dest = tmp_path / "scores.json"
    assert main(["eval", "--pred", str(SAMPLE.parent), "--gt", str(SAMPLE.parent), "--json", str(dest)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"wrote {dest}"


def test_train_summary_printed_by_one_process_only(tmp_path, capsys, monkeypatch, image_folder):
    import irdiff.train

    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps({"data": {"train": {"name": "synthetic", "gt_dir": str(image_folder),
                                                  "degradation": {"name": "awgn", "sigma": 5}}}}))
    monkeypatch.setattr(irdiff.train, "train", lambda *a, **k: {"step": 2, "seconds": 1.0, "metrics": {}})
    for rank, lines in (("1", 0), ("0", 1)):
        monkeypatch.setenv("RANK", rank)
        assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "r"), "--threads", "1"]) == 0
        assert capsys.readouterr().out.count("trained 2 steps") == lines


# ---- the typed options of the Python API and of the methods --------------------------------------------


def test_restorer_takes_options_by_name_and_refuses_inapplicable_ones():
    import irdiff

    r = irdiff.load("denoise")
    img = np.full((8, 8, 3), 100, np.uint8)
    with pytest.raises(OptionError, match=r"eta: not a sampling option of Regression \(this model's options: none\)"):
        r.restore(img, eta=1.0, progress=False)
    with pytest.raises(OptionError, match="steps: Regression restores in one pass"):
        r.restore(img, steps=3, progress=False)
    with pytest.raises(TypeError):  # no catch-all keyword any more
        r.restore(img, sample_kwargs={"eta": 1.0}, progress=False)


@pytest.mark.parametrize("cfg, given, needle", [
    ({"name": "sr3", "num_steps": 20}, {"noise_sigma": 15}, "noise_sigma: not a sampling option of SR3 "
                                                             "(this model's options: eta)"),
    ({"name": "rddm", "num_steps": 20}, {"noise_sigma": 15}, "(this model's options: eta)"),
    ({"name": "cold", "degradation": "blur", "num_steps": 5}, {"eta": 0.0}, "(this model's options: none)"),
    ({"name": "irsde", "num_steps": 20}, {"noise_sigma": 15}, "(this model's options: eta)"),
])
def test_method_sample_checks_options_like_config_keys(cfg, given, needle):
    from irdiff.registry import METHODS as REG

    m = REG.build(cfg["name"], **{k: v for k, v in cfg.items() if k != "name"})
    x = torch.zeros(1, 3, 8, 8)
    with pytest.raises(OptionError) as e:
        m.sample(lambda *a: torch.zeros_like(a[0]), x, steps=2, **given)
    assert str(e.value).endswith(needle) and e.value.option == next(iter(given))


def test_sr3_eta_option_changes_the_ddim_sample_as_the_model_default_would():
    from irdiff.methods.sr3 import SR3

    x = torch.zeros(1, 3, 8, 8)

    def net(y, level, cond):
        return 0.1 * y

    def run(m, **kw):
        return m.sample(net, x, steps=4, generator=torch.Generator().manual_seed(0), **kw)

    deterministic, noisy = SR3(num_steps=20, eta=0.0), SR3(num_steps=20, eta=1.0)
    assert torch.equal(run(deterministic, eta=1.0), run(noisy))  # the option = the model's eta set to it
    assert torch.equal(run(noisy, eta=0.0), run(deterministic))
    assert not torch.equal(run(deterministic), run(noisy))


def test_denoising_sde_sigma_is_written_once_in_the_data_section():
    from irdiff.config import ConfigError, load_config

    path = REPO / "configs" / "irsde_denoise_s25.yaml"
    assert "noise_sigma" not in path.read_text().split("data:")[0].split("method:")[1]  # not in the method
    assert load_config(path).method["noise_sigma"] == 25.0  # taken from data.train.degradation
    both = ["data.train.degradation.sigma=15", "data.val.degradation.sigma=15"]
    assert load_config(path, both).method["noise_sigma"] == 15.0  # one change moves the start step too
    with pytest.raises(ConfigError, match="noise_sigma 15 disagrees with data.train.degradation.sigma 25"):
        load_config(path, ["method.noise_sigma=15"])
    with pytest.raises(ConfigError, match="data.val.degradation.sigma 25"):
        load_config(path, ["data.train.degradation.sigma=15"])  # validated at another level than trained
    blind = ["data.train.degradation.sigma=[0, 50]", "data.val.degradation.sigma=[0, 50]", "method.noise_sigma=30"]
    assert load_config(path, blind).method["noise_sigma"] == 30  # a range states no single level: kept as given
