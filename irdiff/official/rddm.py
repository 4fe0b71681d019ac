"""RDDM (Liu et al., CVPR 2024): the authors' UnetRes checkpoints (one or two U-Nets).

Container (``Trainer.save``): ``{'step', 'model', 'opt0'[, 'opt1'], 'ema', 'scaler'}``. ``model`` is the
ResidualDiffusion state_dict (the net under ``model.``, plus its schedule buffers); ``ema`` is the
ema_pytorch EMA's (``ema_model.model.*``, ``online_model.*``, ``initted``, ``step``). The official test
samples with ``ema.ema_model``, so the EMA copy is taken (``model`` when there is no ``ema``; a bare
UnetRes state_dict with ``unet0.*`` keys is accepted too).

Architecture arguments are the official UnetRes constructor's (``dim``, ``dim_mults``, ``channels``,
``resnet_block_groups``, ``num_unet``, ``objective``, ``condition``) plus ``time_input``: ``index`` (the
restoration code, and the README's "other tasks": the net sees t − 1) or ``coefficients`` (the partially
path-independent generation code of the released weights: [ᾱ_t·T, β̄_t·T]). The shared-encoder variant
(``share_encoder=1``) is another network and is refused.

Tasks:

- ``derain_raindrop`` (experiments/2_Image_Restoration_deraing_raindrop_noise1): two U-Nets conditioned on
  the rainy image, T = 1000, α decreased / β² increased, β̄_T² = ``sum_scale`` 1, DDIM with η = 0 and 10
  steps (train.py's sampling_timesteps), residual clamped to [−1, 1]; images in [−1, 1];
- ``restore``: the same with ResidualDiffusion's default β̄_T² = 0.01 for conditional models (set
  ``method.sum_scale`` to the value of your training run, Table 4 of the paper's appendix);
- ``generate_celeba``: the released weights (experiments/0_Partially_path-independent_generation, CelebA
  64²): two U-Nets without condition (``condition=False``, ``time_input='coefficients'``), the
  DDIM-converted schedule (``convert_to_ddim``), the two-stage partially path-independent sampler with 10
  steps, η = 0, loss l2. ``restore`` then *generates* a face: the input image only sets the output size.
"""

from __future__ import annotations

from typing import Any

import torch

from irdiff.official import OfficialCheckpointError, OfficialFormat, register_format

PAPER = "Liu et al., Residual Denoising Diffusion Models, CVPR 2024"
T = 1000

DEFAULTS = {"dim": 64, "dim_mults": (1, 2, 4, 8), "channels": 3, "resnet_block_groups": 8, "num_unet": 2,
            "objective": "pred_res_noise", "condition": True, "time_input": "index"}

_TASKS = {"derain_raindrop": 1.0, "restore": 0.01, "generate_celeba": 1.0}  # task -> sum_scale (β̄_T²)
# the architecture each task's checkpoints have, where it differs from DEFAULTS
TASK_DEFAULTS = {"generate_celeba": {"condition": False, "time_input": "coefficients"}}
_NET_BUFFERS = ("alphas", "alphas_cumsum", "one_minus_alphas_cumsum", "betas2", "betas", "betas2_cumsum",
                "betas_cumsum", "posterior_mean_coef1", "posterior_mean_coef2", "posterior_mean_coef3",
                "posterior_variance", "posterior_log_variance_clipped")


def _net_cfg(arch: dict[str, Any]) -> dict[str, Any]:
    if arch["num_unet"] == 2 and arch["objective"] != "pred_res_noise":
        raise OfficialCheckpointError(f"num_unet=2 predicts the residual and the noise (objective pred_res_noise), "
                                      f"got objective={arch['objective']!r}")
    if arch["time_input"] not in ("index", "coefficients"):
        raise OfficialCheckpointError(f"time_input must be 'index' or 'coefficients', got {arch['time_input']!r}")
    return {"dim": arch["dim"], "dim_mults": list(arch["dim_mults"]),
            "resnet_block_groups": arch["resnet_block_groups"], "num_unet": arch["num_unet"],
            "objective": arch["objective"],
            "time_scale": float(T) if arch["time_input"] == "coefficients" else 1.0}


