"""The Search page's attribute filters: counts per value, results only from kept products, and a filter that
keeps nothing says so (the widgets are bound to the URL with Streamlit's bind="query-params")."""
from __future__ import annotations

from apptest_kit import _app, _hit_captions, _ok, _shown

from xmodal.data import load_catalogue


def test_filters_narrow_the_results_and_say_what_they_keep(with_run, tiny_catalogue):  # noqa: F811
    cat = load_catalogue(tiny_catalogue)
    column = "gender"
    value = cat.attributes[column][0]
    keep = {cat.item_ids[i] for i, v in enumerate(cat.attributes[column]) if v == value}
    at = _app(tiny_catalogue)
    at.switch_page("pages/search.py").run()
    box = at.multiselect(key=f"search_f_{column}")
    assert f"{value} ({len(keep)})" in box.options  # each value with the products it keeps
    box.select(value).run()
    at.text_input(key="search_query").input("red striped shirt").run()
    _ok(at)
    shown = [c for c in _hit_captions(at) if c.startswith("**#")]
    assert shown, "results"
    assert any(f"filtered by {column} = {value}" in _shown(c.value) for c in at.caption)
    assert any(f"products of {len(keep)}" in _shown(c.value) or f": {len(keep)} products" in _shown(c.value)
               for c in at.caption), [c.value for c in at.caption][:5]


def test_a_filter_that_keeps_nothing_says_so(with_run, tiny_catalogue):  # noqa: F811
    cat = load_catalogue(tiny_catalogue)
    a, b = "gender", "master_category"
    pairs = set(zip(cat.attributes[a], cat.attributes[b]))
    missing = next((x, y) for x in set(cat.attributes[a]) for y in set(cat.attributes[b]) if (x, y) not in pairs)
    at = _app(tiny_catalogue)
    at.switch_page("pages/search.py").run()
    at.multiselect(key=f"search_f_{a}").select(missing[0]).run()
    at.multiselect(key=f"search_f_{b}").select(missing[1]).run()
    _ok(at)
    assert any("keeps no product" in _shown(w.value) for w in at.warning)
