"""The Embeddings page's maps as plain functions: the figure, the modality gap, cached projections (PCA, UMAP and
their settings), colours by name and by attribute, filters, neighbours and the clicked point's ranks, the
catalogue embeddings file of a run and its background job, the map benchmark and search in a selection's titles."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from xmodal.dashboard import analysis
from xmodal.dashboard.maps import colours, embeds, figure as mapplot, view as mapview, projection
from xmodal.dashboard.jobs import tasks
from xmodal.evaluation import metrics


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_map_figure_markers_carry_item_positions():
    xy = np.arange(12, dtype=np.float32).reshape(6, 2)
    fig = mapplot.map_figure(xy, ["a", "b", "c"], colouring=colours.colouring(["x", "y", "x"]), lines=True)
    markers = [t for t in fig.data if t.mode == "markers"]
    assert all(t.type == "scatter" for t in fig.data)  # a small map: SVG, no WebGL context to start
    assert all(t.type == "scattergl" for t in mapplot.map_figure(xy, ["a", "b", "c"], gl=True).data)
    big = mapplot.SVG_MAX_ITEMS + 1
    assert {t.type for t in mapplot.map_figure(np.zeros((2 * big, 2)), ["t"] * big).data} == {"scattergl"}  # WebGL
    assert sorted(int(p) for t in markers for p in t.customdata) == [0, 0, 1, 1, 2, 2]  # photo and title each
    for t in markers:  # a clicked point grows above its neighbours, which fade, in the browser itself
        assert t.selected.marker.size > t.marker.size and t.unselected.marker.opacity < t.marker.opacity
    lines = [t for t in fig.data if t.mode == "lines"][0]
    assert np.isnan(np.asarray(lines.x, dtype=float)).sum() == 3  # three separate segments
    filtered = mapplot.map_figure(xy, ["a", "b", "c"], keep=np.array([True, False, True]), highlight=[1])
    names = [t.name for t in filtered.data]
    assert "filtered out (1)" in names and "located (1)" in names
    kept = [int(p) for t in filtered.data if t.name in ("photos", "titles") for p in t.customdata]
    assert sorted(kept) == [0, 0, 2, 2]
    by_rank = mapplot.map_figure(xy, ["a", "b", "c"], ranks=np.array([1, 5, 300]))
    assert by_rank.data[0].marker.colorbar.title.text == "rank of true match"
    assert list(by_rank.data[0].marker.color) == pytest.approx(np.log10([1, 5, 300]).tolist())


def test_modality_gap():
    rng = np.random.default_rng(0)
    emb = _unit(rng.normal(size=(50, 16)))
    gap = analysis.modality_gap(emb, emb)
    assert np.allclose(gap["paired"], 0) and gap["centroid_gap"] == pytest.approx(0)
    assert gap["random"].min() > 0
    shifted = analysis.modality_gap(emb, -emb)
    assert np.allclose(shifted["paired"], 2)


# ---------------------------------------------------------------- projection

def test_projection_is_cached_per_run_and_weights(trained_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir)
    path = projection.projection_path(run_dir, "pca")
    assert projection.compute(run_dir, "pca") == path and path.is_file()
    data = projection.load(path)
    n = len(json.loads((run_dir / "splits.json").read_text())["test"])
    assert data["xy"].shape == (2 * n, 2) and len(data["captions"]) == n and data["method"] == "pca"
    assert set(data["attributes"]) >= {"gender", "colour", "master_category", "pattern", "brand"}
    assert set(data["split"]) == {"test"} and len(data["rank_t2i"]) == n
    assert projection.projection_path(run_dir, "umap") != path
    wide = projection.MapSettings("pca", "all")
    whole = projection.load(projection.compute(run_dir, wide))
    splits = json.loads((run_dir / "splits.json").read_text())
    assert len(whole["captions"]) == 60 and {s: whole["split"].count(s) for s in ("train", "val", "test")} == {
        s: len(splits[s]) for s in ("train", "val", "test")}  # the whole catalogue, each item's split marked
    ranks = metrics.split_ranks(whole["image_embeds"], whole["text_embeds"], whole["captions"], "caption")
    assert whole["rank_t2i"].tolist() == ranks["text_to_image"].tolist()
    umap_a, umap_b = projection.MapSettings(n_neighbors=15), projection.MapSettings(n_neighbors=30)
    assert len({projection.projection_path(run_dir, s) for s in (umap_a, umap_b, wide, "pca")}) == 4  # keyed on all
    os.utime(run_dir / "best.safetensors", ns=(1, 1))  # new weights: a new key
    assert projection.projection_path(run_dir, "pca") != path


def test_project_falls_back_to_pca_on_few_points():
    xy, used = projection.project(np.random.default_rng(0).normal(size=(10, 5)), "umap")
    assert used == "pca" and xy.shape == (10, 2)
    assert projection.project(np.ones((1, 3)), "umap")[0].shape == (1, 2)


@pytest.mark.slow
def test_project_with_umap():
    xy, used = projection.project(np.random.default_rng(0).normal(size=(80, 8)), "umap")
    assert used == "umap" and xy.shape == (80, 2) and np.isfinite(xy).all()


# ---------------------------------------------------------------- map colours, filters, neighbours

def test_colour_names_are_drawn_in_their_own_colour():
    c = colours.colouring(["Blue", "White", "Navy Blue", "Off-White", "Dark Teal", "Unobtainium"] * 2, "colour")
    assert c.colours["Blue"] == colours.FASHION["blue"] and c.colours["Navy Blue"] == colours.FASHION["navy blue"]
    assert c.colours["Off-White"] == colours.FASHION["off white"] and c.colours["Dark Teal"] == colours.FASHION["teal"]
    assert c.colours["Unobtainium"] in colours.PALETTE  # an unknown name: a palette colour
    assert c.outlined == {"White", "Off-White"}  # light colours get an outline on the white plot
    r, g, b = (int(c.colours["Blue"][i:i + 2], 16) for i in (1, 3, 5))
    assert b > r and b > g
    same = colours.colouring(["Blue", "White"], "gender")  # not a colour column: palette colours
    assert same.colours["Blue"] in colours.PALETTE


def test_attribute_palette_never_repeats_and_groups_the_rest():
    values = [f"v{i:02d}" for i in range(40) for _ in range(40 - i)]  # 40 values, v00 most frequent
    c = colours.colouring(values, "brand", top_n=24)
    own = {k: v for k, v in c.colours.items() if k != colours.OTHER}
    assert len(own) == 24 and len(set(own.values())) == 24  # distinct colours
    assert set(own) == {f"v{i:02d}" for i in range(24)}  # the most frequent values
    assert c.colours[colours.OTHER] == colours.OTHER_COLOUR and c.labels.count(colours.OTHER) == sum(
        40 - i for i in range(24, 40))
    assert colours.colouring(["", "a"]).labels == ["(none)", "a"]


def _map_data():
    rng = np.random.default_rng(0)
    img, txt = _unit(rng.normal(size=(6, 4))), _unit(rng.normal(size=(6, 4)))
    return {"captions": list("abcdef"), "item_ids": [f"id{i}" for i in range(6)],
            "split": ["train", "test", "test", "val", "test", ""], "image_embeds": img, "text_embeds": txt,
            "attributes": {"colour": ["Blue", "Red", "Blue", "", "Red", "Blue"]},
            "rank_t2i": np.array([1, 3, 7, 12, 120, 1]), "rank_i2t": np.array([2, 1, 1, 1, 1, 60])}


def test_map_filters_and_counts():
    data = _map_data()
    assert mapview.facet_counts(data["attributes"]["colour"]) == {"Blue": 3, "Red": 2, "(none)": 1}
    assert mapview.rank_bin_counts(data["rank_t2i"]) == {"1": 2, "2-5": 1, "6-10": 1, "11-50": 1, "51-100": 0,
                                                         "over 100": 1}
    flt = mapview.MapFilter(facets={"colour": ["Blue", "(none)"]})
    assert flt.mask(data).tolist() == [True, False, True, True, False, True] and flt.active()
    flt = mapview.MapFilter(splits=["test"], rank_range=("2-5", "6-10"))
    assert flt.mask(data).tolist() == [False, True, True, False, False, False]
    flt = mapview.MapFilter(direction="image_to_text", rank_range=("over 100", "51-100"))
    assert flt.mask(data).tolist() == [False, False, False, False, False, True]
    assert not mapview.MapFilter().active() and mapview.MapFilter().mask(data).all()
    assert mapview.positions_of(data["item_ids"], ["id4", "nope", "id1", "id4"]) == [4, 1]


def test_neighbours_match_brute_force_and_mark_the_true_pair():
    data = _map_data()
    img, txt = data["image_embeds"], data["text_embeds"]
    nb = mapview.neighbours(img, txt, 2, k=3)
    assert [p for p, _ in nb.photos] == np.argsort(-(img @ txt[2]))[:3].tolist()
    assert [p for p, _ in nb.titles] == np.argsort(-(txt @ img[2]))[:3].tolist()
    assert nb.photo_rank == 1 + int(np.sum(img @ txt[2] > img[2] @ txt[2]))
    same = mapview.neighbours(img, img, 4, k=6)  # a perfect joint space: its own pair first
    assert same.photos[0][0] == 4 and same.photo_rank == 1 and same.title_rank == 1


def test_the_click_panel_ranks_as_the_map_colours():
    """The panel showed item-level ranks beside a caption-level map (Myntra item 2363: 1 on the map, 98 in the
    panel): both now come from the core under the map's ground truth."""
    rng = np.random.default_rng(3)
    n = 40
    captions = [f"Brand Men Shirt {j % 25}" for j in range(n)]  # 15 titles shared
    img = rng.normal(size=(n, 8)).astype(np.float32)
    txt = (img + 0.9 * rng.normal(size=(n, 8))).astype(np.float32)
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    ranks = metrics.split_ranks(img, txt, captions, "caption")  # what projection.compute stores for the map
    for item in range(n):
        nb = mapview.neighbours(img, txt, item, 3, captions)
        assert (nb.photo_rank, nb.title_rank) == (ranks["text_to_image"][item], ranks["image_to_text"][item])


