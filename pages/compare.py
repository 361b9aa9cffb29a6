"""Compare page: every finished run side by side (table and grouped bars of R@1/5/10 and median rank,
both directions), metrics per catalogue slice, and the test queries on which the models disagree most."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from xmodal.dashboard import analysis, checks, plots, state, ui
from xmodal.dashboard.escape import md

ui.page_guard("pages/compare.py")
st.title("Compare")
runs = ui.finished_runs()
if not runs:
    ui.no_runs_hint("the Compare page")
    st.stop()

gt = st.radio("Ground truth", ["caption", "item"], horizontal=True, key="cmp_gt",
              help="caption: items with identical titles all count as correct; item: only the item's own pair")
table = analysis.test_metrics_table(runs, gt)
fmt = {c: st.column_config.NumberColumn(format="%.1f") for c in table.columns if "R@" in c or c == "rsum"}
st.dataframe(table, hide_index=True, column_config=fmt, key="cmp_table")
st.caption("Test split of each run's catalogue, weights chosen on validation rsum. Recall in %; median rank is "
           "1-based (1 = the true match is usually first).")
st.plotly_chart(plots.metric_bars(table), key="cmp_bars")

st.header("Slices and disagreements", divider="gray")
by_catalogue: dict[str, list] = {}
for r in runs:
    by_catalogue.setdefault((r.config.get("data") or {}).get("fingerprint", "?"), []).append(r)
keys = list(by_catalogue)
if len(keys) > 1:
    key = st.selectbox("Runs trained on", keys, key="cmp_cat", format_func=lambda k: (
        f"{analysis.catalogue_label(by_catalogue[k][0].config)} ({len(by_catalogue[k])} runs, {k})"))
else:
    key = keys[0]
group = by_catalogue[key]
labels = {str(r.path): analysis.run_label(r) for r in group}
models = {analysis.run_label(r): r.model for r in group}
ui.load_pytorch()  # ranking needs the models: the table and bars above draw before PyTorch loads
from xmodal.search import RunError  # noqa: E402
try:
    data = state.compare_ranks([r.path for r in group], gt)
except (RunError, *checks.LOAD_ERRORS) as err:
    st.error(md(f"Cannot rank these runs' test queries: {err}"), icon=":material/error:")
    st.stop()
n_queries = len(data["item_ids"])
st.caption(f"{n_queries} test items shared by {len(group)} run(s) on "
           f"{md(analysis.catalogue_label(group[0].config))}; ranks are {gt}-level.")

st.subheader("Metrics per slice")
attrs = [a for a in analysis.SLICE_ATTRIBUTES if any(data["attributes"].get(a, []))]
if not attrs:
    st.info("This catalogue has no category, colour or gender columns to slice by.")
else:
    c1, c2 = st.columns(2)
    attr = c1.selectbox("Slice by", attrs, key="cmp_attr")
    metric = c2.selectbox("Metric", ["R@1", "R@5", "R@10", "median_rank"], index=2, key="cmp_metric")
    parts = [analysis.slice_metrics(data["ranks"][d], {attr: data["attributes"][attr]}).assign(run=labels[d])
             for d in labels if data["ranks"].get(d)]
    slices = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    st.plotly_chart(plots.slice_figure(slices, metric), key="cmp_slices")
    with st.expander("slice table"):
        st.dataframe(slices, hide_index=True, key="cmp_slice_table")

st.subheader("Where the models disagree most")
direction = st.radio("Queries", list(analysis.DIRECTIONS), horizontal=True, key="cmp_dir",
                     format_func=lambda d: {"text_to_image": "text → image", "image_to_text": "image → text"}[d])
if len(group) < 2:
    st.info("Needs at least two finished runs on the same catalogue.")
    st.stop()
top = st.slider("Queries shown", 3, 30, 8, key="cmp_top")
dis = analysis.disagreements({labels[d]: data["ranks"][d][direction] for d in labels if data["ranks"].get(d)}, top)
if dis.empty:
    st.info("The models put every true match at the same rank.")
    st.stop()
st.caption("Rank of the true match under each model (1 = first); queries sorted by the spread between the best "
           "and the worst model (on a log scale).")
names = [c for c in dis.columns if c != "spread"]
short = {n: models[n] if list(models.values()).count(models[n]) == 1 else n for n in names}
table = pd.DataFrame({"photo": [state.thumbnail(data["images"][q]) for q in dis.index],
                      "title": [data["captions"][q] for q in dis.index],
                      "item": [data["item_ids"][q] for q in dis.index],
                      **{short[n]: dis[n].astype(int).tolist() for n in names}})
st.dataframe(table, hide_index=True, row_height=70, height=40 + 70 * len(table), key="cmp_disagree", column_config={
    "photo": st.column_config.ImageColumn("photo", width="small"),
    "item": st.column_config.TextColumn("item", width="small"),
    **{short[n]: st.column_config.NumberColumn(short[n], help=f"rank of the true match under {md(n)}")
       for n in names}})
