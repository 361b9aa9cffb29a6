"""The dashboard's cached loaders, all in one place.

``st.cache_resource`` holds shared objects (catalogues, loaded runs with their models) and the large read-only
arrays of catalogue embeddings and maps (100k items: no copy per rerun); ``st.cache_data`` holds tables
(ranks, metrics, splits). Every loader is keyed by a
stamp (a file's modification time) as well as its path, so a retrained run or an edited catalogue is
reloaded rather than served stale.

PyTorch loads on the first call that needs a model (``run``: the Search page), not on import. Compare and
Embeddings read what background processes computed (``embeds``, ``projection``) with NumPy alone, so no page
waits for a gallery to be embedded; ``warm_pytorch`` loads PyTorch in the background for Search meanwhile.

Many sessions share one server: a loaded run (model, both galleries embedded and indexed) is one object for
all of them, made once under the cache's lock, so twenty sessions searching a fresh server at the same moment
wait for one gallery instead of each embedding the catalogue. After each large load ``settle_heap`` puts
the long-lived objects out of the cycle collector's reach: Streamlit runs a full ``gc.collect()`` after every
script run, which with PyTorch loaded walked ~460k objects (0.2-0.3 s holding the GIL) per rerun of every
session. The queries themselves queue on one thread (``xmodal.dashboard.queries``).
"""
from __future__ import annotations

import csv
import functools
import gc
import importlib
import io
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import streamlit as st
from PIL import Image

from ..data import Catalogue, CatalogueError, open_catalogue, resolve_data
from ..data.images import thumbnail_jpeg
from ..evaluation.metrics import split_ranks
from ..runs import read_json, read_metrics
from . import analysis
from .maps import embeds, projection
from .jobs import training as jobs

if TYPE_CHECKING:
    from ..retrieval.run import Run

DEFAULT_CATALOGUE = "demo"
_WARM_LOCK = threading.Lock()
_warming: list[threading.Thread] = []  # the one background import of PyTorch, once started


def warm_pytorch() -> None:
    """Import ``xmodal.retrieval.run`` (PyTorch, timm, the models) in a background thread, once per server.

    Called after a page has drawn, so the first visit to Compare, Embeddings or Search finds PyTorch loaded
    (or waits only for the rest of it). The thread only imports: it never calls Streamlit. A page that
    imports ``xmodal.retrieval.run`` meanwhile waits on Python's import lock for the same module.
    """
    with _WARM_LOCK:
        if _warming or "xmodal.retrieval.run" in sys.modules:
            return
        thread = threading.Thread(target=_import_pytorch, daemon=True, name="xmodal-warm-pytorch")
        _warming.append(thread)
        thread.start()


def _import_pytorch() -> None:
    importlib.import_module("xmodal.retrieval.run")
    importlib.import_module("timm")  # loading a run builds its image backbone; the library imports timm lazily
    settle_heap()


def settle_heap() -> None:
    """Collect garbage once, then freeze every object alive now (modules, PyTorch, loaded runs and catalogues)
    into the collector's permanent generation (``gc.freeze``).

    Streamlit's collection after each script run then walks only what was made since, about 1 ms instead of
    0.2-0.3 s with PyTorch loaded. Frozen objects are still freed by reference counting; one that later becomes
    garbage only through a reference cycle is never collected, so this is called only after large loads, when
    what is alive is mostly modules and cached objects that live as long as the server.
    """
    gc.collect()
    gc.freeze()


def pytorch_loaded() -> bool:
    """Whether ``xmodal.retrieval.run`` has finished importing (not merely begun, in the background)."""
    return "xmodal.retrieval.run" in sys.modules and not any(t.is_alive() for t in _warming)


def _mtime(path: Path) -> int:
    try:
        return Path(path).stat().st_mtime_ns
    except FileNotFoundError:
        return 0


def current_catalogue() -> str:
    """The catalogue picked in the sidebar (``demo`` or a folder path)."""
    return st.session_state.get("catalogue") or DEFAULT_CATALOGUE


@st.cache_resource(show_spinner="Loading the catalogue (each image is checked once)...", max_entries=8)
def _catalogue(spec: str, stamp: int) -> Catalogue:
    cat = open_catalogue(spec)
    settle_heap()
    return cat


