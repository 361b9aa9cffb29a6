"""Charts that do not exaggerate or shift (issue 21 §3), checked on the pages with AppTest: a run keeps its
colour whatever is chosen beside it; Compare's headline bars carry a 95 % interval that holds their number;
validation axes are anchored; loss functions of different models never share an axis; the slice table leads
with its run."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 120


def _app(catalogue: Path, page: str | None = None) -> AppTest:
    at = AppTest.from_file(str(REPO / "dashboard.py"), default_timeout=TIMEOUT)
    at.session_state["cat_source"] = "folder"
    at.session_state["cat_folder"] = str(catalogue)
    at.run()
    if page:
        at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _figure(at: AppTest, key: str) -> dict:
    """The plotly figure of the chart with widget key ``key`` (its spec as Streamlit sends it)."""
    for chart in at.get("plotly_chart"):
        if chart.proto.id.endswith(key) or key in chart.proto.id:
            return json.loads(chart.proto.spec)
    raise AssertionError(f"no chart {key}: {[c.proto.id for c in at.get('plotly_chart')]}")


def _colours(fig: dict) -> dict[str, set[str]]:
    """Run name -> the colours its traces are drawn in."""
    out: dict[str, set[str]] = {}
    for t in fig["data"]:
        colour = (t.get("marker") or {}).get("color") if t.get("type") == "bar" else (t.get("line") or {}).get("color")
        if isinstance(colour, str) and t.get("name"):
            out.setdefault(t["name"].removesuffix(" positive").removesuffix(" negative"), set()).add(colour)
    return out


@pytest.fixture
def eight(trained_run, tiny_catalogue, tmp_path_factory, monkeypatch) -> dict:
    from dashboard_runs import two_catalogues
    runs = two_catalogues(trained_run, tiny_catalogue, tmp_path_factory)
    monkeypatch.setenv("XMODAL_CHECKPOINTS", str(runs["root"]))
    return runs


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, copy_function=shutil.copy2, symlinks=True)
    config = json.loads((dst / "config.json").read_text())
    config["run_id"] = dst.name
    (dst / "config.json").write_text(json.dumps(config))
    return dst


def test_a_run_keeps_its_colour_whatever_is_chosen_beside_it(eight, tiny_catalogue):
    """demo-run2 was drawn in the palette's third colour beside two runs and in its first alone."""
    at = _app(tiny_catalogue, "pages/compare.py")
    assert at.multiselect(key="cmp_runs").value == ["demo-run0", "demo-run1", "demo-run2"]
    name = "cmpm-efficientnet · demo-run2"
    together = {key: _colours(_figure(at, key))[name] for key in ("cmp_bars", "cmp_slices")}
    at.multiselect(key="cmp_runs").set_value(["demo-run2"]).run()
    assert not at.exception
    alone = {key: _colours(_figure(at, key))[name] for key in ("cmp_bars", "cmp_slices")}
    assert together == alone and len(set().union(*alone.values())) == 1
    at.switch_page("pages/training.py").run()  # the same colour on another page
    at.multiselect(key="train_runs").set_value(["demo-run0", "demo-run2"]).run()
    assert not at.exception
    for key in ("loss_fig", "val_fig", "sim_fig"):
        assert _colours(_figure(at, key))[name] == alone["cmp_bars"], key
    at.multiselect(key="train_runs").set_value(["demo-run1", "demo-run2"]).run()
    assert _colours(_figure(at, "loss_fig"))[name] == alone["cmp_bars"]


def test_two_runs_of_one_colour_still_look_different():
    from xmodal.dashboard import plots
    names = [f"run-{i}" for i in range(60)]  # more runs than colours: some share one
    by_colour: dict[str, list[str]] = {}
    for n in names:
        by_colour.setdefault(plots.run_colour(n), []).append(n)
    shared = next(v for v in by_colour.values() if len(v) > 1)
    variants = plots.run_variants(shared)
    assert sorted(variants.values()) == list(range(len(shared)))  # a dash or pattern each
    assert plots.run_colour(shared[0]) == plots.run_colour(f"siamese · {shared[0]}")  # the id, not the label


