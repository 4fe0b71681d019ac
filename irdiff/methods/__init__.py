"""Restoration methods; importing this package registers them by name."""

from irdiff.methods import autoencoder, cold, irsde, noise_da, rddm, refusion, regression, sr3  # noqa: F401
