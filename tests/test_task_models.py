"""benchmarks/task_models/tasks.py: the classical baselines against scikit-image and independent formulas,
and the task evaluation on tiny sets."""

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import load_script
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def tasks_module():
    if "irdiff_task_models" not in sys.modules:  # dataclasses need the module registered while it executes
        load_script("benchmarks/task_models/tasks.py", "irdiff_task_models", register=True)
    return sys.modules["irdiff_task_models"]


def gaussian_2d(sigma, radius):
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    g = np.exp(-(t**2) / (2 * sigma**2))
    g /= g.sum()
    return np.outer(g, g)


def test_true_kernel_is_the_blur_ops_kernel():
    from scipy.ndimage import convolve

    from irdiff.data.degradations import build_degradation

    tm = tasks_module()
    k = tm.true_kernel({"name": "gaussian_blur", "sigma": 1.6})
    assert k.shape == (11, 11)  # 2 * ceil(3 * 1.6) + 1
    np.testing.assert_allclose(k, gaussian_2d(1.6, 5), atol=1e-7)
    # a motion kernel, checked through what it does: the op's blur equals convolving with it (interior)
    op = {"name": "motion_blur", "length": 9, "angle": 30}
    img = torch.rand(1, 40, 48, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    blurred = build_degradation(op)(img, None)[0].numpy()
    k = tm.true_kernel(op)
    ref = convolve(img[0].numpy(), k[::-1, ::-1], mode="reflect")
    np.testing.assert_allclose(blurred[6:-6, 6:-6], ref[6:-6, 6:-6], atol=1e-6)
    assert abs(k.sum() - 1) < 1e-12


def test_wiener_matches_scikit_image_on_a_circular_image():
    restoration = pytest.importorskip("skimage.restoration")
    tm = tasks_module()
    rng = np.random.default_rng(0)
    img, k = rng.random((2, 30, 34)), gaussian_2d(1.2, 3)
    for balance in (1e-3, 0.05):
        ours = tm.wiener(img, k, balance, pad=0)
        for c in range(2):
            ref = restoration.wiener(img[c], k, balance, clip=False)
            np.testing.assert_allclose(ours[c], ref, atol=2e-5)  # ours in float32


def test_wiener_inverts_a_noiseless_blur_with_reflect_borders():
    from irdiff.data.degradations import gaussian_blur

    tm = tasks_module()
    gt = torch.rand(3, 48, 40, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    gt = gaussian_blur(gt, 1.2)  # a band-limited scene: the blur is invertible where it matters
    lq = gaussian_blur(gt, 1.5).numpy()
    out = tm.wiener(lq, tm.true_kernel({"name": "gaussian_blur", "sigma": 1.5}), 1e-7)
    # the reflect padding matches the blur's border: the error stays small up to the image edge
    assert np.abs(out - gt.numpy()).max() < 0.005 and np.abs(lq - gt.numpy()).max() > 0.05


def test_richardson_lucy_matches_scikit_image_away_from_the_border():
    restoration = pytest.importorskip("skimage.restoration")
    tm = tasks_module()
    k = gaussian_2d(1.0, 3)
    img = np.zeros((1, 40, 40))
    img[0, 12:28, 12:28] = np.random.default_rng(2).random((16, 16)) * 0.8 + 0.1  # a zero margin of 12 px
    ours = tm.richardson_lucy(img, k, 5, pad=0, start=0.5)
    ref = restoration.richardson_lucy(img[0], k, num_iter=5, clip=False)
    np.testing.assert_allclose(ours[0], ref, atol=2e-5)  # ours in float32


def test_richardson_lucy_keeps_the_flux_and_sharpens():
    from irdiff.data.degradations import gaussian_blur

    tm = tasks_module()
    gt = gaussian_blur(torch.rand(1, 40, 40, generator=torch.Generator().manual_seed(3), dtype=torch.float64), 1.2)
    lq = gaussian_blur(gt, 1.5).numpy()
    k = tm.true_kernel({"name": "gaussian_blur", "sigma": 1.5})
    out = tm.richardson_lucy(lq, k, 30, pad=0)
    assert abs(out.sum() - lq.sum()) < 1e-5 * lq.sum()  # circular, normalised kernel: the total intensity stays
    errors = []
    tm.richardson_lucy(lq, k, 30, each=lambda i, x: errors.append(np.abs(x - gt.numpy()).mean()))
    assert len(errors) == 30 and errors[-1] < errors[9] < errors[0] < np.abs(lq - gt.numpy()).mean()
    assert errors[-1] < 0.6 * np.abs(lq - gt.numpy()).mean()


def test_opening_removes_thin_bright_lines_and_keeps_wide_ones():
    tm = tasks_module()
    img = np.full((1, 20, 30), 0.2)
    img[0, :, 5] = 0.9  # a 1-px streak
    img[0, :, 15:23] = 0.7  # an 8-px bar
    out = tm.opening(img, 5)
    assert np.allclose(out[0, :, 5], 0.2) and np.allclose(out[0, :, 15:23], 0.7)
    med = tm.median(img, 3)
    assert np.allclose(med[0, 5:15, 5], 0.2)


def test_evaluate_task_on_tiny_sets(tmp_path, monkeypatch):
    from irdiff.data.io import write_image

    tm = tasks_module()
    g = torch.Generator().manual_seed(4)
    for name in ("CBSD68", "BSDS500-train400"):
        for i in range(2):
            write_image(tmp_path / name / f"{i}.png", torch.rand(3, 40, 36, generator=g))

    class Identity:  # the input itself: the model's numbers must equal the input's
        def restore_tensor(self, img, **kw):
            return img.clamp(0, 1)

    monkeypatch.setattr(tm, "TUNE_CROP", 32)
    out = tm.evaluate_task("deblur", Identity(), tmp_path, max_images=1)
    assert set(out) == {c.key for c in tm.TASKS["deblur"]}
    for row in out.values():
        assert row["images"] == 1 and math.isclose(row["psnr"], row["input_psnr"], abs_tol=1e-9)
        assert row["wiener_psnr"] > 0 and row["rl_param"] in tm.TUNE_GRIDS["rl"] and row["cpu_seconds"] >= 0
    assert tm.missing_sets("jpeg", tmp_path) == ["Kodak24"]
    assert tm.missing_sets("derain", tmp_path) == ["Rain100L-subset3"]


# ---- export as a bundled task model, benchmark numbers reused, `irdiff restore --model` ------------------------

@pytest.fixture(scope="module")
def task_data(tmp_path_factory):
    from irdiff.data.io import write_image

    d = tmp_path_factory.mktemp("data")
    g = torch.Generator().manual_seed(6)
    for name, (h, w) in {"CBSD68": (40, 36), "Kodak24": (32, 44), "BSDS500-train400": (40, 40)}.items():
        for i in range(2):
            write_image(d / name / f"{name}_{i}.png", torch.rand(3, h, w, generator=g))
    for i in range(2):
        clean = torch.rand(3, 36, 40, generator=g)
        write_image(d / "Rain100L-subset3" / "target" / f"{i}.png", clean)
        streaks = 0.3 * (torch.rand(3, 36, 40, generator=g) > 0.9)
        write_image(d / "Rain100L-subset3" / "input" / f"{i}.png", (clean + streaks).clamp(0, 1))
    return d


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, task_data):
    from test_train import tiny_config

    from irdiff.train import train

    out = tmp_path_factory.mktemp("runs") / "tiny"
    train(tiny_config(task_data / "CBSD68", steps=2), out, progress=False)
    return out


def test_export_deblur_card_and_restore_by_name(tiny_run, task_data, tmp_path, monkeypatch, capsys):
    from irdiff.cli import main as cli

    tm = tasks_module()
    monkeypatch.setattr(tm, "TUNE_CROP", 32)
    export = load_script("scripts/export_pretrained.py", "export_pretrained")
    monkeypatch.setattr(export, "TASK_RESULTS", tmp_path / "no_results.json")  # no benchmark numbers to reuse
    dest = tmp_path / "pretrained"
    assert export.main([str(tiny_run), "deblur", "--eval", "deblur", "--data", str(task_data), "--dest", str(dest),
                        "--max-images", "1", "--note", "a test"]) == 0
    meta = json.loads((dest / "deblur" / "model.json").read_text())
    assert meta["task"] == "deblur" and set(meta["metrics"]) == {c.key for c in tm.TASKS["deblur"]}
    row = meta["metrics"]["CBSD68/motion15_120deg_n2"]
    assert row["images"] == 1 and 5 < row["psnr"] < 60 and "wiener_psnr" in row and "rl_param" in row
    card = (dest / "deblur" / "card.md").read_text()
    assert "blind deblurring" in card and "Wiener (true kernel)" in card and "(a test)" in card
    assert "smoke test only" in card and "TRUE kernel" in card and "CBSD68/" not in card

    monkeypatch.setattr("irdiff.inference.PRETRAINED_DIR", dest)
    src, out = tmp_path / "blurry.png", tmp_path / "sharp.png"
    Image.fromarray((np.random.default_rng(0).random((24, 30, 3)) * 255).astype(np.uint8)).save(src)
    capsys.readouterr()
    assert cli(["restore", str(src), "-o", str(out), "--model", "deblur", "--no-progress", "--threads", "1"]) == 0
    assert np.asarray(Image.open(out)).shape == (24, 30, 3)
    assert cli(["info", "deblur"]) == 0 and "irdiff pretrained model `deblur`" in capsys.readouterr().out


def test_benchmark_results_feed_the_jpeg_card(tiny_run, task_data, tmp_path, monkeypatch):
    run = load_script("benchmarks/task_models/run.py", "task_models_run")
    bench = tmp_path / "bench"
    assert run.main(["jpeg", "--model", f"jpeg={tiny_run}", "--data", str(task_data), "--max-images", "1",
                     "--out", str(bench)]) == 0
    results = json.loads((bench / "results.json").read_text())
    assert results["jpeg"]["max_images"] == 1 and len(results["jpeg"]["metrics"]) == 8
    md = (bench / "results.md").read_text()
    assert "## jpeg" in md and "quality 60" in md and "first 1 image(s)" in md
    with pytest.raises(SystemExit):
        run.main(["deblurr", "--data", str(task_data), "--out", str(bench)])

    export = load_script("scripts/export_pretrained.py", "export_pretrained")
    monkeypatch.setattr(export, "TASK_RESULTS", bench / "results.json")
    dest = tmp_path / "pretrained"
    assert export.main([str(tiny_run), "jpeg", "--eval", "jpeg", "--data", str(task_data), "--dest", str(dest),
                        "--max-images", "1", "--fp16", "--fp16-images", "1"]) == 0
    meta = json.loads((dest / "jpeg" / "model.json").read_text())
    assert meta["metrics"] == results["jpeg"]["metrics"]
    assert meta["provenance"]["dtype"] in ("float16", "float32") and "first 1 images" in meta["provenance"]["fp16_note"]
    assert "benchmarks/task_models/results.json" in (dest / "jpeg" / "card.md").read_text()
    assert meta["provenance"]["numbers_from"]
    # numbers of other weights are not taken: measured afresh (equal here: the same net)
    results["jpeg"]["model_sha"] = "0" * 16
    (bench / "results.json").write_text(json.dumps(results))
    assert export.main([str(tiny_run), "jpeg", "--eval", "jpeg", "--data", str(task_data), "--dest", str(dest),
                        "--max-images", "1"]) == 0
    again = json.loads((dest / "jpeg" / "model.json").read_text())
    assert again["provenance"]["numbers_from"] is None
    assert again["metrics"]["Kodak24/q10"]["psnr"] == pytest.approx(results["jpeg"]["metrics"]["Kodak24/q10"]["psnr"])


def test_derain_cells_score_the_published_pairs_in_rgb_and_y(task_data, monkeypatch):
    from irdiff.data.io import read_image
    from irdiff.evaluate import score

    tm = tasks_module()
    monkeypatch.setattr(tm, "TUNE_CROP", 32)

    class Identity:
        def restore_tensor(self, img, **kw):
            return img.clamp(0, 1)

    out = tm.evaluate_task("derain", Identity(), task_data)
    rgb, y = out["Rain100L-subset3/rgb"], out["Rain100L-subset3/y"]
    assert rgb["images"] == y["images"] == 2 and y["y_channel"] and not rgb["y_channel"]
    folder = task_data / "Rain100L-subset3"
    pairs = [(read_image(folder / "input" / f"{i}.png"), read_image(folder / "target" / f"{i}.png")) for i in range(2)]
    want = np.mean([score(lq, gt, y_channel=True)[0] for lq, gt in pairs])
    assert y["input_psnr"] == pytest.approx(want) and y["psnr"] == pytest.approx(want)
    assert rgb["median_param"] in tm.TUNE_GRIDS["median"] and rgb["opening_param"] in tm.TUNE_GRIDS["opening"]
