"""Write the IR-SDE parity fixtures from the authors' code (issue 12).

    python scripts/official_parity_irsde.py OFFICIAL_CHECKOUT [--commit SHA] [--out tests/fixtures/official]

OFFICIAL_CHECKOUT is a checkout of github.com/Algolzw/image-restoration-sde; the committed fixtures were
made at commit 2598d73cde3a1e2cf78c4ba4923414e1f4b90393 (2024-04-17). Only the architecture files
(codes/config/*/models/modules/{DenoisingUNet_arch,module_util}.py; they need einops) and
codes/utils/sde_utils.py (its torchvision import, used only to save PNGs of states, is stubbed: torchvision
is never installed) are imported; nothing else of the repository runs.

For each form, a net with reduced widths is built with a fixed seed and saved exactly as the official
``BaseModel.save_network`` does (``torch.save`` of the state_dict, tensors on the CPU), as
``<fmt>/net.pth``; ``<fmt>/io.safetensors`` holds a fixed input, the official net output and official
sampler trajectories from the same state; ``<fmt>/fixture.json`` the settings and the commit.

- irsde (deraining config, ConditionalUNet nf=4 depth=3, IRSDE(max_sigma=10, T=100, eps=0.005)):
  out = net(x_t, μ, t) for t = (7, 93); five reverse-ODE steps and five posterior-mean steps from t = 100
  (``score_fn`` + ``reverse_ode_step``, ``reverse_optimum_step`` at ``get_init_state_from_noise``); the
  full ``reverse_ode`` from t = 10; and the full official sampling of the deraining test script,
  ``reverse_posterior(noise_state(LQ))`` with ``torch.manual_seed(SEED)`` (irdiff draws the same
  normal stream from a generator with that seed, in the same order).
- irsde_denoise (Denoising-SDE, nf=4 depth=3, DenoisingSDE(max_sigma=75, T=100)): out = net(x_t, t);
  the official test, ``reverse_ode(noisy, T=get_optimal_timestep(25))``.
- refusion / refusion_latent (Refusion's ConditionalNAFNet, pixel-space from the deraining config and
  latent from latent-dehazing, width 8): out = net(x_t, μ, t). NAFNet's zero-initialised beta / gamma
  are given seeded random values first, so that the blocks are not the identity.
- refusion_ae (latent Refusion's autoencoder, unet-latent, ch 4): encode, decode, decode of another
  latent with the same skip features, forward.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import subprocess
import sys
import types
from pathlib import Path

import torch
from safetensors.torch import save_file

REPO = Path(__file__).resolve().parents[1]
SEED = 1234
NF, DEPTH = 4, 3
H, W = 20, 28  # not multiples of 2**DEPTH: the official reflect padding is exercised


def load_arch(checkout: Path, config_dir: str, module: str = "DenoisingUNet_arch") -> types.ModuleType:
    """Import <config_dir>/models/modules/<module>.py as a package module, without running the package's
    __init__ (which imports the whole training stack)."""
    mod_dir = checkout / "codes" / "config" / config_dir / "models" / "modules"
    name = "official_" + config_dir.replace("-", "_")
    if name not in sys.modules:
        pkg = types.ModuleType(name)
        pkg.__path__ = [str(mod_dir)]
        sys.modules[name] = pkg
    return importlib.import_module(f"{name}.{module}")


def randomise_zero_params(net: torch.nn.Module, seed: int) -> None:
    """NAFNet's beta / gamma start at zero (every block the identity): give them seeded random values so
    that the fixture tests the blocks."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            if not p.any():
                p.copy_(0.5 * torch.randn(p.shape, generator=g))


