"""Catalogue and run text shown as text, with AppTest: hostile captions (scripts, images, links, iframes) on
Home, and result cards, product grids and failure boxes fed hostile captions, ids and run names, reach Markdown
escaped; a URL-like image path is never fetched."""
from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from apptest_kit import TIMEOUT, _app, _hit_captions, _markdown_values, _no_markup, _ok, _shown


HOSTILE = ['<script>window.__xss=1</script>', '<img src=x onerror="window.__xss=1">',
           '<iframe srcdoc="<script>parent.__xss=1</script>">', '![x](http://203.0.113.5/pixel.png)',
           '[click](javascript:window.__xss=1)', '<a href="http://203.0.113.5/">', '<svg onload=window.__xss=1>']


@pytest.fixture
def hostile_catalogue(tiny_catalogue, tmp_path) -> Path:
    """The tiny catalogue with a hostile string after every caption, and one row whose image is missing."""
    folder = tmp_path / "hostile"
    shutil.copytree(tiny_catalogue, folder)
    with open(folder / "captions.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for i, row in enumerate(rows):
        row["caption"] = f"{row['caption']} {HOSTILE[i % len(HOSTILE)]}"
    rows.append({**rows[0], "image": "images/<img src=x onerror=alert(1)>.jpg", "item_id": "missing-photo"})
    with open(folder / "captions.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return folder


def test_home_shows_hostile_captions_as_text(empty, hostile_catalogue):
    at = _app(hostile_catalogue)
    _ok(at)
    _no_markup(at)
    grid = [_shown(c.value) for c in at.caption]
    assert sum(any(h in c for h in HOSTILE) for c in grid) == 12  # every sampled product, caption literal
    assert {m.label: m.value for m in at.metric}["Rows skipped"] == "1"


def test_widgets_escape_catalogue_and_run_text(tmp_path, tiny_catalogue):
    """Result cards, product grids and failure boxes, fed hostile captions, ids and run names."""
    def script():
        from pathlib import Path
        from types import SimpleNamespace

        import streamlit as st

        from xmodal.dashboard import ui
        bad, image = st.session_state["bad"], st.session_state["image"]
        hit = SimpleNamespace(caption=bad, item_id=bad, score=0.5, image=Path(image))
        ui.hit_card(hit, title="#1")
        ui.hit_grid([hit, SimpleNamespace(caption=bad, item_id=bad, score=0.25, image=Path("http://203.0.113.5/x"))])
        ui.product_grid([image], [bad])
        ui.show_failure(Path(st.session_state["run"]), {"error": bad})

    for bad in HOSTILE:
        run = tmp_path / bad.replace("/", "_")
        at = AppTest.from_function(script, default_timeout=TIMEOUT)
        at.session_state["bad"], at.session_state["run"] = bad, str(run)
        at.session_state["image"] = str(next((tiny_catalogue / "images").iterdir()))
        at.run()
        _ok(at)
        _no_markup(at)
        shown = [_shown(v) for v in _markdown_values(at)]
        assert sum(bad in v for v in shown) >= 5, shown  # card, grid, product caption, failure (name and error)
        grid = [c for c in _hit_captions(at) if c.startswith("**#")]
        # A URL is never handed to st.image: a grey stand-in takes its place, with the reason under it.
        assert "(photo missing)" not in grid[0] and "(photo missing)" in grid[1]
        assert len(at.get("image")) == 3  # the card's photo, the grid's row of two, the product grid's
