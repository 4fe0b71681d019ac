"""Every shipped config builds what it says (method and variant, net, channels, data streams, degradation,
scale); a representative subset trains two steps (tiny net, tiny random images) and restores in the default
suite, every config under ``-m slow``."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

import irdiff
from irdiff.config import load_config, read_yaml
from irdiff.data.io import write_image
from irdiff.train import train

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
TINY_NETS = {
    "unet": {"name": "unet", "base_channels": 8, "channel_mults": [1, 2], "num_res_blocks": 1, "attn_levels": [1],
             "norm_groups": 4, "head_channels": 8},
    "nafnet": {"name": "nafnet", "width": 8, "enc_blocks": [1, 1], "dec_blocks": [1, 1], "middle_blocks": 1},
    "refusion_ae": {"name": "refusion_ae", "ch": 4, "ch_mult": [1, 2], "embed_dim": 4},
    "refusion_nafnet": {"name": "refusion_nafnet", "width": 8, "enc_blk_nums": [1, 1], "middle_blk_num": 1,
                        "dec_blk_nums": [1, 1], "intro_skip": True},
}
SIZE = 48  # divisible by 4 (x4 SR, Cold's pixelate with T = 2) and by the tiny UNet's 2


# stem -> (method, method keys that pick the variant, net, train stream, its degradation, scale, val, real)
EXPECTED = {
    "cold_deblur": ("cold", {"degradation": "blur"}, "unet", "synthetic", "gaussian_blur", 1, "synthetic", None),
    "cold_denoise_s25": ("cold", {"degradation": "interp"}, "unet", "synthetic", "awgn", 1, "synthetic", None),
    "cold_inpaint": ("cold", {"degradation": "mask"}, "unet", "synthetic", "mask", 1, "synthetic", None),
    "cold_sr4": ("cold", {"degradation": "pixelate", "num_steps": 2}, "unet", "synthetic", "awgn", 4, "synthetic",
                 None),
    "deblur_blind": ("regression", {"loss_type": "l1"}, "nafnet", "synthetic", "chain", 1, "synthetic", None),
    "derain": ("regression", {"loss_type": "l1"}, "nafnet", "synthetic", "rain", 1, "synthetic", None),
    "jpeg_blind": ("regression", {"loss_type": "l1"}, "nafnet", "synthetic", "jpeg", 1, "synthetic", None),
    "denoise_blind_v2": ("regression", {"loss_type": "l1"}, "nafnet", "synthetic", "awgn", 1, "synthetic", None),
    "denoise_blind_v3": ("regression", {"loss_type": "l1"}, "nafnet", "synthetic", "awgn", 1, "synthetic", None),
    "denoise_regression_blind": ("regression", {"loss_type": "l1"}, "nafnet", "synthetic", "awgn", 1, "synthetic",
                                 None),
    "denoise_refine_s25": ("irsde", {"mean_target": "lq", "prediction": "x0"}, "nafnet", "synthetic", "awgn", 1,
                           "synthetic", None),  # on the prior `denoise` (irdiff.prior)
    "denoise_regression_s25": ("regression", {"loss_type": "l1"}, "nafnet", "synthetic", "awgn", 1, "synthetic",
                               None),
    "irsde_deblur": ("irsde", {"mean_target": "lq"}, "unet", "synthetic", "chain", 1, "synthetic", None),
    "irsde_denoise_s25": ("irsde", {"mean_target": "clean"}, "unet", "synthetic", "awgn", 1, "synthetic", None),
    "irsde_denoise_s25_lq": ("irsde", {"mean_target": "lq"}, "unet", "synthetic", "awgn", 1, "synthetic", None),
    "irsde_derain": ("irsde", {"mean_target": "lq"}, "unet", "synthetic", "rain", 1, "paired", None),
    "irsde_sr4": ("irsde", {"mean_target": "lq"}, "unet", "synthetic", "bicubic_down", 4, "synthetic", None),
    "noise_da_denoise": ("noise_da", {}, "nafnet", "synthetic", "awgn", 1, "synthetic", "unpaired"),
    "refusion_ae_denoise": ("autoencoder", {"loss_type": "l1"}, "refusion_ae", "synthetic", "awgn", 1, "synthetic",
                           None),
    "refusion_denoise": ("refusion", {"mean_target": "lq"}, "refusion_nafnet", "synthetic", "awgn", 1, "synthetic",
                         None),
    "rddm_denoise_s25": ("rddm", {"mode": "res_noise"}, "unet", "synthetic", "awgn", 1, "synthetic", None),
    "rddm_derain": ("rddm", {"mode": "res_noise"}, "unet", "synthetic", "rain", 1, "paired", None),
    "rddm_sr4": ("rddm", {"mode": "res_noise"}, "unet", "synthetic", "bicubic_down", 4, "synthetic", None),
    "sr3_denoise_s25": ("sr3", {"inpainting": False}, "unet", "synthetic", "awgn", 1, "synthetic", None),
    "sr3_inpaint": ("sr3", {"inpainting": True, "loss_type": "l2"}, "unet", "synthetic", "mask", 1, "synthetic",
                    None),
    "sr3_sr4": ("sr3", {"inpainting": False}, "unet", "synthetic", "bicubic_down", 4, "synthetic", None),
    "sr4_regression": ("regression", {}, "nafnet", "synthetic", "bicubic_down", 4, "synthetic", None),
}
# trained in the default suite: every method, each kind of stream (synthetic, paired, unpaired), SR, inpainting
FAST = {"denoise_regression_s25", "sr4_regression", "sr3_inpaint", "cold_sr4", "irsde_denoise_s25", "rddm_derain",
        "noise_da_denoise"}


def test_every_config_is_described():
    assert {p.stem for p in CONFIGS} == set(EXPECTED)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_builds_what_it_says(path):
    from torch import nn

    from irdiff.build import build_method
    from irdiff.inference import model_scale
    from irdiff.registry import DEGRADATIONS, METHODS, NETS

    method_name, variant, net_name, stream, degradation, scale, val, real = EXPECTED[path.stem]
    cfg = load_config(path)
    method = build_method(cfg)
    if cfg.prior is not None:  # predict-and-refine: the method below is the refining one
        from irdiff.prior import Refine

        assert isinstance(method, Refine) and cfg.prior.config is not None
    inner = getattr(method, "method", method)
    assert type(inner) is METHODS.get(method_name)
    for key, value in variant.items():
        assert getattr(method, key) == value, key
    assert cfg.net["name"] == net_name and cfg.img_channels == 3
    with torch.device("meta"):  # the full-size net, without allocating its weights
        model = method.build_net(dict(cfg.net), cfg.img_channels)
    net = method.inference_net(model)
    net = getattr(net, "refiner", net)  # predict-and-refine: the refining net (beside its frozen prior)
    net = getattr(net, "denoiser", net)  # Refusion: the latent denoiser (beside its frozen autoencoder)
    assert type(net) is NETS.get(net_name)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert convs[0].in_channels == method.net_in_channels(3)
    last = getattr(net, "ending", convs[-1])  # refusion_nafnet registers its last conv before the decoder's
    assert last.out_channels == method.net_out_channels(3)
    assert cfg.data.train.name == stream and (cfg.data.train.degradation or {}).get("name") == degradation
    assert degradation is None or degradation in DEGRADATIONS
    assert model_scale(cfg, method) == scale
    assert (cfg.data.val and cfg.data.val.name) == val and (cfg.data.real and cfg.data.real.name) == real


def test_there_are_configs_for_every_method_and_task():
    names = {p.stem for p in CONFIGS}
    for method in ("sr3", "cold", "irsde", "rddm"):
        assert f"{method}_denoise_s25" in names
    for name in ("sr3_sr4", "irsde_sr4", "rddm_sr4", "cold_sr4", "cold_deblur", "irsde_deblur", "sr3_inpaint",
                 "cold_inpaint", "irsde_derain", "rddm_derain"):
        assert name in names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_loads_and_validates(path):
    cfg = load_config(path)  # data folders need not exist for this
    assert cfg.name == path.stem
    assert cfg.train.threads == 1  # CPU-sized: one thread per run
    assert "${" not in (cfg.data.train.gt_dir or "")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Clean images, and 'degraded' twins with the same stems (for paired streams)."""
    root = tmp_path_factory.mktemp("cfgdata")
    g = torch.Generator().manual_seed(0)
    for i in range(3):
        clean = torch.rand(3, SIZE, SIZE, generator=g)
        write_image(root / "gt" / f"im{i}.png", clean)
        write_image(root / "lq" / f"im{i}.png", (clean + 0.1 * torch.rand(3, SIZE, SIZE, generator=g)).clamp(0, 1))
    return root


