"""ONNX Runtime sessions of exported graphs, shared by the image tower (``xmodal.image.runtime``) and the text
tower (``xmodal.text.runtime``): read from the disk cache and checked (a damaged file is exported again), exported
when missing, a few kept in memory, and an export that failed not tried again in this process. No PyTorch here:
the callers pass the check and the export."""
from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

from .cachefile import warn_rebuild, write_cache

log = logging.getLogger(__name__)
T = TypeVar("T")


def cpu_session(graph: bytes, threads: int):
    """An ONNX Runtime CPU session of ``graph`` on ``threads`` intra-op threads, and the ``xmodal_key`` its metadata
    holds. No spin-waiting between parallel sections: on a shared machine, and beside the DataLoader's decoding
    workers, spinning threads burn more CPU for the same work (docs/performance.md)."""
    import onnxruntime as ort  # lazy: ONNX Runtime, only when a graph is loaded
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(graph, opts, providers=["CPUExecutionProvider"])
    return session, session.get_modelmeta().custom_metadata_map.get("xmodal_key")


class GraphCache(Generic[T]):
    """Checked sessions by (graph file, intra-op threads), the ``keep`` most recently used in memory."""

    def __init__(self, keep: int = 8):
        self.keep = keep
        self._sessions: OrderedDict[tuple[str, int], T] = OrderedDict()
        self._failed: set[str] = set()  # graph files whose export failed in this process

    def get(self, path: Path, threads: int, check: Callable[[bytes], T], export: Callable[[], bytes] | None,
            what: str) -> T | None:
        """The session of ``path``: from memory, else ``check(bytes)`` of the file (it raises on a damaged or
        mismatched graph), else ``check(export())`` written to ``path``; None when ``export`` is None and there is
        no sound file, or the export or its check failed (logged, never raised). ``what``: the graph, in words."""
        memo = (str(path), threads)
        if memo in self._sessions:
            self._sessions.move_to_end(memo)
            return self._sessions[memo]
        graph = None
        if path.is_file():
            try:
                graph = check(path.read_bytes())
            except Exception as err:  # truncated, garbled, another key's, or not matching: exported again
                warn_rebuild(path, err)
        if graph is None:
            if export is None or str(path) in self._failed:
                return None
            try:
                t = time.perf_counter()
                data = export()
                seconds = time.perf_counter() - t
                graph = check(data)
            except Exception as err:  # an exporter or runtime that cannot take this model: PyTorch it is
                self._failed.add(str(path))
                log.warning("cannot run %s in ONNX Runtime (%s: %s); using PyTorch", what, type(err).__name__,
                            str(err).splitlines()[0][:200] if str(err) else "")
                return None
            log.info("exported %s to ONNX in %.2f s: %s", what, seconds, path)
            write_cache(path, lambda f: f.write(data))
        self._sessions[memo] = graph
        while len(self._sessions) > self.keep:
            self._sessions.popitem(last=False)
        return graph

    def loaded(self, path: str, threads: int) -> T | None:
        """The session of ``path`` if it is in memory (nothing is read or checked)."""
        return self._sessions.get((str(path), threads))

    def clear(self) -> None:
        """Forget the sessions loaded and the exports failed (the next ``get`` reads, and checks, the disk)."""
        self._sessions.clear()
        self._failed.clear()
