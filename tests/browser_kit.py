"""What the browser tests share: Debian's Chromium driven by Playwright, ``streamlit run dashboard.py`` on a
free localhost port, and the waits and clicks that drive Streamlit's pages (a click that lands during a rerun can
be lost: the helpers wait for the script to finish and pick again). Used by tests/test_browser*.py."""
from __future__ import annotations

import contextlib
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
            time.sleep(0.1)
    raise TimeoutError(f"streamlit did not answer at {url} within {timeout} s")


@contextlib.contextmanager
def _serve(ckpt: Path, data: str, log_dir: Path, env: dict | None = None):
    """``streamlit run dashboard.py`` on a free localhost port over ``ckpt``; yields its URL."""
    _chromium()
    port = _free_port()
    env = {**(env or os.environ), "XMODAL_CHECKPOINTS": str(Path(ckpt).resolve()), "XMODAL_DASHBOARD_DATA": data}
    with open(log_dir / "streamlit.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "dashboard.py", "--server.port",
                                 str(port), "--server.address", "localhost", "--server.headless", "true"],
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


@contextlib.contextmanager
def _browser(profile: Path):
    """Headless Chromium with a fresh user-data-dir (nothing carried over); yields its context."""
    from playwright.sync_api import sync_playwright
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(profile), executable_path=_chromium(), headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 1000}, service_workers="block")
        context.set_default_timeout(120_000)
        try:
            yield context
        finally:
            context.close()


@contextlib.contextmanager
def _context(chromium):
    """A fresh context of the module's Chromium: its own cookies, storage and cache (nothing carried over)."""
    context = chromium.new_context(viewport={"width": 1400, "height": 1000}, service_workers="block")
    context.set_default_timeout(120_000)
    try:
        yield context
    finally:
        context.close()


def _idle(page) -> None:
    """Wait until Streamlit has finished the current script run (its 'running' widget is gone)."""
    page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]', timeout=240_000)


# Resolves once the page has drawn ``arg`` animation frames in a row without moving or resizing any chart, table
# or image (at most ~10 s): layout has settled, so a point's position read now is where the mouse will find it.
SETTLED = """async frames => {
  const shape = () => [...document.querySelectorAll(
      '[data-testid="stPlotlyChart"] .nsewdrag, [data-testid="stDataFrame"], [data-testid="stImage"] img')]
    .map(e => { const r = e.getBoundingClientRect(); return [r.x, r.y, r.width, r.height].join(); }).join(';');
  let last = null, still = 0;
  for (let i = 0; i < 600 && still < frames; i++) {
    await new Promise(r => requestAnimationFrame(r));
    const now = shape();
    still = now === last ? still + 1 : 0;
    last = now;
  }
}"""


def _shot(page, folder: Path, name: str, part: tuple[str, str] | None = None) -> None:
    """Screenshot the page once its charts and images have drawn; for the documentation (real runs, or
    $XMODAL_SCREENSHOTS) the whole page, the viewport grown to the content first. ``part``: only from the
    heading ``part[0]`` down to the heading ``part[1]`` (or the page's end, where it is missing)."""
    page.wait_for_function("""() => !document.querySelector('[data-testid="stMain"] [data-testid="stSkeleton"]') &&
        [...document.querySelectorAll('[data-testid="stPlotlyChart"]')].every(c => c.querySelector('.main-svg'))""",
                           timeout=120_000)  # lazily loaded charts: their placeholder skeletons are gone
    page.wait_for_function("() => [...document.images].every(i => i.complete)", timeout=60_000)
    if folder != DOCS_SHOTS and not os.environ.get("XMODAL_SCREENSHOTS"):  # a test run's pictures: what is in view
        if part:
            _heading(page, part[0]).scroll_into_view_if_needed()
        page.screenshot(path=str(folder / f"{name}.png"))
        return
    size = page.viewport_size
    height = page.evaluate("""() => Math.max(...[...document.querySelectorAll(
        '[data-testid="stMain"], [data-testid="stMainBlockContainer"], [data-testid="stSidebarContent"]')]
        .map(e => e.scrollHeight), 800)""")
    page.set_viewport_size({"width": size["width"], "height": min(int(height) + 40, 6000)})
    page.evaluate(SETTLED, 10)  # the page re-laid out at its new height (tables draw the rows now in view)
    page.wait_for_function("() => [...document.images].every(i => i.complete)", timeout=60_000)
    clip = None
    if part:  # the page is laid out whole now: the part's box, in page coordinates
        top = _heading(page, part[0]).bounding_box()
        end = _heading(page, part[1]).bounding_box() if _heading(page, part[1]).count() else None
        main = page.get_by_test_id("stMainBlockContainer").bounding_box()
        bottom = end["y"] if end else main["y"] + main["height"]
        clip = {"x": main["x"], "y": max(top["y"] - 16, 0), "width": main["width"], "height": bottom - top["y"] + 8}
    page.screenshot(path=str(folder / f"{name}.png"), clip=clip)
    page.set_viewport_size(size)


