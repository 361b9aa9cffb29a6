"""What a run was made with, recorded in its ``config.json`` so that the numbers can be reproduced.

``collect()`` gathers the project's git commit (and whether the working tree had uncommitted changes), the
versions of Python and of the packages that change the numbers, the hardware and the training arithmetic;
``describe(config)`` turns a run's record into lines for ``xmodal.evaluation.report``. Nothing here fails: what cannot
be known (not a git checkout, a package not installed, no GPU) is ``None``. Versions are read from the
installed packages' metadata, never by importing them.
"""
from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the folder holding the xmodal package: a checkout's top level
# Package (its import name) -> the distributions that provide it (the first one installed is reported)
PACKAGES: dict[str, tuple[str, ...]] = {
    "torch": ("torch",), "timm": ("timm",),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino", "onnxruntime-directml"),
    "faiss": ("faiss-cpu", "faiss-gpu", "faiss-gpu-cu12", "faiss-gpu-cu11", "faiss"),
    "numpy": ("numpy",), "gensim": ("gensim",),
}


def _git(*args: str) -> str | None:
    """``git -C ROOT args`` stdout, stripped; None when git is missing, fails or takes over 5 s."""
    try:
        out = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=5,
                             env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"})  # never take the index lock
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_state() -> dict:
    """``{"commit": sha or None, "dirty": bool or None}`` of the checkout xmodal runs from.

    None when xmodal is not the top of a git checkout (installed as a package, or a copy inside some other
    repository), when git is missing, or when it cannot tell. ``dirty``: tracked files differ from the
    commit (untracked files, such as run folders, do not count).
    """
    top = _git("rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() != ROOT:
        return {"commit": None, "dirty": None}
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def package_version(name: str) -> str | None:
    """The version of package ``name`` (see ``PACKAGES``): the loaded module's own, when it is already imported
    (it keeps a local build tag such as ``+cu130`` that metadata may drop), else the installed distribution's
    metadata; None when not installed."""
    loaded = getattr(sys.modules.get(name), "__version__", None)
    if isinstance(loaded, str):
        return loaded
    for dist in PACKAGES.get(name, (name,)):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def cpu_model() -> str | None:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else ``platform``); None when unknown."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip() or None
    except OSError:
        pass
    return platform.processor() or platform.machine() or None


def gpu_name() -> str | None:
    """The first CUDA GPU's name, when PyTorch is already loaded and sees one (never imported for this)."""
    torch = sys.modules.get("torch")
    try:
        return torch.cuda.get_device_name(0) if torch is not None and torch.cuda.is_available() else None
    except Exception:  # a broken driver: unknown, not a failed run
        return None


def collect(arithmetic: str | None = None) -> dict:
    """The provenance of a run started now: code, software, hardware and ``arithmetic`` (as the run states it).

    Returns:
        ``{"git": {"commit", "dirty"}, "versions": {"python", "torch", "timm", "onnxruntime", "faiss",
        "numpy", "gensim"}, "hardware": {"cpu", "cores", "gpu", "os"}, "arithmetic"}``; versions are
        strings or None, ``cores`` an int.
    """
    try:
        cores = len(os.sched_getaffinity(0))  # the cores this process may use
    except (AttributeError, OSError):
        cores = os.cpu_count()
    return {
        "git": git_state(),
        "versions": {"python": platform.python_version(), **{name: package_version(name) for name in PACKAGES}},
        "hardware": {"cpu": cpu_model(), "cores": cores, "gpu": gpu_name(), "os": platform.platform()},
        "arithmetic": arithmetic,
    }


def describe(config: dict) -> list[str]:
    """Lines for a report from a run's ``config.json`` (its ``provenance`` section); one line for runs from
    before it was recorded."""
    p = config.get("provenance") if isinstance(config, dict) else None
    if not isinstance(p, dict):
        return ["provenance: not recorded (a run from before xmodal recorded it)"]
    git, versions, hw = (p.get(k) if isinstance(p.get(k), dict) else {} for k in ("git", "versions", "hardware"))
    if git.get("commit"):
        dirty = {True: ", with uncommitted changes", False: ", clean"}.get(git.get("dirty"), ", state unknown")
        code = f"code: git {str(git['commit'])[:12]}{dirty}"
    else:
        code = "code: not a git checkout (commit unknown)"
    software = ", ".join(f"{k} {v or 'absent'}" for k, v in versions.items())
    gpu = f", GPU {hw['gpu']}" if hw.get("gpu") else ", no GPU"
    hardware = f"hardware: {hw.get('cpu') or 'unknown CPU'}, {hw.get('cores') or '?'} cores{gpu}"
    arithmetic = p.get("arithmetic") or config.get("arithmetic") or "unknown"
    return [code, f"software: {software}", hardware, f"arithmetic: {arithmetic}"]
