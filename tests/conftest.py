"""Shared fixtures: a tiny demo catalogue and a tiny trained run, both made once per session.

Every test runs with its own cache and checkpoints folders (XMODAL_CACHE, XMODAL_CHECKPOINTS), so the
suite never touches the user's files and never downloads anything.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Callable

import pytest

# OpenMP threads that wait for work sleep instead of spinning (libgomp spins by default). On a busy or shared host
# the spinning threads of one process starve the thread they wait for: tiny training runs took 10-20 s instead of
# 1-2. Set before PyTorch loads, inherited by every subprocess; the thread counts, hence the code paths, are as
# they were.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
REPO = Path(__file__).resolve().parents[1]
MYNTRA = REPO.parent / "shared" / "datasets" / "myntra"
# A tiny model keeps CPU tests fast: small images and narrow heads (every model takes these fields). A tiny
# cmpm-efficientnet run: 0.35 s of CPU instead of 1.1 s at the default widths, 28 MB written instead of 83 MB.
TINY_SETS = {"lstm_dim": 32, "hidden_dim": 64}  # its --set fields, as config.json records them (train.model_args)
TINY_SIZE = ["--image-size", "64", "48", "--embed-dim", "32", *(f"--set={k}={v}" for k, v in TINY_SETS.items())]


@pytest.fixture(scope="session", autouse=True)
def _isolated_env(tmp_path_factory):
    cache = tmp_path_factory.mktemp("xmodal_cache")
    os.environ["XMODAL_CACHE"] = str(cache)
    os.environ["XMODAL_CHECKPOINTS"] = str(tmp_path_factory.mktemp("checkpoints"))
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.pop("XMODAL_ALLOW_DOWNLOAD", None)
    yield


@pytest.fixture(scope="session")
def tiny_catalogue(tmp_path_factory) -> Path:
    """A 60-item demo catalogue folder."""
    from xmodal.data import generate_demo
    return generate_demo(tmp_path_factory.mktemp("tiny") / "cat", n=60, seed=1)


@pytest.fixture(scope="session")
def trained_run(tiny_catalogue, tmp_path_factory) -> Path:
    """A finished cmpm-efficientnet run (2 epochs) on the tiny catalogue."""
    from xmodal.training.cli import main
    out = tmp_path_factory.mktemp("runs")
    assert main(["--model", "cmpm-efficientnet", "--data", str(tiny_catalogue), "--epochs", "2",
                 "--batch-size", "16", "--out", str(out), "--run-id", "tiny-cmpm", *TINY_SIZE]) == 0
    return out / "tiny-cmpm"


# Runs that a test needs and that take a while to train: {fixture name: function(empty folder) -> (argv, the run
# folder it writes)}. Registered by test modules as they are imported; when a selected test uses the fixture, the
# run trains in a subprocess from the session's start, on one thread, beside the tests (most use one core).
EARLY_RUNS: dict[str, Callable[[Path], tuple[list[str], Path]]] = {}
_STARTED: dict[str, tuple[subprocess.Popen, Path, Path]] = {}


def _start_early(name: str, folder: Path) -> None:
    argv, run_dir = EARLY_RUNS[name](folder)
    log = folder / "train.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "XMODAL_CACHE": str(folder / "cache")}  # its own cache
    with open(log, "wb") as out:
        _STARTED[name] = subprocess.Popen(argv, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT), run_dir, log


@pytest.fixture(scope="session", autouse=True)
def _early_runs(request, tmp_path_factory, _isolated_env):
    """Start the early runs the selected tests use; stop any still training when the session ends."""
    wanted = {name for item in request.session.items for name in item.fixturenames if name in EARLY_RUNS}
    for name in sorted(wanted):
        _start_early(name, tmp_path_factory.mktemp(name))
    yield
    for proc, _, _ in _STARTED.values():
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def early_run(name: str, tmp_path_factory) -> Path:
    """The run folder of early run ``name`` once its training has finished (started now if it was not)."""
    if name not in _STARTED:
        _start_early(name, tmp_path_factory.mktemp(name))
    proc, run_dir, log = _STARTED[name]
    code = proc.wait(timeout=1800)
    assert code == 0, f"{name}: the training exited with {code}:\n{log.read_text(errors='replace')[-3000:]}"
    return run_dir


def myntra_or_skip() -> Path:
    if not (MYNTRA / "captions.csv").is_file():
        pytest.skip(f"real catalogue not found at {MYNTRA}")
    return MYNTRA


def damaged(src: bytes, rng, k: int, width: int, shortest: int = 0) -> bytes:
    """File bytes damaged the k-th way: odd k cut at a random length (at least ``shortest``), even k
    ``width`` random bytes written at a random position."""
    data = bytearray(src)
    if k % 2:
        return bytes(data[:int(rng.integers(shortest, len(data)))])
    pos = int(rng.integers(0, len(data)))
    data[pos:pos + width] = rng.bytes(width)
    return bytes(data)

