"""Links between views, and views as URLs, in a real browser (issue 21 §1): every cross-page link is clicked and
the page it opens is read, after the session had chosen something else there; a view's URL, opened in a new
session, shows the same view; Training's choices are in its URL even when they are today's defaults.

Serves the eight runs of ``tests/dashboard_runs.py`` (symlinked) and one more demo run trained with another seed,
so that two runs of one catalogue disagree on some test queries (the copies share their ranks). Uses
``tests/test_browser.py``'s server and browser helpers; skips where Chromium or Playwright is missing.
"""
from __future__ import annotations

import json
import re
import time
from urllib.parse import parse_qs, urlparse

import pytest

from conftest import TINY_SIZE
from browser_kit import _browser, _chromium, _click_map_point, _idle, _mapped, _serve, _text

pytestmark = [pytest.mark.browser, pytest.mark.slow]
SEED_RUN = "demo-seed7"  # trained here: its ranks differ from the copies'


@pytest.fixture(scope="module")
def site(trained_run, tiny_catalogue, tmp_path_factory):
    """(URL of a dashboard over the eight runs and SEED_RUN, the demo catalogue's key, a browser page, the
    checkpoints folder, the demo catalogue)."""
    pytest.importorskip("playwright.sync_api", reason="pip install playwright (the Python package only)")
    _chromium()
    from dashboard_runs import two_catalogues
    from xmodal.dashboard.catalogues import catalogue_id
    from xmodal.dashboard.maps import embeds, projection
    from xmodal.training.cli import main
    runs = two_catalogues(trained_run, tiny_catalogue, tmp_path_factory)
    root = tmp_path_factory.mktemp("links") / "ckpt"
    root.mkdir()
    for d in runs["demo"] + runs["second"]:
        (root / d.name).symlink_to(d, target_is_directory=True)
    assert main(["--model", "cmpm-efficientnet", "--data", str(tiny_catalogue), "--epochs", "2", "--batch-size", "16",
                 "--out", str(root), "--run-id", SEED_RUN, "--seed", "7", *TINY_SIZE]) == 0
    embeds.compute(root / SEED_RUN)
    for d in [root / SEED_RUN, *runs["demo"]]:  # the whole-catalogue UMAP a search's link opens (no wait for numba)
        if not projection.projection_path(d, projection.MapSettings("umap", "all")).is_file():
            projection.compute(d, projection.MapSettings("umap", "all"))
    key = catalogue_id(json.loads((root / SEED_RUN / "config.json").read_text())).key
    with _serve(root, str(tiny_catalogue), tmp_path_factory.mktemp("links_log")) as url:
        with _browser(tmp_path_factory.mktemp("links_profile")) as context:
            page = context.pages[0] if context.pages else context.new_page()
            page.goto(url)  # the server's first session: Home, then the pages are known
            page.get_by_test_id("stDataFrame").first.wait_for()
            _idle(page)
            yield url, key, page, root, tiny_catalogue


def _params(url: str) -> dict[str, list[str]]:
    return parse_qs(urlparse(url).query, keep_blank_values=True)


def _open(page, url: str) -> None:
    page.goto(url)
    page.locator("h1").first.wait_for()
    _idle(page)


def _map(page) -> str:
    """Wait for the Embeddings map (made in the page or in the background); returns the page's text."""
    page.get_by_text("Modality gap", exact=True).first.wait_for(timeout=240_000)
    deadline = time.time() + 240
    while " products of " not in _text(page) and time.time() < deadline:
        page.wait_for_timeout(1000)
        _idle(page)
    _idle(page)
    return _text(page)


def _map_of(page, what: str, timeout: float = 120) -> str:
    """Wait until the map's caption holds ``what`` (a rerun may still be drawing); returns the page's text."""
    seen, deadline = _map(page), time.time() + timeout
    while what not in _caption(seen) and time.time() < deadline:
        page.wait_for_timeout(1000)
        seen = _map(page)
    assert what in _caption(seen), _caption(seen)
    return seen


def _selectbox(page, label: str):
    return page.get_by_test_id("stSelectbox").filter(has=page.get_by_text(label, exact=True)).first


def _chosen(page, label: str) -> str:
    """What the selectbox labelled ``label`` shows."""
    return _selectbox(page, label).locator("input").input_value()


