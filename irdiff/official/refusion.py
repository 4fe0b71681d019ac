"""Refusion checkpoints (Luo et al., CVPRW 2023 / NTIRE 2023; github.com/Algolzw/image-restoration-sde).

Formats:
- ``refusion``: the pixel-space noise network, ConditionalNAFNet (every task's options/*/refusion.yml);
  it runs with irdiff's IR-SDE method and samplers like ``irsde`` (T = 100, ε = 0.005, λ = 50 in every
  refusion config, the reverse SDE with 100 steps);
- ``refusion_latent``: the latent noise network of latent Refusion (codes/config/latent-*: the same
  NAFNet with the first convolution's output added before the last, on 8 latent channels);
- ``refusion_ae``: latent Refusion's U-Net-shaped autoencoder (codes/config/unet-latent).

The two latent formats convert (``irdiff.official.convert``) but do not import into a model folder yet: the
``refusion`` method (irdiff/methods/refusion.py) feeds its autoencoder [-1, 1] images, the official one was
trained on [0, 1] images and latents, a mapping not written yet. Like IR-SDE, the official code saves plain
state_dicts.
``refusion`` and ``refusion_latent`` hold the same keys; they differ in an addition without parameters
and (in the released models) in the channel count, 3 vs 8, which is what tells them apart here.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from irdiff.nets.official_refusion import RefusionAutoencoder, RefusionNAFNet
from irdiff.official import OfficialCheckpointError, OfficialFormat, Picked, register_format, unwrap
from irdiff.official.irsde import rename as unet_rename

PAPER = "Luo et al., Refusion: Enabling Large-Size Realistic Image Restoration with Latent-Space Diffusion, CVPRW 2023"

_NAF_RENAMES = [
    (r"^time_mlp\.1\.", "time_fc1."),
    (r"^time_mlp\.3\.", "time_fc2."),
    (r"\.mlp\.1\.", ".emb_proj."),
    (r"\.sca\.1\.", ".sca."),
    (r"^ups\.(\d+)\.0\.", r"ups.\1."),
    (r"\.(norm[12])\.g$", r".\1.weight"),
]


def naf_rename(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in sd.items():
        new = key
        for pattern, repl in _NAF_RENAMES:
            new = re.sub(pattern, repl, new, count=1)
        if key.endswith(".g") and value.dim() == 4 and value.shape[0] == 1:
            value = value.reshape(-1)
        out[new] = value
    return out


def _counts(sd: dict[str, torch.Tensor], prefix: str, levels: int) -> list[int]:
    """Blocks per level of ``prefix.{level}.{block}.`` keys."""
    found: dict[int, set[int]] = {}
    for k in sd:
        if m := re.match(rf"{prefix}\.(\d+)\.(\d+)\.", k):
            found.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    return [len(found.get(i, ())) for i in range(levels)]


def _naf_infer(sd: dict[str, torch.Tensor]) -> dict[str, Any]:
    intro = sd["intro.weight"]
    n_enc = len({int(m.group(1)) for k in sd if (m := re.match(r"downs\.(\d+)\.", k))})
    n_dec = len({int(m.group(1)) for k in sd if (m := re.match(r"ups\.(\d+)\.", k))})
    mid = {int(m.group(1)) for k in sd if (m := re.match(r"middle_blks\.(\d+)\.", k))}
    return {"img_channel": int(intro.shape[1]) // 2, "width": int(intro.shape[0]),
            "enc_blk_nums": _counts(sd, "encoders", n_enc), "middle_blk_num": len(mid),
            "dec_blk_nums": _counts(sd, "decoders", n_dec)}


def _naf_select(form: str, latent: bool):
    def select(container: Any) -> Picked:
        picked = unwrap(container, form)
        sd = picked.state_dict
        if "init_conv.weight" in sd and "time_mlp.1.weight" in sd:
            raise OfficialCheckpointError("an IR-SDE ConditionalUNet checkpoint: use --format irsde or irsde_denoise")
        if "latent_conv.weight" in sd:
            raise OfficialCheckpointError("a latent Refusion autoencoder checkpoint: use --format refusion_ae")
        if "intro.weight" not in sd or "time_mlp.1.weight" not in sd:
            first = ", ".join(list(sd)[:3])
            raise OfficialCheckpointError(f"not a Refusion ConditionalNAFNet checkpoint (--format {form}): "
                                          f"no intro / time_mlp keys (first keys: {first})")
        channels = int(sd["intro.weight"].shape[1]) // 2
        if latent and channels == 3:
            raise OfficialCheckpointError("a 3-channel (pixel-space) ConditionalNAFNet: use --format refusion")
        if not latent and channels != 3 and channels != 1:
            raise OfficialCheckpointError(f"a {channels}-channel ConditionalNAFNet, a latent one: "
                                          "use --format refusion_latent")
        return picked

    return select


def _naf_build(intro_skip: bool):
    def build(img_channel: int, width: int, middle_blk_num: int, enc_blk_nums: list[int], dec_blk_nums: list[int],
              upscale: int = 1) -> RefusionNAFNet:
        # ``upscale`` is accepted and unused, as in the official constructor
        return RefusionNAFNet(2 * img_channel, img_channel, width=width, enc_blk_nums=tuple(enc_blk_nums),
                              middle_blk_num=middle_blk_num, dec_blk_nums=tuple(dec_blk_nums), intro_skip=intro_skip)

    return build


_DIRS = {"derain": "deraining", "deblur": "deblurring", "deshadow": "deshadow", "inpaint": "inpainting", "sr": "sisr"}


def _refusion_json(arch: dict[str, Any], task: str | None) -> dict[str, Any]:
    task = task or "derain"
    scale = 4 if task == "sr" else 1
    return {
        "img_channels": arch["img_channel"],
        "method": {"name": "irsde", "num_steps": 100, "lam": 50.0, "eps": 0.005, "schedule": "cosine",
                   "eta": 1.0, "net_input": "official", "lr_upsample": "torch" if scale > 1 else "matlab"},
        "net": {"name": "refusion_nafnet", "width": arch["width"], "enc_blk_nums": list(arch["enc_blk_nums"]),
                "middle_blk_num": arch["middle_blk_num"], "dec_blk_nums": list(arch["dec_blk_nums"]),
                "intro_skip": False},
        "sample": {"sampler": "sde", "steps": 100},
        "data": {"train": {"scale": scale}},
        "value_range": "[0, 1] (the net's; irdiff maps its [-1, 1] images)",
        "time_input": "the integer step t = 1..100",
        "padding_multiple": 2 ** len(arch["enc_blk_nums"]),
        "ema": "the file holds one net; the official training saves the trained net (*_G.pth) and its EMA "
               "(*_EMA.pth) as separate files with the same keys",
        "reference": f"codes/config/{_DIRS[task]}/options/test/refusion.yml",
        **({"input": "the masked image with missing pixels set to white (1.0), as the official mask_to"}
           if task == "inpaint" else {}),
    }


NAF_DEFAULTS = {"img_channel": 3, "width": 64, "middle_blk_num": 1, "enc_blk_nums": [1, 1, 1, 28],
                "dec_blk_nums": [1, 1, 1, 1], "upscale": 1}

REFUSION = register_format(OfficialFormat(
    name="refusion", defaults=dict(NAF_DEFAULTS), build=_naf_build(False), select=_naf_select("refusion", False),
    rename=naf_rename, model_json=_refusion_json, tasks=tuple(_DIRS), paper=PAPER, infer_arch=_naf_infer,
))

REFUSION_LATENT = register_format(OfficialFormat(
    name="refusion_latent", defaults={**NAF_DEFAULTS, "img_channel": 8}, build=_naf_build(True),
    select=_naf_select("refusion_latent", True), rename=naf_rename, paper=PAPER, infer_arch=_naf_infer,
))


def _ae_select(container: Any) -> Picked:
    picked = unwrap(container, "refusion_ae")
    if "latent_conv.weight" not in picked.state_dict or "init_conv.weight" not in picked.state_dict:
        first = ", ".join(list(picked.state_dict)[:3])
        raise OfficialCheckpointError(f"not a latent Refusion autoencoder checkpoint: no latent_conv / init_conv "
                                      f"keys (first keys: {first})")
    return picked


def _ae_infer(sd: dict[str, torch.Tensor]) -> dict[str, Any]:
    init = sd["init_conv.weight"]
    ch = int(init.shape[0])
    downs = sorted((int(m.group(1)), v) for k, v in sd.items() if (m := re.match(r"encoder\.(\d+)\.3\.weight$", k)))
    arch = {"in_ch": int(init.shape[1]), "ch": ch, "embed_dim": int(sd["latent_conv.weight"].shape[0]),
            "ch_mult": [int(v.shape[0]) // ch for _, v in downs]}
    if "final_conv.weight" in sd:
        arch["out_ch"] = int(sd["final_conv.weight"].shape[0])
    return arch


def _ae_build(in_ch: int, out_ch: int, ch: int, ch_mult: list[int], embed_dim: int) -> RefusionAutoencoder:
    return RefusionAutoencoder(in_ch, out_ch, 0, ch, tuple(ch_mult), embed_dim)


REFUSION_AE = register_format(OfficialFormat(
    name="refusion_ae", defaults={"in_ch": 3, "out_ch": 3, "ch": 8, "ch_mult": [4, 8, 8, 16], "embed_dim": 8},
    build=_ae_build, select=_ae_select, rename=unet_rename, paper=PAPER, infer_arch=_ae_infer,
))
