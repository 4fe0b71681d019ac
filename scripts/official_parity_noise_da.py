"""Write the Noise-DA parity fixture from a checkout of the official repository.

    python scripts/official_parity_noise_da.py /path/to/Noise-DA [--out tests/fixtures/official/noise_da]

Builds the official ``models.network.Network`` (the module is imported with the repository on sys.path;
the ``models`` package's __init__, which pulls the training framework, is bypassed) with a tiny
guided-diffusion teacher and a reduced ``RestorationNet`` (depth 3, wf 8: Network hard-codes the default
one, so it is swapped after construction), registers the noise schedule buffers as training does, and
writes:

- ``checkpoint.pth``: ``Network.state_dict()`` saved as ``BaseModel.save_network`` does (the whole network:
  ``denoise_fn.*``, ``RestorationNet.*`` and the schedule buffers);
- ``io.pt``: a fixed [0, 1] input of 20x28 px (not a multiple of 4) and the official test output
  ``restoration_test_head`` after ``test_split_fn``'s replicate padding to a multiple of 2^(dep_U − 1), cropped.

Made with commit 47ecb49557ac08a597c16a135f12da2c35819861 of KangLiao929/Noise-DA.
"""

from __future__ import annotations

import argparse
import sys
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from official_source import git_commit  # noqa: E402

ARCH = {"depth": 3, "wf": 8, "slope": 0.2}
# the teacher's GroupNorm has 32 groups: 32 channels is its smallest width
TEACHER = {"in_channel": 9, "out_channel": 3, "inner_channel": 32, "channel_mults": [1], "attn_res": [],
           "num_head_channels": 32, "res_blocks": 1, "dropout": 0.0, "image_size": 16}
SCHEDULE = {"train": {"schedule": "linear", "n_timestep": 1000, "linear_start": 1e-6, "linear_end": 0.01}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("repo", help="checkout of github.com/KangLiao929/Noise-DA")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "tests/fixtures/official/noise_da"))
    args = ap.parse_args()
    repo = Path(args.repo).resolve()
    sys.path.insert(0, str(repo))
    pkg = types.ModuleType("models")  # skip models/__init__.py (core.praser, the whole framework)
    pkg.__path__ = [str(repo / "models")]
    sys.modules["models"] = pkg
    from models.net.UNet import RestorationNet
    from models.network import Network

    commit = git_commit(repo)
    torch.manual_seed(0)
    net = Network(unet=TEACHER, beta_schedule=SCHEDULE, module_name="guided_diffusion", init_type="kaiming")
    net.RestorationNet = RestorationNet(**ARCH)
    net.init_weights()  # define_network does this in the training phase
    net.set_new_noise_schedule(device=torch.device("cpu"), phase="train")
    net.eval()

    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 20, 28, generator=g)
    # test_split_fn (models/model.py), small-image branch: replicate-pad to a multiple of 2^(dep_U - 1), crop
    h, w = x.shape[-2:]
    len_u = 2 ** (4 - 1)
    pad_h, pad_w = (len_u - h % len_u) % len_u, (len_u - w % len_u) % len_u
    with torch.no_grad():
        y = net.restoration_test_head(torch.nn.ReplicationPad2d((0, pad_w, 0, pad_h))(x))[:, :, :h, :w]

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    state_dict = net.state_dict()
    for k, v in state_dict.items():
        state_dict[k] = v.cpu()
    torch.save(state_dict, out / "checkpoint.pth")
    torch.save({"x": x, "y": y, "arch": ARCH, "commit": commit}, out / "io.pt")
    sizes = {p.name: p.stat().st_size for p in out.iterdir()}
    print(f"commit {commit}; wrote {out}: {sizes}; keys e.g. {list(state_dict)[:2]} ... {list(state_dict)[-2:]}")


if __name__ == "__main__":
    main()
