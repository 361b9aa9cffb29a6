"""Writing a catalogue folder without ever replacing what a user made.

Every command and page that writes a catalogue (``demo``, the importers) goes through ``write_catalogue``:
- a target that holds anything is refused unless the caller says ``overwrite`` (the ``--overwrite`` flag, a
  tick box on the page); even then only a folder that holds nothing but a catalogue (``captions.csv``,
  ``images/``, the demo's and the importers' own notes) is replaced, never a folder with other files;
- the new catalogue is built in a hidden sibling folder and moved into place whole, so its rows and its
  images always come from the same write, and a failure leaves the target as it was;
- in place (the target is the source folder of an import), only ``captions.csv`` is written, refused when
  one is there already unless ``overwrite``.
"""
from __future__ import annotations

import os
import re
import secrets
import shutil
from pathlib import Path
from typing import Callable

from .catalogue import CatalogueError

# what a catalogue folder written by xmodal holds; a folder with anything else is never replaced
CATALOGUE_ENTRIES = {"captions.csv", "images", "demo.json"}
# an item id that is one plain file-name part: no folders, no "..", no hidden or option-like names
SAFE_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,199}$")


class TargetExists(CatalogueError):
    """The folder asked to write a catalogue into already holds something the user may have made."""


def safe_id(item: str) -> bool:
    """Whether ``item`` can name a file inside a catalogue folder (``images/<id>.jpg``) and nothing outside it."""
    return bool(SAFE_ID.match(item)) and ".." not in item


def _described(folder: Path) -> str:
    names = sorted(p.name for p in folder.iterdir())
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return shown


def check_target(out: Path, overwrite: bool, flag: str = "--overwrite") -> None:
    """Raise ``TargetExists`` when writing a catalogue into ``out`` would replace something (see module doc).

    Args:
        out: the folder to write.
        overwrite: the user asked to replace a catalogue there.
        flag: how the user says so, for the message (``--overwrite``, or the page's tick box).
    """
    if out.exists() and not out.is_dir():
        raise TargetExists(f"{out} is a file, not a folder: choose a new folder for the catalogue")
    if not out.is_dir() or not any(out.iterdir()):
        return
    foreign = sorted(p.name for p in out.iterdir() if p.name not in CATALOGUE_ENTRIES)
    if foreign:
        more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        raise TargetExists(f"{out} already holds files that are not a catalogue ({', '.join(foreign[:3])}{more}); "
                           "choose a new folder for the catalogue (it is never replaced, even with "
                           f"{flag})")
    if not overwrite:
        raise TargetExists(f"{out} already holds a catalogue ({_described(out)}); choose a new folder, or "
                           f"pass {flag} to replace it")


def check_in_place(folder: Path, overwrite: bool, flag: str = "--overwrite") -> None:
    """Raise ``TargetExists`` when an in-place import would replace the folder's own ``captions.csv``."""
    if (folder / "captions.csv").exists() and not overwrite:
        raise TargetExists(f"{folder} already has a captions.csv (a catalogue, perhaps edited by hand); import "
                           f"into a new folder with --out, or pass {flag} to replace it")


def write_catalogue(out: str | os.PathLike, build: Callable[[Path], None], overwrite: bool = False,
                    flag: str = "--overwrite") -> Path:
    """Build a catalogue with ``build(folder)`` in a hidden sibling folder, then move it to ``out`` whole.

    Args:
        out: the catalogue folder to write; created with its parents.
        build: writes ``captions.csv`` and the images into the folder it is given (empty and fresh).
        overwrite: replace a catalogue already at ``out`` (never a folder holding other files).
        flag: how the user asks to overwrite, for messages.

    Returns:
        ``out``.

    Raises:
        TargetExists: ``out`` holds something ``overwrite`` does not allow replacing.
    """
    out = Path(out).expanduser()
    check_target(out, overwrite, flag)
    out.parent.mkdir(parents=True, exist_ok=True)
    token = f"{os.getpid()}-{secrets.token_hex(4)}"
    tmp = out.with_name(f".{out.name}.tmp-{token}")
    tmp.mkdir()
    try:
        build(tmp)
        if out.is_dir() and any(out.iterdir()):
            check_target(out, overwrite, flag)  # again: someone may have written there meanwhile
            old = out.with_name(f".{out.name}.old-{token}")
            os.rename(out, old)
            os.rename(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            if out.is_dir():
                out.rmdir()  # empty: nothing of the user's is lost
            os.rename(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def fresh_folder(base: Path) -> Path:
    """``base`` if it is free (absent or empty), else the first free ``base-2``, ``base-3``, ..."""
    base = Path(base).expanduser()
    candidate, k = base, 1
    while candidate.exists() and (not candidate.is_dir() or any(candidate.iterdir())):
        k += 1
        candidate = base.with_name(f"{base.name}-{k}")
    return candidate
