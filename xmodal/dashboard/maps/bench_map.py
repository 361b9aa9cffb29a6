"""How the Embeddings map copes with a whole catalogue: ``measure(100_000)`` times building the WebGL figure
for synthetic points, its JSON (what Streamlit sends to the browser), and, in headless Chromium, the first
draw and the redraw after a change of colouring.

The browser part loads plotly.js from the plotly package on disk (nothing is fetched) into a blank page in
Debian's Chromium, driven by Playwright's Python package (never a downloaded browser); it is skipped, with
the reason in the result, where either is missing. Chromium runs WebGL on its software renderer
(SwiftShader) when there is no GPU, so the browser numbers are an upper bound for a machine with one.

``python -m xmodal.dashboard.maps.bench_map [N_POINTS ...]`` prints the numbers as JSON.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import plotly

from . import colours, figure as mapplot

TYPES = ("T-Shirt", "Shirt", "Kurta", "Dress", "Trousers", "Shorts", "Skirt", "Jacket", "Cap", "Handbag")
BRANDS = ("Roadster", "Nivora", "Urban Loom", "Kaveri", "Peakline", "Solace")
COLOURS = ("Black", "White", "Red", "Navy Blue", "Blue", "Green", "Yellow", "Pink", "Grey", "Brown", "Orange",
           "Purple", "Maroon", "Beige", "Teal", "Olive")
# What the browser part runs: draw, then recolour there and back (Plotly.react with the other figure, as
# Streamlit's front end does), each timed until the next animation frame has been painted.
PAGE_SCRIPT = """
async function frame() { await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r))); }
window.runBench = async function(first, second) {
  const gd = document.getElementById('map');
  const gl = !!document.createElement('canvas').getContext('webgl');
  const timed = async (f) => {
    const t = performance.now(); await f(); await frame(); return (performance.now() - t) / 1000;
  };
  const draw = await timed(() => Plotly.newPlot(gd, first.data, first.layout));
  const there = await timed(() => Plotly.react(gd, second.data, second.layout));
  const back = await timed(() => Plotly.react(gd, first.data, first.layout));
  return {webgl: gl, first_draw_s: draw, recolour_s: Math.min(there, back), recolour_max_s: Math.max(there, back),
          canvases: gd.querySelectorAll('canvas').length};
};
"""


def synthetic(n_points: int, seed: int = 0) -> dict:
    """``n_points`` map points (n/2 items: a photo and a title each) in 60 clusters, with titles and a colour
    and brand attribute."""
    rng = np.random.default_rng(seed)
    n = max(1, n_points // 2)
    centres = rng.normal(scale=10, size=(60, 2))
    which = rng.integers(0, len(centres), size=n)
    img = centres[which] + rng.normal(size=(n, 2))
    txt = img + rng.normal(scale=0.5, size=(n, 2))
    colour = [COLOURS[i] for i in rng.integers(0, len(COLOURS), n)]
    brand = [BRANDS[i] for i in rng.integers(0, len(BRANDS), n)]
    kind = [TYPES[i] for i in which % len(TYPES)]
    captions = [f"{b} Women {c} {k}" for b, c, k in zip(brand, colour, kind)]
    return {"xy": np.concatenate([img, txt]).astype(np.float32), "captions": captions,
            "attributes": {"colour": colour, "brand": brand}}


def _figures(data: dict, hover: bool) -> tuple[dict, float, float]:
    """(build seconds, JSON seconds) for the figure coloured by colour, and both figures' JSON."""
    t = time.perf_counter()
    first = mapplot.map_figure(data["xy"], data["captions"], colouring=colours.colouring(data["attributes"]["colour"],
                                                                                          "colour"), hover=hover)
    build = time.perf_counter() - t
    t = time.perf_counter()
    first_json = first.to_json()
    to_json = time.perf_counter() - t
    second = mapplot.map_figure(data["xy"], data["captions"], colouring=colours.colouring(data["attributes"]["brand"],
                                                                                           "brand"), hover=hover)
    return {"first": first_json, "second": second.to_json()}, build, to_json


def _browser(figures: dict, chromium: str | None, timeout_s: float) -> dict:
    """Time the first draw and the recolouring in headless Chromium; ``{"skipped": why}`` when it cannot."""
    chromium = chromium or os.environ.get("XMODAL_CHROMIUM") or shutil.which("chromium") or \
        shutil.which("chromium-browser")
    if not chromium:
        return {"skipped": "no Chromium (apt-get install chromium, or set XMODAL_CHROMIUM)"}
    try:
        from playwright.sync_api import sync_playwright  # lazy: Playwright, optional (a test extra)
    except ImportError:
        return {"skipped": "no playwright (pip install playwright: the Python package only)"}
    js = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    with tempfile.TemporaryDirectory() as tmp:
        page_path = Path(tmp) / "map.html"
        page_path.write_text(f"<!doctype html><html><body><div id='map' style='width:1200px;height:700px'></div>"
                             f"<script src='{js.as_uri()}'></script><script>{PAGE_SCRIPT}</script></body></html>")
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, headless=True, args=[
                "--no-sandbox", "--enable-unsafe-swiftshader", "--use-angle=swiftshader", "--disable-dev-shm-usage",
                "--allow-file-access-from-files"])
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 800})
                page.set_default_timeout(timeout_s * 1000)
                page.route("http*://**", lambda route: route.abort())  # nothing leaves this machine
                page.goto(page_path.as_uri())
                page.wait_for_function("() => window.Plotly && window.runBench")
                out = page.evaluate("([a, b]) => runBench(JSON.parse(a), JSON.parse(b))",
                                    [figures["first"], figures["second"]])
            finally:
                browser.close()
    return out


def measure(n_points: int = 100_000, browser: bool = True, chromium: str | None = None, hover: bool | None = None,
            timeout_s: float = 300.0) -> dict:
    """Build the Embeddings map for ``n_points`` synthetic points and time it.

    Args:
        n_points: photo and title points together (n/2 items).
        browser: also time the first draw and the redraw after recolouring in headless Chromium.
        chromium: the browser executable (default: ``$XMODAL_CHROMIUM`` or ``chromium`` on the PATH).
        hover: titles in the hover labels; None: as the page does (up to 50,000 items).
        timeout_s: for each browser step.

    Returns:
        ``points``, ``traces``, ``build_s`` (the ``go.Figure``), ``json_s`` and ``json_mb`` (what Streamlit
        sends), and with ``browser`` ``first_draw_s``, ``recolour_s``, ``webgl`` (whether WebGL was on), or
        ``skipped`` (why not).
    """
    data = synthetic(n_points)
    hover = len(data["captions"]) <= 50_000 if hover is None else hover
    figures, build, to_json = _figures(data, hover)
    out = {"points": int(len(data["xy"])), "hover_titles": hover, "traces": len(json.loads(figures["first"])["data"]),
           "build_s": round(build, 3), "json_s": round(to_json, 3),
           "json_mb": round(len(figures["first"].encode()) / 2**20, 2)}
    if browser:
        res = _browser(figures, chromium, timeout_s)
        out.update({k: round(v, 3) if isinstance(v, float) else v for k, v in res.items()})
    return out


def main(argv: list[str] | None = None) -> int:
    sizes = [int(a) for a in (sys.argv[1:] if argv is None else argv)] or [100_000]
    for n in sizes:
        print(json.dumps(measure(n)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
