"""Section 1 of ``python -m xmodal.bench``: the frozen backbone on JPEGs.

- Feature extraction through ``xmodal.image.extraction.extract_features`` (JPEG files decoded and run through the
  backbone in the runtime ``xmodal.image.runtime`` picks: on several cores a lane per core, each decoding a batch and
  running it on one thread) against the bare forwards over the same images decoded beforehand: PyTorch
  eager, PyTorch ``channels_last``, ONNX Runtime on every core, and ONNX Runtime on one thread per core with a
  caller per core (the lanes without their decoding). The limit is the fastest of
  them (the best runtime's bare forward) plus the decoding of the JPEGs, timed on one thread and spread over
  the cores the forward uses: no extractor from files can beat that. The ratio to the bare forward alone is
  shown too; PyTorch's forward stands beside them.
- The ONNX export that ONNX Runtime needs (once per backbone, weights and input size), and how many images
  of extraction repay it.
- Image query latency: a photo file to its top-10 titles through ``xmodal.load_run(...).search_image`` on a
  tiny trained run, decoding and preprocessing included, against the same photo's decode + preprocessing
  plus the bare image tower (the best runtime's forward of the backbone, then the run's projection head on
  its output), timed right after each query.
"""
from __future__ import annotations

import copy
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..cachefile import write_cache
from ..data.images import rgb_array
from ..image import runtime
from ..image.backbones import BACKBONES, create_backbone, image_transform
from ..image.extraction import LANE_BATCH, extract_features, lanes_for
from ..retrieval.run import load_run
from .common import BenchConfig, Row, compare_many, ms, tiny_run

SECTION = "1 features"


def _backbone(cat, n: int):
    """The packaged ImageNet EfficientNet-Lite0, its input size, transform and ``n`` of the catalogue's JPEGs."""
    model, source = create_backbone("efficientnet")
    spec = BACKBONES["efficientnet"]
    size = spec.default_size if source else spec.scratch_size
    return model.eval(), size, image_transform("efficientnet", size), [cat.image_path(i % len(cat)) for i in range(n)]


def _graph(model, size: tuple[int, int]):
    """The backbone's ONNX Runtime session, the seconds its export took, and why there is none (or None).

    The export is always timed; a graph the cache lacks is stored there so ``extract_features`` finds it.
    """
    if runtime.onnxruntime_version() is None:
        return None, None, "onnxruntime not installed"
    try:
        t = time.perf_counter()
        data = runtime.export_graph(model, size)
        export_s = time.perf_counter() - t
    except Exception as err:  # shown in the table; extraction falls back to PyTorch
        return None, None, f"export failed: {type(err).__name__}: {str(err).splitlines()[0][:80] if str(err) else ''}"
    path = runtime.graph_path(runtime.graph_key(model, size))
    if not path.is_file():
        write_cache(path, lambda f: f.write(data))
    graph = runtime.load_graph(model, size)
    return graph, export_s, None if graph is not None else "the graph does not match PyTorch (see the log)"


def bare_forwards(model, graph, pixels: torch.Tensor, raw: torch.Tensor, batch: int = 64, lanes=None
                  ) -> dict[str, Callable[[], object]]:
    """Bare forwards over pre-decoded pixels ``[N, 3, H, W]``, by runtime: torch and channels_last on the
    normalised ``pixels``, onnxruntime on ``raw`` uint8 pixels (its graph normalises inside itself); with
    ``lanes`` (a one-thread session), that session called from a thread per core on batches of ``LANE_BATCH``."""
    batches = [pixels[s:s + batch] for s in range(0, len(pixels), batch)]
    channels_last = copy.deepcopy(model).to(memory_format=torch.channels_last)

    @torch.no_grad()
    def eager():
        for x in batches:
            model(x)

    @torch.no_grad()
    def cl():
        for x in batches:
            channels_last(x.contiguous(memory_format=torch.channels_last))

    fns = {"torch": eager, "torch channels_last": cl}
    if graph is not None:
        arrays = [raw[s:s + batch].numpy() for s in range(0, len(raw), batch)]  # uint8, as the loader gives
        fns["onnxruntime"] = lambda: [graph.raw(x) for x in arrays]
    if lanes is not None:
        small = [raw[s:s + LANE_BATCH].numpy() for s in range(0, len(raw), LANE_BATCH)]
        cores = max(1, torch.get_num_threads())

        def lanes_forward():
            with ThreadPoolExecutor(cores) as pool:
                list(pool.map(lanes.raw, small))
        fns[f"onnxruntime 1 thread x {cores} callers"] = lanes_forward
    return fns


