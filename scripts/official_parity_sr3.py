"""Write the SR3 parity fixture (tests/fixtures/official/sr3/) from a checkout of the official repository.

    python scripts/official_parity_sr3.py /path/to/Image-Super-Resolution-via-Iterative-Refinement

Builds the official GaussianDiffusion(UNet) of model/sr3_modules/ at reduced widths with a fixed seed,
perturbs every parameter (so no layer is trivially zero or one), and writes:

- ``gen.pth``: ``torch.save(netG.state_dict())``, exactly what the official ``save_network`` writes
  (the U-Net under ``denoise_fn.`` plus the schedule buffers ``betas``, ``alphas_cumprod``, ...);
- ``parity.safetensors``: a fixed input (``x``, ``cond``, ``level`` = √γ) and the official U-Net's output
  ``out`` = UNet(cat[cond, x], √γ); and the official sampler's result ``sample`` (``p_sample_loop``
  over the whole reduced schedule, torch's global RNG seeded with ``seed``) for the condition ``cond[:1]``;
- ``meta.json``: the official commit, the architecture and schedule, the seed, this command;
- ``shapes.json``: for each released config (config/sr_sr3_16_128.json, config/sr_sr3_64_512.json), its
  U-Net arguments as define_G passes them and the full-size official U-Net's state_dict key -> shape (built
  on the meta device: no memory), so tests check our defaults and key mapping at the real sizes.

Only the architecture and diffusion files are imported (the package imports wandb/lmdb/tensorboard).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
ARCH = dict(in_channel=6, out_channel=3, inner_channel=8, norm_groups=4, channel_mults=[1, 2, 4], attn_res=[8],
            res_blocks=2, dropout=0.2, image_size=16)
SCHEDULE = dict(schedule="linear", n_timestep=8, linear_start=1e-4, linear_end=0.5)
SEED = 1234


def commit_of(repo: Path) -> str:
    """The checkout's commit (or "unknown" outside git)."""
    try:
        return subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], check=True, capture_output=True,
                              text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def load_file(path: Path, name: str):
    """Import one source file as module ``name`` (without its package's __init__)."""
    if not path.is_file():
        raise SystemExit(f"{path}: not found (give the root of a checkout of the official repository)")
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def official_json(path: Path) -> dict:
    """The official configs are JSON with // comments."""
    lines = [re.sub(r"(^|[\s,{\[])//.*$", r"\1", line) for line in path.read_text().splitlines()]
    return json.loads("\n".join(lines))


def key_shapes(module: torch.nn.Module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in module.state_dict().items()}


def perturb(module: torch.nn.Module, seed: int, scale: float = 0.05) -> None:
    """Add seeded noise to every parameter: zero-initialised layers and unit norms become informative."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))


def write_fixture(out_dir: Path, checkpoint: dict[str, torch.Tensor], ckpt_name: str,
                  tensors: dict[str, torch.Tensor], meta: dict, shapes: dict) -> None:
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, out_dir / ckpt_name)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out_dir / "parity.safetensors"))
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    (out_dir / "shapes.json").write_text(json.dumps(shapes, indent=0) + "\n")
    total = sum(f.stat().st_size for f in out_dir.iterdir())
    print(f"wrote {out_dir} ({total / 1e6:.2f} MB)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("repo", type=Path, help="checkout of Janspiry/Image-Super-Resolution-via-Iterative-Refinement")
    ap.add_argument("--out", type=Path, default=ROOT / "tests/fixtures/official/sr3")
    args = ap.parse_args()
    commit = commit_of(args.repo)
    print(f"official SR3 at commit {commit}")
    unet = load_file(args.repo / "model/sr3_modules/unet.py", "sr3_official_unet")
    diffusion = load_file(args.repo / "model/sr3_modules/diffusion.py", "sr3_official_diffusion")

    torch.manual_seed(SEED)
    net = unet.UNet(**ARCH)
    perturb(net, SEED + 1)
    netG = diffusion.GaussianDiffusion(net, image_size=ARCH["image_size"], channels=3, loss_type="l1",
                                       conditional=True, schedule_opt=SCHEDULE)
    netG.set_new_noise_schedule(SCHEDULE, torch.device("cpu"))
    netG.eval()

    g = torch.Generator().manual_seed(SEED + 2)
    x = torch.randn(2, 3, 16, 16, generator=g)
    cond = torch.rand(2, 3, 16, 16, generator=g) * 2 - 1
    level = torch.tensor([0.35, 0.9])  # √γ
    with torch.no_grad():
        out = net(torch.cat([cond, x], dim=1), level.view(-1, 1))  # (B, 1), as p_mean_variance feeds it
        torch.manual_seed(SEED + 3)
        # one image: irdiff's Restorer samples image by image (continous=False returns ret_img[-1], which
        # for a batch would be the last image only)
        sample = netG.super_resolution(cond[:1])[None]

    shapes = {}
    for task, cfg_file in (("sr_16_128", "sr_sr3_16_128.json"), ("sr_64_512", "sr_sr3_64_512.json")):
        model = official_json(args.repo / "config" / cfg_file)["model"]
        u = model["unet"]
        # as model/networks.py define_G builds it (norm_groups defaults to 32 there)
        kwargs = dict(in_channel=u["in_channel"], out_channel=u["out_channel"], norm_groups=u.get("norm_groups") or 32,
                      inner_channel=u["inner_channel"], channel_mults=u["channel_multiplier"], attn_res=u["attn_res"],
                      res_blocks=u["res_blocks"], dropout=u["dropout"], image_size=model["diffusion"]["image_size"])
        with torch.device("meta"):
            full = unet.UNet(**kwargs)
        shapes[task] = {"config": cfg_file, "unet": kwargs, "beta_schedule": model["beta_schedule"],
                        "keys": key_shapes(full)}

    meta = {"official_repo": "https://github.com/Janspiry/Image-Super-Resolution-via-Iterative-Refinement",
            "commit": commit, "arch": ARCH, "schedule": SCHEDULE, "sample_seed": SEED + 3,
            "command": "python scripts/official_parity_sr3.py <checkout>",
            "forward": "out = UNet(cat[cond, x], level), level = sqrt(gamma)"}
    write_fixture(args.out, netG.state_dict(), "gen.pth",
                  {"x": x, "cond": cond, "level": level, "out": out, "sample": sample}, meta, shapes)


if __name__ == "__main__":
    main()
