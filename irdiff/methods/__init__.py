"""Restoration methods; importing this package registers them by name."""

from irdiff.methods import cold, irsde, noise_da, rddm, regression, sr3  # noqa: F401