def catalogue(spec: str) -> Catalogue:
    """The validated catalogue ``spec`` names (the demo is generated on first use, ~5 s)."""
    folder = resolve_data(spec)
    return _catalogue(spec, _mtime(folder / "captions.csv"))


def _gallery_catalogue(run_dir: Path) -> Catalogue | None:
    """The cached catalogue that a run searches, when it is still the one the run was trained on.

    ``load_run`` would load (and check every image of) the run's catalogue again for each run; the runs
    trained on one catalogue share this cached copy instead. None when the fingerprints differ or the
    catalogue cannot be loaded: ``load_run`` then loads it itself and reports any error.
    """
    data = (read_json(run_dir / "config.json", default={}) or {}).get("data") or {}
    spec = "demo" if data.get("name") == "demo" else data.get("path")
    if not spec:
        return None
    try:
        cat = catalogue(spec)
    except (CatalogueError, OSError, ValueError, csv.Error):
        return None
    return cat if cat.fingerprint == data.get("fingerprint") else None


@st.cache_resource(show_spinner="Loading the run and its gallery (PyTorch loads on the first one)...", max_entries=16)
def _run(run_dir: str, stamp: int, fingerprint: str, _catalogue: Catalogue | None) -> Run:
    from ..retrieval.run import load_run  # PyTorch: loaded by the first page that needs a model, not on import
    loaded = load_run(run_dir, catalogue=_catalogue)
    for kind in ("images", "texts"):  # embedded (or read from the run folder) and indexed here, once, under the
        loaded.gallery(kind)  # cache's lock: a Run builds them lazily, and concurrent first queries each built them
    settle_heap()
    return loaded


def run(run_dir: str | Path) -> Run:
    """A loaded run (model, vocabulary, gallery catalogue, both galleries ready to search), one object shared by
    every session, kept across reruns and pages."""
    cat = _gallery_catalogue(Path(run_dir))
    return _run(str(run_dir), weights_stamp(run_dir), cat.fingerprint if cat else "",
                _catalogue=cat)


def weights_stamp(run_dir: str | Path) -> int:
    """When a run's best weights last changed (0: none yet): what ``run`` reloads on."""
    return _mtime(Path(run_dir) / "best.safetensors")


@st.cache_resource
def device_options() -> list[str]:
    """Training devices this machine has (cuda only when visible)."""
    return jobs.device_options()


@st.cache_data(show_spinner=False, max_entries=64)
def _metrics(run_dir: str, stamp: int) -> list[dict]:
    return read_metrics(Path(run_dir))


def metrics(run_dir: str | Path) -> list[dict]:
    """metrics.jsonl rows of a run, re-read when the file changes."""
    return _metrics(str(run_dir), _mtime(Path(run_dir) / "metrics.jsonl"))


@st.cache_data(show_spinner=False, max_entries=64)
def _split_ids(run_dir: str, stamp: int, split: str) -> list[str]:
    return (read_json(Path(run_dir) / "splits.json", default={}) or {}).get(split, [])


def test_split_ids(run_dir: str | Path, split: str = "test") -> list[str]:
    """The item ids of a run's test (or other) split, from its splits.json."""
    return _split_ids(str(run_dir), _mtime(Path(run_dir) / "splits.json"), split)


# The catalogue embeddings and maps are held with cache_resource, not cache_data: a whole catalogue is
# 100k items, and cache_data would copy (unpickle) those arrays on every rerun. Callers never modify them.
@st.cache_resource(show_spinner=False, max_entries=16)
def _embeddings(path: str, stamp: int) -> dict:
    return embeds.load(Path(path))


def embeddings(run_dir: str | Path) -> dict | None:
    """A run's whole-catalogue embeddings (``embeds.load``), or None until its background job has made them.
    A damaged file is removed (``ready`` turns False) and None returned: the page starts the job again."""
    path = embeds.embeds_path(Path(run_dir))
    if path is None or not path.is_file():
        return None
    try:
        return _embeddings(str(path), _mtime(path))
    except FileNotFoundError:
        return None


def embeddings_ready(run_dirs: list[Path]) -> bool:
    """Whether every run's catalogue embeddings are on disk (a stat per run; nothing is read)."""
    return all(embeds.ready(d) for d in run_dirs)