# ---------------------------------------------------------------- catalogue embeddings, map settings

def test_catalogue_embeddings_file(trained_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir)
    for p in run_dir.glob("embeds_*.npz"):
        p.unlink()
    assert not embeds.ready(run_dir)
    path = embeds.compute(run_dir)
    assert embeds.ready(run_dir) and path == embeds.embeds_path(run_dir)
    data = embeds.load(path)
    splits = json.loads((run_dir / "splits.json").read_text())
    assert data["image"].shape[0] == data["text"].shape[0] == len(data["item_ids"]) == 60
    assert {s: data["split"].count(s) for s in ("train", "val", "test")} == {s: len(splits[s]) for s in splits}
    assert set(data["attributes"]) >= {"pattern", "brand", "colour"}
    from xmodal import load_run
    run = load_run(run_dir)
    np.testing.assert_allclose(data["image"], run.image_embeds.numpy(), atol=1e-6)
    assert data["images"] == [str(run.catalogue.image_path(i)) for i in range(60)]
    with np.load(path) as raw:  # photo paths relative to the catalogue folder, which is named once
        assert not any(Path(p).is_absolute() for p in raw["images"].tolist()) and "root" in raw.files
    path.write_bytes(path.read_bytes()[:100])  # damaged: removed, so the page starts the job again
    with pytest.raises(FileNotFoundError, match="computed again"):
        embeds.load(path)
    assert not embeds.ready(run_dir)
    os.utime(run_dir / "best.safetensors", ns=(1, 1))
    assert embeds.embeds_path(run_dir) != path  # new weights: a new key