def test_compare_headline_bars_carry_intervals_that_hold_their_numbers(eight, tiny_catalogue, tmp_path, monkeypatch):
    """A run without ``ci95`` (written before intervals were recorded) had no error bars; a run whose test.json
    numbers moved (demo-run1, shifted by the fixture) had bars whose interval did not contain them."""
    ckpt = tmp_path / "ckpt"
    old = _copy(eight["root"] / "demo-run0", ckpt / "old-run")
    test = json.loads((old / "test.json").read_text())
    del test["ci95"]
    (old / "test.json").write_text(json.dumps(test))
    _copy(eight["root"] / "demo-run1", ckpt / "demo-run1")
    monkeypatch.setenv("XMODAL_CHECKPOINTS", str(ckpt))
    at = _app(tiny_catalogue, "pages/compare.py")
    at.multiselect(key="cmp_runs").set_value(["old-run", "demo-run1"]).run()
    assert not at.exception
    fig = _figure(at, "cmp_bars")
    bars = [t for t in fig["data"] if t.get("type") == "bar"]
    assert len(bars) == 4
    for t in bars:
        err = t.get("error_y") or {}
        recall = "R@" in t["x"][0]
        for y, up, down in zip(t["y"], err.get("array") or [None] * len(t["y"]),
                               err.get("arrayminus") or [None] * len(t["y"])):
            if recall or up is not None:
                assert up is not None and down is not None and up >= 0 and down >= 0, (t["name"], t["x"], err)
    table = at.dataframe[0].value.set_index("run")
    assert "[" in table.loc["cmpm-efficientnet · old-run", "t2i R@1"]  # the table's cells carry the same interval
    assert any("bootstrap over the test queries" in c.value for c in at.caption)


def test_validation_axes_are_anchored(eight, tiny_catalogue):
    at = _app(tiny_catalogue, "pages/training.py")
    fig = _figure(at, "val_fig")
    layout = fig["layout"]
    axes = {k: v for k, v in layout.items() if k.startswith("yaxis")}
    titles = [a["text"] for a in layout["annotations"]]
    assert len(axes) == 8 and len(titles) == 8
    for i, title in enumerate(titles, start=1):
        axis = axes["yaxis" if i == 1 else f"yaxis{i}"]
        if "R@" in title:
            assert axis.get("range") == [0, 100], (title, axis)
        else:  # median rank: from 0, never a zoom into the last few ranks
            assert axis.get("range") and axis["range"][0] == 0, (title, axis)
    sim = _figure(at, "sim_fig")["layout"]["yaxis"]
    assert sim.get("range") and sim["range"][0] <= 0 and sim["range"][1] >= 1


def test_loss_functions_of_different_models_never_share_an_axis(eight, tiny_catalogue, tmp_path, monkeypatch):
    ckpt = tmp_path / "ckpt"
    _copy(eight["root"] / "demo-run0", ckpt / "demo-run0")
    other = _copy(eight["root"] / "demo-run1", ckpt / "infonce-run")
    config = json.loads((other / "config.json").read_text())
    config["model"] = "infonce-efficientnet"
    (other / "config.json").write_text(json.dumps(config))
    rows = [json.loads(x) for x in (other / "metrics.jsonl").read_text().splitlines() if x.strip()]
    for r in rows:
        if r.get("kind") == "step":
            terms = {k: r.pop(k) for k in list(r) if k not in ("kind", "epoch", "step", "global_step", "lr", "time",
                                                                "loss")}
            r["infonce"] = sum(terms.values()) * 3.0  # another function, on another scale
            r["loss"] = r["infonce"]
    (other / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setenv("XMODAL_CHECKPOINTS", str(ckpt))
    at = _app(tiny_catalogue, "pages/training.py")
    at.multiselect(key="train_runs").set_value(["demo-run0", "infonce-run"]).run()
    assert not at.exception
    fig = _figure(at, "loss_fig")
    on_axis: dict[str, set[str]] = {}
    for t in fig["data"]:
        on_axis.setdefault(t.get("yaxis", "y"), set()).add(t["name"])
    assert len(on_axis) >= 3 and all(len(names) == 1 for names in on_axis.values()), on_axis
    titles = [a["text"] for a in fig["layout"]["annotations"]]
    assert "loss = infonce" in titles and any(t.startswith("loss = ") and "cmpm" in t for t in titles), titles


def test_the_slice_table_leads_with_its_run(eight, tiny_catalogue):
    at = _app(tiny_catalogue, "pages/compare.py")
    table = next(d.value for d in at.dataframe if "small" in d.value.columns)
    assert table.columns[0] == "run" and set(table["run"]) == {f"cmpm-efficientnet · demo-run{i}" for i in range(3)}
