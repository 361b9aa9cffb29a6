"""The run folder's lock: one writer per folder, who holds it, and the files a killed writer left behind."""
from __future__ import annotations

import json
import os
import re
import socket
import time
from pathlib import Path


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True



class RunLocked(RuntimeError):
    """Another live process holds the run folder."""


LOCK_FILE = ".lock"


class RunLock:
    """One writer per run folder: an exclusive ``flock`` on the run folder itself and on ``<run>/.lock``.

    The kernel releases both when their process exits in any way (kill -9 included), so a lock left by a dead
    process is never in the way. The folder's lock holds even when someone deletes ``.lock`` during a run (a
    second writer would otherwise lock a new file of the same name); the file's lock keeps out writers of
    earlier versions, and the file names the holder (pid, host, start, command) for ``read_lock``. Use
    ``RunLock.acquire(run_dir, command)`` and ``release()`` (or ``with``).
    """

    def __init__(self, run_dir: Path, fds: tuple[int, ...]):
        self.run_dir, self._fds = Path(run_dir), fds

    @classmethod
    def acquire(cls, run_dir: Path, command: str = "") -> "RunLock":
        """Take the lock of ``run_dir`` (which must exist) or raise ``RunLocked`` naming the holder."""
        run_dir = Path(run_dir)
        fds: list[int] = []
        try:
            for path, flags in ((run_dir, os.O_RDONLY | os.O_DIRECTORY), (run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT)):
                fds.append(os.open(path, flags, 0o644))
                if not _flock_exclusive(fds[-1]):
                    raise RunLocked(_holder_line(run_dir))
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(), "command": command}
        os.ftruncate(fds[1], 0)
        os.pwrite(fds[1], json.dumps(info).encode(), 0)
        clean_dead_temps(run_dir)  # we are the writer now: what a killed writer left half-written goes
        return cls(run_dir, tuple(fds))

    def release(self) -> None:
        for fd in self._fds:
            os.close(fd)  # closing a descriptor drops its flock
        self._fds = ()

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _flock_exclusive(fd: int) -> bool:
    import fcntl
    for attempt in range(3):  # a reader's brief shared lock (read_lock) is not a holder: retry
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if attempt < 2:
                time.sleep(0.05)
    return False


def _holder_line(run_dir: Path) -> str:
    holder = read_lock(run_dir) or {}
    started = holder.get("started")
    since = time.strftime("%H:%M:%S", time.localtime(started)) if isinstance(started, (int, float)) else "?"
    return (f"run folder {run_dir} is in use by process {holder.get('pid', '?')} on {holder.get('host', '?')} "
            f"since {since}; wait for it to finish, or stop it (Stop in the dashboard, or kill that process), "
            "then try again")


def _held(path: Path, flags: int) -> bool | None:
    """Whether a live process holds a ``flock`` on ``path``; None when it cannot be opened."""
    import fcntl
    try:
        fd = os.open(path, flags)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def read_lock(run_dir: Path) -> dict | None:
    """``{"pid", "host", "started", "command"}`` of the live process holding ``run_dir``; None when free.

    A lock file left by a process that has died is free (the kernel dropped its ``flock``).
    """
    run_dir = Path(run_dir)
    if not (_held(run_dir, os.O_RDONLY | os.O_DIRECTORY) or _held(run_dir / LOCK_FILE, os.O_RDONLY)):
        return None
    try:
        info = json.loads((run_dir / LOCK_FILE).read_bytes() or b"{}")
    except (OSError, ValueError, RecursionError):  # deleted, not UTF-8, not JSON
        info = {}
    if not isinstance(info, dict):  # a lock file written by someone else: the holder is unnamed
        info = {}
    return {"pid": info.get("pid"), "host": info.get("host"), "started": info.get("started"),
            "command": info.get("command", "")}


TEMP_FILE = re.compile(r"^\..+\.(\d+)\.tmp$")  # atomic_write_bytes's temporary files: .<name>.<pid>.tmp
TEMP_GRACE_S = 60.0  # younger temporary files are left alone whoever wrote them (another host's writer)


def clean_dead_temps(run_dir: Path) -> list[str]:
    """Remove the temporary files of writers that died mid-write (``kill -9`` during a checkpoint).

    A file goes only when its writer's pid is not alive on this host and it has not changed for a minute.

    Returns:
        The names removed.
    """
    removed = []
    try:
        entries = list(os.scandir(run_dir))
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        match = TEMP_FILE.match(entry.name)
        if not match or int(match.group(1)) == os.getpid() or pid_alive(int(match.group(1))):
            continue
        try:
            if entry.is_file(follow_symlinks=False) and now - entry.stat(follow_symlinks=False).st_mtime > TEMP_GRACE_S:
                os.unlink(entry.path)
                removed.append(entry.name)
        except OSError:
            continue
    return removed