def _choose(page, label: str, option: str) -> None:
    """Pick ``option`` in the selectbox labelled ``label``."""
    for _ in range(4):  # a rerun can close the dropdown right after it opens
        _idle(page)
        _selectbox(page, label).click()
        try:
            page.get_by_role("option", name=option, exact=True).click(timeout=10_000)
            _idle(page)
            return
        except Exception:  # playwright's TimeoutError
            page.keyboard.press("Escape")
    pytest.fail(f"{label!r} never offered {option!r}")


def _click_radio(page, label: str, option: str) -> None:
    page.get_by_test_id("stRadio").filter(has=page.get_by_text(label, exact=True)).get_by_text(
        option, exact=True).click()
    _idle(page)


def _radio(page, label: str) -> str:
    """The chosen option of the radio labelled ``label``."""
    group = page.get_by_test_id("stRadio").filter(has=page.get_by_text(label, exact=True)).first
    return group.locator("label:has(input:checked)").inner_text().strip()


def _caption(text: str) -> str:
    found = re.search(r"[\d,]+ products of \S+.*", text)
    assert found, "no map caption"
    return found.group(0)


def _nav(page, name: str, title: str) -> None:
    """Open a page from the sidebar (the same session)."""
    page.locator('[data-testid="stSidebarNav"]').get_by_text(name, exact=True).click()
    page.locator("h1").filter(has_text=title).wait_for()
    _idle(page)


def _follow(page, link, title: str) -> None:
    """Click ``link`` (an ``st.page_link``) until the page titled ``title`` opens: a click that lands while a rerun
    of the page runs can be lost (the link stays, nothing opens: it waited 120 s in one run of ten)."""
    opened = page.locator("h1").filter(has_text=title)
    for _attempt in range(4):
        link.click()
        try:
            opened.wait_for(timeout=15_000)
            return
        except Exception:  # noqa: BLE001 - playwright's TimeoutError: still here (click again) or still loading
            if not link.is_visible():
                break
    opened.wait_for()


def _session_shows_another_map(page, points: str) -> None:
    """In this session, the Embeddings page shows demo-run2's ``points`` (``test split`` or ``whole catalogue``):
    choices a link must override."""
    _nav(page, "Embeddings", "Embeddings")
    _map(page)
    _choose(page, "Run", "demo-run2")
    _map_of(page, " products of demo-run2 ")
    _click_radio(page, "Points", points)
    _map_of(page, f"{6 if points == 'test split' else 60} products of demo-run2")


def _located(text: str) -> str:
    return next((line for line in text.splitlines() if line.startswith("Located ")), "nothing located")


def test_search_results_open_on_the_map_they_were_searched_in(site):
    """Search over the whole catalogue -> "Show these on the map": the whole catalogue's map of that run with the 8
    results ringed (it opened the test split's map: "Located 0 of 8")."""
    url, key, page, *_ = site
    if page.url.startswith(url):  # the module's session (the fixture's, or earlier tests'): no page load needed
        _nav(page, "Home", "xmodal")
    else:
        _open(page, url)
    _session_shows_another_map(page, "test split")
    _nav(page, "Search", "Search")
    box = page.get_by_label("Describe a product")
    box.fill("red striped shirt")
    box.press("Enter")
    page.get_by_text("#1", exact=False).first.wait_for(timeout=120_000)
    _idle(page)
    link = page.get_by_role("link", name="Show these on the map").first
    wanted = _params(link.get_attribute("href"))
    run = wanted["emb_run"][0]
    _follow(page, link, "Embeddings")
    seen = _map(page)
    assert _located(seen).startswith("Located 8 of 8 item(s)"), _located(seen)
    assert _caption(seen).startswith(f"60 products of {run}")  # the whole catalogue of the run searched
    assert _radio(page, "Points") == "whole catalogue" and _radio(page, "Ground truth") == "caption"
    assert _chosen(page, "Run") == run


