"""The Search page's view is its URL (issue 21 §1) and its ranking can take hubness off (issue 23 §2), with AppTest:
a URL naming runs, tab, query, k, gallery, ranking, filters and items opens that view and is written back whole;
that URL opened in a new session shows the same view; hostile values are ignored and replaced by the defaults;
CSLS ranks as the library's ``Run.hubness = "csls"`` does, and the page passes the toggle through."""
from __future__ import annotations

import json

import numpy as np
import pytest
from apptest_kit import _ok, _shown
from test_views_urls import _keys, _params, _visit, eight  # noqa: F401  (eight: a fixture)

from xmodal.dashboard import queries

QUERY = "red striped shirt"


def _captions(at) -> list[str]:
    return [_shown(c.value) for c in at.caption]


def _test_split(run_dir) -> list[str]:
    return json.loads((run_dir / "splits.json").read_text())["test"]


def _linked_view(eight, catalogue) -> dict:  # noqa: F811
    """A link to two of the demo catalogue's four runs side by side (no catalogue named: the runs say which), the
    photo tab on a test product, a typed query, 3 results from the test split, plain cosine, a filter."""
    from xmodal.data import load_catalogue
    demo = eight["demo"]
    cat = load_catalogue(catalogue)
    test = _test_split(demo[0])
    gender = cat.attributes["gender"][cat.item_ids.index(test[0])]
    return {"search_run": [demo[2].name, demo[1].name], "search_tab": "image", "search_q": QUERY, "search_k": "3",
            "search_gallery": "test", "search_hub": "none", "search_f_gender": gender,
            "search_image_src": "item", "search_image_item": test[0]}


def _check_view(at, eight, view: dict) -> None:  # noqa: F811
    demo = eight["demo"]
    picked = at.selectbox(key="search_run").value
    assert picked.startswith("2 runs side by side: ") and {demo[1].name, demo[2].name} <= set(picked[21:].split(", "))
    assert at.session_state["search_tab"] == "Image → captions"
    assert at.text_input(key="search_query").value == QUERY
    assert at.slider(key="search_k").value == 3
    assert at.radio(key="search_gallery").value == "test" and at.radio(key="search_hub").value == "none"
    assert at.multiselect(key="search_f_gender").value == [view["search_f_gender"]]
    assert at.radio(key="search_image_src").value == "A catalogue product (test split)"
    assert at.selectbox(key="search_image_item").format_func(at.selectbox(key="search_image_item").value
                                                             ).startswith(view["search_image_item"] + " · ")
    shown = _captions(at)
    searched = [c for c in shown if c.startswith("Searched its test split: ")]
    assert len(searched) == 4, searched  # two runs, in both the text and the photo tab
    assert all("ranked by plain cosine" in c and "filtered by gender = " in c for c in searched)
    assert sum(m.label == "True match landed at rank" for m in at.metric) == 2  # the photo's, for each run
    assert all(any(c.endswith(f" · {r.name}") for c in shown) for r in demo[1:3])  # each run's column names it


def test_a_search_link_opens_its_view_and_the_url_restores_it(eight, tiny_catalogue):  # noqa: F811
    view = _linked_view(eight, tiny_catalogue)
    at = _visit(tiny_catalogue, "pages/search.py", view)
    _check_view(at, eight, view)
    url = _params(at)
    assert url["cat"] == [_keys(eight)[0]]  # the catalogue of the runs named
    assert sorted(url["search_run"]) == sorted(view["search_run"]) and url["search_q"] == [QUERY]
    assert {k: url[k] for k in ("search_tab", "search_k", "search_hub", "search_f_gender", "search_image_item")} == \
        {k: [view[k]] for k in ("search_tab", "search_k", "search_hub", "search_f_gender", "search_image_item")}
    assert url["search_gallery"] == ["test split"]

    again = _visit(tiny_catalogue, "pages/search.py", url)  # the URL shared, or reloaded: a new session
    _check_view(again, eight, view)
    assert _params(again) == url


def test_hostile_url_values_are_ignored(eight, tiny_catalogue):  # noqa: F811
    at = _visit(tiny_catalogue, "pages/search.py", {
        "search_run": ["<img src=x onerror=alert(1)>", "../../etc/passwd"], "search_tab": "javascript:alert(1)",
        "search_q": "red\x00shirt", "search_k": "1e9", "search_gallery": "everything", "search_hub": "magic",
        "search_f_gender": "<script>", "search_image_src": "item", "search_image_item": "no-such-item"})
    _ok(at)
    assert at.selectbox(key="search_run").value == "All runs side by side"
    assert at.session_state["search_tab"] == "Text → products"
    assert at.text_input(key="search_query").value == ""
    assert at.radio(key="search_image_src").value == "A catalogue product (test split)"  # a valid value is kept
    assert at.slider(key="search_k").value == 8 and at.radio(key="search_gallery").value == "all"
    assert at.radio(key="search_hub").value == "csls" and at.multiselect(key="search_f_gender").value == []
    url = _params(at)  # each replaced by the view shown, defaults included; the empty ones left out
    assert sorted(url["search_run"]) == sorted(r.name for r in eight["demo"])
    assert url["search_k"] == ["8"] and url["search_hub"] == ["csls"] and url["search_tab"] == ["text"]
    assert url["search_gallery"] == ["whole catalogue"] and "search_q" not in url and "search_f_gender" not in url
    assert url["search_image_item"] == [_test_split(eight["demo"][0])[0]]  # the first test product, shown


