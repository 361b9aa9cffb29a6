"""What every section of the bench shares: its config, a table row, interleaved timing and synthetic data."""
from __future__ import annotations

import contextlib
import io
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from ..data import generate_demo
from ..runs import read_status

SECTIONS = ("features", "training", "search", "umap", "dashboard", "explore", "metrics")
EXTRA_SECTIONS = ("load",)  # run only when asked for (--sections load): a server, many sessions, minutes


@dataclass
class BenchConfig:
    """What the bench measures and how much of it."""

    sizes: tuple[int, ...] = (10_000, 100_000, 1_000_000)  # gallery sizes for query latency
    dim: int = 512  # embedding size of the synthetic galleries (the models' default)
    data: str = "demo"  # catalogue for JPEGs and captions ("demo": built in, made on first use)
    feature_images: int = 512  # JPEGs pushed through feature extraction (a few batches: steady state, not start-up)
    image_queries: int = 40  # photo files timed through search_image (image -> top-10 titles)
    query_run_items: int = 60  # items of the tiny catalogue the image-query run is trained on
    recall_run: str | None = None  # a trained run whose captions section 3's recall rows use (None: train one)
    train_batch: int = 64  # batch size of the training-step comparison
    train_steps: int = 4  # timed steps per model and path
    models: tuple[str, ...] | None = None  # models to time a training step of (None: all registered)
    latency_queries: int = 100  # text queries timed per gallery (fewer on the largest galleries)
    metrics_items: int = 100_000  # items of the split the metrics core scores (section 7: memory stays bounded)
    umap_points: int = 10_000  # points in the UMAP map
    map_points: int = 100_000  # points in the Embeddings map timed in the browser (section 6)
    map_browser: bool = True  # time the map's first draw and recolouring in headless Chromium
    embed_items: int = 10_000  # gallery items embedded (texts through the model, images from features)
    reps: int = 4  # interleaved repetitions (rotating order) of each timed comparison; the best of each is kept
    sections: tuple[str, ...] = SECTIONS  # which parts to run
    dashboard: str = str(Path(__file__).resolve().parents[2] / "dashboard.py")  # this checkout's Streamlit app
    work_dir: str | None = None  # where faiss indexes, the tiny run and dashboard state go (None: a temp folder)
    load_run: str | None = None  # run folder the load section serves (None: the tiny run; it is copied first)
    load_sessions: int = 20  # browser sessions searching at the same moment
    load_single: int = 20  # searches of one session alone (the reference)
    load_rounds: int = 3  # times every session searches at the same moment
    load_soak: int = 500  # searches between the two memory readings
    load_timeout_s: float = 180.0  # time limit of each of its five phases; what is unfinished then is reported
    load_poll: bool = False  # the load's tabs also send the sidebar's timed reruns, as browser tabs do


QUICK = dict(sizes=(10_000, 100_000), feature_images=128, image_queries=20, train_batch=32, train_steps=3,
             latency_queries=40, metrics_items=10_000, umap_points=2_000, embed_items=2_000, reps=2,
             load_rounds=2, load_soak=200)


@dataclass
class Row:
    """One line of the table."""

    section: str  # which part of the bench
    measure: str  # what was measured
    measured: str  # xmodal's figure
    reference: str  # what it is measured against, from the same run
    score: str  # the number compared with the target
    target: str  # the target ("-" when there is none)
    met: bool | None  # None: no target, or skipped


def compare_many(fns: dict[str, Callable[[], object]], reps: int) -> dict[str, float]:
    """Best time of each of ``fns`` over ``reps`` interleaved rounds, the order rotating each round (two
    functions: ABBA...), so that all see the same machine and none always runs first or last."""
    names = list(fns)
    best = dict.fromkeys(names, float("inf"))
    for i in range(max(1, reps)):
        for name in names[i % len(names):] + names[:i % len(names)]:
            best[name] = min(best[name], timed(fns[name], 1))
    return best


def compare(bare: Callable[[], object], real: Callable[[], object], reps: int) -> tuple[float, float]:
    """Best times of ``bare`` and ``real`` over ``reps`` interleaved rounds in alternating order (ABBA)."""
    best = compare_many({"bare": bare, "real": real}, reps)
    return best["bare"], best["real"]


