"""Search page: a text query gives the top-k products; an image (uploaded, or a catalogue product) gives
the top-k captions and their products; one run or all runs side by side; for a catalogue item, where its
true match landed and what ranked above it; why any result matched (words and regions); a photo changed by
words ("in red"), beside photo only and words only; and "more like this / less like this" rounds. Ranked with or
without CSLS hubness correction. The view (runs, tab, query, k, gallery, filters, ranking) is in the URL."""
from __future__ import annotations

import contextlib

import numpy as np
import streamlit as st

from xmodal.dashboard import analysis, catalogues, checks, explain_view, pickers, queries, state, ui
from xmodal.dashboard.escape import md
from xmodal.dashboard.maps.projection import SCOPE_NAMES
from xmodal.dashboard.maps.view import gallery_words
from xmodal.dashboard.uploads import EXTENSIONS, UploadError, read_upload

pickers.hold_url()  # a URL opened on a freshly started server keeps its view
ui.page_guard("pages/search.py")
st.title("Search")
runs = ui.runs_with_weights()
if not runs:
    ui.no_runs_hint("the Search page")
    st.stop()
ui.load_pytorch()  # a spinner the first time after the server starts; instant after that
from xmodal.retrieval.compose import DEFAULT_WEIGHT  # noqa: E402
from xmodal.retrieval.filters import where_mask  # noqa: E402
from xmodal.retrieval.run import RunError, UnknownQueryError  # noqa: E402

TABS = {"Text → products": "text", "Image → captions": "image", "Photo + words": "compose"}  # label: URL name
TEXT_SOURCES = {"Type a query": "typed", "A catalogue title (test split)": "item"}
IMAGE_SOURCES = {"Upload a photo": "upload", "A catalogue product (test split)": "item"}
COMPOSE_SOURCES = {"A catalogue product (test split)": "item", "Upload a photo": "upload"}
HUB_HELP = ("CSLS (Conneau et al., 2018): each result's cosine less half its mean cosine to its 30 nearest entries "
            "of the catalogue in the query's modality, so products that sit near every query ('hubs') stop crowding "
            "the top. It raised every model's recall on validation and test (docs/quality.md, section 4); none: "
            "plain cosine, the ranking of the runs' reported recall. Photo + words always ranks by plain cosine.")

pickers.open_view("search_")  # opened bare (from the sidebar): this session's last search comes back
if pickers.text().parse(pickers.url_values("search_q")) and pickers.url_is_new("search_q"):  # a link with a query
    for key_, value in (("search_tab", "text"), ("search_text_src", "typed")):
        if key_ not in st.query_params:
            st.query_params[key_] = value
c1, c2, c3, c4 = st.columns([3, 1.3, 1, 1.1])
with c1:
    chosen = ui.run_picker(runs, key="search_run", allow_all=True)
scope = pickers.url_widget(c2.radio, "search_gallery", pickers.choice(["all", "test"], SCOPE_NAMES), "all", "Gallery",
                           ["all", "test"], horizontal=True, format_func=SCOPE_NAMES.get,
                           help="whole catalogue: every product, training items included; test split: only the run's "
                                "test products, the gallery that Compare and the run's reported recall rank against")
k = pickers.url_widget(c3.slider, "search_k", pickers.number(1, 20, integer=True), 8, "Results per run", 1, 20)
hubness = pickers.url_widget(c4.radio, "search_hub", pickers.choice(queries.HUBNESS), "csls", "Hubness correction",
                             list(queries.HUBNESS), horizontal=True, format_func={"csls": "CSLS", "none": "none"}.get,
                             help=HUB_HELP)
try:
    loaded = {analysis.run_label(r): state.run(r.path) for r in chosen}
    models = {analysis.run_label(r): r.model for r in chosen}
    paths = {analysis.run_label(r): r.path for r in chosen}
    infos = {analysis.run_label(r): r for r in chosen}
    stamps = {label: state.weights_stamp(path) for label, path in paths.items()}  # the weights this run drew
except (RunError, *checks.LOAD_ERRORS) as err:
    st.error(md(f"Cannot load the run: {err}"), icon=":material/error:")
    st.stop()
