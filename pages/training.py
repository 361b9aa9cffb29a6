"""Training page: live loss curves (every term), validation R@K and median rank per epoch, positive vs
negative similarity, the runs of one catalogue overlaid, and a warning when a run collapses."""
from __future__ import annotations

import streamlit as st

from xmodal.dashboard import analysis, catalogues, pickers, plots, state, ui
from xmodal.dashboard.escape import md
from xmodal.dashboard.pickers import GROUND_TRUTHS
from xmodal.runs import read_status

pickers.hold_url()  # a URL opened on a freshly started server keeps its view
ui.page_guard("pages/training.py")
st.title("Training")
runs = ui.visible_runs()
pending = catalogues.pending_runs()
if pending:
    st.caption("Launched, not training yet: curves appear here after the first steps.")
    ui.pending_panel(pending)
if not runs:
    if not pending:
        ui.no_runs_hint("the Training page")
    st.stop()

pickers.open_view("train_")  # opened bare (from the sidebar): this session's last choice comes back
cat, group = pickers.catalogue_picker(runs)
running = [r for r in group if r.status.get("state") == "running"]
default = running or catalogues.default_runs(group, lambda r: state.metrics(r.path), limit=3) or group[:3]
c0, c1, c2 = st.columns([3, 1, 1])
with c0:  # in the URL even when they are today's default: the runs training now, or the best ones
    selected = pickers.runs_picker(cat, group, key="train_runs", label="Runs to overlay", default=default)
smooth = pickers.url_widget(c1.slider, "train_smooth", pickers.number(1, 50, integer=True), 5,
                            "Smooth the loss over steps", 1, 50)
level = pickers.url_widget(c2.radio, "train_gt", pickers.choice(GROUND_TRUTHS), "caption", "Validation ground truth",
                           list(GROUND_TRUTHS), horizontal=True,
                           help="caption: items with identical titles all count as correct; item: only the item's "
                                "own pair")
live = any(r.status.get("state") == "running" for r in selected)


def _state_line(r) -> None:
    """What a chosen run is doing now, in words."""
    status = read_status(r.path)
    if status.get("state") == "failed":
        ui.show_failure(r.path, status)
    elif status.get("state") == "running":
        if status.get("phase") == "training":
            st.caption(f"**{md(r.run_id)}** is training: epoch {md(status.get('epoch', '?'))}/"
                       f"{md(status.get('epochs', '?'))}, step {md(status.get('step', '?'))}/"
                       f"{md(status.get('steps_per_epoch', '?'))}; the charts refresh by themselves.")
        else:
            st.caption(f"**{md(r.run_id)}**: {md(status.get('phase') or 'starting')}; its curves appear after the "
                       "first steps.")


@st.fragment(run_every=3 if live else None)
def curves() -> None:
    """The charts; re-drawn every few seconds while a chosen run is training."""
    if not selected:
        st.info("Pick one or more runs above.")
        return
    metrics = {}
    for r in selected:
        _state_line(r)
        rows = state.metrics(r.path)
        if warning := analysis.detect_collapse(rows):
            st.warning(f"**{md(r.run_id)}** {md(warning)}", icon=":material/warning:")
        metrics[analysis.run_label(r)] = rows
    if not any(any(x.get("kind") == "step" for x in rows) for rows in metrics.values()):
        st.info("No training step logged yet: the loss appears after the first steps.", icon=":material/hourglass_top:")
        return
    st.subheader("Loss (every term)")
    st.plotly_chart(plots.loss_figure(metrics, smooth), key="loss_fig")
    with_epochs = {n: rows for n, rows in metrics.items() if any(x.get("kind") == "epoch" for x in rows)}
    if not with_epochs:
        st.info("Validation recall and the similarity of matching pairs appear when the first epoch ends.",
                icon=":material/hourglass_top:")
        return
    st.subheader(f"Validation retrieval per epoch ({level}-level)")
    if all(analysis.metrics_coincide(rows) for rows in with_epochs.values()):
        st.caption("On this catalogue's validation split no two items share a title, so caption- and item-level "
                   "recall are the same numbers.")
    st.plotly_chart(plots.validation_figure(with_epochs, "val" if level == "caption" else "val_item"), key="val_fig")
    sizes = sorted({len(state.test_split_ids(r.path, "val")) for r in selected} - {0})
    if sizes:
        st.caption(f"Recall and median rank among each run's validation split "
                   f"({' or '.join(f'{s:,}' for s in sizes)} products), {level}-level.")
    st.subheader("Positive vs negative cosine similarity (validation)")
    st.caption("Matching pairs should pull away from random pairs; when the two lines meet, the model has collapsed.")
    st.plotly_chart(plots.similarity_figure(with_epochs), key="sim_fig")


curves()
