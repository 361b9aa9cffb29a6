"""Compare page: the named failure clusters of each chosen run (``xmodal.evaluation.failures``) and which of
them another run fixes, on the same test items.

A query fails when its true match ranks past k. Each run's clusters are the groups of products (attribute
values, or title words) whose failure rate lies wholly above that run's base rate. The groups of every run are
then scored under every run on the same items: a run fixes a group when the paired bootstrap interval of its
failure rate minus that of the run the group is worst under lies wholly below 0. A cluster opens on the map
with its failed items ringed, opens Search on one of its failed titles, or is saved as a slice.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import streamlit as st

from ..evaluation.failures import describe, failure_clusters, group_items
from ..evaluation.metrics import KS, wilson
from ..runs import RunInfo
from . import analysis, catalogues, pickers, slices, ui
from .maps import embeds
from .escape import md

REPS, SEED = 1000, 0  # paired bootstrap of a group's failure-rate difference
SEARCH_RUN, SEARCH_QUERY = "search_run", "search_q"  # the Search page's parameters
SHORT = {"text_to_image": "text → image", "image_to_text": "image → text"}
SHOWN = 6  # failed products shown for a cluster


def rate_difference(fail_b: np.ndarray, fail_a: np.ndarray, reps: int = REPS, seed: int = SEED) -> dict:
    """Failure rate of B minus A on the same items (percentage points), with a paired bootstrap 95% interval."""
    d = np.asarray(fail_b, dtype=np.float64) - np.asarray(fail_a, dtype=np.float64)
    if len(d) == 0:
        return {"difference": 0.0, "lo": 0.0, "hi": 0.0}
    draws = d[np.random.default_rng(seed).integers(0, len(d), (reps, len(d)))].mean(1)
    lo, hi = np.percentile(draws, [2.5, 97.5])
    return {"difference": 100 * float(d.mean()), "lo": 100 * float(lo), "hi": 100 * float(hi)}


def _cell(f: np.ndarray) -> str:
    lo, hi = wilson(int(f.sum()), len(f))
    return f"{int(f.sum())} of {len(f)} · {100 * f.mean():.0f}% [{lo:.0f}-{hi:.0f}]"


@st.cache_data(show_spinner="Naming the failure clusters...", max_entries=32)
def clusters(key: tuple, _ranks: dict[str, np.ndarray], _attributes: dict, _captions: Sequence[str], k: int
             ) -> tuple[dict[str, dict], pd.DataFrame]:
    """``failure_clusters`` of each run (label -> ranks of one direction) and their ``fix_table``, cached under
    ``key`` (the runs, their embeddings files, ground truth, direction and columns: what the ranks were made
    from)."""
    found = {label: failure_clusters(r, _attributes, _captions, k=k) for label, r in _ranks.items()}
    return found, fix_table(_ranks, found, _attributes, _captions, k) if len(found) >= 2 else pd.DataFrame()


def fix_table(ranks: dict[str, np.ndarray], found: dict[str, dict], attributes: dict, captions: Sequence[str],
              k: int) -> pd.DataFrame:
    """Every group that is a cluster under some run, scored under each run on the same items.

    Returns:
        Rows ``group, items, cluster under, <one column per run: failures of items, rate [95%]>, fixed by,
        not fixed by``; a run fixes a group when its failure rate minus that of the cluster run the group is worst
        under has a paired-bootstrap 95% interval wholly below 0.
    """
    groups: dict[tuple, dict] = {}
    for label, res in found.items():
        for c in res["clusters"]:
            groups.setdefault(tuple(map(tuple, c["values"])), {"name": c["name"], "of": []})["of"].append(label)
    rows = []
    for values, g in groups.items():
        idx = np.asarray(group_items(values, attributes, captions), dtype=np.int64)
        fails = {label: ~(np.asarray(r, dtype=np.float64)[idx] <= k) for label, r in ranks.items()}
        worst = max(g["of"], key=lambda label: int(fails[label].sum()))
        row = {"group": g["name"], "items": len(idx), "cluster under": ", ".join(g["of"]),
               **{label: _cell(f) for label, f in fails.items()}}
        fixed, kept = [], []
        for label, f in fails.items():
            if label != worst:
                d = rate_difference(f, fails[worst])
                text = f"{label} ({d['difference']:+.0f} points [{d['lo']:+.0f} to {d['hi']:+.0f}])"
                (fixed if d["hi"] < 0 else kept).append(text)
        rows.append({**row, "fixed by": "; ".join(fixed), "not fixed by": "; ".join(kept)})
    return pd.DataFrame(rows)


def cluster_rows(res: dict) -> pd.DataFrame:
    """A run's clusters: name, failures, items, share of all its failures, rate and lift with 95% intervals."""
    base = res["base_rate"]
    rows = [{"group": c["name"], "failures": c["failures"], "items": c["items"],
             "% of failures": round(100 * c["failures"] / max(res["failures"], 1), 1),
             "failure rate %": f"{c['rate']:.1f} [{c['ci95'][0]:.1f}-{c['ci95'][1]:.1f}]",
             "x base rate": f"{c['lift']:.1f}x [{c['ci95'][0] / base:.1f}-{c['ci95'][1] / base:.1f}]"}
            for c in res["clusters"]]
    return pd.DataFrame(rows)


