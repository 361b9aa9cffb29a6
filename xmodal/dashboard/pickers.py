"""The widgets each page starts with (a catalogue, then runs trained on it), the URL that holds every view, and the
links between views.

**Every view is a URL.** A widget that is part of a view is drawn through ``url_widget``: it takes its value from
the URL when the page was opened with one (a link, a reload, a shared URL) or when the URL changed under the page
(back), otherwise it keeps its own; after it is drawn its value is written into the URL, also when it equals the
default, because defaults change ("the best run" is another run after the next training) and a shared link must
keep its meaning. Streamlit's ``bind="query-params"`` cannot do this: it drops a value equal to the default from
the URL, so a link asking for the default run opened whichever run the session had shown last.

The URL is untrusted. Each parameter is read by a ``Param`` that accepts only the widget's options (run ids of
this catalogue, the choices offered, numbers in range): any other value is ignored, never reaches anything but
the parser, and is replaced in the URL by the widget's value. The URL holds stable identifiers (catalogue keys,
run ids); what changes (a run still training, its health) is said in the labels and captions beside them.

A page opened bare (from the sidebar) gets its own last view of this session back (``open_view``); the catalogue
follows the user from page to page. ``locate_link`` opens the Embeddings map on given items with everything that
view needs in its URL.
"""
from __future__ import annotations

import math
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import streamlit as st

from ..runs import RunInfo
from . import catalogues, state
from .escape import md
from .maps.projection import SCOPE_NAMES

CATALOGUE_KEY = "cat"  # the same parameter on every page: the catalogue follows the user from page to page
FOCUS, FOCUS_LABEL = "focus", "focus_label"  # items to ring on the map, and what they are
MAX_FOCUS = 200  # item ids put in a link at most
MAX_VALUES = 500  # values of one URL parameter read at most
MAX_TEXT = 500  # characters of one URL value read at most
# Parameters of the Embeddings map that a link sets (the page reads them with the same Params).
MAP_RUN, MAP_SCOPE, MAP_GT = "emb_run", "emb_scope", "emb_gt"
GROUND_TRUTHS = ("caption", "item")
_WRITTEN = "_url_written"  # session: parameter -> the values this session last wrote into the URL
_VIEWS = "_url_views"  # session: parameter -> its last values, for a page opened bare
_OPENED = "_url_opened"  # session: the parameters the URL held when the page was opened (``open_view``)
_HELD = "_url_held"  # session: a URL's parameters kept while a fresh server routes its first page through Home


# ---------------------------------------------------------------- reading and writing parameters

@dataclass(frozen=True)
class Param:
    """How a widget's value is read from and written into the URL.

    ``parse`` gets the parameter's values (untrusted strings) and returns the widget's value, or None for anything
    it does not accept; ``encode`` turns a value into the parameter's values (an empty list: left out of the URL).
    """

    parse: Callable[[list[str]], Any]
    encode: Callable[[Any], list[str]]


def choice(options: Sequence, names: dict | None = None) -> Param:
    """One of ``options``, written as ``names[option]`` (else ``str(option)``); either spelling is read."""
    names = names or {}
    by_text = {str(o): o for o in options}
    by_text.update({str(names[o]): o for o in options if o in names})
    return Param(lambda raw: by_text.get(raw[-1]) if raw else None,
                 lambda v: [] if v is None else [str(names.get(v, v))])


def choices(options: Sequence) -> Param:
    """Any of ``options``, in the URL's order, without repeats; ``key=`` (one empty value) is the empty choice."""
    by_text = {str(o): o for o in options}

    def parse(raw: list[str]) -> list | None:
        if raw == [""]:
            return []
        picked = [by_text[x] for x in dict.fromkeys(raw) if x in by_text]
        return picked or None

    return Param(parse, lambda v: [str(x) for x in v] if v else [""])


