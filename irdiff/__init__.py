"""irdiff: diffusion-based image restoration on one shared foundation."""

__version__ = "0.1.0"

__all__ = ["__version__", "load", "Restorer"]


def __getattr__(name):
    # Lazy so that `import irdiff` stays light (the CLI imports torch only when needed).
    if name in ("load", "Restorer"):
        from irdiff import inference

        return getattr(inference, name)
    raise AttributeError(name)
