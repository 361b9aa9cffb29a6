"""The Embeddings page with AppTest: the whole-catalogue map's colours and filters, items located from a link,
a clicked point's details and a selection's panels (paged, saved as a slice, exported, searched), a UMAP map
waiting for its background job, and photos on hover from sprite sheets."""
from __future__ import annotations

import json

from streamlit.testing.v1 import AppTest

from apptest_kit import REPO, TIMEOUT, _app, _legend, _markdown_values, _no_markup, _ok, _shown


def test_embeddings_whole_catalogue_colours_filters_and_located_items(eight, tiny_catalogue):
    at = _app(tiny_catalogue)
    at.switch_page("pages/embeddings.py").run()
    _ok(at)
    assert at.selectbox(key="emb_run").value == "demo-run0"
    at.radio(key="emb_method").set_value("pca").run()
    at.radio(key="emb_scope").set_value("all").run()
    _ok(at)
    assert any(c.value.startswith("60 products of demo\\-run0") for c in at.caption)
    at.selectbox(key="emb_colour").set_value("colour").run()
    _ok(at)
    import json as _json
    from xmodal.dashboard.maps import colours
    fig = _json.loads(at.get("plotly_chart")[0].proto.spec)
    drawn = {t["name"].rsplit(" (", 1)[0]: t["marker"]["color"] for t in fig["data"] if t.get("showlegend") is not False
             and t["type"] in ("scatter", "scattergl") and t["name"] not in ("pair",)}
    assert drawn["Blue"] == colours.FASHION["blue"] and drawn["Navy Blue"] == colours.FASHION["navy blue"]
    assert {"split", "rank: title → photo", "pattern", "brand"} <= set(at.selectbox(key="emb_colour").options)
    at.multiselect(key="emb_f_split").set_value(["test"]).run()
    _ok(at)
    assert any("the filter keeps 6" in c.value for c in at.caption)
    assert any(o.startswith("test (6)") for o in at.multiselect(key="emb_f_split").options)
    at.selectbox(key="emb_colour").set_value("rank: title → photo").run()
    _ok(at)


def test_embeddings_rings_items_located_from_a_link(eight, tiny_catalogue):
    ids = json.loads((eight["root"] / "demo-run0" / "splits.json").read_text())["test"][:2]
    at = AppTest.from_file(str(REPO / "dashboard.py"), default_timeout=TIMEOUT)
    at.session_state["cat_source"], at.session_state["cat_folder"] = "folder", str(tiny_catalogue)
    at.run()
    at.query_params.update({"emb_run": "demo-run1", "focus": [*ids, "<b>nope</b>"], "focus_label": "**colour = Blue**"})
    at.switch_page("pages/embeddings.py").run()
    _ok(at)
    assert at.selectbox(key="emb_run").value == "demo-run1"
    assert any("Located 2 of 3" in _shown(i.value) and "**colour = Blue**" in _shown(i.value) for i in at.info)
    assert any(n.startswith("located (2)") for n in _legend(at))
    _no_markup(at)


def test_point_details_and_selection_panels(eight, tmp_path):
    """A clicked point: its photo, title, ranks and its nearest photos and titles with the true pair marked;
    a selection: paged, saved as a slice, exported."""
    from xmodal.dashboard.maps import projection
    run = eight["root"] / "demo-run0"
    path = projection.compute(run, projection.MapSettings("pca", "all"))

    def script():
        from pathlib import Path

        import streamlit as st

        from xmodal.dashboard.maps import panels as mapui, projection
        data = projection.load(Path(st.session_state["path"]))
        mapui.point_details(data, 3)
        mapui.selection(Path(st.session_state["run"]), data, list(range(30)))

    at = AppTest.from_function(script, default_timeout=TIMEOUT)
    at.session_state["path"], at.session_state["run"] = str(path), str(tmp_path)
    at.run()
    _ok(at)
    assert {m.label for m in at.metric} == {"Its photo, for its title", "Its title, for its photo"}
    assert len(at.get("image")) >= 1 + 8 + 8 + 24  # the product, 8 photos, 8 titles' photos, 24 selected
    text = " ".join(_shown(v) for v in _markdown_values(at))
    assert "Photos nearest its title" in text and "Titles nearest its photo" in text and "✓ its own" in text
    assert "30 selected product(s)" in [h.value for h in at.subheader] and "Page 1 of 2" in text
    at.text_input(key="emb_slice_name").input("blue <b>tops</b>").run()
    at.button(key="emb_slice_save").click().run()
    _ok(at)
    from xmodal.dashboard import slices
    assert list(slices.load_slices(tmp_path)) == ["blue <b>tops</b>"]
    assert at.get("download_button")
    from xmodal.dashboard.maps import view as mapview
    data = projection.load(path)
    word = data["captions"][0].split()[1]  # the gender word of the demo's titles: some of the 30, not all
    expect = mapview.find_in_titles([data["captions"][i] for i in range(30)], word)
    assert 0 < len(expect) < 30
    images_before = len(at.get("image"))
    at.text_input(key="emb_sel_find").input(word).run()
    _ok(at)
    assert f"{len(expect):,} of the 30 selected titles hold every word of the query." in [c.value for c in at.caption]
    assert len(at.get("image")) == images_before - min(30, 24) + min(len(expect), 24)  # only what was found