def number(low: float, high: float, step: float | None = None, integer: bool = False) -> Param:
    """A finite number from ``low`` to ``high`` (on the grid of ``step`` from ``low``, when given)."""
    def parse(raw: list[str]) -> float | int | None:
        try:
            x = float(raw[-1]) if raw else math.nan
        except ValueError:
            return None
        if not (math.isfinite(x) and low <= x <= high):
            return None
        if step:
            k = round((x - low) / step)
            if abs(low + k * step - x) > 1e-6:
                return None
            x = round(low + k * step, 10)
        if integer:
            return int(x) if x == int(x) else None
        return x

    return Param(parse, lambda v: [str(int(v))] if integer else [f"{float(v):g}"])


def flag() -> Param:
    """True or False (``true``/``false``, ``1``/``0``)."""
    words = {"true": True, "1": True, "false": False, "0": False}
    return Param(lambda raw: words.get(raw[-1].lower()) if raw else None, lambda v: ["true" if v else "false"])


def span(labels: Sequence[str]) -> Param:
    """A range of two of ``labels`` (a ``select_slider`` with a range), in order."""
    order = {str(x): i for i, x in enumerate(labels)}

    def parse(raw: list[str]) -> tuple | None:
        if len(raw) != 2 or not all(x in order for x in raw):
            return None
        a, b = sorted(raw, key=order.get)
        return (labels[order[a]], labels[order[b]])

    return Param(parse, lambda v: [str(v[0]), str(v[1])])


def text(max_chars: int = MAX_TEXT) -> Param:
    """Free text of one line, at most ``max_chars`` characters (a value with control characters is refused)."""
    def parse(raw: list[str]) -> str | None:
        value = raw[-1] if raw else None
        if value is None or len(value) > max_chars or any(unicodedata.category(c) == "Cc" for c in value):
            return None
        return value

    return Param(parse, lambda v: [str(v)] if v else [])


def grouped(options: dict[Any, Sequence[str]]) -> Param:
    """One of ``options``' keys, written as its values (a repeated parameter: ``run=a&run=b``); read back from the
    same set of values in any order, values no option holds dropped."""
    by_set = {frozenset(map(str, v)): o for o, v in options.items()}
    known = set().union(*by_set) if by_set else set()
    return Param(lambda raw: by_set.get(frozenset(x for x in raw if x in known)),
                 lambda v: [str(x) for x in options.get(v, [])])


def url_values(key: str) -> list[str]:
    """The values of URL parameter ``key``, bounded (untrusted: only a ``Param`` reads them)."""
    return [str(x)[:MAX_TEXT] for x in st.query_params.get_all(key)][:MAX_VALUES]


def url_is_new(key: str) -> bool:
    """Whether the URL's ``key`` is not what this session last wrote: the page was opened by a link or a URL, or
    the URL changed under it (back)."""
    return url_values(key) != st.session_state.get(_WRITTEN, {}).get(key, [])


def publish(key: str, values: list[str]) -> None:
    """Write ``values`` into the URL as ``key`` (none: leave it out), and remember them for this session."""
    values = [str(v) for v in values]
    if st.query_params.get_all(key) != values:
        if values:
            st.query_params[key] = values
        elif key in st.query_params:
            del st.query_params[key]
    st.session_state.setdefault(_WRITTEN, {})[key] = values
    st.session_state.setdefault(_VIEWS, {})[key] = values


def hold_url() -> None:
    """Call before ``ui.page_guard``: on a freshly started server a page opened by its URL is routed through Home
    first, which drops the URL's parameters; they are kept in the session for ``open_view`` to put back."""
    if not st.session_state.get("_app_ready") and len(st.query_params):
        st.session_state[_HELD] = {k: url_values(k) for k in st.query_params}


def open_view(prefix: str = "", also: Sequence[str] = ()) -> None:
    """Call first on a page whose view is in the URL (``catalogue_picker`` calls it too): opened bare (from the
    sidebar: none of its parameters, those starting with ``prefix`` and ``also``, in the URL), the page gets back
    its last view of this session."""
    held = st.session_state.pop(_HELD, None)
    if held and not len(st.query_params):  # the URL the page was opened with, before Home took it
        for k, values in held.items():
            st.query_params[k] = values
    ours = lambda k: bool(prefix) and k.startswith(prefix) or k in also  # noqa: E731
    if (prefix or also) and not any(ours(k) for k in st.query_params):
        for k, values in st.session_state.get(_VIEWS, {}).items():
            if ours(k) and values:
                st.query_params[k] = values
    st.session_state[_OPENED] = sorted(st.query_params.keys())


