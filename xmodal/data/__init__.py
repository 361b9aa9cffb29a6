"""Catalogues: loading and validation, splits, the one image decoder, the built-in demo and importers."""
from __future__ import annotations

from pathlib import Path

from .catalogue import Catalogue, CatalogueError, LoadReport, check_folder, load_catalogue, normalise_caption
from .demo import ensure_demo, generate_demo
from .images import MAX_IMAGE_PIXELS, ImageError, check_image, open_rgb
from .splits import describe_split, make_splits, unseen_title_mask

DEMO = "demo"


def resolve_data(spec: str | None) -> Path:
    """The folder a ``--data`` value names: ``demo`` (or nothing) is the built-in demo catalogue.

    Raises:
        CatalogueError: an empty value, a path that does not exist, a file, or an empty folder.
    """
    if spec is None or spec == DEMO:
        return ensure_demo()
    if not str(spec).strip():
        raise CatalogueError("--data is empty: give a catalogue folder (captions.csv + images) or 'demo'")
    folder = Path(spec).expanduser()
    check_folder(folder)
    return folder


def open_catalogue(spec: str | None, check_images: bool = True) -> Catalogue:
    """Load the catalogue ``spec`` names (a folder, or ``demo``)."""
    return load_catalogue(resolve_data(spec), check_images=check_images)


__all__ = ["Catalogue", "CatalogueError", "LoadReport", "load_catalogue", "make_splits", "describe_split",
           "unseen_title_mask", "normalise_caption", "open_rgb", "check_image", "ImageError", "MAX_IMAGE_PIXELS",
           "ensure_demo", "generate_demo", "resolve_data", "open_catalogue", "DEMO"]