def tiny(path: Path, folders: Path) -> dict:
    data = copy.deepcopy(read_yaml(path))
    data["net"] = dict(TINY_NETS[data["net"]["name"]])
    if isinstance(data["method"].get("diffusion_net"), dict):  # Noise-DA's teacher
        data["method"]["diffusion_net"] = dict(TINY_NETS["unet"])
    for key in ("train", "val", "real"):
        spec = data["data"].get(key)
        if spec is None:
            continue
        spec["gt_dir"] = str(folders / "gt")
        if spec.get("lq_dir"):
            spec["lq_dir"] = str(folders / "lq")
        spec["patch_size"] = None if key == "val" else 32
        spec["max_images"] = 1 if key == "val" and spec.get("name") != "paired" else None
        spec["first_image"] = 0
    # mixed precision is one setting per process in accelerate (the first run's would stick): CPU float here
    data["train"].update(steps=2, batch_size=2, ckpt_every=2, val_every=0, log_every=1, mixed_precision="no")
    data["train"].pop("init_from", None)  # the tiny net cannot take the full-size weights
    if data["method"]["name"] == "refusion":  # stage 2 needs a trained stage 1: the tiny autoencoder, 2 steps
        ae_run = folders / "refusion_ae_run"
        if not (ae_run / "model.json").is_file():
            ae_config = path.parent / "refusion_ae_denoise.yaml"
            train(load_config(base=tiny(ae_config, folders)), ae_run, progress=False)
        data["method"]["autoencoder"] = str(ae_run)
        data["method"].pop("autoencoder_net")  # read from the tiny autoencoder
    data["sample"].update(steps=2, val_max_images=1, val_save_images=1)
    return data