def _page_opened_bare(key: str) -> bool:
    """Whether the page drawing widget ``key`` was opened without any parameter of its own (those sharing the
    key's prefix, ``cmp_`` for ``cmp_runs``), as ``open_view`` last saw the URL."""
    if "_" not in key:
        return key == CATALOGUE_KEY
    prefix = key[:key.index("_") + 1]
    return not any(k.startswith(prefix) for k in st.session_state.get(_OPENED, []))


def seed(key: str, param: Param, default: Any, url_key: str | None = None) -> None:
    """Before drawing widget ``key``: give it the URL's value when the URL brings one (the widget was not drawn on
    the last run, or the URL changed), else keep its own, else its last value of this session when the page was
    opened bare, else ``default`` (also when its options changed: another catalogue). ``url_key``: the URL
    parameter, when it is not ``key``."""
    url_key = url_key or key
    raw, fresh = url_values(url_key), key not in st.session_state
    if raw and (fresh or url_is_new(url_key)):
        value = param.parse(raw)
        if value is not None:
            st.session_state[key] = value
            return
    if fresh:
        remembered = st.session_state.get(_VIEWS, {}).get(url_key) if _page_opened_bare(url_key) else None
        value = param.parse(remembered) if remembered else None
        st.session_state[key] = default if value is None else value
    elif param.parse(param.encode(st.session_state[key])) != st.session_state[key]:
        st.session_state[key] = default  # no longer an option (another catalogue chosen)


def url_widget(draw: Callable[..., Any], key: str, param: Param, default: Any, *args, always: bool = True,
               url_key: str | None = None, **kwargs) -> Any:
    """``draw(*args, key=key, **kwargs)`` (a Streamlit widget) with its value in the URL as ``key``; returns it.

    ``always``: written even when it equals ``default`` (False: left out then, for a default that never changes).
    ``url_key``: the URL parameter, when it is not the widget's key (a name other pages link with).
    """
    seed(key, param, default, url_key)
    value = draw(*args, key=key, **kwargs)
    publish(url_key or key, param.encode(value) if always or value != default else [])
    return value


# ---------------------------------------------------------------- catalogue and runs

def sidebar_match(groups: dict[str, list[RunInfo]]) -> int:
    """Index of the catalogue the sidebar has chosen among ``groups`` (0 when none matches)."""
    spec = state.current_catalogue()
    for i, runs in enumerate(groups.values()):
        data = runs[0].config.get("data") or {}
        if spec == "demo" and data.get("name") == "demo":
            return i
        if spec != "demo" and data.get("path") and Path(str(data["path"])) == Path(spec).expanduser().resolve():
            return i
    return 0


def catalogue_picker(runs: Sequence[RunInfo], key: str = CATALOGUE_KEY) -> tuple[str, list[RunInfo]]:
    """A selectbox of the catalogues ``runs`` were trained on (the sidebar's own first when it has runs, else the
    one this session last chose); returns (catalogue key, its runs, newest first)."""
    open_view()  # what the URL holds as the page opens (the pages that do not call it first: Compare)
    groups = catalogues.group_runs(runs)
    keys = list(groups)
    choice_ = url_widget(st.selectbox, key, choice(keys), keys[sidebar_match(groups)], "Catalogue", keys,
                         help="Runs trained on different catalogues rank against different test galleries, so "
                              "each view shows the runs of one catalogue: its name and content fingerprint")
    st.caption(md(catalogues.describe(groups[choice_])))
    return choice_, groups[choice_]


def health_of(run: RunInfo) -> str | None:
    """``catalogues.health`` with the run's logged metrics (cached)."""
    return catalogues.health(run, state.metrics(run.path))


def run_option(group: Sequence[RunInfo]) -> Callable[[str], str]:
    """The label of a run id in a picker: the id, and a badge for a run that is not finished."""
    badges = {r.run_id: catalogues.state_badge(r) for r in group}
    return lambda run_id: f"{run_id} · {badges[run_id]}" if badges.get(run_id) else run_id


