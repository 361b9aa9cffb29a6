"""Pure functions behind the dashboard: tables of runs, disagreements,
plot selections, collapse detection and the modality gap. No Streamlit here; everything is testable.
Metrics per slice are in ``slices``.
"""
from __future__ import annotations

import base64
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from ..evaluation import metrics
from .. import runs as _runs
from ..data.images import thumbnail_jpeg
from ..evaluation.metrics import DIRECTIONS, KS
from ..evaluation.protocols import FIXED_GALLERY
from ..evaluation.report import backbone_description, paired_rows
from ..runs import RunInfo
from .jobs.tasks import format_eta

# No PyTorch here: ranks come from xmodal.evaluation.metrics, which is NumPy only, so no page that ranks or reads run
# folders waits for PyTorch to load.
SHORT = {"text_to_image": "t2i", "image_to_text": "i2t"}
STEP_KEYS = {"kind", "epoch", "step", "global_step", "lr", "time"}


def catalogue_label(config: dict) -> str:
    """A short name for the catalogue a run was trained on: ``demo`` or the folder's name."""
    data = config.get("data") or {}
    name = str(data.get("name") or data.get("path") or "?")
    return name if name == "demo" else Path(name).name or name


def run_label(info: RunInfo) -> str:
    """The run id, prefixed with ``model · `` when the id does not already name the model."""
    return info.run_id if info.run_id.startswith(info.model) else f"{info.model} · {info.run_id}"


def backbone_label(config: dict) -> str:
    """Where a run's image backbone weights came from, and how it trained: never a silent switch (the report's
    ``backbone_description``: ImageNet from the hub or a package, distilled offline, or random init)."""
    mcfg = config.get("model_config") or {}
    return f"{mcfg.get('backbone', '?')}: {backbone_description(config)}"


def lock_holder(run_dir: Path, now: float | None = None) -> str:
    """Who holds a run folder's lock, as ``pid@host since HH:MM:SS (3m05s ago)``; empty when nobody does.

    Reads ``xmodal.runs.read_lock`` (None for a free folder or a dead or stale holder). The host and command
    come from a file in the run folder: show the text escaped.
    """
    read_lock = getattr(_runs, "read_lock", None)  # absent in versions without run-folder locks
    if read_lock is None:
        return ""
    try:
        lock = read_lock(Path(run_dir))
    except (OSError, ValueError, TypeError, AttributeError):  # an unreadable lock file: nobody can be named
        return ""
    if not isinstance(lock, dict):
        return ""
    started, since = lock.get("started"), ""
    if isinstance(started, (int, float)) and not isinstance(started, bool):
        try:
            since = (f" since {time.strftime('%H:%M:%S', time.localtime(started))} "
                     f"({format_eta(max(0.0, (now or time.time()) - started))} ago)")
        except (ValueError, OverflowError, OSError):  # not a time
            since = ""
    return f"{lock.get('pid') or '?'}@{lock.get('host') or '?'}{since}"


def status_text(status: dict) -> str:
    """A run's state in words: ``finished``, or for a running run what it is doing (``running: epoch 2/8``,
    ``running: extracting image features``)."""
    state = str(status.get("state", "unknown"))
    if state != "running":
        return state
    if status.get("phase") == "training" and status.get("epoch"):
        return f"running: epoch {status['epoch']}/{status.get('epochs') or '?'}"
    return f"running: {status['phase']}" if status.get("phase") else state


