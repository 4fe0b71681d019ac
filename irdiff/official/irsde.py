"""IR-SDE checkpoints (Luo et al., ICML 2023; github.com/Algolzw/image-restoration-sde).

Formats:
- ``irsde``: the general ConditionalUNet (codes/config/{deraining,deblurring,deshadow,inpainting,sisr}),
  tasks derain | deblur | deshadow | inpaint | sr;
- ``irsde_denoise``: the Denoising-SDE net without a condition (codes/config/denoising-sde), task denoise.

The official code saves a plain state_dict (``torch.save(net.state_dict())``, DataParallel's ``module.``
stripped; ``*_G.pth`` the trained net, ``*_EMA.pth`` its EMA copy, the same keys): any of them loads.
Which of the two a file holds cannot be told from its contents; model.json records the file name.

Sampling settings are those of each task's options/test/ir-sde.yml (what produced the published
results): T = 100, cosine θ schedule, ε_T = 0.005, x_T = μ + λ·noise; λ (``max_sigma``) 10 for deraining
and deblurring, 30 for deshadowing, inpainting and SR; the posterior sampler (100 one-step posterior
draws) for deraining, Euler–Maruyama on the reverse SDE (100 steps) for the others. Denoising-SDE:
λ = 75, T = 100, ε_T = 0.04 (fixed in its SDE class), the reverse ODE from the step where the chain's
std equals the input noise, every step down to 0.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from irdiff.nets.official_irsde import IRSDEUNet
from irdiff.official import OfficialCheckpointError, OfficialFormat, Picked, register_format, unwrap

PAPER = "Luo et al., Image Restoration with Mean-Reverting SDEs, ICML 2023"

# official key -> ours; applied in order, each once (the official tree is nested ModuleLists/Sequentials)
_RENAMES = [
    (r"^time_mlp\.1\.", "time_fc1."),
    (r"^time_mlp\.3\.", "time_fc2."),
    # U-Net levels: IR-SDE's downs/ups, Refusion's autoencoder encoder/decoder
    (r"^(downs|ups|encoder|decoder)\.(\d+)\.0\.", r"\1.\2.res1."),
    (r"^(downs|ups|encoder|decoder)\.(\d+)\.1\.", r"\1.\2.res2."),
    (r"^(downs|ups|encoder|decoder)\.(\d+)\.2\.", r"\1.\2.attn."),
    (r"^(downs|ups|encoder|decoder)\.(\d+)\.3\.1\.", r"\1.\2.resample.conv."),  # nearest ×2, conv: index 1
    (r"^(downs|ups|encoder|decoder)\.(\d+)\.3\.", r"\1.\2.resample."),
    (r"\.mlp\.1\.", ".emb_proj."),
    (r"\.block1\.proj\.", ".conv1."),
    (r"\.block2\.proj\.", ".conv2."),
    (r"\.res_conv\.", ".skip."),
    (r"attn\.fn\.norm\.g$", "attn.norm.weight"),
    (r"attn\.fn\.fn\.to_qkv\.", "attn.to_qkv."),
    (r"attn\.fn\.fn\.to_out\.0\.", "attn.out_conv."),
    (r"attn\.fn\.fn\.to_out\.1\.g$", "attn.out_norm.weight"),
    (r"attn\.fn\.fn\.to_out\.(weight|bias)$", r"attn.out_conv.\1"),  # full attention: a bare conv
]


def rename(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in sd.items():
        new = key
        for pattern, repl in _RENAMES:
            new = re.sub(pattern, repl, new, count=1)
        if key.endswith(".g") and value.dim() == 4 and value.shape[0] == 1:
            value = value.reshape(-1)  # the channel LayerNorm gain is stored as (1, C, 1, 1)
        out[new] = value
    return out


def _select(form: str):
    """Pick the state_dict and refuse the other IR-SDE form (or anything that is not an IR-SDE net)."""

    def select(container: Any) -> Picked:
        picked = unwrap(container, form)
        sd = picked.state_dict
        if "intro.weight" in sd and "time_mlp.1.weight" in sd:
            raise OfficialCheckpointError("a Refusion ConditionalNAFNet checkpoint: use --format refusion")
        if "latent_conv.weight" in sd:
            raise OfficialCheckpointError("a latent Refusion autoencoder checkpoint: use --format refusion_ae")
        if "init_conv.weight" not in sd or "time_mlp.1.weight" not in sd:
            first = ", ".join(list(sd)[:3])
            raise OfficialCheckpointError(f"not an IR-SDE ConditionalUNet checkpoint (--format {form}): "
                                          f"no init_conv / time_mlp keys (first keys: {first})")
        full_mid = "mid_attn.fn.fn.to_out.weight" in sd
        if form == "irsde" and full_mid:
            raise OfficialCheckpointError("a Denoising-SDE checkpoint (full mid attention, no condition): "
                                          "use --format irsde_denoise")
        if form == "irsde_denoise" and not full_mid and "mid_attn.fn.fn.to_out.0.weight" in sd:
            raise OfficialCheckpointError("a conditional IR-SDE checkpoint (linear mid attention): use --format irsde")
        return picked

    return select


def _infer(conditional: bool):
    """nf, depth and channel counts from the tensors (the released nets differ from the training configs:
    deshadowing's test config says nf=32, depth=5, its training config nf=64, depth=4)."""

    def infer(sd: dict[str, torch.Tensor]) -> dict[str, Any]:
        init, final = sd["init_conv.weight"], sd.get("final_conv.weight")
        levels = {int(m.group(1)) for k in sd if (m := re.match(r"downs\.(\d+)\.", k))}
        arch = {"nf": int(init.shape[0]), "in_nc": int(init.shape[1]) // (2 if conditional else 1)}
        if levels:
            arch["depth"] = max(levels) + 1
        if final is not None and final.dim() == 4:
            arch["out_nc"] = int(final.shape[0])
        return arch

    return infer


def _build(conditional: bool, mid_attention: str):
    def build(in_nc: int, out_nc: int, nf: int, depth: int, upscale: int = 1) -> IRSDEUNet:
        # ``upscale`` is accepted and unused, as in the official constructor
        return IRSDEUNet(in_channels=2 * in_nc if conditional else in_nc, out_channels=out_nc, nf=nf, depth=depth,
                         conditional=conditional, mid_attention=mid_attention)

    return build


# (λ on the 0–255 scale, sampler) per task, from each task's options/test/ir-sde.yml
_TASKS = {
    "derain": (10.0, "posterior"),
    "deblur": (10.0, "sde"),
    "deshadow": (30.0, "sde"),
    "inpaint": (30.0, "sde"),
    "sr": (30.0, "sde"),
}


def _net_cfg(arch: dict[str, Any], conditional: bool, mid_attention: str) -> dict[str, Any]:
    if arch["in_nc"] != arch["out_nc"]:
        raise OfficialCheckpointError(f"in_nc={arch['in_nc']} != out_nc={arch['out_nc']}: irdiff models restore "
                                      "images of one channel count")
    return {"name": "irsde_unet", "nf": arch["nf"], "depth": arch["depth"], "conditional": conditional,
            "mid_attention": mid_attention}


def _general_json(arch: dict[str, Any], task: str | None) -> dict[str, Any]:
    lam, sampler = _TASKS[task or "derain"]
    scale = 4 if task == "sr" else 1
    return {
        "img_channels": arch["in_nc"],
        "method": {"name": "irsde", "num_steps": 100, "lam": lam, "eps": 0.005, "schedule": "cosine",
                   "eta": 1.0, "net_input": "official", "lr_upsample": "torch" if scale > 1 else "matlab"},
        "net": _net_cfg(arch, True, "linear"),
        "sample": {"sampler": sampler, "steps": 100},
        "data": {"train": {"scale": scale}},
        "value_range": "[0, 1] (the net's; irdiff maps its [-1, 1] images)",
        "time_input": "the integer step t = 1..100",
        "padding_multiple": 2 ** arch["depth"],
        "ema": _EMA_NOTE,
        "reference": f"codes/config/{_DIRS[task or 'derain']}/options/test/ir-sde.yml",
        **({"input": "the masked image with missing pixels set to white (1.0), as the official mask_to"}
           if task == "inpaint" else {}),
    }


_EMA_NOTE = ("the file holds one net; the official training saves the trained net (*_G.pth) and its EMA "
             "(*_EMA.pth) as separate files with the same keys, so which one this is follows from its name")

_DIRS = {"derain": "deraining", "deblur": "deblurring", "deshadow": "deshadow", "inpaint": "inpainting", "sr": "sisr"}


def _denoise_json(arch: dict[str, Any], task: str | None) -> dict[str, Any]:
    return {
        "img_channels": arch["in_nc"],
        "method": {"name": "irsde", "num_steps": 100, "lam": 75.0, "eps": 0.04, "schedule": "cosine",
                   "mean_target": "clean", "noise_sigma": 25.0, "net_input": "official"},
        "net": _net_cfg(arch, False, "full"),
        # steps = T: every step from the start step t*(σ) down to 0, as the official reverse_ode(T=t*)
        "sample": {"sampler": "ode", "steps": 100},
        "data": {"train": {"scale": 1}},
        "value_range": "[0, 1] (the net's; irdiff maps its [-1, 1] images)",
        "time_input": "the integer step t = 1..100",
        "padding_multiple": 2 ** arch["depth"],
        "ema": _EMA_NOTE,
        "noise_sigma": "the input's noise std (0-255) sets the start step: irdiff restore --noise-sigma S",
        "reference": "codes/config/denoising-sde/options/test/ir-sde.yml (models/denoising_model.py test)",
    }


DEFAULTS = {"in_nc": 3, "out_nc": 3, "nf": 64, "depth": 4}

IRSDE = register_format(OfficialFormat(
    name="irsde", defaults={**DEFAULTS, "upscale": 1}, build=_build(True, "linear"), select=_select("irsde"),
    rename=rename, model_json=_general_json, tasks=tuple(_TASKS), paper=PAPER,
    # widths are read off the file: the deshadowing test config says nf=32, depth=5, its training config
    # nf=64, depth=4; the tensors decide
    infer_arch=_infer(True),
))

IRSDE_DENOISE = register_format(OfficialFormat(
    name="irsde_denoise", defaults=dict(DEFAULTS), build=_build(False, "full"), select=_select("irsde_denoise"),
    rename=rename, model_json=_denoise_json, tasks=("denoise",), paper=PAPER, infer_arch=_infer(False),
))