def test_compare_links_open_the_run_split_and_items_they_name(site):
    """Compare's slice link and a disagreement row's link open the map of the run they name, on the test split,
    with the items ringed, whatever the Embeddings page showed before in this session (it kept that run)."""
    url, key, page, root, _ = site
    # demo-run0 is also the map's default run: a link to it must still override the run the session showed there
    _open(page, f"{url}/compare?cat={key}&cmp_runs=demo-run0&cmp_runs={SEED_RUN}&cmp_a=demo-run0&cmp_b={SEED_RUN}")
    _session_shows_another_map(page, "whole catalogue")
    _nav(page, "Compare", "Compare")
    page.get_by_text("Where two runs disagree most").wait_for()
    page.get_by_text("Slice table, and a slice on the map").click()
    link = page.get_by_role("link", name="Show on the map").first
    link.wait_for()
    asked = _params(link.get_attribute("href"))
    _follow(page, link, "Embeddings")
    seen = _map(page)
    n = len(asked["focus"])
    assert _caption(seen).startswith("6 products of demo-run0"), _caption(seen)  # Compare's first run, test split
    assert _located(seen).startswith(f"Located {n} of {n} item(s)"), _located(seen)
    assert _radio(page, "Points") == "test split"

    _session_shows_another_map(page, "whole catalogue")
    _nav(page, "Compare", "Compare")
    page.get_by_text("Where two runs disagree most").wait_for()
    grid = page.locator('[data-testid="stDataFrame"]').last  # the disagreements: select the first row
    grid.scroll_into_view_if_needed()
    box = grid.bounding_box()
    page.mouse.click(box["x"] + 18, box["y"] + 35 + 35)
    _idle(page)
    link = page.get_by_role("link", name="Show on the map").last
    link.wait_for(timeout=30_000)
    asked = _params(link.get_attribute("href"))
    (item,) = asked["focus"]
    _follow(page, link, "Embeddings")
    seen = _map(page)
    assert _caption(seen).startswith("6 products of demo-run0"), _caption(seen)  # run A, its test split
    assert _located(seen).startswith("Located 1 of 1 item(s)"), _located(seen)
    assert _radio(page, "Points") == "test split"
    gt = _radio(page, "Ground truth")
    assert asked.get("emb_gt") == [gt]  # the link names the ground truth the map ranks by
    from xmodal.dashboard.maps import projection
    data = projection.load(projection.projection_path(root / "demo-run0", projection.MapSettings("umap", "test")))
    i = data["item_ids"].index(item)
    t2i, i2t = (int(data[projection.rank_key(d, gt)][i]) for d in ("text_to_image", "image_to_text"))
    assert f"Rank of the true match, of 6 (test split, {gt}-level): {item}: title → photo {t2i}, photo → title " \
           f"{i2t}" in seen  # the ranks the map reads for it, said out of what and where


def test_the_map_view_is_a_url(site):
    """Run, points, projection, ground truth, colour, a filter, the rings and the clicked product: all in the URL,
    and the URL opened in a new session shows the same view."""
    url, key, page, *_ = site
    _open(page, f"{url}/embeddings?cat={key}&emb_run=demo-run1&emb_scope=test+split&emb_method=pca")
    _map(page)
    _click_radio(page, "Points", "whole catalogue")
    _map(page)
    _click_radio(page, "Ground truth", "item")
    _choose(page, "Colour by", "rank: title → photo")
    page.get_by_text("Filter the map (attributes, split, rank of the true match)").click()
    for attempt in range(4):  # a rerun can close the dropdown, or swallow the click
        _idle(page)
        page.get_by_test_id("stMultiSelect").filter(has_text=re.compile(r"^split")).first.click()
        try:
            page.get_by_role("option", name=re.compile(r"^test \(6\)")).click(timeout=10_000)
            page.get_by_text("the filter keeps 6", exact=False).first.wait_for(timeout=20_000)
            break
        except Exception:  # playwright's TimeoutError
            page.keyboard.press("Escape")
            if attempt == 3:
                raise
    page.keyboard.press("Escape")
    _idle(page)
    _map(page)
    item = _click_map_point(page)
    panel = _text(page)
    shown = re.search(r"item (\S+) · split", panel).group(1)
    ranks = re.search(r"Its photo for its title: (rank [\d,]+ of 60 \(whole catalogue, item-level\)); its title for "
                      r"its photo: (rank [\d,]+ of 60 \(whole catalogue, item-level\))", panel)
    assert ranks, panel[-3000:]
    params = _params(page.url)
    assert params["emb_point"] == [shown] and params["emb_run"] == ["demo-run1"] and params["emb_gt"] == ["item"]
    assert params["emb_f_split"] == ["test"] and params["emb_colour"] == ["rank: title → photo"]
    assert params["emb_scope"] == ["whole catalogue"] and params["emb_method"] == ["pca"]

    shared = page.url
    _open(page, shared)  # a new session (a page load starts one) opens the shared URL
    again = _map(page)
    assert _caption(again).startswith("60 products of demo-run1") and "the filter keeps 6" in again
    assert _radio(page, "Points") == "whole catalogue" and _radio(page, "Ground truth") == "item"
    assert _radio(page, "Map") == "pca" and _chosen(page, "Colour by") == "rank: title → photo"
    page.get_by_text("The clicked product").wait_for()
    assert f"item {shown} · split" in _text(page) and ranks.group(0) in _text(page)
    selected = page.evaluate("""() => document.querySelector('[data-testid="stPlotlyChart"] .js-plotly-plot')
        ._fullData.filter(t => t.selectedpoints && t.selectedpoints.length)
        .map(t => t.customdata[t.selectedpoints[0]])""")
    assert selected and all(int(s) == item for s in selected)  # drawn selected, as the click drew it


