"""The Embeddings page's panels: map filters with counts, a clicked point's photo and nearest neighbours in
both modalities, a box/lasso selection (paged, saved as a named slice, exported as CSV), and saved slices.

The logic is in ``mapview`` and ``slices``; this module draws. Titles, ids, attribute values and slice
names are catalogue or user text: Markdown gets them through ``escape.md``, widgets and cells show them as
plain text, photos go through ``ui.photo`` (bytes).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import streamlit as st

from . import hover, sprite_job, sprites, view as mapview
from .projection import SCOPE_NAMES
from .. import pickers, slices, ui
from ..analysis import selected_items
from ..escape import md
from ..jobs import tasks

PAGE_SIZE = 24  # products per page of a selection
NEIGHBOURS = 8
POINT = "emb_point"  # the URL parameter of the clicked product (its item id)


def filters(data: dict, attrs: Sequence[str], scope: str, ground_truth: str = "caption") -> mapview.MapFilter:
    """Facet, split and rank-range filters, each option with its item count, each in the URL (``emb_f_...``);
    returns the filter chosen. The rank range reads the ranks under ``ground_truth``."""
    flt = mapview.MapFilter(ground_truth=ground_truth)
    with st.expander("Filter the map (attributes, split, rank of the true match)", icon=":material/filter_alt:"):
        cols = st.columns(3)
        for i, attr in enumerate(attrs):
            counts = mapview.facet_counts(data["attributes"][attr])
            flt.facets[attr] = pickers.url_widget(
                cols[i % 3].multiselect, f"emb_f_{attr}", pickers.choices(list(counts)), [], attr, list(counts),
                format_func=lambda v, c=counts: f"{v} ({c[v]:,})", placeholder="any", always=False)
        if scope == "all":
            counts = mapview.facet_counts(data["split"])
            flt.splits = pickers.url_widget(cols[len(attrs) % 3].multiselect, "emb_f_split",
                                            pickers.choices(list(counts)), [], "split", list(counts),
                                            placeholder="any", format_func=lambda v: f"{v} ({counts[v]:,})",
                                            always=False)
        c1, c2 = st.columns([1, 3])
        flt.direction = pickers.url_widget(c1.radio, "emb_f_dir", pickers.choice(list(mapview.DIRECTION_OF)),
                                           "text_to_image", "Rank of the true match, for",
                                           list(mapview.DIRECTION_OF), format_func=mapview.DIRECTION_NAMES.get,
                                           always=False)
        counts = mapview.rank_bin_counts(mapview.ranks_of(data, flt.direction, ground_truth))
        every = (mapview.RANK_LABELS[0], mapview.RANK_LABELS[-1])
        first, last = pickers.url_widget(c2.select_slider, "emb_f_rank", pickers.span(mapview.RANK_LABELS), every,
                                         "Rank range", list(mapview.RANK_LABELS),
                                         value=every, format_func=lambda b: f"{b} ({counts[b]:,})",
                                         always=False)  # value: a range slider (the URL's seeded in state)
        if (first, last) != every:
            flt.rank_range = (first, last)
        st.caption(f"Ranks are {ground_truth}-level among the {len(data['captions']):,} items of this map "
                   f"({SCOPE_NAMES.get(scope, scope)}): "
                   + ("identical titles count as the match. " if ground_truth == "caption" else
                      "only the item's own photo or title counts as the match. ")
                   + "Counts are items; each item is two points (photo and title).")
    return flt


def located_ranks(data: dict, positions: Sequence[int], scope: str, ground_truth: str, most: int = 10) -> None:
    """The ranks of the true match of a few items located from another page (at most ``most``), in both directions,
    under the page's ground truth: the numbers the page that sent them showed, now read on the map."""
    if not positions or len(positions) > most:
        return
    lines = [f"{data['item_ids'][i]}: title → photo {int(mapview.ranks_of(data, 'text_to_image', ground_truth)[i]):,}, "
             f"photo → title {int(mapview.ranks_of(data, 'image_to_text', ground_truth)[i]):,}" for i in positions]
    st.caption(f"Rank of the true match, {md(mapview.gallery_words(len(data['captions']), scope, ground_truth))}: "
               + md("; ".join(lines)))


