"""Section 8 of ``python -m xmodal.bench --sections load``: many people searching one dashboard at the same moment.

A ``streamlit run dashboard.py`` server on 127.0.0.1 serves one trained run. Each session is a browser tab as the
server sees it: a websocket speaking Streamlit's own protocol (the ``BackMsg``/``ForwardMsg`` protobufs the
browser's JavaScript sends and receives), so the server does for it exactly what it does for a browser. A
session opens the Search page, types a query (the text box's widget state, sent as the browser sends it) and
counts the time until the server has finished the page with its results (``HIT_PREFIX`` captions). With
``poll`` it also sends the sidebar's timed reruns (``auto_rerun``, every 15 s) as an open tab does. That is off
by default: with twenty tabs whose timers fire together just after their searches, the end of a search's page
(its results, its finished message) sometimes never reached the tab although the server had finished the run
(1 to 5 of 20 tabs in 6 of 14 trials; none in 5 trials without the timers), which looks like a race between a
session's full run and its fragment run: Streamlit ignores the events of a ScriptRunner that a rerun request
has replaced before the event loop handled them (its own comment in ``AppSession.request_rerun``, issue 9921),
so a browser tab meets it too. The longer the event loop lags, the likelier: the slower server before issue 20
§5 lost nearly every search that way.

Phases: ``sessions`` tabs open Search on the fresh server and search at once (PyTorch, the run and its gallery
load while they wait); one tab alone searches ``single`` times; the ``sessions`` tabs search at the same
moment, ``rounds`` times, while one more tab opens Home (is the server still responsive?); then ``soak``
queries in all, with the server's memory (VmRSS) read before and after. Bounded: every wait has a time limit,
the server is stopped at the end, and nothing leaves the loopback interface.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..runs import read_json
from .common import BenchConfig, Row, tiny_run
from .tabs import HIT_PREFIX, HOME_PAGE, QUERY_LABEL, SEARCH_PAGE, LoadError, Session  # noqa: F401 - re-exported

SECTION = "8 load"
QUERIES = ("red striped shirt", "blue jeans for men", "black kurta", "white sports shoes", "green printed dress",
           "navy blue t-shirt", "women handbag", "brown leather belt", "pink top", "grey track pants")
SKIPPED_FILES = ("last.pt",)  # a run's resume checkpoint: not read by search, and the largest file


def load_skip_reason(entry: Path) -> str | None:
    """Why the load cannot be run here, or None when it can."""
    if not Path(entry).is_file():
        return f"{entry} not found"
    try:
        import websockets  # noqa: F401 - the sessions' client (Streamlit's own server needs it too)
        from streamlit.proto.BackMsg_pb2 import BackMsg  # noqa: F401 - lazy: Streamlit, optional for the bench
    except ImportError as err:
        return f"{err.name} not installed"
    return None


@dataclass
class LoadResult:
    """What the phases measured (seconds, MB)."""

    sessions: int
    poll: bool = False  # the tabs sent the sidebar's timed reruns
    cold: list[float] = field(default_factory=list)  # open Search + first search, every tab at once, fresh server
    single: list[float] = field(default_factory=list)  # one tab alone, one search after another
    together: list[float] = field(default_factory=list)  # every tab searching at the same moment, all rounds
    extra_home: float | None = None  # one more tab opening Home during the first round
    soak: list[float] = field(default_factory=list)  # every search of the soak
    rss_mb: tuple[float, float] | None = None  # the server's resident memory before and after the soak
    failures: list[str] = field(default_factory=list)


def percentiles(seconds: list[float]) -> tuple[float, float]:
    """(p50, p95) of ``seconds``, NaN when empty."""
    if not seconds:
        return float("nan"), float("nan")
    return float(np.percentile(seconds, 50)), float(np.percentile(seconds, 95))


def rss_mb(pid: int) -> float | None:
    """Resident memory of process ``pid`` in MB (Linux ``/proc``), None elsewhere."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


