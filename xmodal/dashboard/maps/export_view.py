"""The Embeddings page's download of the current selection with its embeddings (``xmodal.retrieval.export``).

It takes what the selection panel shows: when *Find in the selection* (``panels.selection``, widget
``FIND_KEY``) holds words, only the products whose titles hold them, as *Export CSV* does; and each row carries
the item's split and attributes beside its id, title and both embeddings.
"""
from __future__ import annotations

import io
import re
from typing import Sequence

import numpy as np
import pandas as pd
import streamlit as st

from ...retrieval.export import frame_bytes, selection_frame, spreadsheet_safe
from ..escape import md
from .view import find_in_titles

FORMATS = {"CSV": ("csv", "text/csv"), "Parquet": ("parquet", "application/vnd.apache.parquet")}
FIND_KEY = "emb_sel_find"  # the selection panel's "Find in the selection" box


def found(data: dict, chosen: Sequence[int], words: str | None) -> list[int]:
    """The chosen map positions whose titles hold every word of ``words`` (all of them for no words)."""
    chosen = [int(i) for i in chosen]
    if not isinstance(words, str) or not words.strip():
        return chosen
    return [chosen[j] for j in find_in_titles([data["captions"][i] for i in chosen], words)]


def item_columns(data: dict, chosen: Sequence[int]) -> dict[str, list[str]]:
    """``split`` and each attribute column of the chosen items (what *Export CSV* carries), as text."""
    out = {"split": [str(data["split"][i]) for i in chosen]} if "split" in data else {}
    for name, values in (data.get("attributes") or {}).items():
        if name not in ("item_id", "caption", "image_embedding", "text_embedding", *out):
            out[str(name)] = [str(values[i]) for i in chosen]
    return out


def selection_bytes(data: dict, chosen: Sequence[int], fmt: str) -> bytes:
    """The chosen items as a ``csv`` or ``parquet`` file: id, title, split and attributes, then both embeddings
    (as ``frame_bytes`` lays them out: CSV columns ``image_0..``, ``text_0..``; Parquet lists)."""
    chosen = [int(i) for i in chosen]
    frame = selection_frame([data["item_ids"][i] for i in chosen], [data["captions"][i] for i in chosen],
                            np.asarray(data["image_embeds"])[chosen], np.asarray(data["text_embeds"])[chosen])
    extra = item_columns(data, chosen)
    for k, (name, values) in enumerate(extra.items()):
        frame.insert(2 + k, name, values)
    if fmt != "csv" or not extra:
        return frame_bytes(frame, fmt)
    # frame_bytes writes the id and title as text cells; the split and attributes go beside them the same way
    base = pd.read_csv(io.BytesIO(frame_bytes(frame.drop(columns=list(extra)), "csv")),
                       dtype=str, keep_default_na=False)
    cells = pd.DataFrame({n: [spreadsheet_safe(v) for v in vals] for n, vals in extra.items()}, index=base.index)
    return pd.concat([base.iloc[:, :2], cells, base.iloc[:, 2:]], axis=1).to_csv(index=False).encode("utf-8")


def selection_download(run_id: str, data: dict, chosen: Sequence[int], words: str | None = None) -> None:
    """A format choice and a download button: the chosen map items (those *Find in the selection* keeps) with
    their ids, captions, split, attributes and both embeddings.

    Args:
        data: the map's arrays (``item_ids``, ``captions``, ``image_embeds``, ``text_embeds``; ``split`` and
            ``attributes`` when the map has them).
        chosen: positions in ``data``.
        words: the words to find in the titles; None: what the selection panel's box (``FIND_KEY``) holds.
    """
    chosen = found(data, chosen, st.session_state.get(FIND_KEY, "") if words is None else words)
    if not chosen:
        return
    c1, c2 = st.columns([1, 2], vertical_alignment="bottom")
    label = c1.radio("Embeddings as", list(FORMATS), horizontal=True, key="emb_export_format")
    fmt, mime = FORMATS[label]
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", run_id)[:80]  # a file name of safe characters only
    c2.download_button(f"Download {len(chosen):,} item(s) with their embeddings ({label})",
                       selection_bytes(data, chosen, fmt), file_name=f"{name}_selection.{fmt}", mime=mime,
                       key="emb_export_embeddings", icon=":material/download:")
    columns = "".join(f"{md(c)}, " for c in item_columns(data, chosen[:1]))
    st.caption(f"Each row: item id, title, {columns}then both embeddings.")
