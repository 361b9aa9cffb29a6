"""Training page: live loss curves (every term), validation R@K and median rank per epoch, positive vs
negative similarity, several runs overlaid, and a warning when a run collapses."""
from __future__ import annotations

import streamlit as st

from xmodal.dashboard import analysis, plots, state, ui
from xmodal.dashboard.escape import md
from xmodal.runs import list_runs, read_status

ui.page_guard("pages/training.py")
st.title("Training")
runs = list_runs()
if not runs:
    ui.no_runs_hint("the Training page")
    st.stop()

labels = {analysis.run_label(r): r for r in runs}
default = [analysis.run_label(r) for r in runs if r.status.get("state") == "running"] or list(labels)[:3]
chosen = st.multiselect("Runs to overlay", list(labels), default=default, key="train_runs")
c1, c2 = st.columns(2)
smooth = c1.slider("Smooth the loss over steps", 1, 50, 5, key="train_smooth")
level = c2.radio("Validation ground truth", ["caption", "item"], horizontal=True, key="train_gt",
                 help="caption: items with identical titles all count as correct; item: only the item's own pair")
selected = [labels[c] for c in chosen]
live = any(r.status.get("state") == "running" for r in selected)


@st.fragment(run_every=3 if live else None)
def curves() -> None:
    """The charts; re-drawn every few seconds while a chosen run is training."""
    if not selected:
        st.info("Pick one or more runs above.")
        return
    metrics = {}
    for r in selected:
        status = read_status(r.path)
        if status.get("state") == "failed":
            ui.show_failure(r.path, status)
        elif status.get("state") == "running":
            st.caption(f"**{md(r.run_id)}** is training: epoch {md(status.get('epoch', '?'))}/"
                       f"{md(status.get('epochs', '?'))}, {md(status.get('phase', ''))}; the charts refresh by "
                       "themselves.")
        rows = state.metrics(r.path)
        if warning := analysis.detect_collapse(rows):
            st.warning(f"**{md(r.run_id)}** {md(warning)}", icon=":material/warning:")
        metrics[analysis.run_label(r)] = rows
    if not any(metrics.values()):
        st.info("No metrics logged yet: the first steps appear after feature extraction.")
        return
    st.subheader("Loss (every term)")
    st.plotly_chart(plots.loss_figure(metrics, smooth), key="loss_fig")
    st.subheader(f"Validation retrieval per epoch ({level}-level)")
    st.plotly_chart(plots.validation_figure(metrics, "val" if level == "caption" else "val_item"), key="val_fig")
    st.subheader("Positive vs negative cosine similarity (validation)")
    st.caption("Matching pairs should pull away from random pairs; when the two lines meet, the model has collapsed.")
    st.plotly_chart(plots.similarity_figure(metrics), key="sim_fig")


curves()