def test_embeddings_map_waits_for_its_background_job(eight, tiny_catalogue, monkeypatch, tmp_path):
    """A UMAP of the whole catalogue is not computed in the page: the job starts in the background, the page
    says so with its progress, and each setting has its own cached map."""
    from xmodal.dashboard.maps import projection
    started = []
    monkeypatch.setattr(projection, "start", lambda dirs, settings: started.append(settings) or True)
    # no whole-catalogue map made yet, whatever another test module already drew into the shared runs
    real_path = projection.projection_path
    monkeypatch.setattr(projection, "projection_path", lambda run_dir, settings="umap": (
        tmp_path / f"{projection.task_name(settings)}.npz" if projection._settings(settings).scope == "all"
        else real_path(run_dir, settings)))
    at = _app(tiny_catalogue)
    at.switch_page("pages/embeddings.py").run()
    _ok(at)
    at.radio(key="emb_scope").set_value("all").run()
    _ok(at)
    assert started and started[-1] == projection.MapSettings("umap", "all", 15, 0.1)
    assert any("Computing the UMAP map of the whole catalogue" in i.value for i in at.info)
    assert not at.get("plotly_chart")  # nothing half-drawn meanwhile
    at.slider(key="emb_nn").set_value(30).run()
    _ok(at)
    assert started[-1] == projection.MapSettings("umap", "all", 30, 0.1)  # another setting, another map


def test_embeddings_map_hovers_photos_from_sprite_sheets(with_run, tiny_catalogue, monkeypatch):
    """A map without sprite sheets (made before they existed, or its job still on them) starts their background
    job and says so, the map drawn meanwhile; once they are made, the hover-photo component gets the sheets
    of exactly the mapped items, served by this server."""
    import shutil as _shutil
    from xmodal.dashboard.maps import sprite_job, sprites
    run_dir = with_run / "tiny-cmpm"
    started = []
    real_start = sprite_job.start
    monkeypatch.setattr(sprite_job, "start", lambda *a: started.append(a) or True)
    at = _app(tiny_catalogue)
    at.switch_page("pages/embeddings.py").run()  # makes the map here (a small PCA), or finds it copied
    _ok(at)
    _shutil.rmtree(with_run / sprites.SHARED_DIR, ignore_errors=True)  # as if made by an earlier version
    at.run()
    _ok(at)
    assert started and started[-1][0] == run_dir
    assert any(c.value.startswith("Photos on hover: making the thumbnails") for c in at.caption)
    assert len(at.get("plotly_chart")) == 2 and not at.get("bidi_component")  # the map is drawn meanwhile
    monkeypatch.setattr(sprite_job, "start", real_start)
    assert sprite_job.main([str(started[-1][1])]) == 0  # what the background job runs
    at.run()
    _ok(at)
    hover = [e for e in at.get("bidi_component") if e.proto.component_name == "xmodal_map_hover"]
    assert len(hover) == 1
    payload = json.loads(hover[0].proto.json)
    folders = [p for p in (with_run / sprites.SHARED_DIR).iterdir() if sprites.read_meta(p)]
    assert len(folders) == 1
    meta = sprites.read_meta(folders[0])
    assert payload["n"] == meta["n"] == 6 and len(payload["urls"]) == len(meta["sheets"]) == 1
    assert all(u.startswith("/") and "://" not in u and u.endswith(".jpg") for u in payload["urls"])  # this server
    assert payload["chart"] == "emb_map_" and payload["cell"] == list(sprites.CELL)
    assert not any(c.value.startswith("Photos on hover:") for c in at.caption)
