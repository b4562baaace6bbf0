"""Named things the core looks up (datasets, models, backbones, preset kinds), and the plugins that add more.

The core never imports the lab (the embedded world, the model zoo, the experiments), yet a fresh
``load_components("embedded")`` or ``resolve_dataset("waterbirds-synth")`` must work. So the lab's
modules register their names when imported, the package root lists them with :func:`add_plugin`,
and a lookup that misses imports them first (once). A user's own package can add itself the same way.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

_PLUGINS: list[str] = []
_LOADED: set[str] = set()


def add_plugin(module: str) -> None:
    """Import ``module`` (a dotted name) before the next lookup that misses; it registers its names."""
    if module not in _PLUGINS:
        _PLUGINS.append(module)


def load_plugins() -> None:
    """Import every plugin not yet imported; a failed import is tried again by the next lookup."""
    for module in list(_PLUGINS):
        if module in _LOADED:
            continue
        _LOADED.add(module)  # before importing: a lookup made while it registers must not import it again
        try:
            importlib.import_module(module)
        except BaseException:
            _LOADED.discard(module)
            raise


class Registry(dict):
    """Name -> object of one kind (``kind`` words the duplicate error); misses load the plugins first."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def add(self, name: str, value: Any) -> Any:
        if name in self:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self[name] = value
        return value

    def register(self, name: str) -> Callable[[Any], Any]:
        """Decorator form of :meth:`add`."""
        return lambda value: self.add(name, value)

    def find(self, name: str) -> Any | None:
        if name not in self:
            load_plugins()
        return self.get(name)

    def complete(self) -> "Registry":
        """This registry with every plugin's entries added."""
        load_plugins()
        return self

    def names(self) -> list[str]:
        return sorted(self.complete())
