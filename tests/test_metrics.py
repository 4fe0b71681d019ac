"""PSNR / SSIM against closed forms, scikit-image, and BasicSR's conventions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

from irdiff.metrics import evaluate_folders, lpips_from_path, psnr, rgb_to_y, ssim, to_uint8_image

skimage_metrics = pytest.importorskip("skimage.metrics")


def _rand(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def _noisy(img, sigma, seed=1):
    noise = np.random.default_rng(seed).normal(0, sigma, size=img.shape)
    return np.clip(np.round(img.astype(np.float64) + noise), 0, 255).astype(np.uint8)


def test_psnr_constant_difference_closed_form():
    a = np.full((16, 20, 3), 100, np.uint8)
    b = np.full((16, 20, 3), 110, np.uint8)
    assert psnr(a, b) == pytest.approx(10 * math.log10(255**2 / 100), abs=1e-12)  # 28.1308 dB
    assert psnr(a, b) == pytest.approx(28.130803608679106, abs=1e-12)


def test_identical_images():
    a = _rand((32, 24, 3))
    assert psnr(a, a) == math.inf
    assert ssim(a, a) == pytest.approx(1.0, abs=1e-12)
    assert psnr(a, a, y_channel=True) == math.inf


def test_crop_border_ignores_border_differences():
    a = _rand((40, 40, 3))
    b = a.copy()
    b[:4] = 0
    b[:, -4:] = 255
    assert psnr(a, b) < 30
    assert psnr(a, b, crop_border=4) == math.inf
    assert ssim(a, b, crop_border=4) == pytest.approx(1.0, abs=1e-12)
    # crop is applied before anything else: equal to metrics of the cropped arrays
    c = _noisy(a, 10)
    assert psnr(a, c, crop_border=3) == psnr(a[3:-3, 3:-3], c[3:-3, 3:-3])
    assert ssim(a, c, crop_border=3) == ssim(a[3:-3, 3:-3], c[3:-3, 3:-3])


def test_y_channel_bt601():
    img = np.array([[[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0]]], np.uint8)
    y = rgb_to_y(img)[0, :, 0]
    assert y[0] == pytest.approx(16.0)
    assert y[1] == pytest.approx(235.0)
    assert y[2] == pytest.approx(16 + 65.481)
    assert y[3] == pytest.approx(16 + 128.553)
    # an error only in blue is weighted by 24.966/255 on Y
    a = np.full((12, 12, 3), 50, np.uint8)
    b = a.copy()
    b[..., 2] += 10
    mse_y = (10 * 24.966 / 255) ** 2
    assert psnr(a, b, y_channel=True) == pytest.approx(10 * math.log10(255**2 / mse_y), abs=1e-9)
    gt = _rand((48, 40, 3))
    pred = _noisy(gt, 12)
    assert psnr(gt, pred, y_channel=True) != psnr(gt, pred)


@pytest.mark.parametrize("shape", [(48, 40, 3), (33, 27, 1), (30, 31)])
def test_agrees_with_scikit_image(shape):
    gt = _rand(shape, seed=3)
    pred = _noisy(gt, 20, seed=4)
    ref_psnr = skimage_metrics.peak_signal_noise_ratio(gt, pred, data_range=255)
    assert psnr(pred, gt) == pytest.approx(ref_psnr, abs=1e-9)
    # skimage crops the (win-1)/2 border of the SSIM map before averaging: exactly BasicSR's 'valid'
    ref_ssim = skimage_metrics.structural_similarity(
        gt,
        pred,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=255,
        channel_axis=2 if len(shape) == 3 else None,
    )
    assert ssim(pred, gt) == pytest.approx(ref_ssim, abs=1e-6)


def test_y_channel_ssim_matches_skimage_on_luma():
    gt = _rand((40, 44, 3), seed=5)
    pred = _noisy(gt, 15, seed=6)
    ref = skimage_metrics.structural_similarity(
        rgb_to_y(gt)[..., 0],
        rgb_to_y(pred)[..., 0],
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=255,
    )
    assert ssim(pred, gt, y_channel=True) == pytest.approx(ref, abs=1e-6)


def test_tensor_inputs_are_rounded_to_8_bit():
    gt = _rand((24, 20, 3), seed=7)
    t = torch.from_numpy(gt).permute(2, 0, 1).float() / 255
    # sub-half-step perturbations and out-of-range values vanish after clip + round
    t_pert = (t + 0.4 / 255).clone()
    assert psnr(t_pert, gt) == math.inf
    assert psnr(t[None], gt) == math.inf
    over = t.clone()
    over[0, 0, 0] = 1.7
    expected = gt.copy()
    expected[0, 0, 0] = 255
    np.testing.assert_array_equal(to_uint8_image(over), expected)
    assert to_uint8_image(t.numpy().transpose(1, 2, 0)).tolist() == gt.tolist()


def test_errors():
    a = _rand((20, 20, 3))
    with pytest.raises(ValueError, match="shapes differ"):
        psnr(a, a[:10])
    with pytest.raises(ValueError, match="uint8"):
        psnr(a.astype(np.float64), a.astype(np.float64))
    with pytest.raises(ValueError, match="11x11"):
        ssim(a[:8], a[:8])
    with pytest.raises(ValueError, match="crop_border"):
        psnr(a, a, crop_border=10)


def _save(path, arr):
    Image.fromarray(arr).save(path)


def test_evaluate_folders(tmp_path):
    pred_dir, gt_dir = tmp_path / "pred", tmp_path / "gt"
    pred_dir.mkdir()
    gt_dir.mkdir()
    gts = {"a": _rand((32, 36, 3), 10), "b": _rand((30, 30, 3), 11)}
    preds = {"a": _noisy(gts["a"], 10, 12), "b": gts["b"]}
    for stem in gts:
        _save(gt_dir / f"{stem}.png", gts[stem])
        _save(pred_dir / f"{stem}.png", preds[stem])
    res = evaluate_folders(pred_dir, gt_dir, crop_border=2)
    assert res["count"] == 2
    assert res["per_image"]["a"]["psnr"] == pytest.approx(psnr(preds["a"], gts["a"], crop_border=2))
    assert res["per_image"]["a"]["ssim"] == pytest.approx(ssim(preds["a"], gts["a"], crop_border=2))
    assert res["per_image"]["b"]["psnr"] == math.inf
    assert res["ssim"] == pytest.approx((res["per_image"]["a"]["ssim"] + 1.0) / 2)
    res_y = evaluate_folders(pred_dir, gt_dir, y_channel=True)
    assert res_y["y_channel"] is True
    assert res_y["per_image"]["a"]["psnr"] == pytest.approx(psnr(preds["a"], gts["a"], y_channel=True))

    # pairing is by stem, so extensions may differ
    (pred_dir / "a.png").rename(pred_dir / "a.bmp")
    _save(pred_dir / "a.bmp", preds["a"])
    assert evaluate_folders(pred_dir, gt_dir)["count"] == 2

    _save(pred_dir / "c.png", gts["b"])
    (pred_dir / "b.png").unlink()
    with pytest.raises(ValueError) as err:
        evaluate_folders(pred_dir, gt_dir)
    msg = str(err.value)
    assert "\n" not in msg and "b.png" in msg and "c.png" in msg

    _save(pred_dir / "b.png", gts["b"][:20])
    (pred_dir / "c.png").unlink()
    with pytest.raises(ValueError, match="size mismatch"):
        evaluate_folders(pred_dir, gt_dir)


def _random_lpips_file(path, seed=0, drop=None):
    g = torch.Generator().manual_seed(seed)
    convs = {0: (64, 3, 11), 3: (192, 64, 5), 6: (384, 192, 3), 8: (256, 384, 3), 10: (256, 256, 3)}
    slices = {0: 1, 3: 2, 6: 3, 8: 4, 10: 5}
    sd = {}
    for i, (o, c, k) in convs.items():
        sd[f"net.slice{slices[i]}.{i}.weight"] = torch.randn(o, c, k, k, generator=g) / (c * k * k) ** 0.5
        sd[f"net.slice{slices[i]}.{i}.bias"] = 0.1 * torch.randn(o, generator=g)
    for n, o in enumerate([64, 192, 384, 256, 256]):
        sd[f"lin{n}.model.1.weight"] = torch.rand(1, o, 1, 1, generator=g)
        sd[f"lins.{n}.model.1.weight"] = sd[f"lin{n}.model.1.weight"].clone()
    if drop:
        del sd[drop]
    save_file(sd, str(path))
    return sd


def _lpips_reference(sd, x, y):
    # the `lpips` package's computation, written out over torchvision's AlexNet `features` indices
    layers = [
        torch.nn.Conv2d(3, 64, 11, 4, 2), torch.nn.ReLU(), torch.nn.MaxPool2d(3, 2),
        torch.nn.Conv2d(64, 192, 5, padding=2), torch.nn.ReLU(), torch.nn.MaxPool2d(3, 2),
        torch.nn.Conv2d(192, 384, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(384, 256, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(256, 256, 3, padding=1), torch.nn.ReLU(),
    ]  # fmt: skip
    for k, v in sd.items():
        if k.startswith("net."):
            _, _, idx, part = k.split(".")
            setattr(layers[int(idx)], part, torch.nn.Parameter(v))
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)

    def feats(img):
        h, out = ((2 * img - 1) - shift) / scale, []
        for i, layer in enumerate(layers):
            h = layer(h)
            if i in (1, 4, 7, 9, 11):
                out.append(h / (h.pow(2).sum(1, keepdim=True).sqrt() + 1e-10))
        return out

    total = 0
    for n, (a, b) in enumerate(zip(feats(x), feats(y))):
        total = total + F.conv2d((a - b) ** 2, sd[f"lin{n}.model.1.weight"]).mean(dim=(2, 3))[:, 0]
    return total


def test_lpips_from_local_file(tmp_path):
    path = tmp_path / "alex.safetensors"
    sd = _random_lpips_file(path)
    model = lpips_from_path(path)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 64, 72, generator=g)
    y = (x + 0.1 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    with torch.no_grad():
        d = model(x, y)
        assert d.shape == (2,) and (d > 0).all()
        torch.testing.assert_close(d, model(y, x))
        assert torch.equal(model(x, x), torch.zeros(2))
        torch.testing.assert_close(d, _lpips_reference(sd, x, y), rtol=1e-5, atol=1e-7)
    # torchvision AlexNet names for the backbone and lin{k} heads only
    tv = {
        (f"features.{k.split('.')[2]}.{k.split('.')[3]}" if k.startswith("net.") else k): v
        for k, v in sd.items()
    }
    save_file({k: v for k, v in tv.items() if not k.startswith("lins.")}, str(tmp_path / "tv.safetensors"))
    with torch.no_grad():
        assert torch.equal(lpips_from_path(tmp_path / "tv.safetensors")(x, y), d)


def test_lpips_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no download"):
        lpips_from_path(tmp_path / "nope.safetensors")
    (tmp_path / "w.pth").write_bytes(b"x")
    with pytest.raises(ValueError, match="safetensors"):
        lpips_from_path(tmp_path / "w.pth")
    bad = tmp_path / "bad.safetensors"
    _random_lpips_file(bad, drop="net.slice3.6.bias")
    with pytest.raises(ValueError, match=r"lacks net\.slice3\.6\.bias"):
        lpips_from_path(bad)