first = next(iter(loaded.values()))
cat = first.catalogue
test_pos = analysis.split_positions(cat.item_ids, state.test_split_ids(chosen[0].path)).tolist()
test_pos = test_pos or list(range(len(cat)))  # a run trained on another catalogue: offer every item


galleries = {label: None if scope == "all" else
             analysis.split_positions(cat.item_ids, state.test_split_ids(paths[label])) for label in loaded}
galleries = {label: g if g is None or len(g) else None for label, g in galleries.items()}  # no split: everything
where = ui.filter_widgets(cat)  # the catalogue's attribute columns, kept in the URL
if where:
    try:
        kept = np.flatnonzero(where_mask(cat, where))
    except ValueError as err:  # keeps no product: say so, search nothing
        st.warning(md(err), icon=":material/filter_alt_off:")
        st.stop()
    galleries = {label: kept if g is None else np.intersect1d(g, kept) for label, g in galleries.items()}
    if any(len(g) == 0 for g in galleries.values()):
        st.warning("The filter keeps no product of this gallery; widen it or search the whole catalogue.",
                   icon=":material/filter_alt_off:")
        st.stop()


def gallery_caption(label: str, bank: str) -> None:
    """What a run's results were searched in and how they were ranked (``bank``: the queries' modality)."""
    g = galleries[label]
    st.caption(md(queries.gallery_line(analysis.catalogue_label(chosen[0].config), "all" if g is None else "test",
                                       len(cat) if g is None else len(g)))
               + ("; the true match is caption-level (identical titles count)" if scope == "test" else "")
               + f"; {md(queries.ranking_line(hubness, bank))}"
               + (f"; filtered by {md(', '.join(f'{c} = ' + ' or '.join(v) for c, v in where.items()))}"
                  if where else ""))


def gallery_size(label: str) -> tuple[int, str]:
    """How many products a run's results were ranked among, and where (what its true match's rank is out of)."""
    g = galleries[label]
    place = "whole catalogue" if g is None or scope == "all" else "test split"
    return (len(cat) if g is None else len(g)), place + (", filtered" if where else "")


def state_note(label: str) -> None:
    """A badge under a run that is not finished: its results come from its best weights so far."""
    if badge := catalogues.state_badge(infos[label]):
        st.caption(f"⚠ {md(label)} is not finished, {md(badge)}")


def hubness_wait(kind: str):
    """A spinner while CSLS learns its offsets for the runs' ``kind`` gallery (their first CSLS query after the server
    started: a pass over the catalogue), else nothing."""
    first = [label for label, r in loaded.items() if hubness == "csls" and not queries.offsets_ready(r, kind)]
    if not first:
        return contextlib.nullcontext()
    bank = "captions" if kind == "images" else "photos"
    return st.spinner(f"CSLS: each product's mean cosine to its 30 nearest {bank}, for {md(', '.join(first))} (once "
                      "per run, then kept in its folder; 4-5 s for 10,100 products)...", show_time=True)


def item_label(i: int) -> str:
    return f"{cat.item_ids[i]} · {cat.captions[i]}"


def item_picker(key: str) -> int:
    """A test product (its item id in the URL as ``key``); returns its catalogue position."""
    return pickers.url_widget(st.selectbox, key, pickers.choice(test_pos, {p: cat.item_ids[p] for p in test_pos}),
                              test_pos[0], "Test product", test_pos, format_func=item_label)


def source_picker(key: str, label: str, sources: dict[str, str]) -> str:
    """Where a tab's query comes from (a radio, in the URL as ``key``)."""
    return pickers.url_widget(st.radio, key, pickers.choice(list(sources), sources), next(iter(sources)), label,
                              list(sources), horizontal=True)


