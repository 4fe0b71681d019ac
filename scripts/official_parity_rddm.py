"""Write the RDDM parity fixtures from a checkout of the official repository.

    python scripts/official_parity_rddm.py /path/to/RDDM [--out tests/fixtures/official/rddm]

Only the class / function definitions of src/residual_denoising_diffusion_pytorch.py are executed (not its
imports of torchvision, accelerate, datasets, Augmentor, cv2). Two fixtures, each at reduced width with a
fixed seed, saved as the official ``Trainer.save`` does ({'step', 'model', 'opt0', 'opt1', 'ema', 'scaler'};
'model' is the ResidualDiffusion state_dict, 'ema' the ema_pytorch EMA state_dict, the EMA copy perturbed
so that a test can tell which one was loaded):

- ``generation``: experiments/0_Partially_path-independent_generation (the layout of the released
  weights): ``UnetRes(num_unet=2)``, unconditional, time input [ᾱ_t·T, β̄_t·T]; besides the net's output,
  the official test's sampling (``init()``, then the two-stage ``ddim_sample``, 3 steps, seeded) is stored;
- ``restoration``: experiments/2_Image_Restoration_deraing_raindrop_noise1: ``UnetRes(share_encoder=0)``
  (two U-Nets), conditioned on the degraded image, time input t − 1. Besides the net's output, the
  official ``ddim_sample`` (3 steps, η = 0, from a seeded start) is run and its result stored.

Files: ``<name>.pt`` (the checkpoint) and ``<name>_io.pt`` (inputs, official outputs, arch, commit).
Made with commit e59748102cffaa2acba17e4658fcecadcc86280d of nachifur/RDDM.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import namedtuple
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import einsum, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from official_source import git_commit, load_definitions  # noqa: E402

GEN = "experiments/0_Partially_path-independent_generation/src/residual_denoising_diffusion_pytorch.py"
RES = "experiments/2_Image_Restoration_deraing_raindrop_noise1/src/residual_denoising_diffusion_pytorch.py"
NET_DEFS = ["exists", "default", "identity", "Residual", "Upsample", "Downsample", "WeightStandardizedConv2d",
            "LayerNorm", "PreNorm", "SinusoidalPosEmb", "RandomOrLearnedSinusoidalPosEmb", "Block", "ResnetBlock",
            "LinearAttention", "Attention", "Unet", "UnetRes", "extract", "gen_coefficients",
            "normalize_to_neg_one_to_one", "unnormalize_to_zero_to_one", "ResidualDiffusion"]
ARCH = {"dim": 8, "dim_mults": (1, 2), "resnet_block_groups": 4}
T = 1000


def _namespace(path: Path, extra: tuple[str, ...] = ()) -> dict:
    from einops import rearrange, reduce
    from tqdm.auto import tqdm

    return load_definitions(path, NET_DEFS + list(extra), {
        "torch": torch, "nn": nn, "F": F, "math": math, "einsum": einsum, "partial": partial, "rearrange": rearrange,
        "reduce": reduce, "tqdm": partial(tqdm, disable=True),
        "ModelResPrediction": namedtuple("ModelResPrediction", ["pred_res", "pred_noise", "pred_x_start"]),
    })


def _container(diffusion: nn.Module) -> dict:
    from ema_pytorch import EMA

    ema = EMA(diffusion, beta=0.995, update_every=10)
    with torch.no_grad():
        for p in ema.ema_model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return {"step": 100, "model": diffusion.state_dict(), "opt0": {}, "opt1": {}, "ema": ema.state_dict(),
            "scaler": None}, ema.ema_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("repo", help="checkout of github.com/nachifur/RDDM")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "tests/fixtures/official/rddm"))
    args = ap.parse_args()
    repo = Path(args.repo)
    commit = git_commit(repo)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    arch = {k: list(v) if isinstance(v, tuple) else v for k, v in ARCH.items()}
    g = torch.Generator().manual_seed(1)

    # ---- generation: two U-Nets, unconditional, time = [ᾱ_t·T, β̄_t·T] ------------------------------
    ns = _namespace(repo / GEN, ("betas_for_alpha_bar",))
    torch.manual_seed(0)
    unet = ns["UnetRes"](**ARCH, num_unet=2, condition=False, objective="pred_res_noise",
                         test_res_or_noise="res_noise")
    diffusion = ns["ResidualDiffusion"](unet, image_size=16, timesteps=T, sampling_timesteps=3,
                                        objective="pred_res_noise", loss_type="l2", condition=False, sum_scale=1,
                                        test_res_or_noise="res_noise")
    ckpt, ema = _container(diffusion)
    ema.eval()
    x = torch.randn(2, 3, 16, 16, generator=g)
    t = torch.tensor([999, 250])
    time = [ema.alphas_cumsum[t] * ema.num_timesteps, ema.betas_cumsum[t] * ema.num_timesteps]
    with torch.no_grad():
        res, noise = ema.model(x, time)
        # the official test: ema_model.init(), then the two-stage ddim_sample from randn (seeded), x_input [0]
        ema.init()
        torch.manual_seed(7)
        sampled = ema.ddim_sample([0], (2, 3, 16, 16), last=True)[-1]  # in [0, 1] (unnormalised)
    torch.save(ckpt, out / "generation.pt")
    torch.save({"x": x, "time": torch.stack(time, 1), "y": torch.cat([res, noise], 1), "sample_seed": 7,
                "sample_steps": 3, "sampled": sampled, "arch": arch, "num_unet": 2, "commit": commit},
               out / "generation_io.pt")

    # ---- restoration: share_encoder=0 (two U-Nets), conditioned, time = t - 1 -------------------------
    ns = _namespace(repo / RES)
    torch.manual_seed(0)
    unet = ns["UnetRes"](**ARCH, share_encoder=0, condition=True, input_condition=False)
    diffusion = ns["ResidualDiffusion"](unet, image_size=16, timesteps=T, sampling_timesteps=3,
                                        objective="pred_res_noise", loss_type="l1", condition=True, sum_scale=1,
                                        input_condition=False, input_condition_mask=False)
    ckpt, ema = _container(diffusion)
    ema.eval()
    x = torch.randn(2, 3, 16, 16, generator=g) * 0.5
    cond = torch.rand(2, 3, 16, 16, generator=g) * 2 - 1
    t = torch.tensor([999, 250])
    with torch.no_grad():
        res, noise = ema.model(torch.cat([x, cond], 1), t)
        # the official sampler: ddim_sample from I_in + sqrt(sum_scale)·randn (global RNG, seeded here)
        torch.manual_seed(5)
        sampled = ema.ddim_sample([cond], cond.shape, last=True)[-1]  # in [0, 1] (unnormalised)
    torch.save(ckpt, out / "restoration.pt")
    torch.save({"x": x, "cond": cond, "t": t, "y": torch.cat([res, noise], 1), "sample_seed": 5,
                "sample_steps": 3, "sampled": sampled, "arch": arch, "num_unet": 2, "commit": commit},
               out / "restoration_io.pt")
    sizes = {p.name: p.stat().st_size for p in out.iterdir()}
    print(f"commit {commit}; wrote {out}: {sizes}")
    print("ema keys e.g.", list(ckpt["ema"])[:4])


if __name__ == "__main__":
    main()
