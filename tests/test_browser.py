"""The dashboard in a real browser: ``streamlit run dashboard.py`` on localhost, every page opened in
headless Chromium (Debian's ``chromium`` driven by Playwright's Python package), a text search run, a
screenshot of each page saved to docs/screenshots/, and the paint and page-switch times measured.

Needs ``apt-get install chromium`` and ``pip install playwright`` (never ``playwright install``: the
system browser is used). Skips, saying why, where either is missing.

By default it serves the tiny trained run of conftest.py and keeps its screenshots in a temp folder (or
``$XMODAL_SCREENSHOTS``). For the documentation's screenshots, point it at real runs, which writes
docs/screenshots/: ``XMODAL_BROWSER_CHECKPOINTS=checkpoints XMODAL_BROWSER_DATA=demo pytest -m browser``
(``XMODAL_BROWSER_CACHE`` names their cache folder, default ``~/.cache/xmodal``).
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
DOCS_SHOTS = REPO / "docs" / "screenshots"
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
    env = dict(os.environ)
    if ckpt:  # real runs: serve them with their own cache (the demo catalogue, features, ...)
        env["XMODAL_CACHE"] = os.environ.get("XMODAL_BROWSER_CACHE", str(Path.home() / ".cache" / "xmodal"))
    else:
        run = request.getfixturevalue("trained_run")
        data = str(request.getfixturevalue("tiny_catalogue"))
        ckpt = tmp_path_factory.mktemp("browser_ckpt")
        (Path(ckpt) / run.name).symlink_to(run, target_is_directory=True)
    port = _free_port()
    env.update(XMODAL_CHECKPOINTS=str(Path(ckpt).resolve()), XMODAL_DASHBOARD_DATA=data)
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


def _shot(page, folder: Path, name: str) -> None:
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
    page.screenshot(path=str(folder / f"{name}.png"))
    page.set_viewport_size(size)


def _visit(page, name: str, title: str, marker: str) -> tuple[float, float]:
    """Click a page in the sidebar; seconds until its title and ``marker`` are drawn, and until its script
    has finished (every element drawn)."""
    t = time.perf_counter()
    page.locator('[data-testid="stSidebarNav"]').get_by_text(name, exact=True).click()
    page.locator("h1").filter(has_text=title).wait_for()
    page.get_by_text(marker).first.wait_for()
    drawn = time.perf_counter() - t
    _idle(page)
    return drawn, time.perf_counter() - t


def _select_on_map(page) -> None:
    """Colour the map by category, drag a box over part of it, and wait for the chosen products."""
    page.get_by_test_id("stSelectbox").filter(has_text="Colour by").click()
    page.get_by_role("option", name="master_category").click()
    _idle(page)
    chart = page.locator('[data-testid="stPlotlyChart"]').first
    for attempt in range(4):  # the chart may still be redrawing after the colour change: try again
        page.wait_for_timeout(1000)
        try:
            box = chart.locator(".nsewdrag").first.bounding_box(timeout=10_000)
        except Exception:
            box = None
        if not box:
            continue
        page.mouse.move(box["x"] + box["width"] * 0.05, box["y"] + box["height"] * 0.05)
        page.mouse.down()
        page.mouse.move(box["x"] + box["width"] * 0.6, box["y"] + box["height"] * 0.7, steps=12)
        page.mouse.up()
        try:
            page.get_by_text("selected product(s)").wait_for(timeout=20_000)
            break
        except Exception:
            if attempt == 3:
                raise
    _idle(page)


def _open_home(page, url: str, timings: dict, prefix: str) -> None:
    """Load the app in ``page``; record when something, the title, and the runs table are visible."""
    t = time.perf_counter()
    page.goto(url)
    page.locator('[data-testid="stMain"] [data-testid="stSpinner"], [data-testid="stMain"] h1').first.wait_for()
    timings[f"{prefix}_first_visible_s"] = time.perf_counter() - t  # the start-up spinner, or the title
    page.locator("h1").first.wait_for()
    timings[f"{prefix}_title_s"] = time.perf_counter() - t
    page.get_by_test_id("stDataFrame").first.wait_for()
    timings[f"{prefix}_first_paint_s"] = time.perf_counter() - t  # title, catalogue and runs table drawn
    _idle(page)
    timings[f"{prefix}_complete_s"] = time.perf_counter() - t


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    """Where screenshots go: docs/screenshots when serving real runs (or $XMODAL_SCREENSHOTS), else a temp
    folder, so that a test run on the tiny run never replaces the documentation's pictures."""
    env = os.environ.get("XMODAL_SCREENSHOTS")
    path = Path(env) if env else DOCS_SHOTS if os.environ.get("XMODAL_BROWSER_CHECKPOINTS") else \
        tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_every_page_in_chromium(server, page, shots):
    timings: dict[str, float] = {}
    _open_home(page, server, timings, "home_cold")  # the server's first session: PyTorch is imported now
    assert page.get_by_text("Every row of captions.csv is usable").count() or page.get_by_text("skipped").count()
    _shot(page, shots, "home")

    for name, title, marker in PAGES:  # first visits: models load, embeddings and maps are computed or read
        drawn, done = _visit(page, name, title, marker)
        timings[f"{name.lower()}_first_visit_s"], timings[f"{name.lower()}_first_visit_complete_s"] = drawn, done
        if name == "Embeddings":
            page.get_by_text("Modality gap", exact=True).first.wait_for(timeout=240_000)
            _idle(page)
            _select_on_map(page)
        if name != "Search":
            _shot(page, shots, name.lower())
    for name, title, marker in [HOME, *PAGES]:  # after the first visit
        timings[f"{name.lower()}_switch_s"], timings[f"{name.lower()}_switch_complete_s"] = _visit(
            page, name, title, marker)

    second = page.context.new_page()  # a new session on the warm server
    _open_home(second, server, timings, "home_warm")
    second.close()

    box = page.get_by_label("Describe a product")
    box.fill(QUERY)
    t = time.perf_counter()
    box.press("Enter")
    page.get_by_text("#1", exact=False).first.wait_for()
    timings["text_search_s"] = time.perf_counter() - t
    _idle(page)
    assert page.locator('[data-testid="stImage"]').count() >= 2  # result photos rendered
    _shot(page, shots, "search")

    assert all((shots / f"{n}.png").stat().st_size > 10_000 for n in ("home", "training", "compare", "embeddings",
                                                                      "search"))
    (shots / "timings.json").write_text(json.dumps({k: round(v, 2) for k, v in timings.items()}, indent=1))
    print(json.dumps(timings, indent=1))
    switches = [v for k, v in timings.items() if k.endswith("_switch_complete_s")]
    assert max(switches) < 10, timings  # generous on a shared CI machine; the report quotes the real numbers


