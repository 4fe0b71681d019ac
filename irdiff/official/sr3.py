"""``--format sr3``: checkpoints of Janspiry's Image-Super-Resolution-via-Iterative-Refinement (SR3).

What the official code saves (model/model.py ``save_network``): ``I{iter}_E{epoch}_gen.pth`` =
``torch.save(GaussianDiffusion.state_dict())``: the U-Net under ``denoise_fn.`` plus the noise-schedule
buffers (``betas``, ``alphas_cumprod``, ...), unwrapped from DataParallel (a ``module.`` prefix is
accepted anyway). ``*_opt.pth`` holds the optimizer only and is refused. A bare U-Net state_dict is
accepted too. There is no EMA copy in this repository (its ``ema_scheduler`` is marked "not used").

Sampling as the official ``sr.py -p val`` / ``infer.py``: the "val" schedule (linear β from 1e-6 to
1e-2, T = 2000), ancestral DDPM over all 2000 steps with the posterior variance β̃ and x0 clipped to
[−1, 1], the net fed √γ; condition = the LR image bicubic-upsampled to the output size; images in [−1, 1].
"""

from __future__ import annotations

from typing import Any

import torch

from irdiff.nets.official_sr3 import OfficialSR3UNet, rename_official
from irdiff.official import OfficialCheckpointError, OfficialFormat, register_format, strip_prefix

# config/sr_sr3_16_128.json (norm_groups absent there: define_G's default 32)
DEFAULTS: dict[str, Any] = dict(in_channel=6, out_channel=3, inner_channel=64, norm_groups=32,
                                channel_mults=[1, 2, 4, 8, 8], attn_res=[16], res_blocks=2, dropout=0.2,
                                image_size=128)
# each task: the official config's U-Net (overrides of DEFAULTS) and its LR -> HR factor
TASK_ARCH: dict[str, dict[str, Any]] = {
    "sr_16_128": {},
    # config/sr_sr3_64_512.json
    "sr_64_512": dict(inner_channel=64, norm_groups=16, channel_mults=[1, 2, 4, 8, 16], attn_res=[], res_blocks=1,
                      dropout=0.0, image_size=512),
}
TASK_SCALE = {"sr_16_128": 8, "sr_64_512": 8}
DEFAULT_TASK = "sr_16_128"
# both configs: beta_schedule "val" (= "train")
SCHEDULE = dict(num_steps=2000, schedule="linear", beta_start=1e-6, beta_end=1e-2)

_UNET_KEYS = ("noise_level_mlp.1.weight", "final_conv.block.3.weight")
PAPER = ("Saharia et al., Image Super-Resolution via Iterative Refinement, TPAMI 2022 "
         "(weights: Janspiry's unofficial implementation)")


def arch_for(task: str | None, **arch: Any) -> dict[str, Any]:
    """The official U-Net arguments of ``task`` (default sr_16_128), overridden by ``arch``."""
    task = task or DEFAULT_TASK
    if task not in TASK_ARCH:
        raise OfficialCheckpointError(f"sr3: unknown --task {task!r} (known: {', '.join(TASK_ARCH)})")
    return {**DEFAULTS, **TASK_ARCH[task], **arch}


def build(in_channel: int = 6, out_channel: int = 3, **arch: Any) -> OfficialSR3UNet:
    return OfficialSR3UNet(in_channels=in_channel, out_channels=out_channel, **arch)


def _examples(keys) -> str:
    return ", ".join(list(keys)[:3]) or "no keys"


def select(container: Any) -> dict[str, torch.Tensor]:
    """The U-Net's tensors (official key names) out of a gen.pth / bare U-Net state_dict."""
    if not isinstance(container, dict) or not container:
        raise OfficialCheckpointError(f"sr3: expected a state_dict (a dict of tensors), got {type(container).__name__}")
    sd = strip_prefix(container, "module.")
    if "optimizer" in sd:
        raise OfficialCheckpointError("sr3: this is the optimizer file (*_opt.pth); give the *_gen.pth next to it")
    if "gammas" in sd or any(k.startswith(("input_blocks.", "denoise_fn.input_blocks.")) for k in sd):
        raise OfficialCheckpointError("sr3: this is a Palette checkpoint (Palette's Network / guided-diffusion "
                                      "U-Net); use --format palette")
    if any(k.startswith("denoise_fn.") for k in sd):
        sd = strip_prefix({k[len("denoise_fn."):]: v for k, v in sd.items() if k.startswith("denoise_fn.")})
    if not all(k in sd for k in _UNET_KEYS):
        raise OfficialCheckpointError(f"sr3: not an SR3 U-Net state_dict (no {' / '.join(_UNET_KEYS)}; "
                                      f"found e.g. {_examples(sd)})")
    return sd


def model_json(arch: dict[str, Any], task: str | None) -> dict[str, Any]:
    """The irdiff config that samples as the official code does with this checkpoint."""
    task = task or DEFAULT_TASK
    arch_for(task)  # checks the task name
    if arch["in_channel"] != 2 * arch["out_channel"]:
        raise OfficialCheckpointError(f"sr3: in_channel {arch['in_channel']} is not 2 x out_channel "
                                      f"{arch['out_channel']}: only the conditional (super-resolution) nets import")
    net = {k: (list(v) if isinstance(v, tuple) else v) for k, v in arch.items()
           if k not in ("in_channel", "out_channel")}
    return {
        "name": f"sr3_official_{task}",
        "img_channels": arch["out_channel"],
        "method": {"name": "sr3", **SCHEDULE, "loss_type": "l1", "noise_level_input": "sqrt_gamma", "clip_x0": True},
        "net": {"name": "official_sr3", **net},
        # the LR input is bicubic-upsampled by the scale (the official data: PIL bicubic, see docs)
        "data": {"train": {"name": "paired", "scale": TASK_SCALE[task], "patch_size": arch["image_size"]}},
        "sample": {"sampler": "ddpm", "steps": SCHEDULE["num_steps"]},
        # notes for model.json / the card (not config keys)
        "value_range": [-1, 1],
        "padding_multiple": 2 ** (len(arch["channel_mults"]) - 1),
        "reference": "Janspiry/Image-Super-Resolution-via-Iterative-Refinement (an unofficial SR3 implementation), "
                     f"config/sr_sr3_{task[3:]}.json, sr.py -p val: 2000 DDPM steps, x0 clipped",
        "ema": "none in this repository (its gen.pth is the trained net)",
    }


FORMAT = register_format(OfficialFormat(
    name="sr3", defaults=DEFAULTS, build=build, select=select, rename=rename_official, model_json=model_json,
    tasks=tuple(TASK_ARCH), task_defaults=TASK_ARCH, paper=PAPER))
