"""What the disk-cache tests share: the ways a cache file is damaged (``DAMAGE``, ``damage``), the warnings that
name a file, the temporary files a write leaves, and a full disk (the ``disk_full`` fixture: every cache write
fails with ENOSPC once its bytes are in the temporary file). Used by tests/test_caches.py and
tests/test_gallery_caches.py."""
from __future__ import annotations

import errno
import logging
from pathlib import Path

import pytest

from xmodal import cachefile

DAMAGE = ["truncate", "garble", "garbage", "empty"]


def damage(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "truncate":
        data = data[: len(data) // 2]
    elif how == "garble":  # flip 16 bytes in the middle: a readable file with the wrong contents
        mid = len(data) // 2
        data[mid:mid + 16] = bytes(b ^ 0xFF for b in data[mid:mid + 16])
    elif how == "garbage":
        data = bytearray(b"not a cache file")
    elif how == "empty":
        data = bytearray()
    path.write_bytes(bytes(data))


def notices(caplog, path: Path, words: str = "rebuilding") -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and path.name in r.getMessage() and words in r.getMessage()]


def leftovers(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.tmp"))


def enospc(fd):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.fixture
def disk_full(monkeypatch):
    """Every cache write fails with ENOSPC once its bytes are in the temporary file."""
    monkeypatch.setattr(cachefile.os, "fsync", enospc)