def _photo_card(where, path: str, caption: str, note: str, width: int = 110) -> None:
    ui.photo(path, width, where=where)
    where.caption(f"{note} · {md(caption)}")


def point_details(data: dict, item: int, k: int = NEIGHBOURS, scope: str = "test",
                  ground_truth: str = "caption") -> None:
    """A clicked item: photo, title, split and attributes, ranks (out of what, where, under ``ground_truth``: the
    page's), and its nearest photos and titles."""
    nb = mapview.neighbours(data["image_embeds"], data["text_embeds"], item, k, data["captions"], ground_truth)
    n = len(data["captions"])
    st.subheader("The clicked product", divider="gray")
    left, right = st.columns([1, 3])
    ui.photo(data["images"][item], 180, where=left)
    right.markdown(f"**{md(data['captions'][item])}**")
    attrs = ", ".join(f"{a}: {v[item]}" for a, v in data["attributes"].items() if v[item])
    right.caption(f"item {md(data['item_ids'][item])} · split {md(data['split'][item] or '?')} · {md(attrs)}")
    c = right.columns(2)
    where = f"{SCOPE_NAMES.get(scope, scope)}, {ground_truth}-level"
    same = "photos of products with the same title count as correct too" if ground_truth == "caption" else \
        "only its own photo counts as correct"
    said = dict(delta=where, delta_color="off", delta_arrow="off")  # what the rank is out of, and where
    c[0].metric("Its photo, for its title", f"rank {nb.photo_rank:,} of {n:,}", **said,
                help=f"among the {n:,} photos on this map, {ground_truth}-level like the map's colours: {same} "
                     "(ties count against the model)")
    c[1].metric("Its title, for its photo", f"rank {nb.title_rank:,} of {n:,}", **said,
                help=f"among the {n:,} titles on this map, {ground_truth}-level like the map's colours (ties count "
                     "against the model)")
    right.caption(f"Its photo for its title: {mapview.rank_text(nb.photo_rank, n, scope, ground_truth)}; its title "
                  f"for its photo: {mapview.rank_text(nb.title_rank, n, scope, ground_truth)}.")
    st.markdown("**Photos nearest its title** (title → photo); ✓ marks its own photo")
    cols = st.columns(len(nb.photos))
    for col, (pos, score) in zip(cols, nb.photos):
        mark = "✓ its own photo · " if pos == item else ""
        _photo_card(col, data["images"][pos], data["captions"][pos], f"{mark}{score:.3f}", width=100)
    if nb.photo_rank > k:
        st.caption(f"Its own photo is at {mapview.rank_text(nb.photo_rank, n, scope, ground_truth)}.")
    st.markdown("**Titles nearest its photo** (photo → title); ✓ marks its own title")
    for rank, (pos, score) in enumerate(nb.titles, start=1):
        mark = " ✓ its own title" if pos == item else ""
        line = st.columns([1, 8], vertical_alignment="center")
        ui.photo(data["images"][pos], 48, where=line[0])
        line[1].markdown(f"**#{rank}** {score:.3f}{mark} · {md(data['captions'][pos])}")
    if nb.title_rank > k:
        st.caption(f"Its own title is at {mapview.rank_text(nb.title_rank, n, scope, ground_truth)}.")


