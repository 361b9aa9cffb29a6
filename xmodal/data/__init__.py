"""Catalogues: loading and validation, splits, the built-in demo and importers."""
from __future__ import annotations

from pathlib import Path

from .catalogue import (Catalogue, CatalogueError, LoadReport, load_catalogue, make_splits,
                        normalise_caption)
from .demo import ensure_demo, generate_demo

DEMO = "demo"


def resolve_data(spec: str | None) -> Path:
    """The folder a ``--data`` value names: ``demo`` (or nothing) is the built-in demo catalogue."""
    if spec is None or spec == DEMO:
        return ensure_demo()
    return Path(spec).expanduser()


def open_catalogue(spec: str | None, check_images: bool = True) -> Catalogue:
    """Load the catalogue ``spec`` names (a folder, or ``demo``)."""
    return load_catalogue(resolve_data(spec), check_images=check_images)


__all__ = ["Catalogue", "CatalogueError", "LoadReport", "load_catalogue", "make_splits",
           "normalise_caption", "ensure_demo", "generate_demo", "resolve_data", "open_catalogue", "DEMO"]