def _heading(page, text: str):
    """The page's heading (any level) reading ``text``."""
    return page.locator("h1, h2, h3, h4").filter(has_text=text).first


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
    chart = page.locator('[data-testid="stPlotlyChart"]').first
    legend = chart.locator(".legendtext").all_text_contents()  # coloured by modality
    page.get_by_test_id("stSelectbox").filter(has_text="Colour by").click()
    page.get_by_role("option", name="master_category").click()
    _idle(page)
    try:  # the map redraws with the categories' legend
        page.wait_for_function("""before => JSON.stringify([...document.querySelector('[data-testid="stPlotlyChart"]')
            .querySelectorAll('.legendtext')].map(e => e.textContent)) !== before""", arg=json.dumps(legend),
                               timeout=60_000)
    except Exception:  # noqa: BLE001 - the attempts below retry, and fail saying what they waited for
        pass
    for attempt in range(4):  # the chart may still be redrawing after the colour change: try again
        if attempt:
            page.wait_for_timeout(1000)
        page.evaluate(SETTLED, 10)
        try:
            chart.hover()
            chart.locator('.modebar-btn[data-title="Box Select"]').click(timeout=10_000)  # drag pans by default
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


# The screen position of the first photo point of the map (Plotly's own axis conversion), for a real click.
POINT_XY = """() => {
  const gd = document.querySelector('[data-testid="stPlotlyChart"] .js-plotly-plot');
  const trace = gd._fullData.find(t => t.mode === 'markers' && t.customdata && t.customdata.length &&
                                      String(t.hovertemplate || '').startsWith('photo'));  // arrays decoded
  const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis, box = gd.getBoundingClientRect();
  return {x: box.left + xa._offset + xa.l2p(trace.x[0]), y: box.top + ya._offset + ya.l2p(trace.y[0]),
          item: Number(trace.customdata[0])};
}"""


def _hover_map_point(page) -> dict:
    """Hover a photo point on the Embeddings map until the photo box shows that item's thumbnail, its sprite
    sheet loaded from this server; returns what the box holds."""
    chart = page.locator('[data-testid="stPlotlyChart"]').first
    chart.scroll_into_view_if_needed()
    page.wait_for_function("""() => {
        const gd = document.querySelector('[data-testid="stPlotlyChart"] .js-plotly-plot');
        return gd && gd.data && gd._fullLayout && gd._fullLayout.xaxis; }""", timeout=120_000)
    box = page.locator(".xmodal-hover-photo")  # in the component's shadow root (Playwright's CSS pierces it)
    page.wait_for_function("""() => [...document.querySelectorAll('*')].some(e => e.shadowRoot &&
        e.shadowRoot.querySelector('.xmodal-hover-photo'))""", timeout=60_000)  # the component is attached
    for attempt in range(4):  # the chart may still be laying out, or the component not yet attached
        if attempt:
            page.wait_for_timeout(1000)
        page.evaluate(SETTLED, 15)
        point = page.evaluate(POINT_XY)
        page.mouse.move(point["x"] - 30, point["y"] - 30)
        page.mouse.move(point["x"], point["y"], steps=5)
        try:
            # the box shows the item Plotly reports under the mouse (in a dense map, maybe a neighbour's point)
            page.wait_for_function("""() => {
                const host = [...document.querySelectorAll('*')].find(e => e.shadowRoot &&
                    e.shadowRoot.querySelector('.xmodal-hover-photo'));
                const tip = host && host.shadowRoot.querySelector('.xmodal-hover-photo');
                const gd = document.querySelector('[data-testid="stPlotlyChart"] .js-plotly-plot');
                const hovered = gd && gd._hoverdata && gd._hoverdata[0];
                return tip && hovered && tip.style.display === 'block' && tip.dataset.loaded === '1' &&
                       tip.dataset.item === String(hovered.customdata); }""", timeout=15_000)
            break
        except Exception:
            if attempt == 3:
                raise
    return {"item": point["item"], "style": box.locator(".cell").get_attribute("style") or "",
            "visible": box.is_visible()}