def test_catalogue_embeddings_follow_a_moved_catalogue(trained_run, tiny_catalogue, tmp_path):
    """Photos stay found when the catalogue folder moves: the run's config names the new place."""
    cat = tmp_path / "cat"
    shutil.copytree(tiny_catalogue, cat)
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir)
    for p in run_dir.glob("embeds_*.npz"):
        p.unlink()
    config = json.loads((run_dir / "config.json").read_text())
    config["data"]["path"] = str(cat)
    (run_dir / "config.json").write_text(json.dumps(config))
    os.utime(run_dir / "best.safetensors")  # a fresh key: embedded from the copy
    from xmodal import load_run
    path = embeds.compute(run_dir, run=load_run(run_dir, data=str(cat)))
    moved = tmp_path / "moved"
    cat.rename(moved)
    config["data"]["path"] = str(moved)
    (run_dir / "config.json").write_text(json.dumps(config))
    data = embeds.load(path)
    assert all(Path(p).is_file() and Path(p).is_relative_to(moved) for p in data["images"])


def test_embeds_main_reports_through_its_task_file(trained_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir)
    assert embeds.main([str(run_dir)]) == 0
    assert tasks.read(run_dir, embeds.TASK)["state"] == "finished" and embeds.ready(run_dir)
    assert embeds.main([str(tmp_path / "nothing")]) == 1
    assert "best.safetensors" in tasks.read(tmp_path / "nothing", embeds.TASK)["error"]


