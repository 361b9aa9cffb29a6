"""Embeddings page: a 2-D map (UMAP or PCA) of one run's joint space, its test split or its whole catalogue,
photos and titles in one WebGL map; colour by modality, split, an attribute or the rank of each item's true
match; filter by facets and rank ranges; click a point for its photo and nearest neighbours; box or lasso
to list, save or export products; items located from other pages ringed; and the modality gap. The *Over
training* view plays the run's per-epoch snapshots as one aligned map, with each epoch's validation metrics."""
from __future__ import annotations

import numpy as np
import streamlit as st

from xmodal.dashboard import analysis, catalogues, pickers, plots, slices, state, ui
from xmodal.dashboard.maps import colours, figure as mapplot, panels as mapui, view as mapview, projection
from xmodal.dashboard.maps import trajectory_view
from xmodal.dashboard.escape import md

VIEWS = {"space": "The joint space", "training": "Over training (epoch by epoch)"}
RANK_COLOURS = {"rank: title → photo": "text_to_image", "rank: photo → title": "image_to_text"}

pickers.hold_url()  # a URL opened on a freshly started server keeps its view
ui.page_guard("pages/embeddings.py")
st.title("Embeddings")
runs = ui.runs_with_weights()
if not runs:
    ui.no_runs_hint("the Embeddings page")
    st.stop()

pickers.open_view("emb_", also=(pickers.FOCUS, pickers.FOCUS_LABEL))  # opened bare: this session's last map
cat, group = pickers.catalogue_picker(runs)
best = catalogues.default_runs(group, lambda r: state.metrics(r.path), limit=1)
view = pickers.url_widget(st.radio, "emb_view", pickers.choice(VIEWS), "space", "View", list(VIEWS),
                          format_func=VIEWS.get, horizontal=True, label_visibility="collapsed")
over_training = view == "training"  # its own projection, PCA first: docs/quality.md, the joint space over training
c1, c2, c3, c4 = st.columns([3, 2, 1, 1.4])
with c1:
    run = pickers.run_select(cat, group, key=pickers.MAP_RUN, default=best[0] if best else None)
if over_training:  # the run's snapshots over epochs; no scope (they are validation products)
    scope = None
else:
    scope = pickers.url_widget(c2.radio, pickers.MAP_SCOPE, pickers.choice(projection.SCOPES,
                               projection.SCOPE_NAMES), "test", "Points", list(projection.SCOPES), horizontal=True,
                               format_func=projection.SCOPE_NAMES.get,
                               help="the whole catalogue marks each item's split (train / val / test) in its hover "
                                    "and filters")
method = pickers.url_widget(c3.radio, "emb_traj_method" if over_training else "emb_method",
                            pickers.choice(projection.METHODS), "pca" if over_training else "umap", "Map",
                            list(projection.METHODS), horizontal=True, help="UMAP keeps neighbourhoods; PCA is "
                            "instant but linear")
gt = pickers.url_widget(c4.radio, pickers.MAP_GT, pickers.choice(projection.GROUND_TRUTHS), "caption",
                        "Ground truth", list(projection.GROUND_TRUTHS), horizontal=True,
                        help="what counts as an item's true match in every rank on this page (colours, filters, "
                             "the clicked product): caption, any product with the identical title; item, only its "
                             "own photo or title")
if over_training:
    trajectory_view.draw(run, method, gt)
    st.stop()
with st.expander("UMAP settings", icon=":material/tune:"):
    u1, u2 = st.columns(2)
    neighbours = pickers.url_widget(u1.slider, "emb_nn", pickers.number(2, 100, integer=True), 15, "Neighbours", 2,
                                    100, disabled=method != "umap", help="how many neighbours each point looks at: "
                                    "larger keeps more of the global layout")
    min_dist = pickers.url_widget(u2.slider, "emb_md", pickers.number(0.0, 0.95, step=0.05), 0.1,
                                  "Minimum distance", 0.0, 0.99, step=0.05, disabled=method != "umap",
                                  help="how tightly points may pack: small makes tight clumps")
    st.caption("Each setting's map is computed once in the background and cached in the run folder.")
settings = projection.MapSettings(method, scope, neighbours, min_dist)
path = projection.projection_path(run.path, settings)
INLINE_ITEMS = 3000  # a PCA map of at most this many items is computed in the page (a second at most)


def _inline_ok() -> bool:
    """A PCA map (or one too small for UMAP) of a few items, from embeddings on disk: quick enough here."""
    emb = state.embeddings(run.path)
    if emb is None:
        return False
    n = len(projection.mapped_positions(emb["split"], scope))
    return n <= INLINE_ITEMS and (method == "pca" or 2 * n < projection.UMAP_MIN_POINTS)