def selection(folder: Path, data: dict, chosen: Sequence[int]) -> None:
    """The products inside a box or lasso, paged; save them as a named slice of the catalogue (in ``folder``,
    see ``slices.slices_folder``) or export them as CSV."""
    st.subheader(f"{len(chosen):,} selected product(s)", divider="gray")
    words = st.text_input("Find in the selection", key="emb_sel_find", max_chars=200,
                          placeholder="words in the title, e.g. navy shirt",
                          help="keeps the selected products whose title holds every word (any case); saving and "
                               "exporting then take what is found")
    if words.strip():
        found = mapview.find_in_titles([data["captions"][i] for i in chosen], words)
        st.caption(f"{len(found):,} of the {len(chosen):,} selected titles hold every word of the query.")
        chosen = [chosen[j] for j in found]
        if not chosen:
            return
    pages = max(1, -(-len(chosen) // PAGE_SIZE))
    page = st.pagination(pages, key="emb_sel_page") if pages > 1 else 1
    shown = list(chosen[(page - 1) * PAGE_SIZE: page * PAGE_SIZE])
    ui.product_grid([data["images"][i] for i in shown], [data["captions"][i] for i in shown])
    if pages > 1:
        st.caption(f"Page {page} of {pages}: products {(page - 1) * PAGE_SIZE + 1}-"
                   f"{(page - 1) * PAGE_SIZE + len(shown)} of {len(chosen):,}")
    ids = [data["item_ids"][i] for i in chosen]
    c1, c2, c3 = st.columns([2, 1, 1], vertical_alignment="bottom")
    name = c1.text_input("Save the selection as a slice named", key="emb_slice_name", max_chars=slices.MAX_NAME)
    if c2.button("Save slice", key="emb_slice_save", icon=":material/bookmark_add:", disabled=not name.strip()):
        try:
            saved = slices.save_slice(folder, name, ids)
        except (ValueError, OSError) as err:
            st.error(md(f"Not saved: {err}"), icon=":material/error:")
        else:
            st.toast(f"Saved the slice {md(saved)} ({len(ids):,} items)", icon=":material/bookmark:")
    extra = {"split": [data["split"][i] for i in chosen],
             **{a: [v[i] for i in chosen] for a, v in data["attributes"].items()}}
    c3.download_button("Export CSV", slices.export_csv(ids, [data["captions"][i] for i in chosen], extra),
                       file_name="selection.csv", mime="text/csv", key="emb_slice_csv", icon=":material/download:")


def saved_slices(run_dir: Path, item_ids: Sequence[str], captions: Sequence[str], folder: Path | None = None
                 ) -> list[int]:
    """The catalogue's saved slices (``folder``, see ``slices.slices_folder``; and any an older version kept in
    ``run_dir``): pick one to ring on the map (returned as map positions), export or delete it."""
    folder = folder or run_dir
    legacy = slices.load_slices(run_dir) if Path(folder) != Path(run_dir) else {}
    saved = {**legacy, **slices.load_slices(folder)}
    if not saved:
        pickers.publish("emb_saved", [])  # a slice named in the URL that this catalogue does not have
        return []
    with st.expander(f"Saved slices ({len(saved)})", icon=":material/bookmarks:"):
        names = list(saved)
        name = pickers.url_widget(st.selectbox, "emb_saved", pickers.choice(names), None,
                                  "Ring a saved slice on the map", [None, *names], always=False,
                                  format_func=lambda n: "(none)" if n is None else f"{n} ({len(saved[n]):,} items)")
        if name is None:
            return []
        positions = mapview.positions_of(item_ids, saved[name])
        st.caption(f"{len(positions):,} of its {len(saved[name]):,} items are on this map.")
        c1, c2 = st.columns(2)
        title = dict(zip(item_ids, captions))
        c1.download_button("Export CSV", slices.export_csv(saved[name], [title.get(x, "") for x in saved[name]]),
                           file_name="slice.csv", mime="text/csv", key="emb_saved_csv", icon=":material/download:")
        if c2.button("Delete this slice", key="emb_saved_delete", icon=":material/delete:"):
            slices.delete_slice(folder, name)
            if name in legacy:
                slices.delete_slice(run_dir, name)
            st.rerun()
        return positions


def clicked_item(points: Sequence[dict], box: Sequence, lasso: Sequence, n: int) -> tuple[int | None, list[int]]:
    """(the item a click chose, the items a box or lasso chose) from a plotly selection event."""
    items = selected_items(points, n)
    if box or lasso:
        return None, items
    return (items[0] if items else None), []


def chart_selection(chart_key: str, n: int) -> tuple[int | None, list[int]]:
    """``clicked_item`` of the map's selection as this run sees it (before the chart is drawn again)."""
    sel = getattr(st.session_state.get(chart_key), "selection", None)
    if not sel:
        return None, []
    return clicked_item(sel.get("points") or [], sel.get("box") or [], sel.get("lasso") or [], n)


def point_in_url(item_ids: Sequence[str], chart_key: str, clicked: int | None, chosen: Sequence[int],
                 figure_key: object) -> tuple[int | None, int | None]:
    """The clicked product, kept in the URL as ``emb_point`` (its item id): returns (the map position whose panel
    shows, the position the map draws selected, ``map_figure(selected=...)``).

    A click or a box/lasso changes it; a URL that brings one (a link, a reload) sets it. Plotly drops its selection
    whenever the figure changes, so the figure's selected point changes only when the figure is redrawn anyway
    (``figure_key``, everything else it is drawn from, changed) or the URL set the point, and an empty selection
    right after a redraw is not read as the user clearing the point.
    """
    mem = st.session_state.setdefault("_emb_point", {})
    current, pinned = mem.get("item"), mem.get("pinned")
    signature = [clicked, list(chosen)]
    remounted = chart_key not in st.session_state or mem.get("chart") != chart_key  # a new chart: no selection
    if pickers.url_is_new(POINT):
        current = (pickers.url_values(POINT) or [None])[-1]
        pinned = current
    elif remounted:
        pinned = current
    elif signature != mem.get("selection") and not (clicked is None and not chosen and mem.get("redrawn")):
        current = item_ids[clicked] if clicked is not None and 0 <= clicked < len(item_ids) else None
    where = {x: i for i, x in enumerate(item_ids)}
    current = current if current in where else None  # not on this map (a hostile URL, another split): none
    if figure_key != mem.get("figure"):
        pinned = current
    redrawn = remounted or figure_key != mem.get("figure") or pinned != mem.get("pinned")
    mem.update(item=current, pinned=pinned, chart=chart_key, selection=signature, figure=figure_key,
               redrawn=redrawn)
    pickers.publish(POINT, [current] if current is not None else [])
    return where.get(current), where.get(pinned)


def hover_photos(run_dir: Path, projection_file: Path, map_task: str, data: dict) -> None:
    """Photos on hover for the map (``hover.py``): its sprite sheets when they are made, else a line saying
    they are being made in the background (by the map's own job, or a job started here for a map made
    before sheets existed); the page reruns by itself when they are in."""
    n = len(data["index"])
    if n > sprites.MAX_ITEMS:
        st.caption(f"Photos show on hover for maps of at most {sprites.MAX_ITEMS:,} products; click a point "
                   "for its photo.")
        return
    folder, meta = hover.ready_meta(run_dir, data["index"])
    if meta is not None and int(meta.get("n", -1)) == n:
        hover.hover_photos(folder, meta, "emb_map_")
        return

    @st.fragment(run_every=2)
    def _wait() -> None:
        if sprites.read_meta(folder) is not None:
            st.rerun(scope="app")
        name = sprites.task_name(folder)
        if tasks.active(run_dir, map_task):
            rec = tasks.read(run_dir, map_task)
        else:
            rec = tasks.read(run_dir, name)
            if rec.get("state") == "failed":
                st.caption(f"Photos on hover could not be made: {md(rec.get('error') or 'unknown error')}")
                return
            if rec.get("state") not in ("queued", "running"):
                sprite_job.start(run_dir, projection_file, folder)
                rec = tasks.read(run_dir, name)
        line, _ = tasks.describe(rec)
        st.caption(f"Photos on hover: making the thumbnails in the background ({md(line)}).")

    _wait()


def gap_metrics(gap: dict) -> None:
    c = st.columns(3)
    c[0].metric("Paired distance (mean)", f"{np.mean(gap['paired']):.3f}")
    c[1].metric("Random-pair distance (mean)", f"{np.mean(gap['random']):.3f}")
    c[2].metric("Centroid gap", f"{gap['centroid_gap']:.3f}")