def unfit_note(runs: Sequence[RunInfo]) -> None:
    """A caption naming the runs not chosen unasked, and why (collapsed, failed, still training)."""
    notes = [f"{r.run_id} ({why})" for r in runs if (why := health_of(r))]
    if notes:
        st.caption("⚠ Not chosen unless you pick them: " + md("; ".join(notes)))


def runs_picker(catalogue: str, group: Sequence[RunInfo], key: str, label: str = "Runs",
                default: Sequence[RunInfo] | None = None, help: str | None = None) -> list[RunInfo]:
    """A multiselect over the runs of one catalogue (by run id, in the URL); returns the chosen runs."""
    by_id = {r.run_id: r for r in group}
    chosen_default = [r.run_id for r in (default if default is not None else group)]
    ids = url_widget(st.multiselect, key, choices(list(by_id)), chosen_default, label, list(by_id),
                     format_func=run_option(group), help=help)
    unfit_note(group)
    return [by_id[i] for i in ids if i in by_id]


def run_select(catalogue: str, group: Sequence[RunInfo], key: str, label: str = "Run",
               default: RunInfo | None = None, where=None) -> RunInfo:
    """A selectbox over the runs of one catalogue (by run id, in the URL); returns the chosen run."""
    where = where if where is not None else st
    ids = [r.run_id for r in group]
    first = default.run_id if default is not None and default.run_id in ids else ids[0]
    choice_ = url_widget(where.selectbox, key, choice(ids), first, label, ids, format_func=run_option(group))
    run = group[ids.index(choice_)]
    if why := health_of(run):
        where.caption(f"⚠ {md(why)}")
    return run


# ---------------------------------------------------------------- links to the map

def map_link_params(run: RunInfo, item_ids: Sequence[str], what: str, scope: str = "test",
                    ground_truth: str = "caption") -> dict[str, str | list[str]]:
    """The URL of the Embeddings map of ``run`` with ``item_ids`` ringed (the first ``MAX_FOCUS``): its catalogue,
    run, points (``test`` split or ``all`` the catalogue), ground truth, the items and ``what`` they are, each
    spelt as the page reads it, so the link overrides whatever the session showed there before."""
    if scope not in SCOPE_NAMES:
        raise ValueError(f"unknown map scope {scope!r}; choose one of {tuple(SCOPE_NAMES)}")
    if ground_truth not in GROUND_TRUTHS:
        raise ValueError(f"unknown ground truth {ground_truth!r}; choose one of {GROUND_TRUTHS}")
    return {CATALOGUE_KEY: catalogues.catalogue_id(run.config).key, MAP_RUN: run.run_id,
            MAP_SCOPE: SCOPE_NAMES[scope], MAP_GT: ground_truth, FOCUS: [str(i) for i in item_ids][:MAX_FOCUS],
            FOCUS_LABEL: str(what)[:200]}


def locate_link(run: RunInfo, item_ids: Sequence[str], what: str, scope: str = "test",
                label: str = "Show on the map", ground_truth: str = "caption") -> None:
    """A link that opens the Embeddings map of ``run`` with ``item_ids`` ringed (``map_link_params``).

    ``what`` (catalogue text, shown escaped there) says what was located, e.g. ``colour = Blue``; ``scope`` picks
    the map of the test split (``test``) or of the whole catalogue (``all``); ``ground_truth`` (``caption`` or
    ``item``) is the one the map ranks by, to match the numbers of the page the link is on.
    """
    params = map_link_params(run, item_ids, what, scope, ground_truth)
    st.page_link("pages/embeddings.py", label=label, icon=":material/location_on:", query_params=params,
                 disabled=not params[FOCUS])


def focus_from_url() -> tuple[list[str], str]:
    """The item ids (untrusted: the map keeps only ids it shows) and the label a link asked to locate; kept as the
    page's view (``open_view`` brings them back)."""
    ids = url_values(FOCUS)[:MAX_FOCUS]
    label = (url_values(FOCUS_LABEL) or [""])[-1][:200]
    publish(FOCUS, ids)
    publish(FOCUS_LABEL, [label] if label else [])
    return ids, label


def clear_focus() -> None:
    for k in (FOCUS, FOCUS_LABEL):
        publish(k, [])