def load_sde_utils(checkout: Path) -> types.ModuleType:
    tv = types.ModuleType("torchvision")  # sde_utils imports torchvision.utils only to save state PNGs
    tv.utils = types.ModuleType("torchvision.utils")
    sys.modules.setdefault("torchvision", tv)
    sys.modules.setdefault("torchvision.utils", tv.utils)
    spec = importlib.util.spec_from_file_location("official_sde_utils", checkout / "codes" / "utils" / "sde_utils.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def official_save(net: torch.nn.Module, path: Path) -> None:
    """As BaseModel.save_network: the state_dict with every tensor moved to the CPU, torch.save'd."""
    state_dict = net.state_dict()
    for key, param in state_dict.items():
        state_dict[key] = param.cpu()
    torch.save(state_dict, path)


def fixed_images(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    gt = torch.rand(1, 3, H, W, generator=g)
    lq = (gt + 0.1 * torch.randn(1, 3, H, W, generator=g)).clamp(0, 1)
    return gt, lq


def make_irsde(checkout: Path, sde_utils: types.ModuleType, out: Path) -> dict:
    arch = load_arch(checkout, "deraining")
    torch.manual_seed(SEED)
    net = arch.ConditionalUNet(in_nc=3, out_nc=3, nf=NF, depth=DEPTH).eval()
    gt, lq = fixed_images(SEED)
    sde = sde_utils.IRSDE(max_sigma=10, T=100, schedule="cosine", eps=0.005, device="cpu")
    sde.set_model(net)
    sde.set_mu(lq)
    t = torch.tensor([7, 93])
    x_t = torch.cat([sde.mu_bar(gt, 7), sde.mu_bar(gt, 93)]) + 0.05 * torch.randn(2, 3, H, W)
    mu2 = lq.expand(2, -1, -1, -1)
    tensors = {"gt": gt, "lq": lq, "x_t": x_t, "t": t.float()}
    with torch.no_grad():
        tensors["out"] = net(x_t, mu2, t)
        tensors["out_int_t"] = net(x_t[:1], lq, 7)  # the sampler's call: a Python int step
        torch.manual_seed(SEED + 1)
        x_T = sde.noise_state(lq)
        tensors["x_T"] = x_T
        x = x_T.clone()
        for t_ in range(100, 95, -1):  # five reverse-ODE steps
            x = sde.reverse_ode_step(x, sde.score_fn(x, t_), t_)
        tensors["ode_5"] = x
        x = x_T.clone()
        for t_ in range(100, 95, -1):  # five posterior-mean steps
            x = sde.reverse_optimum_step(x, sde.get_init_state_from_noise(x, sde.noise_fn(x, t_), t_), t_)
        tensors["posterior_mean_5"] = x
        x_10 = sde.mu_bar(gt, 10) + sde.sigma_bar(10) * torch.randn(1, 3, H, W)
        tensors["x_10"] = x_10
        tensors["ode_from_10"] = sde.reverse_ode(x_10, T=10)
        # the deraining test script: noise_state then reverse_posterior, from one seeded global stream
        torch.manual_seed(SEED)
        tensors["posterior_sampling"] = sde.reverse_posterior(sde.noise_state(lq))
    official_save(net, out / "net.pth")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / "io.safetensors"))
    return {"format": "irsde", "arch": {"in_nc": 3, "out_nc": 3, "nf": NF, "depth": DEPTH},
            "sde": {"max_sigma": 10, "T": 100, "schedule": "cosine", "eps": 0.005}, "seed": SEED,
            "source": "codes/config/deraining/models/modules/DenoisingUNet_arch.py, codes/utils/sde_utils.py"}


def make_irsde_denoise(checkout: Path, sde_utils: types.ModuleType, out: Path) -> dict:
    arch = load_arch(checkout, "denoising-sde")
    torch.manual_seed(SEED)
    net = arch.ConditionalUNet(in_nc=3, out_nc=3, nf=NF, depth=DEPTH).eval()
    gt, _ = fixed_images(SEED + 2)
    sde = sde_utils.DenoisingSDE(max_sigma=75, T=100, device="cpu")
    sde.set_model(net)
    t = torch.tensor([3, 60])
    x_t = gt.expand(2, -1, -1, -1) + sde.sigma_bar(t)[:, None, None, None] * torch.randn(2, 3, H, W)
    sigma = 25
    noisy = gt + sigma / 255 * torch.randn(1, 3, H, W)
    t_star = sde.get_optimal_timestep(sigma)
    tensors = {"gt": gt, "x_t": x_t, "t": t.float(), "noisy": noisy}
    with torch.no_grad():
        tensors["out"] = net(x_t, t)
        tensors["ode_sampling"] = sde.reverse_ode(noisy, T=t_star)  # the Denoising-SDE test (sigma = 25)
    official_save(net, out / "net.pth")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / "io.safetensors"))
    return {"format": "irsde_denoise", "arch": {"in_nc": 3, "out_nc": 3, "nf": NF, "depth": DEPTH},
            "sde": {"max_sigma": 75, "T": 100, "eps": 0.04}, "noise_sigma": sigma, "t_star": int(t_star),
            "seed": SEED,
            "source": "codes/config/denoising-sde/models/modules/DenoisingUNet_arch.py, codes/utils/sde_utils.py"}