def _click_map_point(page) -> int:
    """Click a photo point on the Embeddings map; wait for the clicked product's panel; returns its position."""
    chart = page.locator('[data-testid="stPlotlyChart"]').first
    chart.scroll_into_view_if_needed()
    page.wait_for_function("""() => {
        const gd = document.querySelector('[data-testid="stPlotlyChart"] .js-plotly-plot');
        return gd && gd.data && gd._fullLayout && gd._fullLayout.xaxis; }""", timeout=120_000)  # plotly.js loaded
    for attempt in range(4):  # the chart may still be laying out: try again
        if attempt:
            page.wait_for_timeout(1000)
        page.evaluate(SETTLED, 15)
        point = page.evaluate(POINT_XY)
        page.mouse.move(point["x"], point["y"])
        try:  # Plotly took the hover (its click reports the hovered point)
            page.wait_for_function("""() => { const gd = document.querySelector(
                '[data-testid="stPlotlyChart"] .js-plotly-plot'); return gd._hoverdata && gd._hoverdata.length; }""",
                                   timeout=2_000)
        except Exception:  # noqa: BLE001 - click anyway; the panel's wait below tells whether it worked
            pass
        page.mouse.click(point["x"], point["y"])
        try:
            page.get_by_text("The clicked product").wait_for(timeout=20_000)
            break
        except Exception:
            if attempt == 3:
                raise
    _idle(page)
    return point["item"]


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


def _text(page) -> str:
    """The page's visible text, invisible word joiners (which keep bare URLs from becoming links) dropped."""
    return page.evaluate("() => document.body.innerText").replace("\u2060", "")


def _choose(page, group: str, option: str, in_url: str) -> None:
    """Pick ``option`` of the radio group ``group``; a click that lands during a rerun can be lost, so pick it
    again until the URL says it was taken."""
    for _attempt in range(4):
        page.get_by_test_id("stRadio").filter(has_text=group).get_by_text(option, exact=True).click()
        _idle(page)
        try:
            page.wait_for_url(f"**{in_url}*", timeout=5_000)
            return
        except Exception:  # noqa: BLE001 - playwright's TimeoutError: pick it again
            pass
    pytest.fail(f"choosing {option!r} in {group!r} never reached the URL: {page.url}")


def _mapped(page) -> int:
    """How many products the Embeddings map shows, from its caption ("1,234 products of <run> ...")."""
    import re
    found = re.search(r"([\d,]+) products of ", _text(page))
    assert found, "no map caption"
    return int(found.group(1).replace(",", ""))


def _pick_option(page, label: str, option: int = 1) -> None:
    """Open the first selectbox labelled ``label`` and pick its ``option``-th entry."""
    select = page.get_by_test_id("stSelectbox").filter(has_text=label).first
    for attempt in range(8):  # a rerun, or the first click after typing in a text box, can leave the list shut
        _idle(page)
        select.click()
        try:  # an open list draws its options at once (no server round trip): a short wait, longer on a busy host
            page.get_by_role("option").nth(option).click(timeout=3_000 * min(attempt + 1, 4))
            return
        except Exception:  # playwright's TimeoutError
            page.keyboard.press("Escape")
    pytest.fail(f"the {label!r} dropdown never opened")


def _open_tab(page, name: str, inside) -> None:
    """Open tab ``name`` until ``inside`` (an element of it) shows: a tab click that lands during a rerun can be
    undone by it (the open tab is in the URL, and the rerun carries the URL the browser had then). Waits for the
    element itself: between two runs of a busy page the script can read as not running while the tab's elements
    are still placeholders."""
    from playwright.sync_api import TimeoutError as Timeout  # lazy: the browser tests skip without playwright
    for attempt in range(4):
        if inside.is_visible():
            return
        page.get_by_role("tab", name=name).click()
        try:
            inside.wait_for(state="visible", timeout=5_000 * (attempt + 1))
        except Timeout:
            continue
        _idle(page)
    assert inside.is_visible(), f"the {name!r} tab never stayed open"


def _click_in_tab(page, name: str, inside, target, idle: bool = True, check=None) -> None:
    """Click ``target`` in tab ``name``, opening the tab again where a late rerun closed it after ``_open_tab``.
    ``check()``, before each try, raises at once where the tab has lost what the target needs."""
    from playwright.sync_api import TimeoutError as Timeout  # lazy: the browser tests skip without playwright
    for _attempt in range(4):
        _open_tab(page, name, inside)
        if check:
            check()
        try:
            target.click(timeout=15_000)
            break
        except Timeout:
            continue
    else:
        raise AssertionError(f"{target} in the {name!r} tab could not be clicked")
    if idle:
        _idle(page)
