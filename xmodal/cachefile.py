"""Disk caches that heal: atomic writes, a check on every read, and a one-line notice when one is rebuilt.

Every cache xmodal keeps (frozen backbone features, a run's gallery embeddings, faiss indexes, the
dashboard's projections) can be recomputed from the data and the weights. So a reader that finds its
file truncated, garbled (a checksum: the CRC-32 of each ``.npz`` member, or a sha256 in a safetensors
header), of the wrong shape, dtype or row count, or holding non-finite values says so with
``warn_rebuild`` and computes it again; nobody has to find and delete a bad file by hand.

Writers go through ``atomic_write``: a temporary file beside the target, then ``os.replace``. A failed
write (an exception, a full disk) removes the temporary file and leaves the previous file untouched.
``write_cache`` is the same for files that only save time: a failure is logged and the caller carries
on with the values it has in memory. No PyTorch here: the dashboard reads projections without it.
"""
from __future__ import annotations

import contextlib
import logging
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

log = logging.getLogger(__name__)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """An open binary file whose contents replace ``path`` when the block ends without an error.

    The data goes to ``.<name>.<pid>.<random>.tmp`` in the same folder (so the rename is atomic),
    is flushed to disk, then renamed over ``path``. On any failure (an exception in the block, a full
    disk, a failed rename) the temporary file is removed and ``path`` keeps its previous contents.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # mode as for open(): umask applies
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_cache(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> bool:
    """``write(file)`` into ``path`` atomically; False (and a warning) when the disk refuses it.

    For caches only: a full disk or a read-only folder costs the next reader a recomputation, never
    the caller's result.
    """
    try:
        with atomic_write(path) as f:
            write(f)
    except OSError as err:
        log.warning("could not write the cache %s (%s); continuing without it", path, err)
        return False
    return True


def warn_rebuild(path: str | os.PathLike, err: BaseException | str) -> None:
    """The one-line notice for a damaged cache file that is being computed again."""
    reason = err if isinstance(err, str) else f"{type(err).__name__}: {err}"
    log.warning("cache %s is damaged (%s); rebuilding it", path, reason)


def check_array(name: str, a: np.ndarray, shape: tuple[int | None, ...], dtypes: tuple[str, ...] = (),
                finite: bool = True) -> np.ndarray:
    """``a`` if it has ``shape`` (None: any size), one of ``dtypes`` and only finite values.

    Raises:
        ValueError: naming ``name``, what was found and what was expected.
    """
    if a.ndim != len(shape) or any(want is not None and got != want for got, want in zip(a.shape, shape)):
        want = tuple("*" if s is None else s for s in shape)
        raise ValueError(f"{name} has shape {a.shape}, expected {want}")
    if dtypes and a.dtype.name not in dtypes:
        raise ValueError(f"{name} has dtype {a.dtype}, expected {' or '.join(dtypes)}")
    if finite and a.dtype.kind == "f":
        rows = max(1, (1 << 24) // max(1, a[:1].size))  # about 16M values at a time: no full-size mask
        if not all(np.isfinite(a[s:s + rows]).all() for s in range(0, len(a), rows)):
            raise ValueError(f"{name} holds non-finite values")
    return a

