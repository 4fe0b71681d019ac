"""Image IO, degradations and datasets."""