def runs_table(runs: Sequence[RunInfo], ground_truth: str = "caption") -> pd.DataFrame:
    """One row per run: model, backbone weights, catalogue, status, who holds its lock, epochs, best val rsum,
    test R@1/R@10 and the error of a failed run.

    Args:
        runs: from ``xmodal.runs.list_runs``.
        ground_truth: ``caption`` (identical captions all count) or ``item`` (only the item's own pair).
    """
    rows = []
    for r in runs:
        st, test, best = r.status, r.test or {}, r.best or {}
        epochs = st.get("epochs") or (r.config.get("train") or {}).get("epochs")
        row: dict[str, Any] = {
            "run": r.run_id, "model": r.model, "backbone": backbone_label(r.config),
            "catalogue": catalogue_label(r.config),
            "status": status_text(st),
            "held by": lock_holder(r.path),
            "epochs": f"{st.get('epoch', best.get('epoch', 0)) or 0}/{epochs or '?'}",
            "best val rsum": best.get("val_rsum"),
        }
        metrics = test.get(ground_truth) or {}
        for d in DIRECTIONS:
            for k in (1, 10):
                row[f"test {SHORT[d]} R@{k}"] = metrics.get(f"{d}/R@{k}")
        row["error"] = st.get("error") or ""
        rows.append(row)
    cols = ["run", "model", "backbone", "catalogue", "status", "held by", "epochs", "best val rsum",
            *[f"test {SHORT[d]} R@{k}" for d in DIRECTIONS for k in (1, 10)], "error"]
    return pd.DataFrame(rows, columns=cols)


METRIC_KEYS = [f"{d}/{m}" for d in DIRECTIONS for m in (*(f"R@{k}" for k in KS), "median_rank")]
INTERVAL_SOURCES = {"recorded": "bootstrap over the test queries (test.json)",
                    "ranks": "bootstrap over the test queries (from its recorded ranks)",
                    "wilson": "Wilson (recall only: no ranks recorded)"}


def _holds(interval: object, value: object) -> bool:
    """Whether ``interval`` is a finite ``(lo, hi)`` that contains ``value`` (an interval that does not is
    someone else's: a run folder edited, or copied under other numbers)."""
    try:
        lo, hi = (float(x) for x in interval)  # type: ignore[union-attr]
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    return all(map(np.isfinite, (lo, hi, v))) and lo - 1e-6 <= v <= hi + 1e-6


def metric_intervals(test: dict, ground_truth: str = "caption") -> tuple[dict[str, tuple[float, float]], list[str]]:
    """The 95% interval of every R@K and median rank of a run's test.json, and the sources they come from.

    The metrics core's own first (``ci95``, a bootstrap over the test queries); where one is missing or does
    not contain its number, a bootstrap of the recorded per-query ranks (``metrics.bootstrap_intervals``, the
    same recipe); else, for recall, the Wilson interval over ``gallery_size`` queries, as the slices have.

    Returns:
        (``{"text_to_image/R@1": (lo, hi), ...}``, the ``INTERVAL_SOURCES`` keys used).
    """
    scores = test.get(ground_truth) or {}
    recorded = (test.get("ci95") or {}).get(ground_truth) or {}
    out: dict[str, tuple[float, float]] = {}
    used: list[str] = []
    todo = [k for k in METRIC_KEYS if scores.get(k) is not None]
    for key in todo:
        if _holds(recorded.get(key), scores[key]):
            out[key] = tuple(map(float, recorded[key]))
            used.append("recorded")
    missing = [k for k in todo if k not in out]
    ranks = ((test.get("ranks") or {}).get(ground_truth) or {}) if missing else {}
    if missing and isinstance(ranks, dict) and all(isinstance(ranks.get(d), list) and ranks[d] for d in DIRECTIONS):
        try:
            boot = metrics.bootstrap_intervals({d: np.asarray(ranks[d], dtype=np.float64) for d in DIRECTIONS})
        except (TypeError, ValueError):
            boot = {}
        for key in missing:
            if _holds(boot.get(key), scores[key]):
                out[key] = tuple(boot[key])
                used.append("ranks")
    n = test.get("gallery_size")
    for key in [k for k in todo if k not in out and "/R@" in k]:
        if isinstance(n, int) and not isinstance(n, bool) and n > 0 and _holds((0, 100), scores[key]):
            out[key] = metrics.wilson(int(round(float(scores[key]) * n / 100)), n)
            used.append("wilson")
    return out, list(dict.fromkeys(used))