def timed(fn: Callable[[], object], reps: int) -> float:
    """Fastest of ``reps`` timed calls, in seconds."""
    times = []
    for _ in range(max(1, reps)):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def ms(seconds: float) -> str:
    """A duration for the table: milliseconds below 10 s, else whole seconds."""
    return f"{seconds * 1e3:.1f} ms" if seconds < 10 else f"{seconds:.0f} s"


def product_like(n: int, dim: int, seed: int = 0, queries: int = 0, chunk: int = 100_000
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Synthetic unit vectors with product-like structure, and queries near random items.

    64 categories, 4096 sub-types spread around them, items spread around their sub-type (an item's
    10 nearest neighbours sit at cosine ~0.3 while random pairs sit near 0); each query is an item plus
    noise of the same norm (cosine ~0.7 to it), like a caption matched to its photo. Uniform random vectors
    would have no neighbourhood structure at all, which no approximate index can exploit.

    Returns:
        Gallery ``[n, dim]`` and queries ``[queries, dim]``, L2-normalised float32.
    """
    g = torch.Generator().manual_seed(seed)
    coarse = F.normalize(torch.randn(64, dim, generator=g), dim=-1)
    fine = F.normalize(coarse[torch.randint(0, 64, (4096,), generator=g)]
                       + 0.5 * torch.randn(4096, dim, generator=g) / dim ** 0.5, dim=-1)
    out = torch.empty(n, dim)
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        z = torch.randint(0, 4096, (m,), generator=g)
        out[s:s + m] = F.normalize(fine[z] + 1.5 * torch.randn(m, dim, generator=g) / dim ** 0.5, dim=-1)
    pick = torch.randint(0, n, (queries,), generator=g)
    q = F.normalize(out[pick] + torch.randn(queries, dim, generator=g) / dim ** 0.5, dim=-1)
    return out, q


def text_model(vocab_size: int, dim: int):
    """An untrained cmpm-efficientnet (its BiLSTM text tower is what a query goes through), its weights marked
    fixed as a loaded run's are, so its text tower runs where a run's would; any ONNX export happens here, before
    a section's clock."""
    from ..models import create_model  # lazy: timm and the models, only in the sections that embed text
    from ..text import runtime  # lazy: as above (it loads the image runtime, hence timm)
    torch.manual_seed(0)
    model = create_model("cmpm-efficientnet", vocab_size=vocab_size, word_dim=100, embed_dim=dim).eval()
    runtime.select_runtime(runtime.fixed_weights(model), torch.device("cpu"))
    return model


def format_table(rows: list[Row]) -> str:
    """The rows as one aligned text table with a "target met?" column."""
    head = ("section", "measure", "xmodal", "limit (same run)", "figure", "target", "target met?")
    body = [(r.section, r.measure, r.measured, r.reference, r.score, r.target,
             "-" if r.met is None else ("yes" if r.met else "NO")) for r in rows]
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, body)])


def tiny_run(cfg: BenchConfig, work: Path) -> Path:
    """A cmpm-efficientnet run trained for one epoch on a tiny demo catalogue (at the backbone's default size)."""
    folder = work / "query_catalogue"  # made once per work folder, as the run: later sections reuse both
    data = folder if (folder / "demo.json").is_file() else generate_demo(folder, n=cfg.query_run_items, seed=3)
    if read_status(work / "runs" / "image-query").get("state") == "finished":
        return work / "runs" / "image-query"
    return train_run(work, "image-query", ["--model", "cmpm-efficientnet", "--data", str(data), "--epochs", "1",
                                           "--batch-size", "16"], "the tiny run")


def train_run(work: Path, run_id: str, args: list[str], what: str) -> Path:
    """``python -m xmodal.train *args`` into ``work/runs/<run_id>`` (replacing it), its output hidden; returns the
    run folder. Raises ``RuntimeError`` naming ``what`` and the command when training fails."""
    from ..training.cli import main as train  # lazy: the training loop and timm, only in the sections that train
    args = [*args, "--out", str(work / "runs"), "--run-id", run_id, "--overwrite"]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        code = train(args)
    if code != 0:
        raise RuntimeError(f"training {what} failed (python -m xmodal.train {' '.join(args)}: exit {code})")
    return work / "runs" / run_id
