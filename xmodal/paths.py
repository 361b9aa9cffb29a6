"""Where xmodal keeps its files: the run folders and the cache (features, demo catalogue)."""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$XMODAL_CACHE``, default ``~/.cache/xmodal``."""
    path = Path(os.environ.get("XMODAL_CACHE", Path.home() / ".cache" / "xmodal")).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def checkpoints_dir() -> Path:
    """``$XMODAL_CHECKPOINTS``, default ``./checkpoints``."""
    return Path(os.environ.get("XMODAL_CHECKPOINTS", "checkpoints")).expanduser()
