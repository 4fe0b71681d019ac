"""Test-time self-ensemble (irdiff.ensemble, Restorer.restore(ensemble=True), `irdiff restore --ensemble`)."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from irdiff.cli import main
from irdiff.ensemble import N_TRANSFORMS, check_ensemble, dihedral, dihedral_inverse, self_ensemble
from irdiff.methods.base import OptionError
from irdiff.registry import METHODS


def test_the_eight_transforms_are_the_square_symmetries_and_invert():
    x = torch.arange(2 * 5 * 5, dtype=torch.float32).reshape(2, 5, 5)
    # the dihedral group D4 from torch's own rotations: 4 rotations, and 4 rotations of the mirror image
    want = [torch.rot90(x, r, (-2, -1)) for r in range(4)] + [torch.rot90(x.flip(-1), r, (-2, -1)) for r in range(4)]
    got = [dihedral(x, k) for k in range(N_TRANSFORMS)]
    assert all(any(torch.equal(g, w) for g in got) for w in want)
    assert len({tuple(g.flatten().tolist()) for g in got}) == 8
    y = torch.rand(1, 3, 4, 7)
    for k in range(N_TRANSFORMS):
        assert torch.equal(dihedral_inverse(dihedral(y, k), k), y)


def _isotropic_blur(x):
    """A 3x3 kernel symmetric under every flip and transpose, reflect-padded: equivariant to all 8 transforms."""
    k = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16
    c = x.shape[1]
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), k.expand(c, 1, 3, 3), groups=c)


@pytest.mark.parametrize("shape", [(1, 3, 7, 5), (2, 1, 9, 9), (1, 3, 1, 6)])
def test_an_equivariant_function_is_its_own_ensemble(shape):
    x = torch.rand(shape)
    fns = [lambda t: t.square() + 1, lambda t: t.repeat_interleave(2, -1).repeat_interleave(2, -2)]  # pointwise, 2x up
    if min(shape[-2:]) > 1:
        fns.append(_isotropic_blur)
    for fn in fns:
        assert torch.allclose(self_ensemble(fn, x), fn(x), atol=1e-6)


def test_a_mirror_averages_over_its_conjugates_and_inputs_move_together():
    x = torch.rand(1, 2, 6, 5)
    # g⁻¹ ∘ hflip ∘ g over the 8 g: hflip four times and vflip four times (its conjugacy class in D4)
    assert torch.allclose(self_ensemble(lambda t: t.flip(-1), x), (x.flip(-1) + x.flip(-2)) / 2)
    mask = (torch.rand(1, 1, 6, 5) > 0.5).float()
    # the mask is transformed with the image: a function of both that is equivariant stays itself
    assert torch.allclose(self_ensemble(lambda t, m: t * m, x, mask), x * mask)
    assert torch.allclose(self_ensemble(lambda t, m: t if m is None else t * 0, x, None), x)


def test_diffusion_models_are_refused_one_pass_models_pass():
    check_ensemble(METHODS.get("regression")())
    with pytest.raises(OptionError, match="ensemble: is for one-pass models.*50 steps"):
        check_ensemble(METHODS.get("sr3")(num_steps=50))


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """An exported one-pass model with random (non-equivariant) weights: what matters is that the ensemble
    averages exactly the eight restorations a user could make by hand."""
    from irdiff.build import build_method
    from irdiff.checkpoint import save_tensors_atomic
    from irdiff.config import Config, from_dict, to_dict

    cfg = from_dict(Config, {"method": {"name": "regression"},
                             "net": {"name": "nafnet", "width": 8, "enc_blocks": [1, 1], "dec_blocks": [1, 1]}})
    method = build_method(cfg)
    torch.manual_seed(0)
    net = method.build_net(dict(cfg.net), 3)
    for name, p in net.named_parameters():  # NAFNet starts as the identity (beta = gamma = 0): wake it up
        if name.endswith(("beta", "gamma")):
            p.data.fill_(0.5)
    d = tmp_path_factory.mktemp("models") / "tiny"
    d.mkdir()
    save_tensors_atomic(d / "model.safetensors", method.inference_net(net).state_dict())
    (d / "model.json").write_text(json.dumps({"config": to_dict(cfg)}))
    return d


def _by_hand(restorer, img):
    """Mean over the 8 transforms of restore(transformed image) transformed back, in numpy."""
    outs = []
    for k in range(N_TRANSFORMS):
        t = np.swapaxes(img, 0, 1) if k & 4 else img
        t = t[::-1] if k & 2 else t
        t = t[:, ::-1] if k & 1 else t
        o = restorer.restore(np.ascontiguousarray(t), progress=False, tile=0)
        o = o[:, ::-1] if k & 1 else o
        o = o[::-1] if k & 2 else o
        outs.append(np.swapaxes(o, 0, 1) if k & 4 else o)
    return np.mean(outs, axis=0)


@pytest.mark.parametrize("shape", [(13, 18, 3), (11, 7)])  # odd sizes (NAFNet pads to 4); colour and grey
def test_restore_ensemble_is_the_mean_of_the_eight_restorations(tiny_model, shape):
    import irdiff

    restorer = irdiff.load(tiny_model)
    img = np.random.default_rng(0).random(shape).astype(np.float32)
    plain = restorer.restore(img, progress=False, tile=0)
    ens = restorer.restore(img, progress=False, tile=0, ensemble=True)
    assert ens.shape == img.shape and ens.dtype == img.dtype
    assert np.allclose(ens, np.clip(_by_hand(restorer, img), 0, 1), atol=1e-5)
    assert np.abs(ens - plain).max() > 1e-3  # the net is not equivariant: the ensemble changed something
    fractions = []
    restorer.restore(img, progress=fractions.append, tile=0, ensemble=True)
    assert fractions == sorted(fractions) and fractions[-1] == 1.0


def test_cli_ensemble_flag(tiny_model, tmp_path, capsys):
    import irdiff

    img = (np.random.default_rng(1).random((15, 10, 3)) * 255).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "a.png")
    assert main(["restore", str(tmp_path / "a.png"), "-o", str(tmp_path / "o.png"), "--model", str(tiny_model),
                 "--ensemble", "--no-progress"]) == 0
    want = irdiff.load(tiny_model).restore(img, progress=False, ensemble=True)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "o.png")), want)
    # a diffusion model is refused before its weights (garbage here) or the image are read
    d = tmp_path / "sr3"
    d.mkdir()
    unet = {"name": "unet", "base_channels": 8, "channel_mults": [1], "num_res_blocks": 1, "attn_levels": [],
            "norm_groups": 4, "head_channels": 8}
    (d / "model.json").write_text(json.dumps({"config": {"method": {"name": "sr3", "num_steps": 50}, "net": unet}}))
    (d / "model.safetensors").write_bytes(b"not safetensors")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    capsys.readouterr()
    assert main(["restore", str(tmp_path / "bad.png"), "-o", str(tmp_path / "p.png"), "--model", str(d),
                 "--ensemble"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(err) == 1 and "argument --ensemble: model" in err[0] and "one-pass models" in err[0], err
    assert not (tmp_path / "p.png").exists()
