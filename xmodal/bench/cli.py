"""Runs the bench's sections and prints the table: ``python -m xmodal.bench --help``."""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch

from ..data import open_catalogue
from .common import EXTRA_SECTIONS, QUICK, SECTIONS, BenchConfig, Row, format_table


def _sections(cfg: BenchConfig, cat, work: Path) -> dict[str, Callable[[], list[Row]]]:
    """Each section's runner, imported when it runs: the sections import timm, the models, the training loop
    and the retrieval stack (seconds), which ``--help`` and a run of one section do not need all of."""
    def features():
        from .features import bench_features  # lazy: a section's imports (see the docstring)
        return bench_features(cfg, cat, work)

    def training():
        from .training import bench_training  # lazy: a section's imports
        return bench_training(cfg, cat)

    def search():
        from .search import bench_search  # lazy: a section's imports
        return bench_search(cfg, cat, work, Path(cfg.recall_run) if cfg.recall_run else None)

    def umap():
        from .maps import bench_umap  # lazy: a section's imports
        return bench_umap(cfg, cat)

    def dashboard():
        from .dashboard import bench_dashboard  # lazy: a section's imports
        return bench_dashboard(cfg, work)

    def explore():
        from .explore import bench_explore  # lazy: a section's imports
        return bench_explore(cfg, work)

    def metrics():
        from .scoring import bench_scoring  # lazy: a section's imports
        return bench_scoring(cfg)

    def load():
        from .load import bench_load  # lazy: a section's imports
        return bench_load(cfg, work)
    return {"features": features, "training": training, "search": search, "umap": umap, "dashboard": dashboard,
            "explore": explore, "metrics": metrics, "load": load}


