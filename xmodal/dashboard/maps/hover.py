"""Photos on hover for the Embeddings map: a small ``st.components.v2`` component beside the Plotly chart.

Plotly's hover labels hold text only, so this component (no iframe: its script runs in the page) finds the
map's chart by its key, listens to its ``plotly_hover`` / ``plotly_unhover`` events and shows the hovered
item's cell of a sprite sheet (``sprites.py``) in a floating box by the mouse (Plotly's own label keeps
showing the title, escaped). The sheets reach the browser through Streamlit's own media endpoint
(``/media/<hash>.jpg`` on this server), each fetched the first time one of its points is hovered and then
cached by the browser; nothing leaves localhost.
"""
from __future__ import annotations

from pathlib import Path

import streamlit as st
from streamlit import runtime

from . import sprites

_JS = r"""
export default function (component) {
  const { data, parentElement } = component;
  let tip = parentElement.querySelector('.xmodal-hover-photo');
  if (!tip) {
    tip = document.createElement('div');
    tip.className = 'xmodal-hover-photo';
    tip.appendChild(document.createElement('div')).className = 'cell';
    parentElement.appendChild(tip);
  }
  const cell = tip.querySelector('.cell');
  const zoom = data.zoom, w = data.cell[0], h = data.cell[1];
  cell.style.width = (w * zoom) + 'px';
  cell.style.height = (h * zoom) + 'px';
  const loaded = new Set();
  const show = (ev) => {
    const p = ev && ev.points && ev.points[0];
    if (!p) return;
    const raw = p.customdata !== undefined ? p.customdata
      : (p.data && p.data.customdata ? p.data.customdata[p.pointIndex] : undefined);
    const i = Number(raw);
    if (!Number.isInteger(i) || i < 0 || i >= data.n) return;
    const sheet = Math.floor(i / data.per_sheet), j = i % data.per_sheet;
    const url = data.urls[sheet];
    if (!url) return;
    const cols = Math.min(data.cols, data.n - sheet * data.per_sheet);
    const rows = Math.ceil(Math.min(data.per_sheet, data.n - sheet * data.per_sheet) / data.cols);
    cell.style.backgroundImage = 'url("' + url + '")';
    cell.style.backgroundSize = (cols * w * zoom) + 'px ' + (rows * h * zoom) + 'px';
    const cx = -(j % data.cols) * w * zoom, cy = -Math.floor(j / data.cols) * h * zoom;
    cell.style.backgroundPosition = cx + 'px ' + cy + 'px';
    tip.dataset.item = String(i);
    if (!loaded.has(url)) {  // mark when the sheet is in: the browser test waits for it
      tip.dataset.loaded = '0';
      const img = new Image();
      img.onload = () => { loaded.add(url); if (tip.dataset.item === String(i)) tip.dataset.loaded = '1'; };
      img.src = url;
    } else {
      tip.dataset.loaded = '1';
    }
    const e = ev.event || {};
    const x = (e.clientX || 0), y = (e.clientY || 0), bw = w * zoom + 16, bh = h * zoom + 16;
    tip.style.left = Math.max(4, Math.min(window.innerWidth - bw - 4, x - bw - 24)) + 'px';
    tip.style.top = Math.max(4, Math.min(window.innerHeight - bh - 4, y - bh / 2)) + 'px';
    tip.style.display = 'block';
  };
  const hide = () => { tip.style.display = 'none'; };
  let gd = null;
  const attach = () => {
    const found = document.querySelector('[class*="st-key-' + data.chart + '"] .js-plotly-plot');
    if (found === gd || !found || typeof found.on !== 'function') return;
    if (gd && gd.removeListener) { gd.removeListener('plotly_hover', show); gd.removeListener('plotly_unhover', hide); }
    gd = found;
    gd.on('plotly_hover', show);
    gd.on('plotly_unhover', hide);
  };
  attach();
  const timer = setInterval(attach, 500);  // the chart mounts after this component, and redraws make a new one
  return () => {
    clearInterval(timer);
    if (gd && gd.removeListener) { gd.removeListener('plotly_hover', show); gd.removeListener('plotly_unhover', hide); }
    hide();
  };
}
"""

_CSS = """
.xmodal-hover-photo { position: fixed; display: none; z-index: 1000; pointer-events: none; padding: 6px;
  background: var(--st-background-color, #fff); border: 1px solid rgba(128, 128, 128, 0.5); border-radius: 6px;
  box-shadow: 0 2px 8px rgba(0, 0, 0, 0.25); max-width: 220px; }
.xmodal-hover-photo .cell { background-repeat: no-repeat; image-rendering: auto; }
"""

_component = None


def _mount():
    global _component
    if _component is None:
        _component = st.components.v2.component("xmodal_map_hover", js=_JS, css=_CSS)
    return _component


@st.cache_resource(max_entries=64, show_spinner=False)
def _sheet_bytes(path: str, mtime_ns: int) -> bytes:
    return Path(path).read_bytes()


def sheet_url(path: Path, coordinates: str) -> str | None:
    """A URL on this server for one sheet (Streamlit's media endpoint), None outside a running app."""
    if not runtime.exists():
        return None
    data = _sheet_bytes(str(path), path.stat().st_mtime_ns)
    return runtime.get_instance().media_file_mgr.add(data, "image/jpeg", coordinates)


def hover_photos(folder: Path, meta: dict, chart_key_prefix: str, zoom: float = 2.0) -> bool:
    """Mount the hover box for the map whose chart key starts with ``chart_key_prefix``, its sheets described
    by ``meta`` in ``folder``; False when they could not be served (then the map hovers titles only)."""
    try:
        urls = [sheet_url(Path(folder) / name, f"xmodal-sprite-{k}") for k, name in enumerate(meta["sheets"])]
    except OSError:
        return False
    if not urls or any(u is None for u in urls):
        return False
    payload = {"chart": chart_key_prefix, "urls": urls, "n": int(meta["n"]), "cols": int(meta["cols"]),
               "per_sheet": int(meta["per_sheet"]), "cell": [int(c) for c in meta["cell"]], "zoom": zoom}
    _mount()(key="emb_hover", data=payload, height=0)
    return True


def ready_meta(run_dir: Path, index) -> tuple[Path, dict | None]:
    """The sheet folder of a run's map of ``index`` and its description (None: not made yet)."""
    folder = sprites.sprite_folder(run_dir, sprites.fingerprint_of(run_dir), index)
    return folder, sprites.read_meta(folder)
