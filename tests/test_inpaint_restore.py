"""Inpainting through the Restorer and `irdiff restore --mask`: known pixels kept, holes filled, errors."""

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from irdiff.config import Config, from_dict
from irdiff.inference import Restorer, as_mask
from irdiff.methods.sr3 import SR3


class Fill(nn.Module):
    """ε̂ = 0: ŷ0 = y_t / √γ, a deterministic fill that differs from the input in the hole."""

    def forward(self, x, noise_level=None, cond=None):
        return torch.zeros_like(x)


def _restorer(inpainting=True):
    cfg = from_dict(Config, {"method": {"name": "sr3", "num_steps": 50, "inpainting": inpainting},
                             "net": {"name": "unet"}, "sample": {"steps": 4}})
    method = SR3(num_steps=50, inpainting=inpainting)
    return Restorer(method, Fill(), cfg, {})


def _image_and_mask(h=40, w=56):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), dtype=np.uint8)
    mask[10:25, 20:45] = 255
    return img, mask


@pytest.mark.parametrize("tile", [0, 16])
def test_known_pixels_kept_exactly_and_hole_filled(tile):
    img, mask = _image_and_mask()
    out = _restorer().restore(img, mask=mask, tile=tile, overlap=4, progress=False,
                              generator=torch.Generator().manual_seed(0))
    known = mask == 0
    assert out.shape == img.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out[known], img[known])  # re-pasted after every step
    assert not np.array_equal(out[~known], img[~known])


def test_mask_types_agree():
    img, mask = _image_and_mask()
    r = _restorer()
    outs = [r.restore(img, mask=m, progress=False, generator=torch.Generator().manual_seed(1))
            for m in (mask, Image.fromarray(mask), torch.from_numpy(mask > 0), mask[..., None].repeat(3, 2) / 255.0)]
    for o in outs[1:]:
        np.testing.assert_array_equal(o, outs[0])


def test_as_mask_thresholds():
    assert as_mask(np.array([[0, 128], [127, 255]], np.uint8)).tolist() == [[False, True], [False, True]]
    assert as_mask(np.array([[0, 1]], np.int64)).tolist() == [[False, True]]
    assert as_mask(torch.tensor([[[0.2, 0.7]]])).tolist() == [[False, True]]
    with pytest.raises(TypeError, match="mask"):
        as_mask([[0, 1]])


def test_mask_errors():
    img, mask = _image_and_mask()
    with pytest.raises(ValueError, match="inpaints: pass mask="):
        _restorer().restore(img, progress=False)
    with pytest.raises(ValueError, match="does not take a mask"):
        _restorer(inpainting=False).restore(img, mask=mask, progress=False)
    with pytest.raises(ValueError, match="mask is 56x39 but the image is 56x40"):
        _restorer().restore(img, mask=mask[:-1], progress=False)


def test_cli_restore_with_mask(tmp_path, monkeypatch):
    from irdiff import cli

    img, mask = _image_and_mask()
    Image.fromarray(img).save(tmp_path / "a.png")
    (tmp_path / "masks").mkdir()
    Image.fromarray(mask).save(tmp_path / "masks" / "a.png")
    monkeypatch.setattr("irdiff.inference.load", lambda *a, **k: _restorer())
    monkeypatch.setattr("irdiff.inference.load_method", lambda *a, **k: (_restorer().method, _restorer().cfg, {}, None))
    out = tmp_path / "out.png"
    assert cli.main(["restore", str(tmp_path / "a.png"), "-o", str(out), "--mask", str(tmp_path / "masks"),
                     "--no-progress"]) == 0
    res = np.asarray(Image.open(out))
    np.testing.assert_array_equal(res[mask == 0], img[mask == 0])
    # no mask for an inpainting model: one-line error, non-zero exit, nothing written
    assert cli.main(["restore", str(tmp_path / "a.png"), "-o", str(tmp_path / "o2.png"), "--no-progress"]) != 0
    assert not (tmp_path / "o2.png").exists()
    # a folder without a mask of that name: that input fails, named
    (tmp_path / "b.png").write_bytes((tmp_path / "a.png").read_bytes())
    code = cli.main(["restore", str(tmp_path / "b.png"), "-o", str(tmp_path / "o3.png"), "--mask",
                     str(tmp_path / "masks"), "--no-progress"])
    assert code != 0 and not (tmp_path / "o3.png").exists()


def test_as_mask_dtypes_alpha_and_pil_modes():
    m = np.zeros((4, 5), np.uint16)
    m[1, 2] = 65535
    assert as_mask(m).nonzero().tolist() == [[1, 2]]
    assert as_mask(m.astype(np.uint32)).nonzero().tolist() == [[1, 2]]
    rgba = np.zeros((4, 5, 4), np.uint8)
    rgba[..., 3] = 255  # opaque alpha marks nothing
    rgba[2, 3, 0] = 255
    assert as_mask(rgba).nonzero().tolist() == [[2, 3]]
    assert as_mask(Image.fromarray(rgba)).nonzero().tolist() == [[2, 3]]
    f = np.zeros((4, 5), np.float32)
    f[0, 0] = 1.0
    assert as_mask(Image.fromarray(f)).nonzero().tolist() == [[0, 0]]  # mode F, values in [0, 1]
    assert as_mask(Image.fromarray(m)).nonzero().tolist() == [[1, 2]]  # mode I;16
    t = torch.zeros(4, 4, 5)
    t[0, 3, 1] = 1.0
    t[3] = 1.0  # a CxHxW tensor with 4 channels: the last one is alpha
    assert as_mask(t).nonzero().tolist() == [[3, 1]]


def test_cli_never_overwrites_masks_and_checks_noise_sigma(tmp_path, monkeypatch):
    from irdiff import cli

    img, mask = _image_and_mask()
    (tmp_path / "in").mkdir()
    (tmp_path / "masks").mkdir()
    Image.fromarray(img).save(tmp_path / "in" / "a.png")
    Image.fromarray(mask).save(tmp_path / "masks" / "a.png")
    before = (tmp_path / "masks" / "a.png").read_bytes()
    monkeypatch.setattr("irdiff.inference.load", lambda *a, **k: _restorer())
    monkeypatch.setattr("irdiff.inference.load_method", lambda *a, **k: (_restorer().method, _restorer().cfg, {}, None))
    code = cli.main(["restore", str(tmp_path / "in"), "-o", str(tmp_path / "masks"), "--mask", str(tmp_path / "masks"),
                     "--no-progress"])
    assert code != 0 and (tmp_path / "masks" / "a.png").read_bytes() == before
    # --noise-sigma is for IR-SDE's Denoising-SDE models only: a one-line error, exit 2, nothing written
    assert cli.main(["restore", str(tmp_path / "in" / "a.png"), "-o", str(tmp_path / "o.png"), "--mask",
                     str(tmp_path / "masks"), "--noise-sigma", "15", "--no-progress"]) == 2
    assert not (tmp_path / "o.png").exists()
    # colour correction would change known pixels: refused with a mask
    with pytest.raises(ValueError, match="color_fix cannot be combined with a mask"):
        _restorer().restore(img, mask=mask, color_fix="wavelet", progress=False)
