"""A package's public surface, imported on first use (PEP 562).

Each stage package's ``__init__`` names what scripts may use, and from which of its modules, with
``public(__name__, {name: module})``: ``from mminstruct.data import load_data_file`` works, and
importing the package imports none of its modules (so importing ``mminstruct.embed`` loads no
torch, and two packages can name each other's modules without an import cycle).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def public(package: str, names: dict[str, str]) -> tuple[list[str], Callable[[str], Any]]:
    """(``__all__``, ``__getattr__``) for ``package``: ``names`` maps each public name to the
    module of the package that defines it."""

    def __getattr__(name: str) -> Any:
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}; its public names: "
                                 f"{', '.join(sorted(names))}")
        return getattr(importlib.import_module(f"{package}.{module}"), name)

    return sorted(names), __getattr__