async def _within(limit: float, coros, failures: list[str], what: str) -> None:
    """Run ``coros`` together for at most ``limit`` seconds; a failure, and each one still waiting when time is
    up, is noted under ``what`` (the measures they append to keep what finished)."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    done, pending = await asyncio.wait(tasks, timeout=limit)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    for task in done:
        if task.exception() is not None:
            failures.append(f"{what}: {type(task.exception()).__name__}: {task.exception()}"[:200])
    if pending:
        failures.append(f"{what}: {len(pending)} of {len(tasks)} sessions unfinished after {limit:.0f} s")


async def _searches(tab: Session, queries: list[str], into: list[float]) -> None:
    for q in queries:
        into.append(await tab.search(q))


async def measure(url: str, pid: int | None, sessions: int = 20, single: int = 20, rounds: int = 3,
                  soak: int = 500, timeout: float = 300.0, poll: bool = False) -> LoadResult:
    """Run the phases against the dashboard at ``url`` (served by process ``pid``), see the module docstring;
    each phase stops after ``timeout`` seconds, keeping what finished and noting the rest in ``failures``.
    ``poll``: the tabs send the sidebar's timed reruns too."""
    res = LoadResult(sessions, poll)
    q = lambda i: QUERIES[i % len(QUERIES)]  # noqa: E731

    async def cold(i: int) -> None:
        t = time.perf_counter()
        async with Session(url, timeout, poll) as tab:
            await tab.open()
            await tab.search(q(i))
        res.cold.append(time.perf_counter() - t)
    await _within(timeout, [cold(i) for i in range(sessions)], res.failures, "fresh server")

    async def alone() -> None:
        async with Session(url, timeout, poll) as tab:
            await tab.open()
            await _searches(tab, [q(i) for i in range(single)], res.single)
    await _within(timeout, [alone()], res.failures, "one tab alone")

    async def home() -> None:
        async with Session(url, timeout, poll) as tab:
            res.extra_home = await tab.open(HOME_PAGE)
    async with contextlib.AsyncExitStack() as stack:
        tabs = [await stack.enter_async_context(Session(url, timeout, poll)) for _ in range(sessions)]
        await _within(timeout, [tab.open() for tab in tabs], res.failures, "opening the tabs")
        for r in range(rounds):
            newcomer = [home()] if r == 0 else []  # one more tab opens Home while every tab searches
            searches = [_searches(tab, [q(i + r)], res.together) for i, tab in enumerate(tabs)]
            await _within(timeout, [*newcomer, *searches], res.failures, f"{sessions} at once, round {r + 1}")

    before = rss_mb(pid) if pid else None
    per = -(-soak // sessions)

    async def soaking(i: int) -> None:
        async with Session(url, timeout, poll) as tab:
            await tab.open()
            await _searches(tab, [q(i + j) for j in range(per)], res.soak)
    await _within(timeout, [soaking(i) for i in range(sessions)], res.failures, "soak")
    after = rss_mb(pid) if pid else None
    res.rss_mb = (before, after) if before is not None and after is not None else None
    return res


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(entry: Path, checkpoints: Path, data: str, log: Path, timeout: float = 120.0,
          env: dict[str, str | None] | None = None):
    """``streamlit run entry`` on a free port of 127.0.0.1 over ``checkpoints``; yields (url, pid), stops it after.
    ``env``: variables to set for the server, or with None to unset."""
    port = _free_port()
    env = {**os.environ, "XMODAL_CHECKPOINTS": str(checkpoints), "XMODAL_DASHBOARD_DATA": data,
           "HF_HUB_OFFLINE": "1", **(env or {})}
    env = {k: v for k, v in env.items() if v is not None}
    cmd = [sys.executable, "-m", "streamlit", "run", str(entry), "--server.headless", "true", "--server.port",
           str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false",
           "--server.fileWatcherType", "none"]
    url = f"http://127.0.0.1:{port}"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, cwd=Path(entry).parent, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.perf_counter() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"streamlit exited with {proc.returncode} (log: {log})")
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2):
                    break
            except OSError:
                if time.perf_counter() > deadline:
                    raise TimeoutError(f"streamlit did not answer within {timeout:.0f} s (log: {log})")
                time.sleep(0.2)
        yield url, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def served_copy(run_dir: Path, checkpoints: Path, fresh: bool = True) -> Path:
    """A copy of ``run_dir`` under ``checkpoints`` to serve (its resume checkpoint left out); ``fresh``: without
    its gallery caches, so the first sessions wait for the gallery to be embedded as on a new run."""
    dst = checkpoints / Path(run_dir).name
    skip = SKIPPED_FILES + (("gallery_*",) if fresh else ())
    shutil.copytree(run_dir, dst, ignore=shutil.ignore_patterns(*skip), dirs_exist_ok=True)
    return dst


