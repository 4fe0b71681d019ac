"""``--format palette``: checkpoints of Janspiry's Palette-Image-to-Image-Diffusion-Models (inpainting).

What the official code saves (core/base_model.py ``save_network``): ``{epoch}_Network.pth`` =
``torch.save(Network.state_dict())``: the guided-diffusion U-Net under ``denoise_fn.`` plus the schedule
buffers (``gammas``, ``sqrt_recip_gammas``, ...), and the EMA copy as a separate file of the same layout,
``{epoch}_Network_ema.pth``. Either file imports (the same keys: the file you give is the one taken);
the official test (``run.py -p test``) samples with the non-EMA ``Network`` and the README's FID rows
say "EMA: False". ``{epoch}.state`` (optimizers) is refused. A bare U-Net state_dict is accepted too.

Sampling as the official test phase: the "test" schedule (linear β from 1e-4 to 0.09, T = 1000; the
nets were *trained* on linear 1e-6 .. 1e-2, T = 2000, and see γ, so any schedule works), ancestral DDPM
over all 1000 steps with β̃ and x0 clipped to [−1, 1], the net fed γ; condition = the image with N(0, 1)
noise in the hole (no mask channel: in_channel 6); sampling starts from that condition image itself and
the known pixels are pasted back after every step; images in [−1, 1] at 256x256 in the configs.
"""

from __future__ import annotations

from typing import Any

import torch

from irdiff.nets.official_palette import OfficialPaletteUNet, rename_official
from irdiff.official import OfficialCheckpointError, OfficialFormat, register_format, strip_prefix

# config/inpainting_celebahq.json = config/inpainting_places2.json ("module_name": "guided_diffusion")
DEFAULTS: dict[str, Any] = dict(in_channel=6, out_channel=3, inner_channel=64, channel_mults=[1, 2, 4, 8],
                                attn_res=[16], res_blocks=2, dropout=0.2, num_heads=1, num_head_channels=32,
                                num_heads_upsample=-1, image_size=256)
TASKS = ("inpainting_celebahq", "inpainting_places2")
DEFAULT_TASK = "inpainting_celebahq"
# beta_schedule "test" of both configs
SCHEDULE = dict(num_steps=1000, schedule="linear", beta_start=1e-4, beta_end=0.09)

_UNET_KEYS = ("cond_embed.0.weight", "input_blocks.0.0.weight", "out.2.weight")
PAPER = ("Saharia et al., Palette: Image-to-Image Diffusion Models, SIGGRAPH 2022 "
         "(weights: Janspiry's unofficial implementation)")


def build(in_channel: int = 6, out_channel: int = 3, **arch: Any) -> OfficialPaletteUNet:
    return OfficialPaletteUNet(in_channels=in_channel, out_channels=out_channel, **arch)


def select(container: Any) -> dict[str, torch.Tensor]:
    """The guided-diffusion U-Net's tensors (official names) out of a {epoch}_Network[_ema].pth."""
    if not isinstance(container, dict) or not container:
        raise OfficialCheckpointError(f"palette: expected a state_dict (a dict of tensors), "
                                      f"got {type(container).__name__}")
    sd = strip_prefix(container, "module.")
    if "optimizers" in sd or "schedulers" in sd:
        raise OfficialCheckpointError("palette: this is the training state ({epoch}.state); give {epoch}_Network.pth")
    if any(k.startswith("denoise_fn.") for k in sd):
        sd = strip_prefix({k[len("denoise_fn."):]: v for k, v in sd.items() if k.startswith("denoise_fn.")})
    if all(k in sd for k in _UNET_KEYS):
        return sd
    if "noise_level_mlp.1.weight" in sd:
        what = ("a Palette Network with the sr3 backbone (module_name 'sr3'), not supported"
                if "gammas" in container or "module.gammas" in container else "an SR3 checkpoint: use --format sr3")
        raise OfficialCheckpointError(f"palette: this is {what}; --format palette reads the guided_diffusion "
                                      "U-Net of the released configs")
    raise OfficialCheckpointError(f"palette: not a Palette guided-diffusion U-Net state_dict (no "
                                  f"{' / '.join(_UNET_KEYS)}; found e.g. {', '.join(list(sd)[:3])})")


def model_json(arch: dict[str, Any], task: str | None) -> dict[str, Any]:
    """The irdiff config that samples as the official test phase does with this checkpoint."""
    task = task or DEFAULT_TASK
    if task not in TASKS:
        raise OfficialCheckpointError(f"palette: unknown --task {task!r} (known: {', '.join(TASKS)})")
    if arch["in_channel"] != 2 * arch["out_channel"]:
        raise OfficialCheckpointError(f"palette: in_channel {arch['in_channel']} is not 2 x out_channel "
                                      f"{arch['out_channel']}: only the inpainting nets ([cond, noisy]) import")
    net = {k: (list(v) if isinstance(v, tuple) else v) for k, v in arch.items()
           if k not in ("in_channel", "out_channel")}
    return {
        "name": f"palette_official_{task}",
        "img_channels": arch["out_channel"],
        "method": {"name": "sr3", **SCHEDULE, "loss_type": "l2", "noise_level_input": "gamma", "clip_x0": True,
                   "inpainting": True, "mask_channel": False, "init_from_cond": True},
        "net": {"name": "official_palette", **net},
        "data": {"train": {"name": "synthetic", "patch_size": arch["image_size"],
                           "degradation": {"name": "mask", "kind": "mixed"}}},
        "sample": {"sampler": "ddpm", "steps": SCHEDULE["num_steps"]},
        # notes for model.json / the card (not config keys)
        "value_range": [-1, 1],
        "padding_multiple": 2 ** (len(arch["channel_mults"]) - 1),
        "reference": "Janspiry/Palette-Image-to-Image-Diffusion-Models (an unofficial Palette implementation), "
                     f"config/{task}.json, run.py -p test: the 'test' schedule, 1000 DDPM steps from the condition",
        "ema": "the official test samples with {epoch}_Network.pth (not EMA); {epoch}_Network_ema.pth, the EMA "
               "copy, imports the same way: the file given is the one taken",
    }


FORMAT = register_format(OfficialFormat(
    name="palette", defaults=DEFAULTS, build=build, select=select, rename=rename_official, model_json=model_json,
    tasks=TASKS, paper=PAPER))
