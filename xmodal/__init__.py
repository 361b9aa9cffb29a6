"""xmodal: cross-modal fashion retrieval (product photos <-> product titles) in one embedding space.

The names below load on first use (PEP 562), so ``import xmodal.runs`` or ``import xmodal.data`` (and the
dashboard's Home page) do not import PyTorch.
"""
from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any

# PyTorch's OpenMP threads spin after each parallel section before they sleep (libgomp's default spin count). A
# search's NumPy/OpenBLAS product that follows a PyTorch op (the text encoding) then shares a core with a spinning
# thread: 100k x 512 exact search 16.4 ms instead of 9.1 (docs/performance.md). A short spin keeps PyTorch's own
# steps as fast. Read by libgomp when PyTorch loads, so it takes effect when xmodal is imported first; a value the
# user set wins.
os.environ.setdefault("GOMP_SPINCOUNT", "20000")

from . import _moved  # noqa: E402

if TYPE_CHECKING:
    from .models import ModelConfig, create_model, list_models, register_model
    from .retrieval.run import Run, load_run

__all__ = ["ModelConfig", "create_model", "list_models", "register_model", "Run", "load_run"]
__version__ = "0.1.0"

_moved.install()  # the import paths from before the packages, for one release

_LAZY = {"ModelConfig": ".models", "create_model": ".models", "list_models": ".models",
         "register_model": ".models", "Run": ".retrieval.run", "load_run": ".retrieval.run"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