def test_a_link_with_only_a_query_shows_it_typed_after_the_session_looked_elsewhere(eight, tiny_catalogue):  # noqa: F811
    at = _visit(tiny_catalogue, "pages/search.py", {"search_tab": "compose", "search_text_src": "item"})
    assert at.session_state["search_tab"] == "Photo + words"
    run = eight["demo"][3].name
    at.query_params.clear()
    at.query_params.update({"search_run": run, "search_q": "blue shirt for men"})  # what another page links with
    at.switch_page("pages/search.py").run()
    _ok(at)
    assert at.session_state["search_tab"] == "Text → products"
    assert at.radio(key="search_text_src").value == "Type a query"
    assert at.text_input(key="search_query").value == "blue shirt for men"
    assert at.selectbox(key="search_run").value.endswith(run)
    assert any(c.startswith("Searched the whole catalogue: 60 products of ") and "CSLS" in c for c in _captions(at))


@pytest.fixture(scope="module")
def run(trained_run):
    from xmodal import load_run
    return load_run(trained_run)


def test_csls_ranks_as_the_library_does_and_changes_some_rankings(run):
    from xmodal import load_run
    library = load_run(run.dir)
    assert not queries.offsets_ready(library, "images")  # learnt at its first CSLS query (the page's spinner)
    queries.text_query(library, QUERY, hubness="csls")
    assert queries.offsets_ready(library, "images") and not queries.offsets_ready(library, "texts")
    library.hubness = "csls"
    changed = 0
    for i, caption in enumerate(run.catalogue.captions[:20]):
        plain = queries.text_query(run, caption, k=5, item_id=run.catalogue.item_ids[i])
        csls = queries.text_query(run, caption, k=5, item_id=run.catalogue.item_ids[i], hubness="csls")
        assert [h.index for h in csls.hits] == [h.index for h in library.search_text(caption, 5)]
        cosine = (run.image_embeds @ run.embed_text(caption)).numpy()
        assert [h.score for h in csls.hits] == pytest.approx([float(cosine[h.index]) for h in csls.hits], abs=1e-5)
        changed += [h.index for h in plain.hits] != [h.index for h in csls.hits] or plain.rank != csls.rank
    assert changed, "CSLS changed no ranking of 20 queries"
    photo = run.catalogue.open_image(0)
    assert [h.index for h in queries.image_query(run, photo, k=5, hubness="csls").hits] == \
        [h.index for h in library.search_image(photo, 5)]
    with pytest.raises(ValueError, match="unknown hubness correction 'magic'"):
        queries.text_query(run, QUERY, hubness="magic")


def test_the_page_ranks_with_the_toggle(eight, tiny_catalogue, monkeypatch):  # noqa: F811
    asked = []
    real = queries.text_query
    monkeypatch.setattr(queries, "text_query", lambda *a, **kw: asked.append(kw["hubness"]) or real(*a, **kw))
    at = _visit(tiny_catalogue, "pages/search.py", {"search_run": eight["demo"][0].name, "search_q": QUERY})
    assert asked == ["csls"] and at.radio(key="search_hub").value == "csls"  # the default, as docs/quality.md finds
    assert any("ranked with CSLS hubness correction" in c for c in _captions(at))
    at.radio(key="search_hub").set_value("none").run()
    _ok(at)
    assert asked[-1] == "none" and _params(at)["search_hub"] == ["none"]
    assert any("ranked by plain cosine" in c for c in _captions(at))



def test_a_query_carries_its_spread_over_the_catalogue(run):
    """The hits' standard scores (Search's "why did it match?") are measured against the query's cosines over the
    whole catalogue, taken from the query's own pass: the same numbers as a pass made for them alone."""
    res = queries.text_query(run, QUERY, k=5, hubness="csls", gallery=np.arange(10))
    scores = (run.image_embeds @ run.embed_text(QUERY)).numpy()  # [N]: the whole catalogue, not the gallery
    assert res.spread == pytest.approx((scores.mean(), scores.std(), len(run.catalogue)), abs=1e-5)
    photo = run.catalogue.open_image(0)
    scores = (run.text_embeds @ run.embed_image(photo)).numpy()
    assert queries.image_query(run, photo, k=5).spread == pytest.approx((scores.mean(), scores.std(), len(scores)),
                                                                        abs=1e-5)
