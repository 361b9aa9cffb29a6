"""Compare page: the chosen runs of one catalogue side by side (table and grouped bars of R@1/5/10 and median
rank, both directions), metrics per slice with their uncertainty, each run's named failure clusters and which
of them another run fixes, each run's hubs, and the test queries on which two chosen runs disagree most, with
their config differences."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from xmodal.dashboard import (analysis, catalogues, failures_view, hubs_view, pickers, plots, runmeta, slices, state,
                               ui)
from xmodal.dashboard.maps import embeds
from xmodal.dashboard.escape import md
from xmodal.evaluation.protocols import FIXED_GALLERY, FIXED_REPS

METRICS = ["R@1", "R@5", "R@10", "median_rank"]
DIRECTION_NAMES = {"text_to_image": "text → image", "image_to_text": "image → text"}

pickers.hold_url()  # a URL opened on a freshly started server keeps its view
ui.page_guard("pages/compare.py")
st.title("Compare")
runs = ui.finished_runs()
if not runs:
    ui.no_runs_hint("the Compare page")
    st.stop()

cat, group = pickers.catalogue_picker(runs)
metrics_of = lambda r: state.metrics(r.path)  # noqa: E731
c1, c2 = st.columns([4, 1])
with c1:
    chosen = pickers.runs_picker(cat, group, key="cmp_runs", label="Runs to compare",
                                 default=catalogues.default_runs(group, metrics_of),
                                 help="Collapsed or failed runs (⚠) are offered but not chosen unasked")
gt = pickers.url_widget(c2.radio, "cmp_gt", pickers.choice(["caption", "item"]), "caption", "Ground truth",
                       ["caption", "item"], horizontal=True,
                       help="caption: items with identical titles all count as correct; item: only the item's own pair")
if not chosen:
    st.info("Pick the runs to compare above (every run of this catalogue is unfit by default: see the ⚠ notes).")
    st.stop()
if all(analysis.recall_table_coincides(r.test) for r in chosen):
    st.caption("On this catalogue's test split no two items share a title, so caption- and item-level numbers are "
               "the same.")
table = analysis.test_metrics_table(chosen, gt).drop(columns=["catalogue"])
shown = analysis.with_intervals(table)
st.dataframe(shown, hide_index=True, key="cmp_table",
             column_order=[c for c in shown.columns if c not in ("model", "interval")],
             column_config={
                 "rsum": st.column_config.NumberColumn(format="%.1f", width=62),
                 "dedup gallery": st.column_config.NumberColumn(width=62),
                 "gallery": st.column_config.NumberColumn(width=62),
                 "run": st.column_config.TextColumn(pinned=True, width="medium")})
sources = analysis.interval_sources(table) or "none recorded"
st.caption(f"Test split of {md(catalogues.describe(group))} ({gt}-level ground truth), weights chosen on validation "
           f"rsum. Recall in %, with its 95% interval in brackets and as the bars' error bars ({md(sources)}); "
           "median rank is 1-based (1 = the true match is usually first). The backbone column says where each run's "
           "image weights came from. Each run keeps its colour on every chart. The proxies for products nobody has "
           "seen: dedup keeps one product per distinct title (its gallery size beside it), and "
           f"{analysis.FIXED_COLUMN} is rsum in galleries of {FIXED_GALLERY} of those products ({FIXED_REPS} "
           "seeded galleries), which compares across catalogues and splits of any size.")
st.plotly_chart(plots.metric_bars(table), key="cmp_bars")
if len(chosen) >= 2:
    st.subheader("Is the difference real?")
    pairs = analysis.paired_table(chosen, gt)
    st.dataframe(pairs, hide_index=True, key="cmp_pairs")
    st.caption("First run minus second, on the same test queries: a paired bootstrap (1000 resamples of the "
               "queries). \"inside the noise\" when the 95% interval of the difference contains 0: do not rank "
               "those two runs on this number. It covers the test queries, not the training seed: two seeds of one "
               "recipe can differ too, so compare recipes over seeds (xmodal.evaluation.report).")

st.header("Slices and disagreements", divider="gray")
dirs = [r.path for r in chosen]


@st.fragment(run_every=2)
def _wait_for_embeddings() -> None:
    if ui.background_work("Embedding the chosen runs' catalogue (photos and titles)", dirs, embeds.TASK,
                          lambda: state.embeddings_ready(dirs), lambda: embeds.start(dirs), "cmp_embeds"):
        st.rerun(scope="app")


if not state.embeddings_ready(dirs):
    _wait_for_embeddings()
    st.stop()
data = state.compare_ranks(dirs, gt)
labels = {str(r.path): analysis.run_label(r) for r in chosen}
st.caption(f"{len(data['item_ids'])} test items shared by {len(chosen)} run(s); ranks are {gt}-level.")

st.subheader("Metrics per slice")
attrs = slices.slice_attributes(data["attributes"])
if not attrs:
    st.info("This catalogue has no attribute columns to slice by.")
else:
    c1, c2 = st.columns(2)
    attr = pickers.url_widget(c1.selectbox, "cmp_attr", pickers.choice(attrs), attrs[0], "Slice by", attrs)
    metric = pickers.url_widget(c2.selectbox, "cmp_metric", pickers.choice(METRICS), "R@10", "Metric", METRICS)
    table = slices.runs_slice_table({labels[d]: data["ranks"][d] for d in labels if data["ranks"].get(d)},
                                    {attr: data["attributes"][attr]})
    st.plotly_chart(plots.slice_figure(table, metric), key="cmp_slices")
    small = sorted({v for v, s in zip(table.get("value", []), table.get("small", [])) if s})
    st.caption(f"Bars show the 95% interval (Wilson for recall, bootstrap for the median rank). Slices of fewer "
               f"than {slices.MIN_N} test queries (*, pale) come last and are not ranked"
               + (f": {md(', '.join(small))}." if small else "."))
    with st.expander("Slice table, and a slice on the map"):
        st.dataframe(table, hide_index=True, key="cmp_slice_table", column_config={
            "small": st.column_config.CheckboxColumn(help=f"fewer than {slices.MIN_N} queries")})
        values = list(dict.fromkeys(table["value"])) if len(table) else []
        if values:
            c1, c2 = st.columns([3, 1], vertical_alignment="bottom")
            value = c1.selectbox("Slice", values, key="cmp_slice_value")
            items = [x for x, v in zip(data["item_ids"], data["attributes"][attr]) if v == value]
            with c2:
                pickers.locate_link(chosen[0], items, f"{attr} = {value}", scope="test", label="Show on the map",
                                    ground_truth=gt)

st.subheader("Failure clusters")
failures_view.section(cat, chosen, data, gt)
st.subheader("Hubs")
hubs_view.section(chosen, catalogues.catalogue_id(chosen[0].config).name)

st.subheader("Where two runs disagree most")
if len(chosen) < 2:
    st.info("Choose at least two runs above to see where they disagree.")
    st.stop()
pair = sorted(chosen, key=catalogues.rsum, reverse=True)[:2]
c1, c2, c3 = st.columns([2, 2, 1])
with c1:
    run_a = pickers.run_select(cat, chosen, key="cmp_a", label="Run A", default=pair[0])
with c2:
    run_b = pickers.run_select(cat, [r for r in chosen if r.run_id != run_a.run_id] or chosen, key="cmp_b",
                               label="Run B", default=pair[1])
direction = pickers.url_widget(c3.radio, "cmp_dir", pickers.choice(list(analysis.DIRECTIONS)), "text_to_image",
                               "Queries", list(analysis.DIRECTIONS), format_func=DIRECTION_NAMES.get)
with st.expander("Config differences between A and B"):
    diff = runmeta.config_diff(run_a.config, run_b.config)
    if diff:
        st.dataframe(pd.DataFrame(diff).rename(columns={"a": "A", "b": "B"}), hide_index=True, key="cmp_diff")
    else:
        st.caption("Same settings (they differ only in run id and time).")
top = pickers.url_widget(st.slider, "cmp_top", pickers.number(3, 30, integer=True), 8, "Queries shown", 3, 30)
dis = analysis.disagreements({"A": data["ranks"][str(run_a.path)][direction],
                              "B": data["ranks"][str(run_b.path)][direction]}, top)
if dis.empty:
    st.info("The two runs put every true match at the same rank.")
    st.stop()
st.caption(f"Rank of the true match (1 = first) under A = {md(analysis.run_label(run_a))} and B = "
           f"{md(analysis.run_label(run_b))}, sorted by how far apart they are (on a log scale). Select a row to "
           "locate it on the map.")
rows = pd.DataFrame({"photo": [state.thumbnail(data["images"][q]) for q in dis.index],
                     "title": [data["captions"][q] for q in dis.index],
                     "item": [data["item_ids"][q] for q in dis.index],
                     "A": dis["A"].astype(int).tolist(), "B": dis["B"].astype(int).tolist()})
event = st.dataframe(rows, hide_index=True, row_height=70, height=40 + 70 * len(rows), key="cmp_disagree",
                     on_select="rerun", selection_mode="single-row", column_config={
                         "photo": st.column_config.ImageColumn("photo", width="small"),
                         "item": st.column_config.TextColumn("item", width="small"),
                         "A": st.column_config.NumberColumn("rank A", width="small"),
                         "B": st.column_config.NumberColumn("rank B", width="small")})
picked = event.selection.rows if event else []
if picked:
    item = rows["item"].iloc[picked[0]]
    pickers.locate_link(run_a, [item], f"item {item}", scope="test", label="Show on the map", ground_truth=gt)
from xmodal.dashboard.explain_view import disagreement_why  # noqa: E402
disagreement_why({str(r.path): f"{ab}: {analysis.run_label(r)}" for ab, r in (("A", run_a), ("B", run_b))},
                 data, list(dis.index), direction)
