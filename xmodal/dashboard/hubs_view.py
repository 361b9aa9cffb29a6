"""Compare page: how hubby each chosen run's joint space is (``xmodal.retrieval.hubness``), both directions.

A hub is a gallery item that many queries rank in their top k; an anti-hub is one that no query does. Per run,
on one split of its catalogue (its 1:1 gallery: the split's photos for title queries, its titles for photo
queries): the skewness of the k-occurrence distribution with a jackknife interval over the queries, the share
of items never retrieved and the biggest hub's share of the queries (Wilson intervals), and the top hubs with
their photo and title. Measured with NumPy from the run's catalogue embeddings file (no PyTorch), once per
run, checkpoint (the file's name covers the weights), split and k.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd
import streamlit as st

from ..evaluation.metrics import wilson
from ..retrieval.hubness import split_hubness
from ..runs import RunInfo
from . import analysis, state
from .escape import md
from .maps import embeds

# The evaluation galleries only: the train split or the whole catalogue of Myntra takes 8-10 s per run (one core).
SPLITS = {"test": "test split", "val": "validation split"}
KS = (1, 5, 10)
TOP = 5  # hubs listed per run and direction
SHORT = {"text_to_image": "text → image", "image_to_text": "image → text"}


@st.cache_data(show_spinner="Counting how often each item is retrieved...", max_entries=32)
def _hubness(run_dir: str, file: str, stamp: int, split: str, k: int) -> dict | None:
    """``split_hubness`` of one run's split, its hubs named (item id, title, photo); None without embeddings."""
    e = state.embeddings(run_dir)
    if e is None:
        return None
    sel = [i for i, s in enumerate(e["split"]) if s == split]
    if not sel:
        return {"items": 0}
    res = split_hubness(e["image"][sel], e["text"][sel], k, TOP)
    for d in res.values():
        d["hubs"] = [{"item": e["item_ids"][sel[i]], "title": e["captions"][sel[i]], "image": e["images"][sel[i]],
                      "count": n} for i, n in d.pop("top")]
    return {"items": len(sel), **res}


def run_hubness(run_dir: Path, split: str, k: int) -> dict | None:
    """A run's hubness on ``split`` (``SPLITS``) at ``k``, cached per run, checkpoint, split and k; None until its
    catalogue embeddings are on disk."""
    path = embeds.embeds_path(Path(run_dir))
    try:
        stamp = path.stat().st_mtime_ns if path is not None else 0
    except FileNotFoundError:
        return None
    return _hubness(str(run_dir), path.name, stamp, split, int(k)) if stamp else None


def summary_rows(label: str, res: dict) -> list[dict]:
    """One row per direction: skewness with its interval, anti-hubs and the biggest hub with Wilson intervals."""
    rows = []
    for d in SHORT:
        h = res[d]
        n, q = h["gallery"], h["queries"]
        anti = round(h["anti_hub_share"] * n / 100)
        a_lo, a_hi = wilson(anti, n)
        m_lo, m_hi = wilson(h["max"], q)
        s_lo, s_hi = h["skewness_ci95"]
        rows.append({"run": label, "queries": SHORT[d], "gallery": n,
                     "skewness": f"{h['skewness']:.2f} [{s_lo:.2f}-{s_hi:.2f}]",
                     "never retrieved %": f"{h['anti_hub_share']:.1f} [{a_lo:.1f}-{a_hi:.1f}]",
                     "never retrieved": anti,
                     "biggest hub: queries": h["max"],
                     "biggest hub: % of queries": f"{h['max_share']:.1f} [{m_lo:.1f}-{m_hi:.1f}]"})
    return rows


def hub_rows(res: dict) -> pd.DataFrame:
    """The top hubs of both directions: photo, title, item, how many queries retrieve it and their share."""
    rows = [{"queries": SHORT[d], "photo": state.thumbnail(h["image"]), "title": h["title"], "item": h["item"],
             "retrieved by": h["count"], "% of queries": round(100 * h["count"] / res[d]["queries"], 1)}
            for d in SHORT for h in res[d]["hubs"]]
    return pd.DataFrame(rows)


def section(runs: Sequence[RunInfo], catalogue: str) -> None:
    """The hubness table of ``runs`` on a chosen split and k, and each run's top hubs (``catalogue``: its name)."""
    c1, c2 = st.columns(2)
    split = c1.selectbox("Split", list(SPLITS), key="cmp_hub_split", format_func=SPLITS.get,
                         help="the run's own split of its catalogue; its photos and titles form the 1:1 gallery")
    k = c2.selectbox("k (top ranks counted)", KS, index=len(KS) - 1, key="cmp_hub_k")
    results = {analysis.run_label(r): run_hubness(r.path, split, k) for r in runs}
    done = {label: res for label, res in results.items() if res and res.get("items")}
    if not done:
        st.info(f"None of the chosen runs has items in its {SPLITS[split]}.")
        return
    table = pd.DataFrame([row for label, res in done.items() for row in summary_rows(label, res)])
    st.dataframe(table, hide_index=True, key="cmp_hub_table", column_config={
        "run": st.column_config.TextColumn(pinned=True, width="medium")})
    sizes = sorted({res["items"] for res in done.values()})
    st.caption(f"{SPLITS[split].capitalize()} of {md(catalogue)}, each run's own split: "
               f"{' / '.join(f'{n:,}' for n in sizes)} items, so a gallery of that many photos (title queries) or "
               f"titles (photo queries); k = {k}. N_k counts how many queries rank an item in their top {k}. "
               "Skewness of N_k (0: every item retrieved equally often; large: a few hubs take the top ranks) with "
               "a 95% interval (jackknife over the queries); the share of items no query retrieves and the biggest "
               "hub's share of the queries with Wilson 95% intervals. `python -m xmodal.evaluate --hubness csls` "
               "ranks with CSLS, which demotes hubs.")
    missing = [label for label in results if label not in done]
    if missing:
        st.caption(f"Not measured (no items in that split): {md(', '.join(missing))}.")
    for i, (tab, res) in enumerate(zip(st.tabs([md(label) for label in done]), done.values())):
        with tab:
            st.dataframe(hub_rows(res), hide_index=True, row_height=60, key=f"cmp_hubs_{i}", column_config={
                "photo": st.column_config.ImageColumn("photo", width="small"),
                "item": st.column_config.TextColumn("item", width="small")})
    st.caption(f"The {TOP} items most often in the top {k}, per direction: a hub photo is one that many titles "
               "retrieve, a hub title one that many photos retrieve.")