def make_refusion(checkout: Path, sde_utils: types.ModuleType, out: Path) -> dict:
    """Pixel-space Refusion: the deraining ConditionalNAFNet (width 4, blocks 1/1/1/2), one net call."""
    arch = load_arch(checkout, "deraining", "DenoisingNAFNet_arch")
    kw = {"img_channel": 3, "width": 4, "enc_blk_nums": [1, 1, 1, 2], "middle_blk_num": 1,
          "dec_blk_nums": [1, 1, 1, 1]}
    torch.manual_seed(SEED)
    net = arch.ConditionalNAFNet(**kw).eval()
    randomise_zero_params(net, SEED)
    gt, lq = fixed_images(SEED + 3)
    x_t = torch.cat([gt, lq]) + 0.1 * torch.randn(2, 3, H, W)
    t = torch.tensor([5, 80])
    with torch.no_grad():
        tensors = {"x_t": x_t, "lq": lq, "t": t.float(), "out": net(x_t, lq.expand(2, -1, -1, -1), t),
                   "out_int_t": net(x_t[:1], lq, 40)}
    official_save(net, out / "net.pth")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / "io.safetensors"))
    return {"format": "refusion", "arch": kw, "seed": SEED,
            "source": "codes/config/deraining/models/modules/DenoisingNAFNet_arch.py"}


def make_refusion_latent(checkout: Path, sde_utils: types.ModuleType, out: Path) -> dict:
    """Latent Refusion: the latent-dehazing ConditionalNAFNet on 8 channels (width 8), one net call."""
    arch = load_arch(checkout, "latent-dehazing", "DenoisingNAFNet_arch")
    kw = {"img_channel": 8, "width": 8, "enc_blk_nums": [1, 1, 2], "middle_blk_num": 1, "dec_blk_nums": [1, 1, 1]}
    torch.manual_seed(SEED)
    net = arch.ConditionalNAFNet(**kw).eval()
    randomise_zero_params(net, SEED)
    g = torch.Generator().manual_seed(SEED + 4)
    x_t, mu = torch.randn(2, 8, 6, 9, generator=g), torch.randn(2, 8, 6, 9, generator=g)
    t = torch.tensor([3, 99])
    with torch.no_grad():
        tensors = {"x_t": x_t, "mu": mu, "t": t.float(), "out": net(x_t, mu, t)}
    official_save(net, out / "net.pth")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / "io.safetensors"))
    return {"format": "refusion_latent", "arch": kw, "seed": SEED,
            "source": "codes/config/latent-dehazing/models/modules/DenoisingNAFNet_arch.py"}


def make_refusion_ae(checkout: Path, sde_utils: types.ModuleType, out: Path) -> dict:
    """Latent Refusion's autoencoder (unet-latent UNet, ch 4, ch_mult 2/4/4/8, 8 latent channels):
    encode, decode with the encoder's skips, and decode of another latent with the same skips."""
    arch = load_arch(checkout, "unet-latent", "UNet_arch")
    kw = {"in_ch": 3, "out_ch": 3, "ch": 4, "ch_mult": [2, 4, 4, 8], "embed_dim": 8}
    torch.manual_seed(SEED)
    net = arch.UNet(**kw).eval()
    gt, lq = fixed_images(SEED + 5)
    with torch.no_grad():
        latent, hidden = net.encode(lq)
        other = torch.randn_like(latent)
        tensors = {"lq": lq, "latent": latent, "recon": net.decode(latent, hidden),
                   "other_latent": other, "decoded_other": net.decode(other, hidden), "forward": net(lq)}
    official_save(net, out / "net.pth")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / "io.safetensors"))
    return {"format": "refusion_ae", "arch": kw, "seed": SEED,
            "source": "codes/config/unet-latent/models/modules/UNet_arch.py"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkout", type=Path, help="a checkout of github.com/Algolzw/image-restoration-sde")
    ap.add_argument("--commit", help="the checkout's commit, when it is not a git work tree")
    ap.add_argument("--out", type=Path, default=REPO / "tests" / "fixtures" / "official")
    args = ap.parse_args()
    commit = args.commit
    if commit is None:
        try:
            commit = subprocess.run(["git", "-C", str(args.checkout), "rev-parse", "HEAD"], check=True,
                                    capture_output=True, text=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            ap.error(f"{args.checkout}: not a git work tree; pass --commit SHA")
    torch.set_num_threads(1)
    sde_utils = load_sde_utils(args.checkout)
    for fmt, make in (("irsde", make_irsde), ("irsde_denoise", make_irsde_denoise), ("refusion", make_refusion),
                      ("refusion_latent", make_refusion_latent), ("refusion_ae", make_refusion_ae)):
        out = args.out / fmt
        out.mkdir(parents=True, exist_ok=True)
        meta = make(args.checkout, sde_utils, out)
        meta.update(repository="https://github.com/Algolzw/image-restoration-sde", commit=commit,
                    torch=torch.__version__)
        (out / "fixture.json").write_text(json.dumps(meta, indent=1) + "\n")
        size = sum(f.stat().st_size for f in out.iterdir())
        print(f"{fmt}: {out} ({size / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