def bench_features(cfg: BenchConfig, cat, work: Path) -> list[Row]:
    """Extraction against the bare forwards of every runtime, the export, and image query latency."""
    model, size, tf, paths = _backbone(cat, cfg.feature_images)
    batches = [paths[s:s + LANE_BATCH] for s in range(0, len(paths), LANE_BATCH)]
    raw = torch.cat([tf.load(b) for b in batches])  # [N, 3, H, W] uint8, decoded before the clock
    pixels = tf.normalise(raw)  # [N, 3, H, W] normalised
    graph, export_s, why = _graph(model, size)
    cpu = torch.device("cpu")
    used = "onnxruntime" if runtime.select_runtime(model, cpu, size, 0, len(paths)) is not None else "torch"
    threads = graph.threads if used == "onnxruntime" else torch.get_num_threads()
    lanes = lanes_for(len(paths)) if used == "onnxruntime" else 1
    one_thread = runtime.load_graph(model, size, threads=1) if lanes > 1 else None
    fns = bare_forwards(model, graph, pixels, raw, lanes=one_thread)
    fns["xmodal"] = lambda: extract_features(model, paths, tf, cpu, batch_size=64, progress=False)
    fns["decode"] = lambda: [tf.load(b) for b in batches]  # the lanes' decoding on one thread, as the limit counts it
    for fn in fns.values():
        fn()  # warm-up: first calls, allocators, the loader's first fork
    times = compare_many(fns, cfg.reps)
    n, real, decode = len(paths), times.pop("xmodal"), times.pop("decode")
    best = min(times, key=times.get)
    # The real limit: the best bare forward plus the JPEGs' decoding spread over the cores that forward uses
    # (decoding is a real share of the forward's time on few cores, so the bare forward alone is out of reach).
    limit = times[best] + decode / max(1, threads)
    ratio = real / limit
    others = ", ".join(f"{name} {n / t:.1f}" for name, t in times.items() if name != best)
    how = (f"{lanes} lanes, each decoding {LANE_BATCH} JPEGs and running {used} on 1 thread" if lanes > 1 else
           f"a decoding thread, {used} ({threads} thread{'s' if threads > 1 else ''})")
    rows = [Row(SECTION, f"image features: {BACKBONES['efficientnet'].timm_name} {size[0]}x{size[1]}, {n} JPEGs, "
                f"{how}",
                f"{n / real:.1f} img/s (extract_features; {real / times[best]:.2f}x the bare {best} forward)",
                f"{n / limit:.1f} img/s = bare {best} {n / times[best]:.1f} img/s (best) + decoding {n / decode:.0f} "
                f"img/s on one thread over {threads} core(s); bare {others} img/s", f"{ratio:.2f}x", "<= 1.10x",
                ratio <= 1.10)]
    rows.append(_export_row(export_s, why, times, n, size))
    rows.append(image_query_row(cfg, cat, work, model, graph, tf))
    return rows


def _export_row(export_s: float | None, why: str | None, times: dict[str, float], n: int, size: tuple[int, int]
                ) -> Row:
    """The export's seconds, and after how many images the faster forward has repaid them."""
    measure = "ONNX export of the backbone (once per backbone, weights, size; cached on disk)"
    if why is not None:
        shown = f"{export_s:.1f} s, " if export_s is not None else ""
        return Row(SECTION, measure, f"{shown}skipped ({why})", "-", "-", "-", None)
    onnx = min(t for name, t in times.items() if name.startswith("onnxruntime"))
    saved = (min(t for name, t in times.items() if not name.startswith("onnxruntime")) - onnx) / n  # s/img
    repaid = f"repaid after {export_s / saved:,.0f} images at {size[0]}x{size[1]}" if saved > 0 else \
        "never repaid: PyTorch is faster here"
    return Row(SECTION, measure, f"{export_s:.1f} s", repaid, f"{export_s:.1f} s", "-", None)


def image_query_row(cfg: BenchConfig, cat, work: Path, model, graph, tf) -> Row:
    """``search_image`` on photo files against decode + preprocessing + the best bare forward of one image."""
    measure = f"image -> top-10 titles: search_image(photo file), tiny run ({cfg.query_run_items} items)"
    try:
        run = load_run(tiny_run(cfg, work))
    except Exception as err:  # a broken training path must not sink the rest of the table
        return Row(SECTION, measure, f"failed ({type(err).__name__}: {str(err)[:80]})", "-", "-", "-", False)
    photos = [cat.image_path(i % len(cat)) for i in range(max(1, cfg.image_queries))]
    for photo in photos:  # in the page cache, as the limit's decode (timed right after each query) finds it
        photo.read_bytes()
    run.search_image(photos[0])  # warm-up: the gallery's embeddings and index
    total, decode, head, forward = [], [], [], {"torch": [], "onnxruntime": []}
    for photo in photos:
        t0 = time.perf_counter()
        run.search_image(photo)
        t1 = time.perf_counter()
        x = tf.to_uint8(rgb_array(photo))[None]  # [1, 3, H, W] uint8
        t2 = time.perf_counter()
        with torch.no_grad():
            feats = model(tf.normalise(x))  # [1, F]
        t3 = time.perf_counter()
        total.append(t1 - t0)
        decode.append(t2 - t1)
        forward["torch"].append(t3 - t2)
        if graph is not None:
            feats = torch.from_numpy(graph.raw(x))
            forward["onnxruntime"].append(time.perf_counter() - t3)
        t4 = time.perf_counter()
        with torch.no_grad():  # the rest of the image tower: the run's projection head, right after the backbone
            run.model.encode_image(feats)
        head.append(time.perf_counter() - t4)
    p50 = {name: float(np.median(v)) for name, v in forward.items() if v}
    best = min(p50, key=p50.get)
    limit = float(np.median(decode)) + p50[best] + float(np.median(head))
    ratio = float(np.median(total)) / limit
    return Row(SECTION, measure, f"p50 {ms(np.median(total))} / p95 {ms(np.percentile(total, 95))}",
               f"decode+preprocess p50 {ms(np.median(decode))} + bare {best} p50 {ms(p50[best])} (torch "
               f"{ms(p50['torch'])}) + projection head p50 {ms(np.median(head))}", f"{ratio:.2f}x", "<= 1.25x",
               ratio <= 1.25)