@pytest.mark.parametrize("path", [pytest.param(p, marks=() if p.stem in FAST else pytest.mark.slow) for p in CONFIGS],
                         ids=lambda p: p.stem)
def test_config_trains_two_steps_and_restores(path, folders, tmp_path):
    cfg = load_config(base=tiny(path, folders))
    summary = train(cfg, tmp_path / "run", progress=False)
    assert summary["step"] == 2 and summary["bad_steps"] == 0
    assert all(v == v for v in summary["metrics"].values())  # validation ran and gave numbers (no NaN)

    r = irdiff.load(tmp_path / "run")
    g = torch.Generator().manual_seed(1)
    clean = torch.rand(3, SIZE, SIZE, generator=g)
    m = cfg.method
    if m.get("inpainting"):
        mask = torch.zeros(SIZE, SIZE, dtype=torch.bool)
        mask[10:30, 12:34] = True
        out = r.restore(clean, mask=mask, steps=2, generator=g, progress=False)
        assert out.shape == clean.shape
        assert torch.equal(out[:, ~mask], clean[:, ~mask])  # known pixels kept (float in, float out)
        return
    if r.scale > 1:
        lq = clean[:, :: r.scale, :: r.scale]  # the Restorer upsamples the LR itself (Cold: nearest)
    elif m["name"] == "cold" and m.get("degradation", "interp") != "interp":
        lq = (r.method.degrade(clean[None] * 2 - 1, r.method.num_steps)[0] + 1) / 2  # Cold's own D(x0, T)
    else:
        lq = clean
    out = r.restore(lq, steps=2 if r.method.max_steps() else None, generator=g, progress=False)  # one-pass: no steps
    assert out.shape == clean.shape
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
