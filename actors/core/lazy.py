"""Lazy public names for a package's ``__init__`` (PEP 562), so ``import actors.<capability>`` imports neither torch
nor Ray until a name is used.

Contract: ``lazy_exports(__name__, {"Name": "module", ...})`` returns ``(__getattr__, __dir__, __all__)`` for the
package: ``package.Name`` imports ``package.module`` on first use and returns its ``Name``; an unknown name raises
``AttributeError`` as a plain module would.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable


def lazy_exports(package: str, public: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]], list[str]]:
    """The ``__getattr__``, ``__dir__`` and ``__all__`` that hand on ``public`` (name -> submodule) lazily."""

    def __getattr__(name: str) -> Any:
        if name in public:
            return getattr(importlib.import_module(f"{package}.{public[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    names = sorted(public)

    def __dir__() -> list[str]:
        return names

    return __getattr__, __dir__, names