def run_data(run_dir: Path) -> str:
    """The catalogue a run was trained on, as the dashboard's catalogue setting (``demo`` or a folder)."""
    data = (read_json(Path(run_dir) / "config.json", default={}) or {}).get("data") or {}
    return "demo" if data.get("name") == "demo" else str(data.get("path") or "demo")


FLOOR_PAGE = """import streamlit as st

from xmodal.dashboard import sockets, state

sockets.send_at_once()  # as dashboard.py does
query = st.text_input({label!r})
if query:  # the dashboard's result grid without a model: one row of 8 distinct photos with their captions
    st.image([state.blank_photo(112 + i) for i in range(8)], width=120,
             caption=[f"**#{{i}}** {{query}}  \\n{prefix}0.{{i}}00" for i in range(1, 9)])
"""


def floor_app(work: Path, dashboard: Path) -> Path:
    """A bare Streamlit app in ``work/floor`` whose Search page is a text box and, once a query is typed, one row
    of 8 photos with captions, served with the dashboard's settings (its ``.streamlit`` folder): what any Streamlit
    search page costs on this machine, the floor under the dashboard's figures. Returns its entry script."""
    root = work / "floor"
    (root / "pages").mkdir(parents=True, exist_ok=True)
    (root / "home.py").write_text('import streamlit as st\n\nst.title("floor")\n')
    (root / "pages" / "search.py").write_text(FLOOR_PAGE.format(label=QUERY_LABEL, prefix=HIT_PREFIX))
    settings = Path(dashboard).parent / ".streamlit"
    if settings.is_dir():
        shutil.copytree(settings, root / ".streamlit", dirs_exist_ok=True)
    return root / "home.py"


def bench_load(cfg: BenchConfig, work: Path) -> list[Row]:
    """The load section's rows (see the module docstring); one ``skipped``/``failed`` row when it cannot run."""
    entry = Path(cfg.dashboard)
    reason = load_skip_reason(entry)
    if reason:
        return [Row(SECTION, "concurrent searches", f"skipped ({reason})", "-", "-", "-", None)]
    try:
        run_dir = Path(cfg.load_run) if cfg.load_run else tiny_run(cfg, work)
        ckpt = work / "load_runs"
        served_copy(run_dir, ckpt)
        with serve(entry, ckpt, run_data(run_dir), work / "load_streamlit.log") as (url, pid):
            res = asyncio.run(measure(url, pid, cfg.load_sessions, cfg.load_single, cfg.load_rounds, cfg.load_soak,
                                      cfg.load_timeout_s, cfg.load_poll))
    except Exception as err:  # a dashboard under construction must not sink the rest of the table
        msg = f"{type(err).__name__}: {err}".splitlines()[0][:100]
        return [Row(SECTION, "concurrent searches", f"failed ({msg})", "-", "-", "-", False)]
    return load_rows(res, run_dir) + [floor_row(cfg, work, ckpt, run_data(run_dir))]


