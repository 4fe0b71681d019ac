"""Write the Cold Diffusion parity fixture from a checkout of the official repository.

    python scripts/official_parity_cold.py /path/to/Cold-Diffusion-Models [--out tests/fixtures/official/cold]

Builds the official deblurring ``Unet`` (read from deblurring-diffusion-pytorch/deblurring_diffusion_pytorch/
deblurring_diffusion_pytorch.py; only its class definitions are executed, not the module's imports of
comet_ml / torchvision / torchgeometry) at reduced width with a fixed seed, wraps it as the official
Trainer saves it (``torch.nn.DataParallel(GaussianDiffusion)``: keys ``module.denoise_fn.*`` plus the
blur kernels ``module.gaussian_kernels.N.weight``; a dict {'step', 'model', 'ema'}, the EMA copy
perturbed so that a test can tell which one was loaded) and writes:

- ``checkpoint.pt``: that dict, saved with ``torch.save`` as the official code does;
- ``io.pt``: a fixed input, the time input, the official output of the EMA net, and the arch / commit.

Made with commit f8b1379151ff0cccba49112cf61d439bd4dd4ad9 of arpitbansal297/Cold-Diffusion-Models.
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
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
KERNELS = 3  # blur kernels stored in the GaussianDiffusion state_dict (T = 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("repo", help="checkout of github.com/arpitbansal297/Cold-Diffusion-Models")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "tests/fixtures/official/cold"))
    args = ap.parse_args()
    from einops import rearrange

    ns = load_definitions(
        Path(args.repo) / SOURCE,
        ["exists", "default", "Residual", "SinusoidalPosEmb", "Upsample", "Downsample", "LayerNorm", "PreNorm",
         "ConvNextBlock", "LinearAttention", "Unet"],
        {"torch": torch, "nn": nn, "F": F, "math": math, "einsum": einsum, "rearrange": rearrange,
         "isfunction": isfunction, "partial": partial, "print": lambda *a, **k: None},
    )
    commit = git_commit(args.repo)
    torch.manual_seed(0)
    unet = ns["Unet"](**ARCH)

    class GaussianDiffusion(nn.Module):  # the attributes the official class registers, nothing else
        def __init__(self, denoise_fn: nn.Module):
            super().__init__()
            self.denoise_fn = denoise_fn
            self.gaussian_kernels = nn.ModuleList(
                nn.Conv2d(3, 3, 3, padding=1, bias=False, groups=3) for _ in range(KERNELS))

    model = nn.DataParallel(GaussianDiffusion(unet))
    ema = copy.deepcopy(model)
    with torch.no_grad():
        for p in ema.parameters():
            p.add_(0.01 * torch.randn_like(p))
    ema_unet = ema.module.denoise_fn.eval()

    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 16, 16, generator=g) * 2 - 1
    t = torch.tensor([0, 2])  # the official time input: 0-based step index, long
    with torch.no_grad():
        y = ema_unet(x, t)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.save({"step": 1234, "model": model.state_dict(), "ema": ema.state_dict()}, out / "checkpoint.pt")
    arch = {k: list(v) if isinstance(v, tuple) else v for k, v in ARCH.items()}
    torch.save({"x": x, "t": t, "y": y, "arch": arch, "commit": commit}, out / "io.pt")
    sizes = {p.name: p.stat().st_size for p in out.glob("*.pt")}
    print(f"commit {commit}; wrote {out}: {sizes}; |y| max {y.abs().max():.4f}")


if __name__ == "__main__":
    main()