def run_bench(cfg: BenchConfig, log: Callable[[str], None] = lambda s: None) -> list[Row]:
    """Run the asked-for sections and return their rows."""
    unknown = set(cfg.sections) - set(SECTIONS + EXTRA_SECTIONS)
    if unknown:
        raise ValueError(f"unknown bench sections {sorted(unknown)}; choose from {SECTIONS + EXTRA_SECTIONS}")
    cat = open_catalogue(cfg.data)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="xmodal-bench-") as tmp:
        work = Path(cfg.work_dir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        steps = _sections(cfg, cat, work)
        for name in SECTIONS + EXTRA_SECTIONS:
            if name in cfg.sections:
                t = time.perf_counter()
                log(f"[bench] {name}...")
                rows += steps[name]()
                log(f"[bench] {name} done in {time.perf_counter() - t:.0f} s")
    return rows


def cpu_model(cpuinfo: str | None = None) -> str:
    """The CPU's model name: the first "model name" of ``/proc/cpuinfo`` (``cpuinfo``: its text), else what
    ``platform`` says."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:  # not Linux
            cpuinfo = ""
    found = re.search(r"^model name\s*:\s*(.+?)\s*$", cpuinfo, re.MULTILINE)
    return found.group(1) if found else platform.processor() or platform.machine() or "unknown CPU"


def torch_blas(config: str | None = None) -> str:
    """The BLAS PyTorch was built with, from ``torch.__config__.show()`` (``config``: its text)."""
    config = torch.__config__.show() if config is None else config
    found = re.search(r"BLAS_INFO=([^,\s]+)", config) or re.search(r"LAPACK is enabled \(usually provided by (\w+)",
                                                                    config)
    return found.group(1).lower() if found else "unknown"


def numpy_blas(config: dict | None = None) -> str:
    """The BLAS numpy was built with (name and version), from ``numpy.show_config(mode="dicts")`` (``config``)."""
    if config is None:
        import numpy as np  # lazy: only the header needs it here
        try:
            config = np.show_config(mode="dicts")
        except TypeError:  # numpy before 1.26: no dicts mode
            config = getattr(np.__config__, "CONFIG", {})
    blas = (config or {}).get("Build Dependencies", {}).get("blas", {})
    return " ".join(str(blas[k]) for k in ("name", "version") if blas.get(k)) or "unknown"


def header(quick: bool, threads: int, load_start: float, seconds: float) -> str:
    """The table's first line: the machine (CPU model, cores, BLAS libraries), the runtimes' versions and the load."""
    from ..image.runtime import ENV, onnxruntime_version, requested_runtime  # lazy: timm, for the bench only
    import faiss  # lazy: faiss, for its version
    return (f"xmodal bench{' --quick' if quick else ''}: {cpu_model()}, {os.cpu_count()} CPU cores, "
            f"BLAS {torch_blas()} (torch) / {numpy_blas()} (numpy), torch {torch.__version__} ({threads} threads, "
            f"GOMP_SPINCOUNT {os.environ.get('GOMP_SPINCOUNT', 'unset')}), "
            f"onnxruntime {onnxruntime_version() or 'not installed'} ({ENV}={requested_runtime()}), "
            f"faiss {faiss.__version__}, load average {load_start:.1f} at the start, {os.getloadavg()[0]:.1f} at "
            f"the end, {seconds:.0f} s in all")


def main(argv: list[str] | None = None) -> int:
    from ..image.runtime import ENV, RUNTIMES  # lazy: timm, for main only
    about = sys.modules[__package__].__doc__  # the package's docstring (xmodal/bench/__init__.py)
    p = argparse.ArgumentParser(prog="python -m xmodal.bench", description=about.split("\n\n")[1])
    p.add_argument("--quick", action="store_true", help="small sizes, no 1M gallery (about 2-4 minutes)")
    p.add_argument("--sizes", type=int, nargs="+", help="gallery sizes (default 10000 100000 1000000)")
    p.add_argument("--sections", nargs="+", choices=SECTIONS + EXTRA_SECTIONS, default=list(SECTIONS),
                   help=f"default: all but {', '.join(EXTRA_SECTIONS)} (many dashboard sessions at once: ask for it)")
    p.add_argument("--load-run", metavar="DIR", help="run folder the load section serves (default: a tiny run)")
    p.add_argument("--load-sessions", type=int, default=BenchConfig.load_sessions,
                   help="sessions searching at the same moment in the load section (default: %(default)s)")
    p.add_argument("--load-poll", action="store_true",
                   help="the load section's sessions also send the sidebar's timed reruns, as browser tabs do")
    p.add_argument("--data", default="demo", help="catalogue folder for JPEGs and captions (default: demo)")
    p.add_argument("--dashboard", default=BenchConfig.dashboard,
                   help="Streamlit entry point to time (default: this checkout's dashboard.py, from any folder)")
    p.add_argument("--threads", type=int, help="torch, faiss and ONNX Runtime threads (default: torch's, one per core)")
    p.add_argument("--runtime", choices=RUNTIMES, help=f"the backbone runtime of xmodal's extraction (sets {ENV})")
    p.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    a = p.parse_args(argv)
    cfg = BenchConfig(**(QUICK if a.quick else {}))
    cfg.sections, cfg.data, cfg.dashboard = tuple(a.sections), a.data, a.dashboard
    cfg.load_run, cfg.load_sessions, cfg.load_poll = a.load_run, a.load_sessions, a.load_poll
    if a.sizes:
        cfg.sizes = tuple(a.sizes)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if a.runtime:
        os.environ[ENV] = a.runtime
    if a.threads:
        torch.set_num_threads(a.threads)
    load, threads = os.getloadavg()[0], torch.get_num_threads()
    t = time.perf_counter()
    rows = run_bench(cfg, log=lambda s: print(s, file=sys.stderr, flush=True))
    print(header(a.quick, threads, load, time.perf_counter() - t))
    print(format_table(rows))
    if a.json:
        Path(a.json).write_text(json.dumps([asdict(r) for r in rows], indent=1))
    return 0
