"""NIQE (irdiff.niqe): the AGGD fit against samples of a known AGGD, the Gaussian window, what the score
does under noise, blur and intensity changes, and the bundled pristine model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage
from scipy.special import gamma as G

from irdiff import niqe as nq

CBSD68 = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "CBSD68"


def aggd_samples(alpha, beta_l, beta_r, n, rng):
    """Draws of f(x) ∝ exp(−(−x/β_l)^α) (x < 0), exp(−(x/β_r)^α) (x ≥ 0): |x|/β = Gamma(1/α)^(1/α), and the
    left side has mass β_l/(β_l + β_r) (the density is continuous at 0)."""
    mag = rng.gamma(1 / alpha, 1.0, n) ** (1 / alpha)
    left = rng.random(n) < beta_l / (beta_l + beta_r)
    return np.where(left, -beta_l * mag, beta_r * mag)


@pytest.mark.parametrize("alpha,beta_l,beta_r", [(0.7, 0.3, 0.5), (1.0, 1.0, 1.0), (2.0, 0.8, 0.4), (3.0, 1.2, 1.5)])
def test_aggd_fit_recovers_known_parameters(alpha, beta_l, beta_r):
    x = aggd_samples(alpha, beta_l, beta_r, 400_000, np.random.default_rng(0))
    a, eta, sl2, sr2 = nq.aggd_fit(x)
    assert a == pytest.approx(alpha, rel=0.03)
    # the moments of a generalised gamma, not the fit's own formulas: E[x²; side] / P(side) = β² Γ(3/α)/Γ(1/α)
    m2 = G(3 / alpha) / G(1 / alpha)
    assert sl2 == pytest.approx(beta_l**2 * m2, rel=0.02) and sr2 == pytest.approx(beta_r**2 * m2, rel=0.02)
    # η is the AGGD's mean: (β_r − β_l) Γ(2/α)/Γ(1/α)
    mean = (beta_r - beta_l) * G(2 / alpha) / G(1 / alpha)
    assert eta == pytest.approx(mean, abs=0.01 * (beta_l + beta_r))


def test_aggd_fit_of_a_gaussian_is_alpha_two_and_one_sided_data_is_undefined():
    a, eta, sl2, sr2 = nq.aggd_fit(np.random.default_rng(1).normal(0, 2, 400_000))
    assert a == pytest.approx(2.0, abs=0.03) and abs(eta) < 0.02 and sl2 == pytest.approx(4, rel=0.02)
    assert math.isnan(nq.aggd_fit(np.abs(np.random.default_rng(2).normal(size=100)))[0])


def test_gaussian_window_is_matlabs_fspecial():
    w = nq.gaussian_window()
    assert w.shape == (7, 7) and w.sum() == pytest.approx(1.0) and np.allclose(w, w.T) and np.allclose(w, w[::-1])
    sigma = 7 / 6
    assert w[3, 4] / w[3, 3] == pytest.approx(math.exp(-1 / (2 * sigma**2)))
    assert w[4, 4] / w[3, 3] == pytest.approx(math.exp(-2 / (2 * sigma**2)))


def test_mscn_of_a_constant_image_is_zero_and_of_white_noise_is_bounded():
    coeffs, sigma = nq.mscn(np.full((40, 40), 117.0))
    assert np.allclose(coeffs, 0) and np.allclose(sigma, 0, atol=1e-5)
    coeffs, _ = nq.mscn(np.random.default_rng(3).normal(128, 30, (200, 200)))
    # (x − μ)/σ with a 7×7 window: about unit variance, never beyond √(1/w_centre − 1)
    assert 0.7 < coeffs.std() < 1.1
    assert np.abs(coeffs).max() <= math.sqrt(1 / nq.gaussian_window()[3, 3] - 1) + 1e-9


def test_patch_features_count_and_sharpness():
    gray = np.random.default_rng(4).normal(128, 20, (200, 300))
    gray[:, 200:] = ndimage.gaussian_filter(gray[:, 200:], 3)  # the right third is smooth
    feats, sharp = nq.image_features(gray)
    assert feats.shape == (2 * 3, 36) and sharp.shape == (6,)
    assert sharp[2] < 0.5 * sharp[0] and sharp[5] < 0.5 * sharp[3]
    with pytest.raises(ValueError, match="at least 96x96"):
        nq.image_features(np.zeros((95, 300)))


def natural_images():
    """Two CBSD68 images when the data is there, else a procedural 1/f image (natural-image spectrum)."""
    if CBSD68.is_dir():
        from irdiff.data.io import list_images, read_image
        from irdiff.metrics import to_uint8_image

        return [nq.luminance(to_uint8_image(read_image(f))) for f in list_images(CBSD68)[:2]]
    rng = np.random.default_rng(5)
    f = np.fft.fftfreq(256)
    r = np.hypot(f[:, None], f[None, :])
    spec = (rng.normal(size=(256, 256)) + 1j * rng.normal(size=(256, 256))) / np.maximum(r, 1 / 256)
    img = np.real(np.fft.ifft2(spec))
    return [128 + 50 * (img - img.mean()) / img.std()]


@pytest.mark.parametrize("kind", ["noise", "blur"])
def test_niqe_grows_with_noise_and_blur(kind):
    rng = np.random.default_rng(6)
    for gray in natural_images():
        levels = (0, 10, 25, 50) if kind == "noise" else (0, 1, 2, 3)
        scores = []
        for lv in levels:
            if kind == "noise":
                img = gray + lv * rng.standard_normal(gray.shape)
            else:
                img = ndimage.gaussian_filter(gray, lv) if lv else gray
            scores.append(nq.niqe_luminance(np.clip(img, 0, 255)))
        assert all(math.isfinite(s) and s >= 0 for s in scores)
        assert all(a < b for a, b in zip(scores, scores[1:])), (kind, scores)


def test_what_intensity_changes_do():
    """MSCN = (x − μ)/(σ + 1): a brightness shift cancels exactly (the half-size image is linear with weights
    summing to 1), a contrast change does not (the +1 then weighs differently) — slightly for ×0.9,
    a lot for ×0.03, where σ becomes comparable to the constant."""
    gray = natural_images()[0]
    base = nq.niqe_luminance(gray)
    assert nq.niqe_luminance(gray + 20.0) == pytest.approx(base, rel=1e-9)
    mild = nq.niqe_luminance(gray * 0.9)
    assert mild != base and abs(mild - base) < 0.05 * base
    assert abs(nq.niqe_luminance(gray * 0.03) - base) > 0.2 * base


def test_rgb_input_paths_agree():
    gray = natural_images()[0][:192, :192]
    rgb = np.repeat(np.clip(gray, 0, 255).round().astype(np.uint8)[:, :, None], 3, axis=2)
    import torch

    a = nq.niqe(rgb)
    b = nq.niqe(torch.from_numpy(rgb).permute(2, 0, 1).float() / 255)
    assert a == pytest.approx(b, rel=1e-6) and a == pytest.approx(nq.niqe_luminance(rgb[..., 0]), rel=1e-4)


def test_bundled_model_and_its_errors(tmp_path):
    m = nq.NIQEModel.load()
    assert m.mean.shape == (36,) and np.allclose(m.cov, m.cov.T)
    assert np.linalg.eigvalsh(m.cov).min() > -1e-10
    assert m.info["images"] == 400 and "fit_niqe.py" in m.info["command"]
    bad = tmp_path / "m.json"
    bad.write_text(json.dumps({"format": "irdiff-niqe-v1", "mean": [0.0] * 3, "cov": [[0.0]]}))
    with pytest.raises(ValueError, match="m.json.*36"):
        nq.NIQEModel.load(bad)
    with pytest.raises(ValueError, match="nope.json"):
        nq.NIQEModel.load(tmp_path / "nope.json")


def test_fit_save_load_round_trip_and_zero_distance_to_itself(tmp_path):
    """A model fitted (all patches kept) on copies of one image has μ₁ = μ₂ for that image: distance 0; a noisy
    version is far from it."""
    img = np.clip(natural_images()[0], 0, 255).round().astype(np.uint8)
    model = nq.fit_pristine([img] * 40, sharpness_fraction=0.0)  # enough patches for a 36-d covariance
    path = tmp_path / "model.json"
    model.save(path)
    again = nq.NIQEModel.load(path)
    np.testing.assert_array_equal(again.mean, model.mean)
    np.testing.assert_array_equal(again.cov, model.cov)
    assert again.info["images"] == 40
    assert nq.niqe(img, again) < 1e-6
    noisy = np.clip(img + np.random.default_rng(8).normal(0, 10, img.shape), 0, 255).round().astype(np.uint8)
    assert nq.niqe(noisy, again) > 1.0


def test_eval_reports_niqe_per_image_and_names_a_too_small_file(tmp_path, capsys):
    from PIL import Image

    from irdiff.cli import main
    from irdiff.metrics import evaluate_folders

    gray = np.clip(natural_images()[0][:192, :200], 0, 255).round().astype(np.uint8)
    rgb = np.repeat(gray[:, :, None], 3, axis=2)
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    pred.mkdir()
    gt.mkdir()
    Image.fromarray(rgb).save(pred / "a.png")
    Image.fromarray(rgb).save(gt / "a.png")
    res = evaluate_folders(pred, gt, niqe=True)
    assert res["per_image"]["a"]["niqe"] == pytest.approx(nq.niqe(rgb)) and res["niqe"] == res["per_image"]["a"]["niqe"]
    assert "niqe" not in evaluate_folders(pred, gt)
    assert main(["eval", "--pred", str(pred), "--gt", str(gt), "--niqe"]) == 0
    assert f"{nq.niqe(rgb):.3f}" in capsys.readouterr().out
    Image.fromarray(rgb[:90]).save(pred / "a.png")
    Image.fromarray(rgb[:90]).save(gt / "a.png")
    with pytest.raises(ValueError, match=r"a\.png.*96x96"):
        evaluate_folders(pred, gt, niqe=True)