def test_training_choices_are_a_url_even_at_their_defaults(site):
    """Opened bare, Training writes its runs (today's default: the best ones) into the URL, so a shared link keeps
    them when the best runs change; its chosen runs and axes come back from a URL in a new session."""
    url, key, page, *_ = site
    _open(page, f"{url}/training")
    page.get_by_text("Loss (every term)").first.wait_for()
    params = _params(page.url)
    assert params["cat"] == [key] and params["train_runs"] and params["train_gt"] == ["caption"]
    assert params["train_smooth"] == ["5"]
    _open(page, f"{url}/training?cat={key}&train_runs=demo-run2&train_runs={SEED_RUN}&train_smooth=12&train_gt=item"
                "&train_runs=%3Cscript%3E")
    page.get_by_text("Loss (every term)").first.wait_for()
    chips = page.get_by_test_id("stMultiSelect").first.inner_text()
    assert "demo-run2" in chips and SEED_RUN in chips and "demo-run0" not in chips and "<script>" not in chips
    assert _radio(page, "Validation ground truth") == "item"
    assert "Validation retrieval per epoch (item-level)" in _text(page)
    params = _params(page.url)
    assert params["train_runs"] == ["demo-run2", SEED_RUN] and params["train_smooth"] == ["12"]


def test_a_page_opened_from_the_sidebar_keeps_its_view(site):
    """The map's view survives a visit to another page: the sidebar opens it bare, its last view comes back."""
    url, key, page, *_ = site
    _open(page, f"{url}/embeddings?cat={key}&emb_run=demo-run1&emb_scope=whole+catalogue&emb_method=pca&emb_gt=item")
    _map(page)
    page.locator('[data-testid="stSidebarNav"]').get_by_text("Training", exact=True).click()
    page.get_by_text("Loss (every term)").first.wait_for()
    _idle(page)
    page.locator('[data-testid="stSidebarNav"]').get_by_text("Embeddings", exact=True).click()
    seen = _map(page)
    assert _caption(seen).startswith("60 products of demo-run1") and _radio(page, "Ground truth") == "item"
    assert _mapped(page) == 60


SHARED = {  # page: (its URL's parameters after the catalogue, what shows it has drawn)
    "embeddings": ("emb_run=demo-run1&emb_scope=whole+catalogue&emb_method=pca&emb_gt=item", "Modality gap"),
    "compare": (f"cmp_runs=demo-run1&cmp_runs={SEED_RUN}&cmp_gt=item", "Slices and disagreements"),
    "search": ("search_run=demo-run1&search_q=red+striped+shirt&search_k=5", "#1"),
}


@pytest.mark.parametrize("name", list(SHARED))
def test_a_shared_url_opens_on_a_freshly_started_server(site, tmp_path_factory, name):
    """The first page a freshly started server gets goes through Home, which dropped the URL's parameters: the
    page's view survives it."""
    _, key, page, root, catalogue = site
    query, drawn = SHARED[name]
    with _serve(root, str(catalogue), tmp_path_factory.mktemp("fresh_log")) as url:
        _open(page, f"{url}/{name}?cat={key}&{query}")  # in the module's tab: a page load is a new session
        if name == "embeddings":
            seen = _map(page)
            assert _caption(seen).startswith("60 products of demo-run1"), _caption(seen)
        page.get_by_text(drawn, exact=False).first.wait_for()
        _idle(page)
        asked, got = _params(f"?{query}"), _params(page.url)
        assert {k: sorted(got.get(k, [])) for k in asked} == {k: sorted(v) for k, v in asked.items()}, page.url
        if name in ("embeddings", "compare"):
            assert _radio(page, "Ground truth") == "item"
        if name == "search":
            assert page.get_by_label("Describe a product").input_value() == "red striped shirt"