@st.cache_data(show_spinner="Ranking every test query under each run...", max_entries=16)
def _compare_ranks(run_dirs: tuple[str, ...], stamps: tuple[int, ...], ground_truth: str) -> dict:
    """Per-query ranks of each run over the test items all of them share, from their embeddings files.

    Returns:
        ``{"item_ids", "captions", "images", "attributes", "ranks": {run dir: {direction: ranks [Q]}}}``.
    """
    embs = {d: embeddings(d) for d in run_dirs}
    if not embs or any(e is None for e in embs.values()):
        return {"item_ids": [], "captions": [], "images": [], "attributes": {}, "ranks": {}}
    tests = {d: {x for x, s in zip(e["item_ids"], e["split"]) if s == "test"} for d, e in embs.items()}
    common = set.intersection(*tests.values())
    first = embs[run_dirs[0]]
    keep = [i for i, x in enumerate(first["item_ids"]) if x in common]
    ids = [first["item_ids"][i] for i in keep]
    captions = [first["captions"][i] for i in keep]
    ranks = {}
    for d, e in embs.items():
        pos = {x: i for i, x in enumerate(e["item_ids"])}
        sel = np.array([pos[x] for x in ids], dtype=np.int64)
        ranks[d] = split_ranks(e["image"][sel], e["text"][sel], captions, ground_truth) if len(sel) else {}
    return {"item_ids": ids, "captions": captions, "images": [first["images"][i] for i in keep],
            "attributes": {k: [v[i] for i in keep] for k, v in first["attributes"].items()}, "ranks": ranks}


def compare_ranks(run_dirs: list[Path], ground_truth: str) -> dict:
    """Per-query ranks of each run over their shared test items (see ``_compare_ranks``), cached; empty until
    every run's embeddings are on disk (``embeds.start`` makes them in the background)."""
    dirs = tuple(str(d) for d in run_dirs)
    stamps = tuple(_mtime(embeds.embeds_path(Path(d)) or Path("/nonexistent")) for d in dirs)
    return _compare_ranks(dirs, stamps, ground_truth)


@st.cache_resource(show_spinner=False, max_entries=8)
def _projection(path: str, stamp: int, source_stamp: int) -> dict:
    return projection.load(Path(path))


def load_projection(path: Path) -> dict:
    """A cached map (``projection.load``: the map and its items' embeddings, titles, photos, attributes)."""
    source = embeds.embeds_path(Path(path).parent)
    return _projection(str(path), _mtime(path), _mtime(source) if source else 0)


@st.cache_data(show_spinner=False, max_entries=2000)
def thumbnail(path: str, height: int = 64) -> str | None:
    """A product photo as a small ``data:`` URI, for image columns in tables; None when it cannot be read."""
    try:
        return analysis.thumbnail_uri(path, height)
    except (OSError, ValueError):  # a photo deleted since the catalogue was loaded, or one PIL cannot decode
        return None


@functools.lru_cache(maxsize=4000)  # not st.cache_data, which hashes the key and copies the bytes on every call
def _photo(path: str, width: int, stamp: int) -> bytes:
    return thumbnail_jpeg(path, (width, 4 * width), quality=90)


@functools.lru_cache(maxsize=8)
def blank_photo(width: int) -> bytes:
    """A light grey JPEG in a product photo's place (one that cannot be read), ``width`` px wide."""
    buf = io.BytesIO()
    Image.new("RGB", (int(width), int(width) * 4 // 3), (235, 235, 235)).save(buf, "JPEG")
    return buf.getvalue()


def photo(path: str | Path, width: int) -> bytes:
    """A product photo as an upright JPEG at most ``width`` px wide (``thumbnail_jpeg``), made once for every
    session and re-made when the file changes.

    Raises:
        ImageError: the file is missing, unreadable or not an image (``reason`` says which).
    """
    return _photo(str(path), int(width), _mtime(Path(path)))


def clear_runs() -> None:
    """Forget loaded runs (after one is deleted or retrained in place)."""
    _run.clear()
    _embeddings.clear()
    _compare_ranks.clear()
    _projection.clear()
