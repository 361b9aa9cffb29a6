"""What the training command says when it stops on an error: one line for the user, the traceback in the run."""
from __future__ import annotations

import errno
import traceback
from pathlib import Path

from ..data import CatalogueError
from ..runs import RunLocked, read_best, write_status
from .args import ArgError
from .loop import NonFiniteError
from .plan import RunFolderError

# Errors that are the user's input, not a bug: one line, exit code 2.
USER_ERRORS = (ArgError, CatalogueError, RunLocked)


def kept_note(run_dir: Path) -> str:
    """What a run stopped by non-finite values leaves: its last good checkpoint, never the bad weights."""
    best = read_best(run_dir)
    if not best:
        return "no epoch had completed, so no checkpoint was written (test.json neither)"
    return (f"the last good checkpoint is kept (best.safetensors from epoch {best.get('epoch')}, last.pt from the "
            "last completed epoch); test.json was not written")


def record_failure(run_dir: Path, err: BaseException) -> None:
    """status.json says failed with the reason, error.log has the traceback (each best effort: the disk may be full)."""
    try:
        (run_dir / "error.log").write_text(traceback.format_exc())
    except OSError:
        pass
    try:
        write_status(run_dir, "failed", error=describe_error(err))
    except OSError:
        pass


def one_line(err: BaseException) -> str:
    """An error's message on one line (a catalogue report's details joined with '; ')."""
    return "; ".join(line.strip() for line in str(err).splitlines() if line.strip())


def describe_error(err: BaseException) -> str:
    """One line for the user."""
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        return (f"disk full while writing {err.filename or 'a run file'}: free some space, then resume with "
                "--resume (the last completed epoch is kept)")
    if isinstance(err, USER_ERRORS + (RunFolderError, NonFiniteError)):
        return one_line(err)
    return f"{type(err).__name__}: {one_line(err)[:300]}"
