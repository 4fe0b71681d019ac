"""Networks: ``forward(x, noise_level, cond=None)``.

The net modules import nothing of irdiff but ``irdiff.nets.layers`` (and each other): they know no method,
config or registry. This package registers them by name, so configs can pick them (``net: {name: unet}``).

Names other than ``unet``/``nafnet`` are the authors' architectures, for checkpoints imported with
``irdiff import`` (issue 12).
"""

from irdiff.nets.official_cold import ColdUnet
from irdiff.nets.official_irsde import IRSDEUNet
from irdiff.nets.official_noise_da import NoiseDAUNet
from irdiff.nets.official_palette import OfficialPaletteUNet
from irdiff.nets.official_rddm import RDDMUnetRes
from irdiff.nets.official_refusion import RefusionAutoencoder, RefusionNAFNet
from irdiff.nets.official_sr3 import OfficialSR3UNet
from irdiff.nets.restorers import NAFNet
from irdiff.nets.unet import UNet
from irdiff.registry import NETS

NETS.register("unet")(UNet)
NETS.register("nafnet")(NAFNet)
NETS.register("cold_unet")(ColdUnet)
NETS.register("irsde_unet")(IRSDEUNet)
NETS.register("noise_da_unet")(NoiseDAUNet)
NETS.register("official_palette")(OfficialPaletteUNet)
NETS.register("rddm_unetres")(RDDMUnetRes)
NETS.register("refusion_nafnet")(RefusionNAFNet)
NETS.register("refusion_ae")(RefusionAutoencoder)
NETS.register("official_sr3")(OfficialSR3UNet)

__all__ = [
    "ColdUnet",
    "IRSDEUNet",
    "NAFNet",
    "NoiseDAUNet",
    "OfficialPaletteUNet",
    "OfficialSR3UNet",
    "RDDMUnetRes",
    "RefusionAutoencoder",
    "RefusionNAFNet",
    "UNet",
]
