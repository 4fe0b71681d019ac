"""Write the Palette parity fixture (tests/fixtures/official/palette/) from a checkout of the official repository.

    python scripts/official_parity_palette.py /path/to/Palette-Image-to-Image-Diffusion-Models

Builds the official ``models.network.Network`` with the guided_diffusion U-Net at reduced widths (two
attention heads per block, attention in the encoder/decoder as well as the middle) and a fixed seed,
perturbs every parameter (the official zero-initialised layers would make the output trivially zero),
and writes:

- ``Network.pth``: ``torch.save(Network.state_dict())``, what the official ``save_network`` writes (the
  U-Net under ``denoise_fn.`` plus the schedule buffers ``gammas``, ...; the EMA file has the same layout);
- ``parity.safetensors``: a fixed input (``x``, ``cond``, ``level`` = γ) and the official U-Net's output
  ``out`` = UNet(cat[cond, x], γ); and an inpainting run of the official test-phase sampler on ``gt[:1]``
  and ``mask[:1]`` (1 = hole): torch's global RNG seeded with ``seed``, the condition
  ``gt·(1−mask) + mask·N(0, 1)`` made as the official InpaintDataset does, then
  ``restoration(cond, y_t=cond, y_0=gt, mask=mask)`` over the whole reduced "test" schedule: ``sample``;
- ``meta.json``: the official commit, the architecture and schedule, the seed, this command;
- ``shapes.json``: for each released config (config/inpainting_celebahq.json, inpainting_places2.json), its
  U-Net arguments, beta schedules and the full-size official U-Net's state_dict key -> shape (meta device).

Imports the repository's ``models.network`` (it needs only torch, numpy and tqdm).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from official_parity_sr3 import ROOT, commit_of, key_shapes, official_json, perturb, write_fixture  # noqa: E402

ARCH = dict(in_channel=6, out_channel=3, inner_channel=32, channel_mults=[1, 1], attn_res=[2], res_blocks=1,
            dropout=0.2, num_head_channels=16, image_size=16)
SCHEDULE = dict(schedule="linear", n_timestep=10, linear_start=1e-4, linear_end=0.5)
SEED = 4321


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("repo", type=Path, help="checkout of Janspiry/Palette-Image-to-Image-Diffusion-Models")
    ap.add_argument("--out", type=Path, default=ROOT / "tests/fixtures/official/palette")
    args = ap.parse_args()
    if not (args.repo / "models/network.py").is_file():
        raise SystemExit(f"{args.repo}: no models/network.py (give the root of a Palette checkout)")
    commit = commit_of(args.repo)
    print(f"official Palette at commit {commit}")
    sys.path.insert(0, str(args.repo))
    from models.network import Network

    torch.manual_seed(SEED)
    network = Network(unet=ARCH, beta_schedule={"train": SCHEDULE, "test": SCHEDULE}, module_name="guided_diffusion")
    perturb(network.denoise_fn, SEED + 1)
    network.set_new_noise_schedule(device=torch.device("cpu"), phase="test")
    network.eval()

    g = torch.Generator().manual_seed(SEED + 2)
    x = torch.randn(2, 3, 16, 16, generator=g)
    cond = torch.rand(2, 3, 16, 16, generator=g) * 2 - 1
    level = torch.tensor([0.05, 0.8])  # γ
    gt = torch.rand(2, 3, 16, 16, generator=g) * 2 - 1
    mask = torch.zeros(2, 1, 16, 16)
    mask[0, :, 4:12, 4:12] = 1  # a centre box
    mask[1, :, 2:14, 6:9] = 1  # a bar
    with torch.no_grad():
        out = network.denoise_fn(torch.cat([cond, x], dim=1), level)
        torch.manual_seed(SEED + 3)
        # one image (irdiff's Restorer samples image by image); the condition as data/dataset.py makes it
        cond_image = gt[:1] * (1.0 - mask[:1]) + mask[:1] * torch.randn_like(gt[:1])
        sample, _ = network.restoration(cond_image, y_t=cond_image, y_0=gt[:1], mask=mask[:1], sample_num=2)

    shapes = {}
    for task in ("inpainting_celebahq", "inpainting_places2"):
        (net_opt,) = official_json(args.repo / "config" / f"{task}.json")["model"]["which_networks"]
        kwargs = net_opt["args"]
        with torch.device("meta"):
            full = Network(unet=kwargs["unet"], beta_schedule=kwargs["beta_schedule"],
                           module_name=kwargs["module_name"])
        shapes[task] = {"config": f"{task}.json", "module_name": kwargs["module_name"], "unet": kwargs["unet"],
                        "beta_schedule": kwargs["beta_schedule"], "keys": key_shapes(full.denoise_fn)}

    meta = {"official_repo": "https://github.com/Janspiry/Palette-Image-to-Image-Diffusion-Models",
            "commit": commit, "arch": ARCH, "schedule": SCHEDULE, "sample_seed": SEED + 3,
            "command": "python scripts/official_parity_palette.py <checkout>",
            "forward": "out = denoise_fn(cat[cond, x], level), level = gamma"}
    write_fixture(args.out, network.state_dict(), "Network.pth",
                  {"x": x, "cond": cond, "level": level, "out": out, "gt": gt, "mask": mask, "sample": sample},
                  meta, shapes)


if __name__ == "__main__":
    main()