def test_metrics_table(runs: Sequence[RunInfo], ground_truth: str = "caption") -> pd.DataFrame:
    """Finished runs' test metrics: R@1/5/10 and median rank in both directions, each with its 95% interval
    (``... lo`` / ``... hi`` columns, ``metric_intervals``: test.json's ``ci95`` when recorded), one row per run;
    ``interval`` says where the intervals came from."""
    rows = []
    for r in runs:
        test = r.test or {}
        scores = test.get(ground_truth)
        if not scores:
            continue
        ci, sources = metric_intervals(test, ground_truth)
        row = {"run": run_label(r), "model": r.model, "backbone": backbone_label(r.config),
               "catalogue": catalogue_label(r.config), "gallery": test.get("gallery_size")}
        for d in DIRECTIONS:
            cols = [*((f"R@{k}", f"{SHORT[d]} R@{k}") for k in KS), ("median_rank", f"{SHORT[d]} median rank")]
            for key, col in cols:
                row[col] = scores.get(f"{d}/{key}")
                row[f"{col} lo"], row[f"{col} hi"] = ci.get(f"{d}/{key}") or (None, None)
        row["rsum"] = scores.get("rsum")
        row.update(protocol_columns(test))
        row["interval"] = "; ".join(INTERVAL_SOURCES[s] for s in sources)
        rows.append(row)
    return pd.DataFrame(rows)


FIXED_COLUMN = f"gallery-{FIXED_GALLERY} rsum"


def protocol_columns(test: dict) -> dict:
    """The proxies for new products beside the split's own figures (``xmodal.evaluation.protocols``): the
    title-deduplicated gallery's t2i R@1 / R@10 and rsum, its size, and rsum in galleries of 500 of its products,
    each with its recorded interval (``... lo`` / ``... hi``); None where test.json predates them."""
    dedup, ci = test.get("dedup") or {}, (test.get("ci95") or {}).get("dedup") or {}
    fixed = test.get("fixed_gallery") or {}  # None: fewer distinct titles than a fixed gallery holds
    cells = {"dedup t2i R@1": (dedup, ci, "text_to_image/R@1"), "dedup t2i R@10": (dedup, ci, "text_to_image/R@10"),
             "dedup rsum": (dedup, ci, "rsum"),
             FIXED_COLUMN: (fixed.get("metrics") or {}, fixed.get("ci95") or {}, "rsum")}
    out: dict = {"dedup gallery": test.get("dedup_gallery_size")}
    for col, (values, intervals, key) in cells.items():
        out[col] = values.get(key)
        out[f"{col} lo"], out[f"{col} hi"] = intervals.get(key) or (None, None)
    return out


def interval_sources(table: pd.DataFrame) -> str:
    """Where the intervals of a ``test_metrics_table`` come from, each source once ("" when none)."""
    return "; ".join(dict.fromkeys(x for v in table.get("interval", []) for x in str(v).split("; ") if x))


def with_intervals(table: pd.DataFrame) -> pd.DataFrame:
    """``test_metrics_table`` for display: each metric as ``52.9 [49.8-56.0]`` text (its interval folded in)."""
    out = table.copy()
    for col in [c for c in table.columns if f"{c} lo" in table.columns]:
        fmt = "{:.0f}" if "median" in col else "{:.1f}"
        out[col] = [("" if pd.isna(v) else fmt.format(v)) + (f" [{fmt.format(lo)}-{fmt.format(hi)}]"
                                                           if pd.notna(lo) and pd.notna(hi) else "")
                    for v, lo, hi in zip(table[col], table[f"{col} lo"], table[f"{col} hi"])]
        out = out.drop(columns=[f"{col} lo", f"{col} hi"])
    return out


