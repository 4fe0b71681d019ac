"""Networks: ``forward(x, noise_level, cond=None)``.

The net modules import nothing of irdiff but ``irdiff.nets.layers``: they know no method, config or
registry. This package registers them by name, so configs can pick them (``net: {name: unet}``).
"""

from irdiff.nets.restorers import NAFNet
from irdiff.nets.unet import UNet
from irdiff.registry import NETS

NETS.register("unet")(UNet)
NETS.register("nafnet")(NAFNet)

__all__ = ["NAFNet", "UNet"]
