"""Performance bench: ``python -m xmodal.bench [--quick] [--sizes 10000 100000 1000000] [--json PATH]``.

Prints one table. Each figure stands beside the limit it is judged against, and both are measured in the
same run (the machine may be shared and noisy, so ratios count more than absolute numbers):

1. image feature extraction through ``xmodal.backbones.extract_features`` (a DataLoader over JPEG files)
   against a bare timm forward over the same images, decoded beforehand: data loading must overlap compute;
2. one training step of every registered model through ``make_loader`` + ``train_one_epoch`` against a bare
   forward + loss + backward + AdamW step over the same batches, already in memory;
3. text-to-top-10 query latency (text encoding included) over galleries of synthetic unit vectors: exact
   search against one pass over the gallery's memory (a plain sum over the same array), and the faiss
   index with its recall@10 against exact search;
4. a UMAP map of 10k points (the dashboard's ``project``) and embedding a 10k-item gallery;
5. the dashboard's cold start and a page switch in headless Chromium, when Chromium and Playwright exist.

Everything runs on synthetic data or the built-in demo catalogue; nothing is downloaded.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .bench_dashboard import bench_dashboard, dashboard_skip_reason  # noqa: F401  (section 5; re-exported)

SECTIONS = ("features", "training", "search", "umap", "dashboard")


@dataclass
class BenchConfig:
    """What the bench measures and how much of it."""

    sizes: tuple[int, ...] = (10_000, 100_000, 1_000_000)  # gallery sizes for query latency
    dim: int = 512  # embedding size of the synthetic galleries (the models' default)
    data: str = "demo"  # catalogue for JPEGs and captions ("demo": built in, made on first use)
    feature_images: int = 192  # JPEGs pushed through feature extraction
    train_batch: int = 64  # batch size of the training-step comparison
    train_steps: int = 4  # timed steps per model and path
    models: tuple[str, ...] | None = None  # models to time a training step of (None: all registered)
    latency_queries: int = 100  # text queries timed per gallery (fewer on the largest galleries)
    recall_queries: int = 200  # queries for recall@10 of the faiss index against exact search
    umap_points: int = 10_000  # points in the UMAP map
    embed_items: int = 10_000  # gallery items embedded (texts through the model, images from features)
    reps: int = 4  # interleaved repetitions (ABBA order) of each timed comparison; the best of each is kept
    sections: tuple[str, ...] = SECTIONS  # which parts to run
    dashboard: str = "dashboard.py"  # the Streamlit entry point, relative to the working directory
    work_dir: str | None = None  # where faiss indexes and dashboard state go (None: a temporary folder)


QUICK = dict(sizes=(10_000, 100_000), feature_images=64, train_batch=32, train_steps=3, latency_queries=40,
             recall_queries=100, umap_points=2_000, embed_items=2_000, reps=2)


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


def _compare(bare: Callable[[], object], real: Callable[[], object], reps: int) -> tuple[float, float]:
    """Best times of ``bare`` and ``real`` over ``reps`` interleaved rounds, in alternating order (ABBA), so that
    both see the same machine and neither always runs first."""
    t_bare = t_real = float("inf")
    for i in range(max(1, reps)):
        for fn in ((bare, real) if i % 2 == 0 else (real, bare)):
            t = _best(fn, 1)
            if fn is bare:
                t_bare = min(t_bare, t)
            else:
                t_real = min(t_real, t)
    return t_bare, t_real


def _best(fn: Callable[[], object], reps: int) -> float:
    """Fastest of ``reps`` timed calls, in seconds."""
    times = []
    for _ in range(max(1, reps)):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def _ms(seconds: float) -> str:
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


def _text_model(vocab_size: int, dim: int):
    """An untrained cmpm-efficientnet (its BiLSTM text tower is what a query goes through)."""
    from .models import create_model
    torch.manual_seed(0)
    return create_model("cmpm-efficientnet", vocab_size=vocab_size, word_dim=100, embed_dim=dim).eval()


# ----------------------------------------------------------------------------------------------- 1
def bench_features(cfg: BenchConfig, cat) -> list[Row]:
    """extract_features (DataLoader over JPEGs) vs a bare timm forward over pre-decoded tensors."""
    from PIL import Image

    from .backbones import BACKBONES, create_backbone, extract_features, image_transform, loader_workers
    model, source = create_backbone("efficientnet")
    spec = BACKBONES["efficientnet"]
    size = spec.default_size if source else spec.scratch_size
    tf = image_transform("efficientnet", size)
    paths = [cat.image_path(i % len(cat)) for i in range(cfg.feature_images)]
    pixels = []
    for p in paths:
        with Image.open(p) as im:
            pixels.append(tf(im.convert("RGB")))
    pixels = torch.stack(pixels)  # [N, 3, H, W], decoded before the clock starts
    model.eval()
    cpu = torch.device("cpu")

    @torch.no_grad()
    def bare():
        for s in range(0, len(pixels), 64):
            model(pixels[s:s + 64])

    def real():
        extract_features(model, paths, tf, cpu, batch_size=64, progress=False)

    with torch.no_grad():
        model(pixels[:8])  # warm-up
    t_bare, t_real = _compare(bare, real, cfg.reps)
    n, ratio = len(paths), t_real / t_bare
    return [Row("1 features", f"image features: {spec.timm_name} {size[0]}x{size[1]}, {n} JPEGs, "
                f"{loader_workers()} loader worker(s)", f"{n / t_real:.1f} img/s (extract_features)",
                f"{n / t_bare:.1f} img/s (bare timm forward)", f"{ratio:.2f}x", "<= 1.10x", ratio <= 1.10)]


# ----------------------------------------------------------------------------------------------- 2
def bench_training(cfg: BenchConfig, cat) -> list[Row]:
    """train_one_epoch over make_loader vs a bare forward+loss+backward+AdamW loop, per model."""
    from .models import list_models
    from .pipeline import caption_groups
    from .text import Vocab
    index = np.arange(cfg.train_batch * cfg.train_steps) % len(cat)
    vocab = Vocab.build(cat.captions)
    tokens = vocab.encode(cat.captions)[torch.as_tensor(index)]  # [n, L]
    labels = torch.as_tensor(caption_groups([cat.captions[i] for i in index]))
    rows = []
    for name in cfg.models or list_models():
        rows.append(_train_row(cfg, cat, name, len(vocab), index, tokens, labels))
        gc.collect()
    return rows


def _train_row(cfg: BenchConfig, cat, name: str, vocab_size: int, index: np.ndarray, tokens: torch.Tensor,
               labels: torch.Tensor) -> Row:
    """One model's training step, the real loop against the bare one."""
    from .distributed import DistContext
    from .models import create_model
    from .training import PairDataset, make_loader, make_optimizer, train_one_epoch
    cpu, ctx, b, n = torch.device("cpu"), DistContext(), cfg.train_batch, len(index)
    torch.manual_seed(0)
    model = create_model(name, vocab_size=vocab_size, word_dim=100, num_classes=int(labels.max()) + 1)
    if model.image_input == "features":  # random rows stand in for the on-disk feature cache
        images = torch.randn(n, model.cfg.feature_dim)
        data, warm = PairDataset(images, tokens, labels), PairDataset(images[:b], tokens[:b], labels[:b])
    else:
        data = PairDataset.from_images(cat, index, model.cfg, tokens, labels)
        warm = PairDataset.from_images(cat, index[:b], model.cfg, tokens[:b], labels[:b])
        images = torch.stack([data.images[i] for i in range(n)])  # decoded once, for the bare loop
    opt, sched = make_optimizer(model, 1e-3, 0.1, 1e-4, total_steps=100 * cfg.train_steps, warmup_frac=0.05)

    def real(ds=data):
        train_one_epoch(model, model.loss, make_loader(ds, b, ctx, 0, cpu), opt, sched, cpu, 1,
                        lambda *a: None, ctx, progress=False)

    batches = []
    for s in range(0, n, b):
        tok = tokens[s:s + b]
        length = int((tok != 0).sum(1).max().clamp_min(1))
        batches.append((images[s:s + b], tok[:, :length], labels[s:s + b]))  # trimmed as the loop does

    def bare():
        model.train()
        for x, tok, lab in batches:
            loss = sum(model.loss(model(x, tok), lab).values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    real(warm)  # warm-up: first LSTM/backbone calls, allocator
    t_bare, t_real = _compare(bare, real, cfg.reps)
    ratio, steps = t_real / t_bare, cfg.train_steps
    return Row("2 training", f"train step: {name} ({model.image_input}), batch {b}",
               f"{_ms(t_real / steps)}/step (train_one_epoch)", f"{_ms(t_bare / steps)}/step (bare fwd+loss+bwd+AdamW)",
               f"{ratio:.2f}x", "<= 1.20x", ratio <= 1.20)


# ----------------------------------------------------------------------------------------------- 3
def bench_umap(cfg: BenchConfig, cat) -> list[Row]:
    """The dashboard's UMAP of ``umap_points`` points, and embedding a gallery of ``embed_items``."""
    from .pipeline import embed_features, embed_texts
    from .text import Vocab
    rows = []
    points, _ = product_like(cfg.umap_points, cfg.dim, seed=1)
    try:
        from .dashboard.projection import project
        how = "xmodal.dashboard.projection.project"
    except ImportError:  # the dashboard package is optional here: same settings, straight from umap
        how = "umap-learn"

        def project(x, method="umap"):
            import umap
            return umap.UMAP(n_components=2, n_neighbors=15, min_dist=0.1, metric="cosine", random_state=0,
                             n_jobs=1).fit_transform(x), "umap"
    t = time.perf_counter()
    _, used = project(points.numpy(), "umap")
    umap_s = time.perf_counter() - t
    rows.append(Row("4 maps", f"UMAP of {cfg.umap_points:,} points ({how}, {used}; first call, numba compiles)",
                    f"{umap_s:.1f} s", "budget 60 s (10k points)", f"{umap_s:.1f} s", "<= 60 s", umap_s <= 60))
    vocab = Vocab.build(cat.captions)
    model = _text_model(len(vocab), cfg.dim)
    texts = [cat.captions[i % len(cat)] for i in range(cfg.embed_items)]
    cpu = torch.device("cpu")
    t = time.perf_counter()
    embed_texts(model, vocab, texts, cpu)
    text_s = time.perf_counter() - t
    feats = torch.randn(cfg.embed_items, model.cfg.feature_dim)  # stands in for the feature cache
    t = time.perf_counter()
    embed_features(model, feats, cpu)
    image_s = time.perf_counter() - t
    n = cfg.embed_items
    rows.append(Row("4 maps", f"embed {n:,} gallery captions (cmpm BiLSTM)", f"{text_s:.1f} s ({n / text_s:,.0f}/s)",
                    "-", "-", "-", None))
    rows.append(Row("4 maps", f"embed {n:,} gallery images from cached features", f"{image_s:.2f} s "
                    f"({n / image_s:,.0f}/s)", "-", "-", "-", None))
    return rows


# ----------------------------------------------------------------------------------------------- 5
def format_table(rows: list[Row]) -> str:
    """The rows as one aligned text table with a "target met?" column."""
    head = ("section", "measure", "xmodal", "limit (same run)", "figure", "target", "target met?")
    body = [(r.section, r.measure, r.measured, r.reference, r.score, r.target,
             "-" if r.met is None else ("yes" if r.met else "NO")) for r in rows]
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, body)])


