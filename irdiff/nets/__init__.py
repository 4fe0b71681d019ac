"""Networks: forward(x, noise_level, cond=None). Importing this package registers them by name.

official_*: the authors' architectures, for checkpoints imported with ``irdiff import`` (issue 12).
"""

from irdiff.nets import (  # noqa: F401
    official_cold,
    official_irsde,
    official_noise_da,
    official_palette,
    official_rddm,
    official_refusion,
    official_sr3,
    restorers,
    unet,
)
