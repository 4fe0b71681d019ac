"""Networks: forward(x, noise_level, cond=None). Importing this package registers them by name."""

from irdiff.nets import official_cold, official_noise_da, official_rddm, restorers, unet  # noqa: F401
