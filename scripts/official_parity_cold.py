"""Write the Cold Diffusion parity fixture from a checkout of the official repository.

    python scripts/official_parity_cold.py /path/to/Cold-Diffusion-Models [--out tests/fixtures/official/cold]

Builds the official deblurring ``Unet`` and ``GaussianDiffusion`` (read from deblurring-diffusion-pytorch/
deblurring_diffusion_pytorch/deblurring_diffusion_pytorch.py; only their class definitions are executed, not
the module's imports of comet_ml / torchvision / torchgeometry: ``tgm.image.get_gaussian_kernel2d`` is
given by kornia's same function, its successor, and ``Tensor.cuda`` is the identity while sampling on the
CPU) at reduced width with a fixed seed, wraps them as the official Trainer saves them
(``torch.nn.DataParallel(GaussianDiffusion)``: keys ``module.denoise_fn.*`` plus the blur kernels
``module.gaussian_kernels.N.weight``; a dict {'step', 'model', 'ema'}, the EMA copy perturbed so that a
test can tell which one was loaded) and writes:

- ``checkpoint.pt``: that dict, saved with ``torch.save`` as the official code does;
- ``io.pt``: a fixed input, the time input, the official output of the EMA net; a clean batch and the
  official test sampling of it (``all_sample`` with x0_step_down, T = 4, Exponential_reflect blur, 5x5
  kernels, std exp(0.1·i)); the arch / commit.

Made with commit f8b1379151ff0cccba49112cf61d439bd4dd4ad9 of arpitbansal297/Cold-Diffusion-Models.
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import types
from functools import partial
from inspect import isfunction
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import einsum, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from official_source import git_commit, load_definitions  # noqa: E402

SOURCE = "deblurring-diffusion-pytorch/deblurring_diffusion_pytorch/deblurring_diffusion_pytorch.py"
ARCH = {"dim": 8, "dim_mults": (1, 2, 2), "channels": 3, "with_time_emb": True, "residual": False}
# the degradation of the sampling check (the official Exponential_reflect routine at a small T)
DIFFUSION = {"timesteps": 4, "kernel_std": 0.1, "kernel_size": 5, "blur_routine": "Exponential_reflect",
             "train_routine": "Final", "sampling_routine": "x0_step_down", "discrete": False}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("repo", help="checkout of github.com/arpitbansal297/Cold-Diffusion-Models")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "tests/fixtures/official/cold"))
    args = ap.parse_args()
    import numpy as np
    from einops import rearrange
    from kornia.filters import get_gaussian_kernel2d

    tgm = types.SimpleNamespace(image=types.SimpleNamespace(
        get_gaussian_kernel2d=lambda dims, std: get_gaussian_kernel2d(dims, std)[0].float()))
    ns = load_definitions(
        Path(args.repo) / SOURCE,
        ["exists", "default", "Residual", "SinusoidalPosEmb", "Upsample", "Downsample", "LayerNorm", "PreNorm",
         "ConvNextBlock", "LinearAttention", "Unet", "GaussianDiffusion"],
        {"torch": torch, "nn": nn, "F": F, "math": math, "einsum": einsum, "rearrange": rearrange, "np": np,
         "isfunction": isfunction, "partial": partial, "tgm": tgm, "print": lambda *a, **k: None},
    )
    commit = git_commit(args.repo)
    torch.manual_seed(0)
    unet = ns["Unet"](**ARCH)
    model = nn.DataParallel(ns["GaussianDiffusion"](unet, image_size=16, device_of_kernel="cpu", channels=3,
                                                    loss_type="l1", **DIFFUSION))
    ema = copy.deepcopy(model)
    with torch.no_grad():
        for p in ema.module.denoise_fn.parameters():  # not the blur kernels: training never changes them
            p.add_(0.01 * torch.randn_like(p))
    ema_unet = ema.module.denoise_fn.eval()

    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 16, 16, generator=g) * 2 - 1
    t = torch.tensor([0, 2])  # the official time input: 0-based step index, long
    with torch.no_grad():
        y = ema_unet(x, t)
    # the official test sampling (Trainer.test_from_data -> ema_model.module.all_sample), on the CPU
    x0 = torch.rand(2, 3, 16, 16, generator=g) * 2 - 1
    cuda = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *a, **k: self
    try:
        x0s, xts = ema.module.all_sample(batch_size=2, img=x0.clone(), times=None)
    finally:
        torch.Tensor.cuda = cuda
    sampled, degraded = x0s[-1], xts[0]

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.save({"step": 1234, "model": model.state_dict(), "ema": ema.state_dict()}, out / "checkpoint.pt")
    arch = {k: list(v) if isinstance(v, tuple) else v for k, v in ARCH.items()}
    torch.save({"x": x, "t": t, "y": y, "x0": x0, "degraded": degraded, "sampled": sampled, "diffusion": DIFFUSION,
                "arch": arch, "commit": commit}, out / "io.pt")
    sizes = {p.name: p.stat().st_size for p in out.glob("*.pt")}
    print(f"commit {commit}; wrote {out}: {sizes}; |y| max {y.abs().max():.4f}")


if __name__ == "__main__":
    main()
