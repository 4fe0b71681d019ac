"""Name -> class registries, so configs pick methods, nets, degradations and datasets by name."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, Any] = {}

    def register(self, name: str) -> Callable[[Any], Any]:
        def deco(obj: Any) -> Any:
            if name in self._items and self._items[name] is not obj:
                raise KeyError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str) -> Any:
        _import_builtins()
        if name not in self._items:
            raise KeyError(f"unknown {self.kind} {name!r}; known: {', '.join(sorted(self._items))}")
        return self._items[name]

    def names(self) -> list[str]:
        _import_builtins()
        return sorted(self._items)

    def build(self, name: str, where: str = "", **kwargs: Any) -> Any:
        """Construct `name` with kwargs; unknown keyword arguments are an error naming the key."""
        cls = self.get(name)
        check_kwargs(cls, kwargs, where or f"{self.kind}.{name}")
        return cls(**kwargs)

    def __contains__(self, name: str) -> bool:
        _import_builtins()
        return name in self._items


def check_kwargs(fn: Any, kwargs: dict[str, Any], where: str) -> None:
    """Raise a one-line error naming the first key that `fn` does not accept."""
    target = fn.__init__ if inspect.isclass(fn) else fn
    params = inspect.signature(target).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    allowed = [n for n, p in params.items() if n != "self" and p.kind is not inspect.Parameter.VAR_POSITIONAL]
    for key in kwargs:
        if key not in allowed:
            raise KeyError(f"unknown key {where}.{key} (allowed: {', '.join(allowed)})")


METHODS = Registry("method")
NETS = Registry("net")
DEGRADATIONS = Registry("degradation")
DATASETS = Registry("dataset")

_loaded = False


def _import_builtins() -> None:
    # Registration happens on import; importing lazily keeps `import irdiff` cheap and cycle-free.
    global _loaded
    if _loaded:
        return
    _loaded = True
    import irdiff.data.datasets  # noqa: F401
    import irdiff.data.degradations  # noqa: F401
    import irdiff.methods  # noqa: F401
    import irdiff.nets  # noqa: F401