def paired_table(runs: Sequence[RunInfo], ground_truth: str = "caption") -> pd.DataFrame:
    """Each pair of ``runs``: the paired-bootstrap difference of rsum and t2i R@1 on their shared test queries
    (``xmodal.evaluation.report.paired_rows``), labelled; pairs on other catalogues or splits say why they are not
    compared."""
    names = {r.path.name: run_label(r) for r in runs}
    rows = paired_rows([r.path for r in runs], ground_truth)
    df = pd.DataFrame([{"A": names.get(x["a"], x["a"]), "B": names.get(x["b"], x["b"]), "metric": x.get("metric", ""),
                        "A - B": x.get("difference"), "95% interval": (f"{x['lo']:+.1f} to {x['hi']:+.1f}"
                                                                      if "lo" in x else ""),
                        "verdict": x.get("verdict") or x["compared"]} for x in rows])
    return df.round({"A - B": 1}) if len(df) else df


def split_positions(item_ids: Sequence[str], wanted: Iterable[str]) -> np.ndarray:
    """Catalogue positions of the ``wanted`` item ids, in catalogue order; ids not in it are dropped."""
    wanted = set(wanted)
    return np.array([i for i, x in enumerate(item_ids) if x in wanted], dtype=np.int64)


def titles_coincide(captions: Sequence[str]) -> bool:
    """True when no two of ``captions`` share a normalised title: caption- and item-level ranks are then equal."""
    groups = metrics.title_groups(captions)
    return len(set(groups.tolist())) == len(groups)


def recall_table_coincides(test: dict | None) -> bool:
    """True when a run's test.json has the same caption- and item-level numbers (no shared test titles)."""
    test = test or {}
    cap, item = test.get("caption") or {}, test.get("item") or {}
    keys = [k for k in cap if "/R@" in k or k.endswith("median_rank")]
    return bool(keys) and all(cap.get(k) == item.get(k) for k in keys)


def metrics_coincide(rows: Sequence[dict], prefix: str = "val") -> bool:
    """True when every logged epoch has equal caption- (``val/``) and item-level (``val_item/``) recall."""
    epochs = [r for r in rows if r.get("kind") == "epoch"]
    pairs = [(v, r.get(f"{prefix}_item/{k[len(prefix) + 1:]}")) for r in epochs for k, v in r.items()
             if k.startswith(f"{prefix}/") and "/R@" in k]
    return bool(pairs) and all(a == b for a, b in pairs)


def disagreements(ranks_by_run: dict[str, np.ndarray], top: int = 10) -> pd.DataFrame:
    """The queries on which runs disagree most about the true match's rank.

    Disagreement is the spread of log2 ranks (best vs worst run), so rank 1 against 30 outweighs 200
    against 400. Ties keep query order.

    Args:
        ranks_by_run: run name -> ranks ``[Q]`` over the same queries.
        top: rows to keep.

    Returns:
        Index = query position; one column of ranks per run, then ``spread``; sorted by spread, descending.
        Empty with fewer than two runs.
    """
    if len(ranks_by_run) < 2:
        return pd.DataFrame()
    names = list(ranks_by_run)
    lengths = {len(v) for v in ranks_by_run.values()}
    if len(lengths) != 1:
        raise ValueError(f"runs rank different numbers of queries: {lengths}; compare them on one test split")
    table = np.stack([np.asarray(ranks_by_run[n]) for n in names], axis=1)  # [Q, R]
    logs = np.log2(table.astype(np.float64))
    spread = logs.max(1) - logs.min(1)
    order = np.argsort(-spread, kind="stable")[:top]
    df = pd.DataFrame(table[order], columns=names, index=order)
    df["spread"] = spread[order]
    return df[df["spread"] > 0]


def selected_items(points: Iterable[dict], n_items: int | None = None) -> list[int]:
    """Item positions chosen by a plotly box/lasso selection, first-seen order, no duplicates.

    Each marker of the projection carries its item's position as ``customdata``: a number, a one-element
    list, or ``{"0": n}`` (how the browser sends a row of a typed array). Points without it (the pair lines)
    are ignored, and so are positions outside ``[0, n_items)``.
    """
    out: list[int] = []
    seen: set[int] = set()
    for p in points or []:
        data = p.get("customdata")
        if isinstance(data, dict):
            data = next(iter(data.values()), None)
        if isinstance(data, (list, tuple)):
            data = data[0] if data else None
        if data is None:
            continue
        try:
            item = int(data)
        except (TypeError, ValueError):
            continue
        if item in seen or item < 0 or (n_items is not None and item >= n_items):
            continue
        seen.add(item)
        out.append(item)
    return out


