"""Shared fixtures: a tiny demo catalogue and a tiny trained run, both made once per session.

Every test runs with its own cache and checkpoints folders (XMODAL_CACHE, XMODAL_CHECKPOINTS), so the
suite never touches the user's files and never downloads anything.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import pytest

# One PyTorch thread per test process: the two xdist workers (and the servers and runs they start) already keep
# both cores busy, and a second thread in each made every small parallel region wait for a core (a set of model
# tests took 14 % more CPU and 2.7x the time on a busy host). Tests about thread counts set their own
# (``two_torch_threads``). Waiting OpenMP threads sleep instead of spinning where a process asks for more. Set
# before PyTorch loads, inherited by every subprocess.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
REPO = Path(__file__).resolve().parents[1]
MYNTRA = REPO.parent / "shared" / "datasets" / "myntra"
# A tiny model keeps CPU tests fast: small images and narrow heads (every model takes these fields). A tiny
# cmpm-efficientnet run: 0.35 s of CPU instead of 1.1 s at the default widths, 28 MB written instead of 83 MB.
TINY_SETS = {"lstm_dim": 32, "hidden_dim": 64}  # its --set fields, as config.json records them (train.model_args)
TINY_SIZE = ["--image-size", "64", "48", "--embed-dim", "32", *(f"--set={k}={v}" for k, v in TINY_SETS.items())]


def pytest_collection_modifyitems(config, items) -> None:
    """Longest files first (a pytest-xdist worker takes a file at a time: a long one last leaves the other worker
    idle at the end): files with browser tests, then by their count of slow tests; files whose tests wait for early
    runs (below) last, so that those runs have the whole session to be made. The order within a file is kept."""
    files: dict[str, list] = {}
    for item in items:
        files.setdefault(item.nodeid.split("::")[0], []).append(item)

    def weight(tests: list) -> tuple:
        waits = any(name in EARLY_RUNS for t in tests for name in getattr(t, "fixturenames", ()))
        browser = any(t.get_closest_marker("browser") for t in tests)
        return waits, not browser, -sum(bool(t.get_closest_marker("slow")) for t in tests)
    items[:] = [t for tests in sorted(files.values(), key=weight) for t in tests]


@pytest.fixture(scope="session", autouse=True)
def _components_scanned_once():
    """Every AppTest scans all installed packages' metadata for Streamlit components (0.7 s of CPU each, ~40 s over
    the suite); the installed packages do not change during a test session, so each process scans once."""
    try:
        from streamlit.components.v2 import manifest_scanner
    except ImportError:  # another Streamlit version: nothing to share
        yield
        return
    scan = manifest_scanner.scan_component_manifests
    found = scan()
    manifest_scanner.scan_component_manifests = lambda max_workers=None: list(found)
    yield
    manifest_scanner.scan_component_manifests = scan


@pytest.fixture(scope="session", autouse=True)
def _apptest_without_polling():
    """Two costs of Streamlit's AppTest that do not test anything, removed for the session's processes:
    - after each script run it polls every millisecond for the run's end, taking the GIL from the script thread
      (7 % of the dashboard tests' CPU); here it waits on the run's SHUTDOWN event instead, with the same timeout
      and error;
    - every AppTest parses, rewrites (magic) and compiles dashboard.py and its page anew (8 %); here one cache per
      process, keyed by path, size and modification time, so an edited script is compiled again."""
    try:
        from streamlit.runtime.scriptrunner import ScriptRunnerEvent, script_cache
        from streamlit.testing.v1 import app_test, local_script_runner
    except ImportError:  # another Streamlit version: nothing to change
        yield
        return
    wait, make = local_script_runner.require_widgets_deltas, script_cache.ScriptCache

    def require_widgets_deltas(runner, timeout: float = 3) -> None:
        done = threading.Event()

        def on_event(sender, event, **kwargs) -> None:
            if event == ScriptRunnerEvent.SHUTDOWN:
                done.set()
        runner.on_event.connect(on_event, weak=False)
        try:
            if runner.script_stopped() or done.wait(timeout):
                return
        finally:
            runner.on_event.disconnect(on_event)
        runner.request_stop()  # as Streamlit's own wait does on its timeout: stop the script, then say so
        runner.join()
        raise RuntimeError(f"AppTest script run timed out after {timeout}(s)")

    class SharedCache(make):
        _shared: dict = {}

        def get_bytecode(self, script_path: str):
            path = os.path.abspath(script_path)
            try:
                stat = os.stat(path)
                key = (path, stat.st_size, stat.st_mtime_ns)
            except OSError:
                return super().get_bytecode(script_path)
            if key not in self._shared:
                self._shared[key] = super().get_bytecode(script_path)
            return self._shared[key]
    local_script_runner.require_widgets_deltas = require_widgets_deltas
    app_test.ScriptCache = local_script_runner.ScriptCache = SharedCache
    yield
    local_script_runner.require_widgets_deltas = wait
    app_test.ScriptCache = local_script_runner.ScriptCache = make


@pytest.fixture(scope="session", autouse=True)
def _isolated_env(tmp_path_factory):
    cache = tmp_path_factory.mktemp("xmodal_cache")
    # the dashboard's built-in 2,000-item demo catalogue is made once for every process of the session (3.8 s of
    # CPU each time); ``ensure_demo`` renames a finished copy into place, so concurrent makers never clash
    # the same goes for the distilled MobileNet start (~8 s of CPU), keyed by the catalogue's content and the recipe:
    # a worker that needs it after the other made it reads it
    for name in ("demo", "distilled"):
        shared = _early_root(tmp_path_factory) / name
        shared.mkdir(exist_ok=True)
        (cache / name).symlink_to(shared, target_is_directory=True)
    os.environ["XMODAL_CACHE"] = str(cache)
    os.environ["XMODAL_CHECKPOINTS"] = str(tmp_path_factory.mktemp("checkpoints"))
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.pop("XMODAL_ALLOW_DOWNLOAD", None)
    yield


@pytest.fixture
def two_torch_threads():
    """PyTorch on two threads for one test (the suite runs it on one): code that changes the thread count and must
    give it back is only tested where there is something to give back."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


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


# Runs that tests need and that take a while to make: {fixture name: function(empty folder) -> (commands, what the
# fixture returns)}, each command an (argv, environment variables) pair; a run needing a catalogue makes its own
# (``tiny_demo``), since a pytest-xdist worker's folders go when that worker ends. Test modules register theirs as
# they are imported. From the session's start, the runs the selected tests use are made in the background, in the
# order the tests first use them, each command on one thread, with a cache of its own, at the lowest priority (nice
# 19): the tests leave a core partly idle while they wait on servers and browsers, and these fill it. Each run is
# made once per test session, by whichever process claims its lock first (the xdist workers share the folder); a
# fixture waits for it with ``early_run``, making it there and then if nobody has started it. Once a test waits, the
# run's commands go back to the normal priority: at nice 19 on a saturated machine they barely moved.
EARLY_RUNS: dict[str, Callable[[Path], tuple[list[tuple[list[str], dict]], object]]] = {}
_DEMO = "import sys\nfrom xmodal.data import generate_demo\ngenerate_demo(sys.argv[1], n=60, seed=1)"


def tiny_demo(folder: Path) -> tuple[list[str], dict]:
    """The command that writes ``tiny_catalogue``'s catalogue (the same 60 demo items) into ``folder``."""
    return [sys.executable, "-c", _DEMO, str(folder)], {}


class _Early:
    """One early run: its commands and log in a folder every worker of the session sees; ``status`` holds "" once
    every command succeeded, else what failed."""

    def __init__(self, name: str, root: Path):
        self.name, self.folder = name, root / "early" / name
        (self.folder / "work").mkdir(parents=True, exist_ok=True)
        self.log, self.status = self.folder / "early.log", self.folder / "status"
        self.pid, self.wanted = self.folder / "pid", self.folder / "wanted"  # the running command; a test waits
        self.commands, self.result = EARLY_RUNS[name](self.folder / "work")
        self.proc: subprocess.Popen | None = None

    def run(self, env: dict, stop: threading.Event) -> None:
        """Make the run unless it is made or another thread or process is making it (its lock is held)."""
        fd = os.open(self.folder / "lock", os.O_CREAT | os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return
        try:
            if not self.status.exists():
                self._commands(env, stop)
        finally:
            os.close(fd)

    def _commands(self, env: dict, stop: threading.Event) -> None:
        failed = ""
        with open(self.log, "ab") as out:
            for argv, extra in self.commands:
                if stop.is_set():
                    return  # no status: the session is ending
                wanted = self.wanted.exists()  # a test waits for it: no longer only the cores' leftovers
                self.proc = subprocess.Popen(argv, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env={
                    **env, "OMP_NUM_THREADS": "1", "XMODAL_CACHE": str(self.folder / "cache"), **extra},
                    preexec_fn=None if wanted else lambda: os.nice(19))
                self.pid.write_text(str(self.proc.pid))
                if self.proc.wait():
                    failed = f"{' '.join(argv[:4])} ... exited with {self.proc.returncode}"
                    break
        tmp = self.status.with_suffix(".tmp")
        tmp.write_text(failed)
        tmp.replace(self.status)


_EARLY: dict[str, _Early] = {}


def _early_root(tmp_path_factory) -> Path:
    """A folder every process of this test session sees: under xdist the parent of the workers' own folders."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session", autouse=True)
def _early_runs(request, tmp_path_factory, _isolated_env):
    """Start the early runs the selected tests use, in the order the tests come; stop them when the session ends."""
    first_use: dict[str, int] = {}
    for i, item in enumerate(request.session.items):
        for name in item.fixturenames:
            if name in EARLY_RUNS:
                first_use.setdefault(name, i)
    for name in sorted(first_use, key=first_use.get):
        _EARLY[name] = _Early(name, _early_root(tmp_path_factory))
    jobs, stop, env = list(_EARLY.values()), threading.Event(), dict(os.environ)  # tests change os.environ later

    def work() -> None:
        for job in jobs:
            job.run(env, stop)
    worker = threading.Thread(target=work, name="early runs", daemon=True)
    worker.start()
    yield
    stop.set()
    for job in jobs:
        if job.proc is not None and job.proc.poll() is None:
            job.proc.kill()
    worker.join()


def early_run(name: str, request):
    """What early run ``name`` made, once its commands have all succeeded (made now if nobody has started it)."""
    if name not in _EARLY:
        _EARLY[name] = _Early(name, _early_root(request.getfixturevalue("tmp_path_factory")))
    job, deadline = _EARLY[name], time.monotonic() + 1800
    job.wanted.touch()
    while not job.status.exists():
        job.run(dict(os.environ), threading.Event())  # returns at once while another is making it
        with contextlib.suppress(OSError, ValueError):  # at nice 19 on a busy machine it would barely move
            pid = int(job.pid.read_text())
            if os.getpriority(os.PRIO_PROCESS, pid) == 19:  # still that command (a pid can be reused)
                os.setpriority(os.PRIO_PROCESS, pid, 0)  # raising a priority back needs root: else it stays
        if not job.status.exists():
            assert time.monotonic() < deadline, f"{name}: not made after 30 minutes"
            time.sleep(0.2)
    failed = job.status.read_text()
    assert not failed, f"{name}: {failed}:\n{job.log.read_text(errors='replace')[-3000:]}"
    return job.result


@pytest.fixture(scope="module")
def chromium():
    """One headless Chromium for a browser test module's tests; each test browses in contexts of its own
    (``browser_kit._context``)."""
    pytest.importorskip("playwright.sync_api", reason="pip install playwright (the Python package only)")
    from browser_kit import CHROMIUM_ARGS, _chromium
    from playwright.sync_api import sync_playwright
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=_chromium(), headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


# The checkpoints folders the dashboard's AppTest modules open their pages on (their helpers: tests/apptest_kit.py).

@pytest.fixture
def with_run(trained_run, tiny_catalogue, tmp_path, monkeypatch) -> Path:
    """A checkpoints folder holding the tiny trained run, its catalogue embeddings made (as the background job
    would)."""
    from xmodal.dashboard.maps import embeds
    if not embeds.ready(trained_run):
        embeds.compute(trained_run)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / trained_run.name).symlink_to(trained_run, target_is_directory=True)
    monkeypatch.setenv("XMODAL_CHECKPOINTS", str(ckpt))
    return ckpt


@pytest.fixture
def empty(tmp_path, monkeypatch) -> Path:
    ckpt = tmp_path / "empty"
    ckpt.mkdir()
    monkeypatch.setenv("XMODAL_CHECKPOINTS", str(ckpt))
    return ckpt


@pytest.fixture
def eight(trained_run, tiny_catalogue, tmp_path_factory, monkeypatch) -> dict:
    """Eight finished runs on two catalogues (the tiny demo and a second one with other attribute values),
    one of each four collapsed, served from their checkpoints folder."""
    from dashboard_runs import two_catalogues
    runs = two_catalogues(trained_run, tiny_catalogue, tmp_path_factory)
    monkeypatch.setenv("XMODAL_CHECKPOINTS", str(runs["root"]))
    return runs


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