@st.fragment(run_every=2)
def _wait_for_map() -> None:
    what = f"Computing the {method.upper()} map of the {'whole catalogue' if scope == 'all' else 'test split'}"
    if ui.background_work(what, [run.path], projection.task_name(settings), path.is_file,
                          lambda: projection.start([run.path], settings), "emb_map_job"):
        st.rerun(scope="app")


if not path.is_file():
    if _inline_ok():
        with st.spinner("Mapping..."):
            projection.compute(run.path, settings)
    else:
        _wait_for_map()
        st.stop()

try:
    data = state.load_projection(path)
except FileNotFoundError:  # its embeddings file went (damaged, or deleted): compute both again
    path.unlink(missing_ok=True)
    st.rerun()
n = len(data["captions"])
attrs = slices.slice_attributes(data["attributes"])
c1, c2 = st.columns([2, 1])
options = ["modality", *(["split"] if scope == "all" else []), *RANK_COLOURS, *attrs]
colour_by = pickers.url_widget(c1.selectbox, "emb_colour", pickers.choice(options), "modality", "Colour by", options)
lines = pickers.url_widget(c2.checkbox, "emb_lines", pickers.flag(), n <= 2000, "Join each product's photo and title",
                           disabled=n > mapplot.MAX_LINES, help=f"up to {mapplot.MAX_LINES:,} products")
flt = mapui.filters(data, attrs, scope, gt)
keep = flt.mask(data)

focus_ids, focus_label = pickers.focus_from_url()
ring = mapview.positions_of(data["item_ids"], focus_ids)
if focus_ids:
    f1, f2 = st.columns([4, 1], vertical_alignment="center")
    f1.info(f"Located {len(ring)} of {len(focus_ids)} item(s) ({md(focus_label or 'from a link')}): ringed in black."
            + ("" if ring else " None of them is on this map (another split or run?)."), icon=":material/location_on:")
    if f2.button("Clear", key="emb_focus_clear"):
        pickers.clear_focus()
        st.rerun()
    mapui.located_ranks(data, ring, scope, gt)
slice_dir = slices.slices_folder(run.path, catalogues.catalogue_id(run.config).fingerprint)  # the catalogue's
ring = ring + mapui.saved_slices(run.path, data["item_ids"], data["captions"], folder=slice_dir)

colouring, ranks = None, None
if colour_by in RANK_COLOURS:
    ranks = mapview.ranks_of(data, RANK_COLOURS[colour_by], gt)
elif colour_by == "split":
    colouring = colours.colouring(data["split"], "split")
elif colour_by != "modality":
    colouring = colours.colouring(data["attributes"][colour_by], colour_by)
kept = f"; the filter keeps {int(keep.sum()):,}" if flt.active() else ""
badge = catalogues.state_badge(run)
st.caption(f"{n:,} products of {md(run.run_id)}{f' ({md(badge)})' if badge else ''} "
           f"({md(catalogues.describe(group))}): circles are photos, crosses are titles "
           f"({md(data['method'].upper())}, cosine){kept}. Ranks are {gt}-level among the {n:,} products of this map "
           f"({projection.SCOPE_NAMES[scope]}). Hover a point for its photo, click it for its nearest neighbours; pick "
           "Box or Lasso Select in the toolbar and drag to list products.")
chart = f"emb_map_{projection.task_name(settings)}_{run.run_id}"
clicked, chosen = mapui.chart_selection(chart, n)
drawn_from = (colour_by, gt, bool(lines), np.packbits(keep).tobytes(), tuple(ring))  # what the figure shows
clicked, selected = mapui.point_in_url(data["item_ids"], chart, clicked, chosen, drawn_from)
fig = mapplot.map_figure(data["xy"], data["captions"], colouring=colouring, ranks=ranks, keep=keep, highlight=ring,
                         lines=lines and n <= mapplot.MAX_LINES, method=data["method"], hover=n <= 50_000,
                         rank_title=f"rank of the true match\n{mapview.gallery_words(n, scope, gt)}",
                         selected=selected)
st.plotly_chart(fig, on_select="rerun", selection_mode=("points", "box", "lasso"), key=chart)
mapui.hover_photos(run.path, path, projection.task_name(settings), data)
if clicked is not None:
    mapui.point_details(data, clicked, scope=scope, ground_truth=gt)
elif chosen:
    mapui.selection(slice_dir, data, chosen)
    from xmodal.dashboard.maps.export_view import selection_download  # noqa: E402
    selection_download(run.run_id, data, chosen)

st.header("Modality gap", divider="gray")
gap = analysis.modality_gap(data["image_embeds"], data["text_embeds"])
mapui.gap_metrics(gap)
st.plotly_chart(plots.gap_figure(gap), key="emb_gap")
st.caption("Distance between each product's photo and title embeddings, against photos paired with random "
           "titles. A good joint space puts pairs much closer than random; the centroid gap is the distance "
           "between the mean photo and the mean title (a large one means the two modalities sit apart).")
