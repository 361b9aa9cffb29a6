"""A hostile catalogue stays text: a run trained on a catalogue whose captions, item ids, attribute values, image
file names and run folder names are HTML, Markdown and script, served in headless Chromium: every page must show
them as literal text, run no script, open no dialog and request nothing from outside localhost."""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from urllib.parse import urlparse

import pytest

from browser_kit import (PAGES, _chromium, _click_in_tab, _context, _idle, _open_tab, _select_on_map, _serve,
                         _text, _visit)
from conftest import TINY_SIZE

pytestmark = [pytest.mark.browser, pytest.mark.slow]

OUTSIDE = "203.0.113.5"  # TEST-NET-3: never a real host
HOSTILE = ['<script>window.__xss=1</script>', '<img src=x onerror="window.__xss=1">',
           '<iframe srcdoc="<script>parent.__xss=1</script>">', f'![x](http://{OUTSIDE}/pixel.png)',
           '[click](javascript:window.__xss=1)', f'<a href="http://{OUTSIDE}/">', '<svg onload=window.__xss=1>',
           "**bold** _it_ :red[x] $x$ &amp; run-<b>1</b>.jpg"]
PIXEL = f"![p](http://{OUTSIDE}/p.png)"  # ends every caption: any caption read as Markdown fetches it
HOSTILE_RUN = "tiny **x** <img src=x onerror=window.__xss=1>"  # a run folder may be named anything but "/"
HOSTILE_ATTRIBUTE = f'<a href="http://{OUTSIDE}/">'  # wrapped around every master_category value
HOSTILE_IMAGE = "images/<svg onload=window.__xss=1>.jpg"
# Everything on the page that could fetch or run something it names: (attribute, value) outside this origin.
FOREIGN_REFERENCES = """() => {
  const out = [];
  for (const el of document.querySelectorAll('[src], [href], [srcdoc], [data], [poster], [action], [formaction]')) {
    for (const name of ['src', 'href', 'data', 'poster', 'action', 'formaction', 'srcdoc']) {
      const value = el.getAttribute(name);
      if (value === null) continue;
      if (name === 'srcdoc') { out.push(name + '=' + value); continue; }
      let url;
      try { url = new URL(value, location.href); } catch (e) { out.push(name + '=' + value); continue; }
      const local = ['localhost', '127.0.0.1'].includes(url.hostname);
      const fetched = name !== 'href' || el.tagName === 'LINK';
      if (url.protocol === 'javascript:' || value.includes('%s') ||
          (fetched && !local && !['data:', 'blob:'].includes(url.protocol))) out.push(name + '=' + value);
    }
  }
  return out.concat([...document.querySelectorAll('iframe, object, embed')].map(e => e.outerHTML.slice(0, 200)));
}""".replace("%s", OUTSIDE)


def _hostile_catalogue(folder: Path) -> Path:
    """The tiny demo catalogue with HTML, Markdown and script in every caption, some item ids, every
    master_category value and an image file name, plus a row whose (hostile) image file is missing."""
    from xmodal.data import generate_demo
    generate_demo(folder, n=60, seed=1)
    with open(folder / "captions.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for i, row in enumerate(rows):
        bad = HOSTILE[i % len(HOSTILE)]
        row["caption"] = f"{row['caption']} {bad} {PIXEL}"
        if i % 4 == 0:
            row["item_id"] = f"{bad} #{i}"
        row["master_category"] = f"{HOSTILE_ATTRIBUTE}{row['master_category']}</a>"
    (folder / rows[1]["image"]).rename(folder / HOSTILE_IMAGE)
    rows[1]["image"] = HOSTILE_IMAGE
    rows.append({**rows[2], "image": f"images/<img src=x onerror=alert(1)> {OUTSIDE}.jpg", "item_id": "no-photo"})
    with open(folder / "captions.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return folder


@pytest.fixture(scope="module")
def hostile_server(tmp_path_factory):
    """A server over a run trained (by the CLI's ``main``) on the hostile catalogue, its folder renamed to
    HTML, beside a failed run whose folder name and error are HTML and Markdown."""
    pytest.importorskip("playwright.sync_api", reason="pip install playwright (the Python package only)")
    _chromium()
    if os.environ.get("XMODAL_BROWSER_CHECKPOINTS"):
        pytest.skip("serving real runs: the hostile catalogue test trains its own")
    from xmodal.training.cli import main
    tmp_path = tmp_path_factory.mktemp("hostile")
    data = _hostile_catalogue(tmp_path / "hostile catalogue")
    ckpt = tmp_path / "checkpoints"
    assert main(["--model", "cmpm-efficientnet", "--data", str(data), "--epochs", "1", "--batch-size", "16",
                 "--out", str(ckpt), "--run-id", "tiny-hostile", *TINY_SIZE]) == 0
    (ckpt / "tiny-hostile").rename(ckpt / HOSTILE_RUN)
    failed = ckpt / f"siamese {HOSTILE[1]}"
    failed.mkdir()
    (failed / "config.json").write_text(json.dumps({"model": "siamese", "created": 0, "data": {"name": "demo"}}))
    (failed / "status.json").write_text(json.dumps({"state": "failed", "updated": 0,
                                                    "error": f"{HOSTILE[3]} {HOSTILE[2]}"}))
    (failed / "error.log").write_text(f"Traceback (most recent call last):\nValueError: {HOSTILE[0]}\n")
    with _serve(ckpt, str(data), tmp_path) as url:
        yield url


class _Watch:
    """What a page did that it must not: dialogs, requests leaving localhost, ``window.__xss`` set."""

    def __init__(self, context):
        self.dialogs: list[str] = []
        self.outside: list[str] = []
        self.requests = 0
        context.route("**/*", self._route)
        context.on("page", self._attach)
        for page in context.pages:
            self._attach(page)

    def _attach(self, page) -> None:
        page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))
        page.on("websocket", lambda ws: self._check(ws.url))

    def _check(self, url: str) -> bool:
        parsed = urlparse(url)
        if parsed.scheme in ("data", "blob") or parsed.hostname in ("localhost", "127.0.0.1"):
            return True
        self.outside.append(url)
        return False

    def _route(self, route) -> None:
        self.requests += 1
        route.continue_() if self._check(route.request.url) else route.abort()

    def assert_clean(self, page, where: str) -> None:
        """No script ran (``__xss`` unset in every frame), no dialog opened, nothing outside was asked for,
        nothing on the page references anything outside."""
        assert not self.dialogs, (where, self.dialogs)
        assert not self.outside, (where, self.outside)
        assert all(f.evaluate("() => typeof window.__xss") == "undefined" for f in page.frames), where
        assert page.evaluate(FOREIGN_REFERENCES) == [], where


