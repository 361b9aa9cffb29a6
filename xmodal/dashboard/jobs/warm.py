"""Warm children for the training queue: each job forked from a process that imported PyTorch once.

Every ``python -m xmodal.train`` (and each dashboard job after the queue) spent seconds importing PyTorch,
timm and torchvision before doing anything; the one-click demo starts seven of them.
The queue process imports them once (``preload``) and runs each job in a *forked* child (``start``):
the child has its own pid, its own ``train.log`` (its stdout and stderr), and runs
``python -m MODULE ARGS`` as that command would (``runpy``), so a Stop (SIGTERM to the run's pid), a
crash or an exit code means what it meant for a separate process.

Only where forking a process that imported PyTorch is safe: Linux, from a process that has run no
PyTorch operation (no thread pool yet), never from the Streamlit server (threads). Elsewhere, or with
``XMODAL_FORK=0``, ``start`` starts an ordinary subprocess.
"""
from __future__ import annotations

import importlib
import io
import os
import runpy
import signal
import subprocess
import sys
import threading
import traceback
from pathlib import Path

from ...data import open_catalogue
from ...data.demo import demo_dir

ENV = "XMODAL_FORK"
PRELOAD = ("torch", "timm", "xmodal.training.cli", "xmodal.retrieval.run", "xmodal.dashboard.maps.embeds")


def available() -> bool:
    """Whether jobs can be forked here (Linux, and not switched off with ``XMODAL_FORK=0``)."""
    return sys.platform.startswith("linux") and hasattr(os, "fork") and os.environ.get(ENV, "1") != "0"


def preload(catalogues=()) -> None:
    """Import what the jobs need, once, in this (the queue's) process, and meanwhile, in a thread, load the
    ``catalogues`` (``--data`` values) the jobs will train on: the demo is generated then, and each photo's
    check is remembered (``xmodal.data.catalogue``), so no job decodes it again. No PyTorch operation runs."""
    if not available():
        return
    specs = list(dict.fromkeys(catalogues))
    demo = None
    if "demo" in specs:  # generating it is pure Python and PIL: in a process of its own, beside the imports
        if not (demo_dir() / "demo.json").is_file():
            demo = subprocess.Popen([sys.executable, "-c", "from xmodal.data import ensure_demo; ensure_demo()"],
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def load() -> None:
        if demo is not None:
            demo.wait()
        for spec in specs:
            try:
                open_catalogue(spec)
            except Exception:  # noqa: BLE001 - the job loads it again and reports the problem
                pass
    worker = threading.Thread(target=load, name="xmodal-preload-catalogues", daemon=True)
    worker.start()
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - each job imports it again and reports the problem in its log
            pass
    worker.join()  # no thread left running when the jobs are forked


class Forked:
    """A forked child, with the parts of ``subprocess.Popen`` the queue uses."""

    def __init__(self, pid: int):
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                self.returncode = 1
                return self.returncode
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self) -> int:
        while self.returncode is None:
            try:
                _, status = os.waitpid(self.pid, 0)
            except ChildProcessError:  # reaped elsewhere
                self.returncode = 1
            else:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass


def _run_in_child(module: str, args: list[str], log_fd: int) -> None:
    """The child's side: output to the log, run the module as ``__main__``, exit with its code."""
    code = 1
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the queue's handler is not the job's
        signal.signal(signal.SIGINT, signal.default_int_handler)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        # unbuffered text, like PYTHONUNBUFFERED=1 for a subprocess (progress bars reach the log at once)
        sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), write_through=True, encoding="utf-8")
        sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), write_through=True, encoding="utf-8")
        sys.argv = [module, *args]
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    except BaseException:  # noqa: BLE001 - reported in the log, like an uncaught error of a subprocess
        traceback.print_exc()
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def start(cmd: list[str], log_path: Path) -> Forked | subprocess.Popen:
    """Run ``cmd`` (``[python, "-m", MODULE, *ARGS]``) with its output appended to ``log_path``: forked from
    this process when ``available``, else as a subprocess."""
    if not (available() and len(cmd) >= 3 and cmd[1] == "-m"):
        with open(log_path, "ab") as log:
            return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env={**os.environ, "PYTHONUNBUFFERED": "1"})
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        _run_in_child(cmd[2], list(cmd[3:]), log_fd)  # never returns
    os.close(log_fd)
    return Forked(pid)