def floor_row(cfg: BenchConfig, work: Path, ckpt: Path, data: str) -> Row:
    """The same tabs, alone and all at once, on ``floor_app``'s bare page: the ratio no Streamlit page beats here."""
    what = f"floor: a bare Streamlit page (text box, 8 photos), 1 tab alone / {cfg.load_sessions} at once"
    try:
        with serve(floor_app(work, Path(cfg.dashboard)), ckpt, data, work / "floor_streamlit.log") as (url, pid):
            res = asyncio.run(measure(url, pid, cfg.load_sessions, cfg.load_single, cfg.load_rounds, 0,
                                      cfg.load_timeout_s))
    except Exception as err:  # the floor is a reference: its failure leaves the dashboard's rows standing
        return Row(SECTION, what, f"failed ({type(err).__name__}: {err})".splitlines()[0][:120], "-", "-", "-", None)
    alone, together = percentiles(res.single), percentiles(res.together)
    ratio = together[1] / alone[0] if alone[0] > 0 else float("nan")
    return Row(SECTION, what, f"p50 {1000 * alone[0]:.0f} ms / p95 {1000 * together[1]:.0f} ms"
               + (f"; {res.failures[0]}" if res.failures else ""), "-",
               f"{ratio:.1f}x" if np.isfinite(ratio) else "-", "-", None)


def load_rows(res: LoadResult, run_dir: Path) -> list[Row]:
    """The table rows of a ``LoadResult`` (what a phase left unfinished is said in its row)."""
    n, alone, together = res.sessions, percentiles(res.single), percentiles(res.together)
    ratio = together[1] / alone[0] if alone[0] > 0 else float("nan")

    def failed(phase: str) -> str:
        notes = [f for f in res.failures if f.startswith(phase)]
        return f"; {notes[0][len(phase) + 2:]}" if notes else ""
    rounds = f"{n} at once"
    rows = [
        Row(SECTION, f"fresh server: {n} tabs open Search and search at once ({Path(run_dir).name}"
            f"{', sidebar timers on' if res.poll else ''})",
            f"{len(res.cold)}/{n} answered" + (f", slowest {max(res.cold):.1f} s" if res.cold else "")
            + failed("fresh server"), "every tab answered", f"{len(res.cold)}/{n}", f"{n}/{n}", len(res.cold) == n),
        Row(SECTION, "search, 1 tab alone (type -> results drawn)",
            f"p50 {1000 * alone[0]:.0f} ms / p95 {1000 * alone[1]:.0f} ms ({len(res.single)} searches)"
            f"{failed('one tab alone')}",
            "-", "-", "-", None),
        Row(SECTION, f"search, {n} tabs at the same moment",
            f"p50 {1000 * together[0]:.0f} ms / p95 {1000 * together[1]:.0f} ms ({len(res.together)} searches)"
            f"{failed(rounds)}", f"5x one tab alone (p50) = {5000 * alone[0]:.0f} ms",
            f"{ratio:.1f}x" if np.isfinite(ratio) else "-", "<= 5x",
            bool(ratio <= 5) and not failed(rounds)),
        Row(SECTION, f"one more tab opens Home while {n} search",
            "no answer" if res.extra_home is None else f"{res.extra_home:.2f} s", "-",
            "-" if res.extra_home is None else f"{res.extra_home:.2f} s", "answered", res.extra_home is not None),
    ]
    soak = percentiles(res.soak)
    memory = "memory not readable here" if not res.rss_mb else f"{res.rss_mb[0]:.0f} MB -> {res.rss_mb[1]:.0f} MB"
    rows.append(Row(SECTION, f"server memory over {len(res.soak)} more searches ({n} tabs)",
                    f"{memory} (p50 {soak[0]:.2f} s / p95 {soak[1]:.2f} s){failed('soak')}", "-",
                    f"{res.rss_mb[1] - res.rss_mb[0]:+.0f} MB" if res.rss_mb else "-", "-", None))
    return rows
