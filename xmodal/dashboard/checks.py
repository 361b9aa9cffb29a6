"""What is wrong with a catalogue folder the user named, as one line that says what to do.

The sidebar checks a typed folder cheaply on every rerun (``folder_problem``); Home then loads it, and any
error from loading (``LOAD_ERRORS``) becomes one line (``load_problem``) instead of a traceback. The
messages are plain text that quotes user paths and file contents: show them through ``escape.md``.
"""
from __future__ import annotations

import csv
from pathlib import Path

from ..data import DEMO, CatalogueError, resolve_data

# What loading a user's catalogue may raise: CatalogueError (a ValueError) for a folder or csv that cannot be
# used, OSError for unreadable files, ValueError (UnicodeDecodeError included) and csv.Error for broken text.
LOAD_ERRORS = (CatalogueError, OSError, ValueError, csv.Error)
WHAT_TO_DO = "Fix the folder and reload, or pick another catalogue (or demo) in the sidebar."


def folder_problem(spec: str) -> str | None:
    """Why the folder ``spec`` cannot be a catalogue (it is missing, a file, or holds no captions.csv), or None.

    Cheap: nothing is read but the folder's entries; ``demo`` is never checked (it is made on first use).
    """
    if spec == DEMO:
        return None
    try:
        folder = resolve_data(spec)  # says what is wrong with a missing path, a file or a folder without a csv
    except LOAD_ERRORS as err:
        return str(err)
    if not folder.exists():
        return f"{folder} does not exist: give a catalogue folder (captions.csv + images) or 'demo'"
    if not folder.is_dir():
        return f"{folder} is a file, not a folder: give the folder that holds captions.csv"
    if not (folder / "captions.csv").is_file():
        return (f"no captions.csv in {folder}: a catalogue is a folder with captions.csv (columns image, caption) "
                "and its images; use import for the Kaggle or research layouts")
    return None


def load_problem(spec: str | Path, err: BaseException) -> str:
    """The one line shown when loading catalogue ``spec`` raised ``err``: what is wrong, then what to do."""
    reason = " ".join(str(err).split()) or type(err).__name__
    return f"The catalogue {spec} cannot be used: {reason}. {WHAT_TO_DO}"
