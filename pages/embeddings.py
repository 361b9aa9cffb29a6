"""Embeddings page: a 2-D map (UMAP) of one run's joint space on its test split, photos and titles in one
map with a line joining each product's two points; box or lasso selection shows the chosen products;
and the modality gap (paired vs random distances)."""
from __future__ import annotations

import streamlit as st

from xmodal.dashboard import analysis, checks, jobs, plots, projection, state, ui
from xmodal.dashboard.escape import md

ui.page_guard("pages/embeddings.py")
st.title("Embeddings")
runs = ui.runs_with_weights()
if not runs:
    ui.no_runs_hint("the Embeddings page")
    st.stop()

c1, c2 = st.columns([2, 1])
with c1:
    run = ui.run_picker(runs, key="emb_run")[0]
method = c2.radio("Map", ["umap", "pca"], horizontal=True, key="emb_method",
                  help="UMAP keeps neighbourhoods (first use compiles numba, ~20 s); PCA is instant but linear")
path = projection.projection_path(run.path, method)


def _compute_inline() -> None:
    """Small test splits (PCA, or too few points for UMAP) are mapped here and now."""
    ui.load_pytorch()  # only here: a map cached in the run folder is drawn without PyTorch
    from xmodal.search import RunError
    try:
        with st.spinner("Mapping the test split..."):
            projection.compute(run.path, method, run=state.run(run.path))
    except (RunError, *checks.LOAD_ERRORS) as err:
        st.error(md(f"Cannot map {run.run_id}: {err}"), icon=":material/error:")
        st.stop()


@st.fragment(run_every=2)
def _wait_for_map() -> None:
    """Polls the projection subprocess; reruns the page once the map is on disk."""
    if path.is_file():
        st.rerun(scope="app")
    if error := jobs.projection_error(run.path, method):
        st.error(f"The projection failed: {md(error)}. PCA (above) needs no subprocess.", icon=":material/error:")
        if st.button("Try again", key="emb_retry"):
            jobs.start_projection(run.path, method)
        return
    if not jobs.projection_running(run.path, method):
        jobs.start_projection(run.path, method)
    st.info(f"Computing the {method.upper()} map of {md(run.run_id)}'s test split in the background (the first UMAP "
            "compiles numba code: ~20-60 s). It is cached in the run folder, so later visits are instant.",
            icon=":material/hourglass_top:")


if not path.is_file():
    n_test = len(state.test_split_ids(run.path))
    if method == "pca" or 2 * n_test < projection.UMAP_MIN_POINTS:
        _compute_inline()
    else:
        _wait_for_map()
        st.stop()

data = state.load_projection(path)
captions = data["captions"]
n = len(captions)
attrs = [a for a in analysis.SLICE_ATTRIBUTES if any(data["attributes"].get(a, []))]
c1, c2 = st.columns([2, 1])
colour = c1.selectbox("Colour by", ["modality", *attrs], key="emb_colour")
lines = c2.checkbox("Join each product's photo and title", value=True, key="emb_lines")
groups = None if colour == "modality" else data["attributes"][colour]
st.caption(f"{n} test products of {md(run.run_id)}: circles are photos, crosses are titles "
           f"({md(data['method'].upper())}, cosine). Drag a box or lasso (toolbar) to list the products inside it.")
fig = plots.projection_figure(data["xy"], captions, groups, lines=lines, method=data["method"])
event = st.plotly_chart(fig, on_select="rerun", selection_mode=("box", "lasso"), key=f"emb_map_{run.run_id}")
chosen = analysis.selected_items(event.selection.points if event else [], n)
if chosen:
    st.subheader(f"{len(chosen)} selected product(s)")
    shown = chosen[:36]
    ui.product_grid([data["images"][i] for i in shown], [captions[i] for i in shown])
    if len(chosen) > len(shown):
        st.caption(f"... and {len(chosen) - len(shown)} more")

st.header("Modality gap", divider="gray")
gap = analysis.modality_gap(data["image_embeds"], data["text_embeds"])
c = st.columns(3)
c[0].metric("Paired distance (mean)", f"{gap['paired'].mean():.3f}")
c[1].metric("Random-pair distance (mean)", f"{gap['random'].mean():.3f}")
c[2].metric("Centroid gap", f"{gap['centroid_gap']:.3f}")
st.plotly_chart(plots.gap_figure(gap), key="emb_gap")
st.caption("Distance between each product's photo and title embeddings, against photos paired with random "
           "titles. A good joint space puts pairs much closer than random; the centroid gap is the distance "
           "between the mean photo and the mean title (a large one means the two modalities sit apart).")