def build(**arch: Any) -> torch.nn.Module:
    from irdiff.nets.official_rddm import RDDMUnetRes

    c = arch["channels"]
    cfg = _net_cfg(arch)
    return RDDMUnetRes(in_channels=2 * c if arch["condition"] else c, out_channels=arch["num_unet"] * c,
                       noise_level_dim=2, **cfg)


def select(container: Any) -> dict[str, torch.Tensor]:
    if not isinstance(container, dict):
        raise OfficialCheckpointError(f"holds a {type(container).__name__}, not an RDDM checkpoint (a dict)")
    if "ema" in container or "model" in container:
        sd = container.get("ema") if isinstance(container.get("ema"), dict) else container.get("model")
        if not isinstance(sd, dict):
            raise OfficialCheckpointError("its 'ema' / 'model' entry is not a state_dict")
    else:
        sd = container
    for prefix in ("ema_model.model.", "model.", "module.model.", "module."):
        if prefix + "unet0.init_conv.weight" in sd or prefix + "init_conv.weight" in sd:
            sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
            break
    if any(k.startswith("ups_no_skip.") or k.startswith("final_res_block_1.") for k in sd):
        raise OfficialCheckpointError("a shared-encoder UnetRes (share_encoder=1): not supported, only one or two "
                                      "separate U-Nets")
    sd = {k: v for k, v in sd.items() if k not in _NET_BUFFERS}
    if "unet0.init_conv.weight" not in sd:
        keys = ", ".join(list(sd)[:3]) or "none"
        raise OfficialCheckpointError(f"not an RDDM UnetRes checkpoint (no unet0.init_conv.weight; first keys: {keys})")
    return sd


def model_json(arch: dict[str, Any], task: str | None) -> dict[str, Any]:
    task = task or "derain_raindrop"
    generate = task == "generate_celeba"
    if arch["condition"] == generate or (generate and arch["time_input"] != "coefficients"):
        raise OfficialCheckpointError(
            f"--task {task}: needs condition={not generate}" + (", time_input=coefficients" if generate else "")
            + f" (got condition={arch['condition']}, time_input={arch['time_input']})")
    if arch["num_unet"] == 2:
        mode = "res_noise"
    else:
        mode = "res" if arch["objective"] == "pred_res" else "noise"
    net = {"name": "rddm_unetres", **_net_cfg(arch)}
    schedules = {"alpha_schedule": "ddpm", "beta_schedule": "ddpm"} if generate else \
        {"alpha_schedule": "decreased", "beta_schedule": "increased"}
    return {
        "img_channels": arch["channels"],
        "method": {"name": "rddm", "num_steps": T, "mode": mode, **schedules, "sum_scale": _TASKS[task],
                   "loss_type": "l2" if generate else "l1", "eta": 0.0, "clip_x0": True,
                   "level": "index" if arch["time_input"] == "index" else "raw", "res_clip": 1.0,
                   "step_spacing": "trunc", "condition": arch["condition"]},
        "net": net,
        "sample": {"sampler": "two_stage" if generate else "ddim", "steps": 10},
        "data": {"train": {"scale": 1}},
        "value_range": "[-1, 1] (as irdiff)",
        "time_input": "t - 1 for both U-Nets" if arch["time_input"] == "index" else "[alpha_bar_t * T, beta_bar_t * T]",
        "padding_multiple": 2 ** (len(arch["dim_mults"]) - 1),
        "weights": "the EMA copy when the file has one (the official test samples with ema.ema_model)",
        "reference": ("experiments/0_Partially_path-independent_generation/test.py" if generate else
                      "experiments/2_Image_Restoration_deraing_raindrop_noise1/train.py")
        + "; src/residual_denoising_diffusion_pytorch.py ddim_sample",
        "padding": "irdiff reflect-pads to the multiple inside the net; the official dataset pads with black "
                   "to a multiple of 8 and at least image_size",
    }


RDDM = register_format(OfficialFormat(name="rddm", defaults=dict(DEFAULTS), build=build, select=select,
                                      model_json=model_json, tasks=tuple(_TASKS), task_defaults=TASK_DEFAULTS))