def _bench_search(cfg: BenchConfig, cat, work: Path) -> list[Row]:
    from .bench_search import bench_search  # imports this module: loaded only when it runs
    return bench_search(cfg, cat, work)


def run_bench(cfg: BenchConfig, log: Callable[[str], None] = lambda s: None) -> list[Row]:
    """Run the asked-for sections and return their rows."""
    from .data import open_catalogue
    unknown = set(cfg.sections) - set(SECTIONS)
    if unknown:
        raise ValueError(f"unknown bench sections {sorted(unknown)}; choose from {SECTIONS}")
    cat = open_catalogue(cfg.data)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="xmodal-bench-") as tmp:
        work = Path(cfg.work_dir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        steps = {"features": lambda: bench_features(cfg, cat), "training": lambda: bench_training(cfg, cat),
                 "search": lambda: _bench_search(cfg, cat, work), "umap": lambda: bench_umap(cfg, cat),
                 "dashboard": lambda: bench_dashboard(cfg, work)}
        for name in SECTIONS:
            if name in cfg.sections:
                t = time.perf_counter()
                log(f"[bench] {name}...")
                rows += steps[name]()
                log(f"[bench] {name} done in {time.perf_counter() - t:.0f} s")
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m xmodal.bench", description=__doc__.split("\n\n")[1])
    p.add_argument("--quick", action="store_true", help="small sizes, no 1M gallery (about 1-2 minutes)")
    p.add_argument("--sizes", type=int, nargs="+", help="gallery sizes (default 10000 100000 1000000)")
    p.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    p.add_argument("--data", default="demo", help="catalogue folder for JPEGs and captions (default: demo)")
    p.add_argument("--dashboard", default="dashboard.py", help="Streamlit entry point to time")
    p.add_argument("--threads", type=int, help="torch (and faiss) threads (default: torch's, one per core)")
    p.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    a = p.parse_args(argv)
    cfg = BenchConfig(**(QUICK if a.quick else {}))
    cfg.sections, cfg.data, cfg.dashboard = tuple(a.sections), a.data, a.dashboard
    if a.sizes:
        cfg.sizes = tuple(a.sizes)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if a.threads:
        torch.set_num_threads(a.threads)
    import faiss
    load, threads = os.getloadavg()[0], torch.get_num_threads()
    t = time.perf_counter()
    rows = run_bench(cfg, log=lambda s: print(s, file=sys.stderr, flush=True))
    print(f"xmodal bench{' --quick' if a.quick else ''}: {os.cpu_count()} CPU cores, torch {torch.__version__} "
          f"({threads} threads), faiss {faiss.__version__}, "
          f"load average {load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end, "
          f"{time.perf_counter() - t:.0f} s in all")
    print(format_table(rows))
    if a.json:
        Path(a.json).write_text(json.dumps([asdict(r) for r in rows], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
