"""Noise-DA (Liao et al., ICLR 2025): the authors' U-Net restorers (denoise.pth, derain.pth, deblur.pth).

Container (core/base_model.py ``save_network``): the whole ``Network`` state_dict: the restorer under
``RestorationNet.*``, the diffusion teacher under ``denoise_fn.*`` and the noise-schedule buffers
(``gammas``, ...). Only the restorer is used at inference (``restoration_test_head``), so only it is
taken; the ``*_Network_ema.pth`` files have the same layout. A bare RestorationNet state_dict (and
``module.`` prefixes) are accepted too. The official test loads the non-EMA ``checkpoint`` file.

Tasks (Denoising/Deraining/Deblurring configs/options_test.json): ``denoise`` works on [0, 1] images
(``norm0``, SIDD), ``derain`` and ``deblur`` on [−1, 1] (``norm1``). Inference: ŷ = x + R(x) after a
replicate padding to a multiple of 8 (``test_split_fn``, dep_U = 4), clamped to the range. Images of
more than 2500² px are cut by the official test into four overlapping quarters; irdiff tiles instead.
"""

from __future__ import annotations

from typing import Any

import torch

from irdiff.official import OfficialCheckpointError, OfficialFormat, register_format, strip_prefix

PAPER = "Liao et al., Denoising as Adaptation: Noise-Space Domain Adaptation for Image Restoration, ICLR 2025"

# RestorationNet's constructor (Network builds it with these defaults)
DEFAULTS = {"in_channels": 3, "out_channels": 3, "depth": 4, "wf": 64, "slope": 0.2}

_RANGES = {"denoise": [0.0, 1.0], "derain": [-1.0, 1.0], "deblur": [-1.0, 1.0]}
_DIRS = {"denoise": "Denoising", "derain": "Deraining", "deblur": "Deblurring"}
_PREFIX = "RestorationNet."


def build(in_channels: int, out_channels: int, depth: int, wf: int, slope: float) -> torch.nn.Module:
    from irdiff.nets.official_noise_da import NoiseDAUNet

    return NoiseDAUNet(in_channels=in_channels, out_channels=out_channels, noise_level_dim=0, depth=depth, wf=wf,
                       slope=slope)


def select(container: Any) -> dict[str, torch.Tensor]:
    """``RestorationNet.*`` of a whole-Network state_dict (or a bare RestorationNet state_dict)."""
    if not isinstance(container, dict) or not all(isinstance(k, str) for k in container):
        raise OfficialCheckpointError(f"holds a {type(container).__name__}, not a Noise-DA Network state_dict")
    sd = strip_prefix(container, "module.")
    if any(k.startswith(_PREFIX) for k in sd):
        return {k[len(_PREFIX):]: v for k, v in sd.items() if k.startswith(_PREFIX)}
    if "last.weight" in sd and "down_path.0.block.0.weight" in sd:
        return sd
    keys = ", ".join(list(sd)[:3]) or "none"
    raise OfficialCheckpointError(f"not a Noise-DA checkpoint (no {_PREFIX}* keys; first keys: {keys})")


def model_json(arch: dict[str, Any], task: str | None) -> dict[str, Any]:
    task = task or "denoise"
    if arch["in_channels"] != arch["out_channels"]:
        raise OfficialCheckpointError(f"in_channels={arch['in_channels']} != out_channels={arch['out_channels']}: "
                                      "the restorer adds its output to its input")
    return {
        "img_channels": arch["in_channels"],
        # λ_dif, schedule: the reference's training values (diff_weight 0.2, linear 1e-6..1e-2, 1000 steps)
        "method": {"name": "noise_da", "lambda_dif": 0.2, "diffusion_steps": 1000, "beta_start": 1e-6,
                   "beta_end": 0.01, "value_range": _RANGES[task]},
        "net": {"name": "noise_da_unet", "depth": arch["depth"], "wf": arch["wf"], "slope": arch["slope"]},
        "sample": {"sampler": "direct", "steps": 1},
        "data": {"train": {"scale": 1}},
        "value_range": f"{_RANGES[task]} (the net's, the reference's norm{'0' if task == 'denoise' else '1'}); "
                       "irdiff maps its [-1, 1] images",
        "padding_multiple": max(8, 2 ** (arch["depth"] - 1)),
        "weights": "the RestorationNet of the whole-Network state_dict (the diffusion teacher is dropped)",
        "reference": f"{_DIRS[task]}/configs/options_test.json; models/model.py test_split_fn",
    }


NOISE_DA = register_format(OfficialFormat(name="noise_da", defaults=dict(DEFAULTS), build=build, select=select,
                                          model_json=model_json, tasks=tuple(_RANGES)))