def show(results: dict[str, queries.QueryResult], grid: bool, tab: str, text: str | None = None,
         image=None) -> None:
    """Each run's top-k (a grid for one run, columns side by side for several), the true match's rank, and
    "why did it match?" for any result (``text``: the query of text -> products; ``image``: of image -> captions)."""
    cols = st.columns(len(results)) if len(results) > 1 else [st.container()]
    for n, (col, (label, res)) in enumerate(zip(cols, results.items())):
        with col:
            if len(results) > 1:
                st.markdown(f"**{md(models[label])}**")
                st.caption(md(label))
            state_note(label)
            gallery_caption(label, "captions" if tab == "text" else "photos")
            if res.rank is not None:
                size, place = gallery_size(label)
                st.metric("True match landed at rank", res.rank, delta=gallery_words(size, place, "caption"),
                          delta_color="off", delta_arrow="off", help=f"out of the {size:,} products searched "
                          f"({place}, {'CSLS' if hubness == 'csls' else 'plain cosine'}); caption-level: items with "
                          "the identical title count as the true match too")
            if grid and len(results) == 1:
                ui.hit_grid(res.hits)
            else:
                for i, hit in enumerate(res.hits, start=1):
                    ui.hit_card(hit, title=f"#{i}")
            what = f"top {len(res.hits)} for “{text}”" if text is not None else f"top {len(res.hits)} for a photo"
            pickers.locate_link(infos[label], [h.item_id for h in res.hits], what,
                                scope="all" if galleries[label] is None else "test", label="Show these on the map")
            if res.rank and res.rank > 1:
                with st.expander(f"{res.rank - 1} ranked above the true match"):
                    ui.hit_card(res.true_hit, title="true match")
                    st.divider()
                    for i, hit in enumerate(res.above, start=1):
                        ui.hit_card(hit, title=f"#{i}")
                    if res.rank - 1 > len(res.above):
                        st.caption(f"... and {res.rank - 1 - len(res.above)} more")
            candidates = explain_view.hit_candidates(res.hits, res.true_hit, res.above if res.rank else ())
            explain_view.why_it_matched(paths[label], candidates, key=f"search_why_{tab}_{n}", text=text, image=image,
                                        stacked=len(results) > 1, spread=res.spread)


def same_weights() -> None:
    """In a tab's fragment run: when a run's best weights changed since the page's full run (it is still training),
    rerun the whole page, so that its badges and its results speak of the same weights."""
    if any(state.weights_stamp(paths[label]) != stamp for label, stamp in stamps.items()):
        st.rerun(scope="app")


@st.fragment
def text_tab() -> None:
    """Text -> products. A fragment: typing a query reruns this tab alone, not the sidebar, the page's run listing
    and the other tabs (many sessions searching one server: docs/performance.md, bench section 8)."""
    same_weights()
    source = source_picker("search_text_src", "Query", TEXT_SOURCES)
    item_id = None
    if source == "Type a query":
        query = pickers.url_widget(st.text_input, "search_query", pickers.text(), "", "Describe a product",
                                   always=False, url_key="search_q",
                                   placeholder="e.g. navy blue striped kurta, women red dress")
    else:
        pos = item_picker("search_text_item")
        query, item_id = cat.captions[pos], cat.item_ids[pos]
        ui.photo(cat.image_path(pos), 90, caption="the true match")
    if query.strip():
        answered, refused = {}, []
        with hubness_wait("images"):
            for label, r in loaded.items():
                try:
                    answered[label] = queries.text_query(r, query, k, item_id, gallery=galleries[label],
                                                         hubness=hubness)
                except UnknownQueryError as err:
                    refused.append(err)
        # The words come from the query and the vocabulary (catalogue text): escaped like any other.
        if refused:
            some = f"{len(refused)} of {len(loaded)} runs cannot read this query: " if answered else ""
            st.warning(f"{some}{md(refused[0])}", icon=":material/help:")
        unknown = list(dict.fromkeys(w for res in answered.values() for w in res.hits.unknown_words))
        if unknown:
            st.caption("Not in the model's vocabulary, so they did not steer the search: "
                       + ", ".join(f"'{md(w)}'" for w in unknown))
        mapped = {w: v for label in answered for w, v in loaded[label].vocab.mapped_words(query).items()}
        if mapped:  # fastText runs read a new word as its closest known spelling: say so
            st.caption("Read as a known word: " + ", ".join(f"'{md(w)}' as '{md(v)}'" for w, v in mapped.items()))
        if answered:
            show(answered, grid=True, tab="text", text=query)


