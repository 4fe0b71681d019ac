"""Networks: forward(x, noise_level, cond=None). Importing this package registers them by name."""

import irdiff.nets.official_palette  # noqa: F401  (Palette's guided-diffusion U-Net, for imported checkpoints)
import irdiff.nets.official_sr3  # noqa: F401  (the SR3 repo's U-Net, for imported checkpoints)
from irdiff.nets import restorers, unet  # noqa: F401
