"""The dashboard in a real browser: ``streamlit run dashboard.py`` on localhost, every page opened in
headless Chromium (Debian's ``chromium`` driven by Playwright's Python package), a text search run, a
screenshot of each page saved to docs/screenshots/, and the paint and page-switch times measured.

Needs ``apt-get install chromium`` and ``pip install playwright`` (never ``playwright install``: the
system browser is used). Skips, saying why, where either is missing.

By default it serves the tiny trained run of conftest.py. For the documentation's screenshots, point it
at real runs: ``XMODAL_BROWSER_CHECKPOINTS=checkpoints XMODAL_BROWSER_DATA=demo pytest -m browser``.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHOTS = REPO / "docs" / "screenshots"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]
# (name in the sidebar, text of the page's title, an element that shows the page has drawn)
HOME = ("Home", "xmodal", "Catalogue")
PAGES = [("Training", "Training", "Loss (every term)"), ("Compare", "Compare", "Slices and disagreements"),
         ("Embeddings", "Embeddings", "Modality gap"), ("Search", "Search", "Text → products")]
QUERY = "red striped shirt"

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _chromium() -> str:
    path = os.environ.get("XMODAL_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path or not Path(path).is_file():
        pytest.skip("no Chromium: install Debian's package (apt-get install -y chromium) or set XMODAL_CHROMIUM")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"streamlit did not answer at {url} within {timeout} s")


@pytest.fixture(scope="module")
def server(request, tmp_path_factory):
    """A dashboard server on a free localhost port, serving a trained run."""
    pytest.importorskip("playwright.sync_api", reason="pip install playwright (the Python package only)")
    _chromium()
    ckpt = os.environ.get("XMODAL_BROWSER_CHECKPOINTS")
    data = os.environ.get("XMODAL_BROWSER_DATA", "demo")
    if not ckpt:
        run = request.getfixturevalue("trained_run")
        data = str(request.getfixturevalue("tiny_catalogue"))
        ckpt = tmp_path_factory.mktemp("browser_ckpt")
        (Path(ckpt) / run.name).symlink_to(run, target_is_directory=True)
    port = _free_port()
    env = {**os.environ, "XMODAL_CHECKPOINTS": str(Path(ckpt).resolve()), "XMODAL_DASHBOARD_DATA": data}
    log = open(tmp_path_factory.mktemp("browser_log") / "streamlit.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "dashboard.py", "--server.port", str(port),
                             "--server.address", "localhost", "--server.headless", "true"],
                            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://localhost:{port}"
    try:
        _wait_healthy(url, proc)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def page(server, tmp_path_factory):
    from playwright.sync_api import sync_playwright
    profile = tmp_path_factory.mktemp("chromium_profile")  # a fresh user-data-dir, nothing carried over
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(profile), executable_path=_chromium(), headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 1000}, service_workers="block")
        context.set_default_timeout(120_000)
        yield context.pages[0] if context.pages else context.new_page()
        context.close()


def _idle(page) -> None:
    """Wait until Streamlit has finished the current script run (its 'running' widget is gone)."""
    page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]', timeout=240_000)


def _shot(page, name: str) -> None:
    """Screenshot the whole page: wait for the charts to draw, then grow the viewport to the content."""
    page.wait_for_function("""() => [...document.querySelectorAll('[data-testid="stPlotlyChart"]')]
        .every(c => c.querySelector('.main-svg'))""", timeout=60_000)
    page.wait_for_function("() => [...document.images].every(i => i.complete)", timeout=60_000)
    size = page.viewport_size
    height = page.evaluate("""() => Math.max(...[...document.querySelectorAll(
        '[data-testid="stMain"], [data-testid="stMainBlockContainer"], [data-testid="stSidebarContent"]')]
        .map(e => e.scrollHeight), 800)""")
    page.set_viewport_size({"width": size["width"], "height": min(int(height) + 40, 6000)})
    page.wait_for_timeout(500)  # let the charts re-lay out
    page.screenshot(path=str(SHOTS / f"{name}.png"))
    page.set_viewport_size(size)


def _visit(page, name: str, title: str, marker: str) -> float:
    """Click a page in the sidebar; seconds until its title and ``marker`` are drawn."""
    t = time.perf_counter()
    page.locator('[data-testid="stSidebarNav"]').get_by_text(name, exact=True).click()
    page.locator("h1").filter(has_text=title).wait_for()
    page.get_by_text(marker).first.wait_for()
    return time.perf_counter() - t


def test_every_page_in_chromium(server, page):
    SHOTS.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t = time.perf_counter()
    page.goto(server)
    page.locator("h1").first.wait_for()
    timings["home_first_element_s"] = time.perf_counter() - t
    page.get_by_test_id("stDataFrame").first.wait_for()
    timings["home_first_paint_s"] = time.perf_counter() - t  # title, catalogue and runs table drawn
    _idle(page)
    timings["home_complete_s"] = time.perf_counter() - t
    assert page.get_by_text("Every row of captions.csv is usable").count() or page.get_by_text("skipped").count()
    _shot(page, "home")

    for name, title, marker in PAGES:  # first visits: models load, embeddings and maps are computed or read
        timings[f"{name.lower()}_first_visit_s"] = _visit(page, name, title, marker)
        if name == "Embeddings":
            page.get_by_text("Modality gap", exact=True).first.wait_for(timeout=240_000)
        _idle(page)
        if name != "Search":
            _shot(page, name.lower())
    for name, title, marker in [HOME, *PAGES]:  # after the first visit
        timings[f"{name.lower()}_switch_s"] = _visit(page, name, title, marker)
        _idle(page)

    box = page.get_by_label("Describe a product")
    box.fill(QUERY)
    t = time.perf_counter()
    box.press("Enter")
    page.get_by_text("#1", exact=False).first.wait_for()
    timings["text_search_s"] = time.perf_counter() - t
    _idle(page)
    assert page.locator('[data-testid="stImage"]').count() >= 2  # result photos rendered
    _shot(page, "search")

    (SHOTS / "timings.json").write_text(json.dumps({k: round(v, 2) for k, v in timings.items()}, indent=1))
    print(json.dumps(timings, indent=1))
    switches = [v for k, v in timings.items() if k.endswith("_switch_s")]
    assert max(switches) < 10, timings  # generous on a shared CI machine; the report quotes the real numbers