@st.fragment
def image_tab() -> None:
    """Image -> captions, a fragment like ``text_tab``: picking or uploading a photo reruns this tab alone."""
    same_weights()
    source = source_picker("search_image_src", "Query", IMAGE_SOURCES)
    image, item_id = None, None
    if source == "Upload a photo":
        upload = st.file_uploader("Product photo (JPEG, PNG, WebP; at most 10 MB)", type=EXTENSIONS,
                                  key="search_upload")
        if upload is not None:
            try:
                image = read_upload(upload.getvalue(), upload.name)
            except UploadError as err:
                st.error(md(err), icon=":material/error:")
    else:
        pos = item_picker("search_image_item")
        try:
            image, item_id = cat.open_image(pos), cat.item_ids[pos]
        except (OSError, ValueError) as err:  # the photo changed or went since the catalogue was checked
            st.error(md(f"Cannot open the photo of {cat.item_ids[pos]}: {err}"), icon=":material/error:")
    if image is not None:
        st.image(image, width=140, caption="query")
        with hubness_wait("texts"):
            found = {label: queries.image_query(r, image, k, item_id, gallery=galleries[label], hubness=hubness)
                     for label, r in loaded.items()}
        show(found, grid=False, tab="image", image=image)


tab_text, tab_image, tab_compose = ui.url_tabs(TABS, "search_tab")
with tab_text:
    text_tab()

with tab_image:
    image_tab()

with tab_compose:
    st.caption("A photo changed by words: the product in another colour, pattern or cut. Its results sit beside "
               "the photo's alone and the words' alone; below, mark results to get more or fewer like them."
               + (" The attribute filter does not apply here: it searches every product." if where else ""))
    source = source_picker("search_compose_src", "Photo", COMPOSE_SOURCES)
    photo, photo_key = None, None
    if source == "Upload a photo":
        upload = st.file_uploader("Product photo (JPEG, PNG, WebP; at most 10 MB)", type=EXTENSIONS,
                                  key="search_compose_upload")
        if upload is not None:
            try:
                photo = read_upload(upload.getvalue(), upload.name)
                photo_key = explain_view.image_key(photo)
            except UploadError as err:
                st.error(md(err), icon=":material/error:")
    else:
        pos = item_picker("search_compose_item")
        photo, photo_key = pos, f"item:{cat.item_ids[pos]}"  # an item index: left out of its own results
        ui.photo(cat.image_path(pos), 90, caption="the photo")
    c1, c2 = st.columns([2, 1])
    words = pickers.url_widget(c1.text_input, "search_compose_text", pickers.text(), "", "Change it with words",
                               always=False, placeholder="e.g. red, with stripes, for women")
    weight = pickers.url_widget(c2.slider, "search_compose_weight", pickers.number(0.0, 1.0, step=0.05),
                                DEFAULT_WEIGHT, "Weight of the words", 0.0, 1.0, step=0.05,
                                help="0: the photo alone; 1: the words alone. Each part is scaled to the spread of "
                                     "its own scores first, so 0.5 gives both the same pull.")
    if photo is None or not words.strip():
        st.info("Pick or upload a photo and type a few words to change it.", icon=":material/info:")
    else:
        label = next(iter(loaded))
        if len(loaded) > 1:
            label = pickers.url_widget(st.selectbox, "search_compose_run",
                                       pickers.choice(list(loaded), {n: infos[n].run_id for n in loaded}), label,
                                       "Run", list(loaded))
        run = loaded[label]
        state_note(label)
        st.caption(md(queries.gallery_line(analysis.catalogue_label(chosen[0].config), "all", len(cat)))
                   + " (Photo + words always searches every product, ranked by plain cosine; the photo's own "
                     "product is left out)")
        try:
            unknown = run.vocab.check_query(words)[1]
            if unknown:
                st.caption("Not in the model's vocabulary, so they did not steer the search: "
                           + ", ".join(f"'{md(w)}'" for w in unknown))
            explain_view.side_by_side(run, photo, words, weight, k)
            st.subheader("More like this, less like this")
            explain_view.feedback(run, f"{paths[label]}|{photo_key}|{words}|{weight}|{k}",
                                  lambda: run.search(image=photo, text=words, weight=weight, k=k), k)
        except UnknownQueryError as err:
            st.warning(md(err), icon=":material/help:")
