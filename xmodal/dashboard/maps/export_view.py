"""The Embeddings page's download of the current selection with its embeddings (``xmodal.retrieval.export``)."""
from __future__ import annotations

import re
from typing import Sequence

import streamlit as st

from ...retrieval.export import frame_bytes, selection_frame

FORMATS = {"CSV": ("csv", "text/csv"), "Parquet": ("parquet", "application/vnd.apache.parquet")}


def selection_download(run_id: str, data: dict, chosen: Sequence[int]) -> None:
    """A format choice and a download button: the chosen map items' ids, captions and both embeddings.

    Args:
        data: the map's arrays (``item_ids``, ``captions``, ``image_embeds``, ``text_embeds``).
        chosen: positions in ``data``.
    """
    chosen = [int(i) for i in chosen]
    if not chosen:
        return
    c1, c2 = st.columns([1, 2], vertical_alignment="bottom")
    label = c1.radio("Embeddings as", list(FORMATS), horizontal=True, key="emb_export_format")
    fmt, mime = FORMATS[label]
    frame = selection_frame([data["item_ids"][i] for i in chosen], [data["captions"][i] for i in chosen],
                            data["image_embeds"][chosen], data["text_embeds"][chosen])
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", run_id)[:80]  # a file name of safe characters only
    c2.download_button(f"Download {len(chosen):,} item(s) with their embeddings ({label})", frame_bytes(frame, fmt),
                       file_name=f"{name}_selection.{fmt}", mime=mime, key="emb_export_embeddings",
                       icon=":material/download:")
