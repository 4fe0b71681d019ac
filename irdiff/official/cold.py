"""Cold Diffusion (Bansal et al., 2022): the authors' deblurring U-Net checkpoints.

Container (deblurring-diffusion-pytorch ``Trainer.save``): ``{'step', 'model', 'ema'}``, each the
state_dict of ``DataParallel(GaussianDiffusion)``: the U-Net under ``module.denoise_fn.`` and the fixed
blur kernels under ``module.gaussian_kernels.N.weight`` (not needed: irdiff rebuilds the blur). The
official test scripts sample with the EMA copy, so ``ema`` is taken; a bare ``denoise_fn`` / U-Net
state_dict is accepted too.

Tasks (the README's commands; every one samples all T steps with ``x0_step_down`` = Algorithm 2):

- ``deblur_celeba``: conditional deblurring, CelebA 128², T = 200, 15x15 kernels, std exp(0.01·i),
  reflect border (``celebA_128.py --time_steps 200 --blur_size 15 --blur_std 0.01 --blur_routine
  Exponential_reflect``);
- ``deblur_mnist``: T = 20, 11x11, constant std 7, circular border, one channel;
- ``generate_celeba`` / ``generate_afhq``: the released weights (unconditional generation, ``--discrete
  --time_steps 300 --blur_size 27 --blur_std 0.01 --blur_routine Exponential``): D(x0, T) is the
  per-channel mean colour, so the image given to ``restore`` only contributes its mean colour (the
  official test draws that colour from a GMM fitted to training images).

The CIFAR-10 deblurring models use another net (``Model`` of Model2.py) and are not supported.
"""

from __future__ import annotations

from typing import Any

import torch

from irdiff.official import OfficialCheckpointError, OfficialFormat, register_format, strip_prefix

PAPER = "Bansal et al., Cold Diffusion: Inverting Arbitrary Image Transforms Without Noise, NeurIPS 2023"

DEFAULTS = {"dim": 64, "dim_mults": (1, 2, 4, 8), "channels": 3, "with_time_emb": True, "residual": False}

# task -> (T, kernel size, blur_std, schedule, border, channels)
_TASKS = {
    "deblur_celeba": (200, 15, 0.01, "exponential", "reflect", 3),
    "deblur_mnist": (20, 11, 7.0, "linear", "circular", 1),
    "generate_celeba": (300, 27, 0.01, "exponential", "circular", 3),
    "generate_afhq": (300, 27, 0.01, "exponential", "circular", 3),
}

# the architecture each task's checkpoints have, where it differs from DEFAULTS
TASK_DEFAULTS = {"deblur_mnist": {"channels": 1}}

_UNET_KEY = "final_conv.1.weight"  # present in every Unet (the last 1x1 conv)


def build(dim: int, dim_mults: Any, channels: int, with_time_emb: bool, residual: bool) -> torch.nn.Module:
    from irdiff.nets.official_cold import ColdUnet

    return ColdUnet(in_channels=channels, out_channels=channels, noise_level_dim=1, dim=dim,
                    dim_mults=tuple(dim_mults), with_time_emb=with_time_emb, residual=residual)


def select(container: Any) -> dict[str, torch.Tensor]:
    """The EMA U-Net of a {'step', 'model', 'ema'} dict, or a bare (``module.``-prefixed) state_dict."""
    if not isinstance(container, dict):
        raise OfficialCheckpointError(f"holds a {type(container).__name__}, not a Cold Diffusion checkpoint (a dict)")
    sd = container.get("ema", container.get("model")) if "ema" in container or "model" in container else container
    if not isinstance(sd, dict):
        raise OfficialCheckpointError("its 'ema' / 'model' entry is not a state_dict")
    sd = strip_prefix(sd, "module.")
    if any(k.startswith("denoise_fn.") for k in sd):
        sd = {k[len("denoise_fn."):]: v for k, v in sd.items() if k.startswith("denoise_fn.")}
    if _UNET_KEY not in sd or "downs.0.0.ds_conv.weight" not in sd:
        keys = ", ".join(list(sd)[:3]) or "none"
        raise OfficialCheckpointError(f"not a Cold Diffusion U-Net checkpoint (no {_UNET_KEY}; first keys: {keys})")
    return sd


def model_json(arch: dict[str, Any], task: str | None) -> dict[str, Any]:
    T, size, std, schedule, border, channels = _TASKS[task or "deblur_celeba"]
    if arch["channels"] != channels:
        raise OfficialCheckpointError(f"--task {task}: the official model has {channels} channel(s), "
                                      f"the architecture says channels={arch['channels']}")
    discrete = (task or "").startswith("generate")
    method = {"name": "cold", "degradation": "blur", "num_steps": T, "blur_kernel_size": size, "blur_std": std,
              "blur_std_increment": 0.0, "blur_schedule": schedule, "blur_padding": border, "level": "index",
              "blur_discrete": discrete}
    dims = list(arch["dim_mults"])
    return {
        "img_channels": channels,
        "method": method,
        "net": {"name": "cold_unet", "dim": arch["dim"], "dim_mults": dims, "with_time_emb": arch["with_time_emb"],
                "residual": arch["residual"]},
        "sample": {"sampler": "improved", "steps": T},
        "data": {"train": {"scale": 1}},
        "value_range": "[-1, 1] (as irdiff)",
        "time_input": "the 0-based step index s - 1 (level: index)",
        "padding_multiple": 2 ** (len(dims) - 1),
        "weights": "the EMA copy when the file has one (the official test scripts sample with ema_model)",
        "reference": "deblurring-diffusion-pytorch/README commands; deblurring_diffusion_pytorch.py all_sample",
    }


COLD = register_format(OfficialFormat(name="cold", defaults=dict(DEFAULTS), build=build, select=select,
                                      model_json=model_json, tasks=tuple(_TASKS), task_defaults=TASK_DEFAULTS))
