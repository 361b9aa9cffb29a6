"""Section 5 of ``python -m xmodal.bench``: the dashboard's cold start and a page switch, timed in headless
Chromium (Debian's ``/usr/bin/chromium`` through Playwright) against ``streamlit run dashboard.py``.
Without Chromium or Playwright the section gives a ``skipped (reason)`` row.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from .common import BenchConfig, Row


def dashboard_skip_reason(entry: Path) -> str | None:
    """Why the dashboard cannot be timed here, or None when it can."""
    if not entry.is_file():
        return f"{entry} not found"
    if not Path("/usr/bin/chromium").is_file():
        return "/usr/bin/chromium not installed"
    try:
        import playwright.sync_api  # noqa: F401 - lazy: Playwright, optional (a test extra)
    except ImportError:
        return "playwright not installed"
    try:
        import streamlit  # noqa: F401 - lazy: the bench runs without the dashboard's Streamlit
    except ImportError:
        return "streamlit not installed"
    return None


def bench_dashboard(cfg: BenchConfig, work: Path) -> list[Row]:
    """Cold start (process launch to the home page drawn) and a page switch, in headless Chromium."""
    entry = Path(cfg.dashboard)
    reason = dashboard_skip_reason(entry)
    if reason:
        return [Row("5 dashboard", "dashboard cold start / page switch", f"skipped ({reason})", "-", "-", "-", None)]
    try:
        return _time_dashboard(entry, work)
    except Exception as err:  # a dashboard under construction must not sink the rest of the table
        msg = f"{type(err).__name__}: {err}".splitlines()[0][:100]
        return [Row("5 dashboard", "dashboard cold start / page switch", f"failed ({msg})", "-", "-", "-", False)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


BUSY = '[data-testid="stSpinner"], [data-testid="stStatusWidgetRunningIcon"], ' \
       '[data-testid="stStatusWidgetRunningManIcon"], [data-testid="stAppSkeleton"]'
DRAWN = '[data-testid="stMainBlockContainer"] [data-testid="stElementContainer"]'


def _settled(page, timeout_s: float = 120.0, quiet_s: float = 0.5) -> float:
    """Wait until the app shows content and nothing runs for ``quiet_s``; the moment it settled."""
    end = time.perf_counter() + timeout_s
    since = None
    while time.perf_counter() < end:
        idle = page.locator(DRAWN).count() > 0 and page.locator(BUSY).count() == 0
        now = time.perf_counter()
        if idle:
            since = since or now
            if now - since >= quiet_s:
                return since
        else:
            since = None
        page.wait_for_timeout(50)
    raise TimeoutError(f"the dashboard did not settle within {timeout_s:.0f} s")


def _time_dashboard(entry: Path, work: Path) -> list[Row]:
    from playwright.sync_api import sync_playwright  # lazy: Playwright, optional (a test extra)
    port = _free_port()
    env = {**os.environ, "XMODAL_CHECKPOINTS": str(work / "dashboard_runs")}
    cmd = [sys.executable, "-m", "streamlit", "run", str(entry), "--server.headless", "true",
           "--server.port", str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false"]
    url = f"http://127.0.0.1:{port}"
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"streamlit exited with {proc.returncode}")
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=1):
                    break
            except OSError:
                if time.perf_counter() - t0 > 60:
                    raise TimeoutError("streamlit did not answer within 60 s")
                time.sleep(0.1)
        t_server = time.perf_counter() - t0
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=["--no-sandbox"])
            page = browser.new_page()
            page.goto(url)
            page.wait_for_selector(DRAWN, timeout=120_000)
            t_paint = time.perf_counter() - t0
            t_home = _settled(page) - t0
            links = page.locator('[data-testid="stSidebarNavLink"]')
            if links.count() < 2:
                raise RuntimeError("no second page in the sidebar navigation")
            t1 = time.perf_counter()
            links.nth(1).click()
            page.wait_for_timeout(100)  # let the rerun start before watching for it to finish
            t_switch = _settled(page) - t1
            browser.close()
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
    return [Row("5 dashboard", "cold start: launch -> first paint", f"{t_paint:.1f} s (server up {t_server:.1f} s)",
                "budget 10 s", f"{t_paint:.1f} s", "<= 10 s", t_paint <= 10),
            Row("5 dashboard", "cold start: launch -> home page settled", f"{t_home:.1f} s", "budget 20 s",
                f"{t_home:.1f} s", "<= 20 s", t_home <= 20),
            Row("5 dashboard", "page switch (Home -> 2nd page) settled", f"{t_switch:.2f} s", "budget 2 s",
                f"{t_switch:.2f} s", "<= 2 s", t_switch <= 2)]