def loss_terms(rows: Sequence[dict]) -> list[str]:
    """Names of the logged loss values (``loss`` first, then each term), from metrics.jsonl rows."""
    terms: list[str] = []
    for r in rows:
        if r.get("kind") == "step":
            for k, v in r.items():
                if k not in STEP_KEYS and isinstance(v, (int, float)) and k not in terms:
                    terms.append(k)
    return sorted(terms, key=lambda t: (t != "loss", t))


def detect_collapse(rows: Sequence[dict], window: int = 20, flat_tol: float = 0.02, sim_tol: float = 0.05
                    ) -> str | None:
    """A warning when a run has collapsed: its loss has gone flat and matching pairs are no closer than
    random ones.

    Args:
        rows: metrics.jsonl rows of one run.
        window: the last ``window`` step losses are compared with the ``window`` before them.
        flat_tol: relative change of the mean loss below which it counts as flat.
        sim_tol: positive and negative similarity count as equal when ``pos - neg`` is below this share of
            the room left above the negative similarity, ``1 - neg`` (so 0.97 vs 0.97 is collapse, while
            0.6 vs 0.05 is a healthy gap).

    Returns:
        The warning text, or None when the run looks healthy (or is too young to tell).
    """
    steps = [r["loss"] for r in rows if r.get("kind") == "step" and isinstance(r.get("loss"), (int, float))]
    epochs = [r for r in rows if r.get("kind") == "epoch" and "pos_sim" in r and "neg_sim" in r]
    if len(steps) < 4 or not epochs:
        return None
    w = max(2, min(window, len(steps) // 2))
    prev, last = float(np.mean(steps[-2 * w:-w])), float(np.mean(steps[-w:]))
    change = abs(last - prev) / max(abs(prev), 1e-8)
    pos, neg = float(epochs[-1]["pos_sim"]), float(epochs[-1]["neg_sim"])
    if change < flat_tol and pos - neg < sim_tol * max(1.0 - neg, 1e-6):
        return (f"collapsed: the loss has gone flat (last {w} steps {last:.4g} vs {prev:.4g} before) and matching "
                f"pairs are no closer than random ones (cosine {pos:.3f} vs {neg:.3f} at epoch "
                f"{epochs[-1]['epoch']}). Try more epochs, a lower learning rate, a larger batch or another model.")
    return None


def modality_gap(image_embeds: Any, text_embeds: Any, seed: int = 0) -> dict[str, Any]:
    """Distances between each item's image and caption points, and between random image/caption pairs.

    Returns:
        ``paired`` [N] and ``random`` [N] euclidean distances (unit vectors: 0..2), and ``centroid_gap``,
        the distance between the mean image and mean caption embedding.
    """
    img = np.asarray(image_embeds, dtype=np.float64)
    txt = np.asarray(text_embeds, dtype=np.float64)
    n = len(img)
    paired = np.linalg.norm(img - txt, axis=1)
    shift = int(np.random.default_rng(seed).integers(1, n)) if n > 1 else 0  # a roll: no item meets itself
    random = np.linalg.norm(img - np.roll(txt, shift, axis=0), axis=1)
    return {"paired": paired, "random": random,
            "centroid_gap": float(np.linalg.norm(img.mean(0) - txt.mean(0))) if n else 0.0}


def thumbnail_uri(path: str | Path, height: int = 64) -> str:
    """A small upright JPEG of the image at ``path`` as a ``data:`` URI (for image columns in tables)."""
    return "data:image/jpeg;base64," + base64.b64encode(thumbnail_jpeg(path, (height * 4, height), 80)).decode()


def age(updated: float | None, now: float | None = None) -> float:
    """Seconds since ``updated`` (infinite when unknown)."""
    return float("inf") if not updated else (now or time.time()) - float(updated)