def test_train_and_stop_from_the_sidebar(server, page):
    """The sidebar form starts a real training subprocess; its progress shows live; Stop ends it cleanly."""
    if os.environ.get("XMODAL_BROWSER_CHECKPOINTS"):
        pytest.skip("serving real runs: no test training is started in their checkpoints folder")
    page.goto(server)
    page.get_by_test_id("stDataFrame").first.wait_for()
    _idle(page)
    sidebar = page.get_by_test_id("stSidebar")
    sidebar.get_by_text("Train a model").click()
    select = sidebar.get_by_test_id("stSelectbox").filter(has_text="Model")
    select.wait_for()
    for _ in range(4):  # a rerun can close the dropdown right after it opens: open it again
        _idle(page)
        select.click()
        try:
            page.get_by_role("option", name="siamese", exact=True).click(timeout=10_000)
            break
        except Exception:  # playwright's TimeoutError
            page.keyboard.press("Escape")
    else:
        pytest.fail("the Model dropdown never offered 'siamese'")
    sidebar.get_by_label("Epochs").fill("300")
    sidebar.get_by_label("Batch size").fill("8")
    sidebar.get_by_role("button", name="Start training").click()
    progress = sidebar.get_by_text("step", exact=False).filter(has_text="epoch").first
    progress.wait_for(timeout=180_000)  # the child has imported torch, cached features and started training
    assert "loss" in progress.inner_text() and "left" in progress.inner_text()
    sidebar.get_by_role("button", name="Stop").first.click()
    sidebar.get_by_text("stopped", exact=False).first.wait_for(timeout=60_000)