def test_fine_tuned_runs_are_embedded_in_counted_chunks(monkeypatch, tmp_path):
    from types import SimpleNamespace

    import xmodal.models.embed as pipeline
    calls = []
    monkeypatch.setattr(pipeline, "embed_catalogue_images",
                        lambda model, cat, idx, device: calls.append(len(idx)) or torch.ones(len(idx), 4))
    run = SimpleNamespace(model=SimpleNamespace(image_input="pixels"), catalogue=[0] * 1100, device="cpu")
    progress = tasks.Progress(tmp_path, "embed", every_s=0)
    out = embeds._image_embeds(run, progress)
    assert out.shape == (1100, 4) and calls == [512, 512, 76]
    rec = tasks.read(tmp_path, "embed")
    assert (rec["done"], rec["total"]) == (1100, 1100) and rec["phase"].startswith("embedding the photos")


def test_map_settings_are_checked():
    assert projection.MapSettings().key() == "umap|test|15|0.100"
    assert projection.MapSettings("pca", "all", 99, 0.5).key() == "pca|all"  # UMAP's knobs do not change PCA
    for bad in ({"method": "tsne"}, {"scope": "train"}, {"n_neighbors": 1}, {"min_dist": 1.5}):
        with pytest.raises(ValueError):
            projection.MapSettings(**bad)
    assert projection.task_name("pca") == projection.task_name(projection.MapSettings("pca"))


def test_bench_map_measures_a_synthetic_map():
    from xmodal.dashboard.maps import bench_map
    out = bench_map.measure(4000, browser=False)
    assert out["points"] == 4000 and out["traces"] >= 2 * 16  # photos and titles of each of 16 colours
    assert out["build_s"] > 0 and out["json_mb"] > 0 and "first_draw_s" not in out
    data = bench_map.synthetic(10)
    assert data["xy"].shape == (10, 2) and len(data["captions"]) == 5


def test_find_in_titles():
    from xmodal.dashboard.maps import view as mapview
    titles = ["Roadster Men Navy Blue Shirt", "Nivora Women Red T-Shirt", "Kaveri Men Sweatshirt", "<b>Navy</b> Kurta"]
    assert mapview.find_in_titles(titles, "shirt") == [0, 1]
    assert mapview.find_in_titles(titles, "NAVY") == [0, 3]
    assert mapview.find_in_titles(titles, "navy shirt men") == [0]
    assert mapview.find_in_titles(titles, "  ,, ") == [0, 1, 2, 3]
    assert mapview.find_in_titles(titles, "dress") == []