def representative(members: Sequence[int], ranks: np.ndarray) -> int:
    """The failed query of median rank among a cluster's failures: a typical one, not the worst."""
    order = sorted(members, key=lambda i: (float(np.nan_to_num(ranks[i], nan=np.inf)), i))
    return order[len(order) // 2]


def actions(run: RunInfo, cluster: dict, data: dict, ranks: np.ndarray, k: int, gt: str) -> None:
    """A cluster's failed products, and its links: the map with them ringed, Search on a typical failed title, a
    saved slice."""
    members = cluster["members"]
    st.markdown(md(describe(cluster)))
    shown = members[:SHOWN]
    ui.product_grid([data["images"][i] for i in shown], [data["captions"][i] for i in shown])
    ids = [data["item_ids"][i] for i in members]
    query = data["captions"][representative(members, ranks)]
    c1, c2 = st.columns(2)
    with c1:
        pickers.locate_link(run, ids, f"failed past rank {k}: {cluster['name']}", scope="test",
                            label="Show its failures on the map", ground_truth=gt)
    with c2:
        st.page_link("pages/search.py", label="Search a failed title", icon=":material/search:", query_params={
            pickers.CATALOGUE_KEY: catalogues.catalogue_id(run.config).key, SEARCH_RUN: run.run_id,
            SEARCH_QUERY: query})
    st.caption(f"Search opens with this run and a typical failed title (the median rank among the cluster's "
               f"failures): {md(query)}")
    c1, c2, c3 = st.columns([3, 2, 1], vertical_alignment="bottom")
    name = c1.text_input("Save as a slice named", value=f"fails@{k} {run.run_id}: {cluster['name']}"[:slices.MAX_NAME],
                         key=f"cmp_fail_slice_name:{run.run_id}:{k}:{cluster['name']}", max_chars=slices.MAX_NAME)
    what = c2.radio("Items", ["failed", "whole group"], horizontal=True, key="cmp_fail_slice_items",
                    help="the cluster's failed queries, or every test item of its group (failed or not)")
    if c3.button("Save slice", key="cmp_fail_slice_save", icon=":material/bookmark_add:", disabled=not name.strip()):
        items = ids if what == "failed" else [data["item_ids"][i] for i in
                                              group_items(cluster["values"], data["attributes"], data["captions"])]
        folder = slices.slices_folder(run.path, catalogues.catalogue_id(run.config).fingerprint)
        try:
            saved = slices.save_slice(folder, name, items)
        except (ValueError, OSError) as err:
            st.error(md(f"Not saved: {err}"), icon=":material/error:")
        else:
            st.toast(f"Saved the slice {md(saved)} ({len(items):,} items): the Embeddings map lists it",
                     icon=":material/bookmark:")


def _key(run_dirs: Sequence, ground_truth: str) -> tuple:
    """What a run's ranks were made from: its folder and embeddings file (name: the weights; time), and the ground
    truth."""
    out = []
    for d in run_dirs:
        path = embeds.embeds_path(d)
        try:
            out.append((str(d), path.name, path.stat().st_mtime_ns) if path is not None else (str(d), "", 0))
        except FileNotFoundError:
            out.append((str(d), "", 0))
    return (tuple(out), ground_truth)


def section(catalogue: str, runs: Sequence[RunInfo], data: dict, gt: str) -> None:
    """Failure clusters of ``runs`` on their shared test items (``data``: ``state.compare_ranks``), which groups
    one run fixes and another does not, and one run's clusters with their links."""
    c1, c2 = st.columns(2)
    direction = c1.radio("Queries", list(SHORT), key="cmp_fail_dir", format_func=SHORT.get, horizontal=True)
    k = c2.selectbox("A query fails when its true match ranks past", KS, index=len(KS) - 1, key="cmp_fail_k")
    labels = {str(r.path): analysis.run_label(r) for r in runs if data["ranks"].get(str(r.path))}
    if not labels or not data["item_ids"]:
        st.info("The chosen runs share no test items.")
        return
    ranks = {labels[d]: np.asarray(data["ranks"][d][direction]) for d in labels}
    attrs = {a: data["attributes"][a] for a in slices.slice_attributes(data["attributes"])}
    found, table = clusters((_key(list(labels), gt), direction, k, tuple(attrs)), ranks, attrs, data["captions"], k)
    by = next(iter(found.values()))["by"]
    bases = "; ".join(f"{md(label)}: {r['failures']} of {r['items']} ({r['base_rate']:.1f}% "
                      f"[{wilson(r['failures'], r['items'])[0]:.1f}-{wilson(r['failures'], r['items'])[1]:.1f}])"
                      for label, r in found.items())
    st.caption(f"{len(data['item_ids'])} test queries ({SHORT[direction]}, {gt}-level ground truth) shared by the "
               f"chosen runs, each 1:1 gallery that size. Failed (true match past rank {k}), the base rate: {bases}. "
               f"A cluster is a group of products sharing up to three {by} whose failure rate's Wilson 95% interval "
               "lies wholly above its run's base rate, with 5 failures at least.")
    if len(table):
        st.dataframe(table, hide_index=True, key="cmp_fail_fixes", column_config={
            "group": st.column_config.TextColumn(pinned=True)})
        st.caption("Each run's clusters, scored under every run on the same items (failures of the group's "
                       "items, rate with a Wilson 95% interval). A run fixes a group when its failure rate minus that "
                   "of the run the group fails most under has a paired-bootstrap 95% interval (1000 resamples of "
                   "the group's items) wholly below 0.")
    run = pickers.run_select(catalogue, [r for r in runs if str(r.path) in labels], key="cmp_fail_run",
                             label="Clusters of run")
    res = found[labels[str(run.path)]]
    if not res["clusters"]:
        st.info(f"No group of products fails this run significantly more often than its base rate "
                f"({res['base_rate']:.1f}%) at rank {k}.")
        return
    event = st.dataframe(cluster_rows(res), hide_index=True, key="cmp_fail_table", on_select="rerun",
                         selection_mode="single-row", column_config={
                             "group": st.column_config.TextColumn(pinned=True)})
    st.caption(f"Share of this run's {res['failures']} failures, failure rate and how many times the base rate "
               f"({res['base_rate']:.1f}%), with the rate's Wilson 95% interval. Select a row to act on it "
               "(the first is shown).")
    picked = event.selection.rows if event else []
    actions(run, res["clusters"][picked[0] if picked else 0], data, ranks[labels[str(run.path)]], k, gt)