@pytest.fixture(scope="module")
def hostile(hostile_server, chromium):
    """One session over the hostile server, watched from its first request, that the tests below walk page by page
    in order: (the page, the watch, {page name: its text as shown})."""
    with _context(chromium) as context:
        watch = _Watch(context)
        page = context.new_page()
        page.goto(hostile_server)
        page.get_by_test_id("stDataFrame").first.wait_for()
        _idle(page)
        yield page, watch, {}


def test_home_shows_the_hostile_catalogue_as_text(hostile):
    page, watch, seen = hostile  # on Home, the session's first page
    seen["Home"] = text = _text(page)
    assert text.count(PIXEL) == 12  # the sampled products' captions, literally
    assert "The loader skipped 1 of 61 rows" in text  # the row whose hostile image file is missing
    assert f"{HOSTILE[3]} {HOSTILE[2]}" in text  # the failed run's error, literally
    assert f"{HOSTILE_RUN} finished" in text  # the sidebar's runs in progress
    watch.assert_clean(page, "Home")


@pytest.mark.parametrize("name, title, marker", PAGES[:3], ids=[p[0] for p in PAGES[:3]])
def test_each_page_shows_it_as_text(hostile, name, title, marker):
    page, watch, seen = hostile
    _visit(page, name, title, marker)
    if name == "Embeddings":
        page.get_by_text("Modality gap", exact=True).first.wait_for(timeout=240_000)
        _idle(page)
        _select_on_map(page)  # coloured by master_category: a legend entry is an <a href> in text
        legend = page.evaluate("() => [...document.querySelectorAll('.legendtext')].map(e => e.textContent)")
        assert sum(e.startswith(HOSTILE_ATTRIBUTE) and "</a> (" in e for e in legend) >= 2, legend
        assert f"products of {HOSTILE_RUN} (" in _text(page) and PIXEL in _text(page)  # caption, selection
    seen[name] = _text(page)
    watch.assert_clean(page, name)


def test_search_shows_its_hits_as_text(hostile):
    page, watch, seen = hostile
    _visit(page, *PAGES[3])  # Search, text to image: the hits' captions
    box = page.get_by_label("Describe a product")
    box.fill(f"red shirt {HOSTILE[1]}")
    box.press("Enter")
    page.get_by_text("#1", exact=False).first.wait_for()
    _idle(page)
    results = _text(page)
    assert results.count(PIXEL) >= 8, results[-2000:]  # the 8 hits' captions
    watch.assert_clean(page, "Search: text")
    item = page.get_by_role("radiogroup", name="Query").get_by_text("A catalogue product (test split)")
    _click_in_tab(page, "Image → captions", item, item)  # only the Image tab offers a catalogue product
    landed = page.get_by_text("True match landed at rank").first  # only this tab's query is an item
    _open_tab(page, "Image → captions", item)  # a rerun in flight can have closed the tab again
    landed.wait_for()
    _idle(page)
    seen["Search"] = results = _text(page)
    assert results.count(PIXEL) >= 8 and sum(bad in results for bad in HOSTILE) >= 2, results[-2000:]
    watch.assert_clean(page, "Search: image")
    if len(seen) == 1 + len(PAGES):  # the whole walk ran (not a test picked alone)
        shown = "".join(seen.values())
        assert sum(bad in shown for bad in HOSTILE) >= 6, [bad for bad in HOSTILE if bad not in shown]
    assert watch.requests > 20  # the route saw the app's own requests: the watch was on
