"""The text-encoding row of section 3 of ``python -m xmodal.bench``: one caption to its joint-space vector through
``embed_texts`` (what ``Run.search_text`` runs on every query, in the runtime ``xmodal.text.runtime`` picks)
against its bare parts, timed right after each query: the tokeniser's ids, then the text tower's bare forward in
each runtime (ONNX Runtime's session, PyTorch's ``encode_text``). The limit is the tokeniser plus the faster bare
forward; PyTorch's stands beside it.
"""
from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

from ..models.embed import embed_texts
from ..text import runtime
from ..text.vocabulary import Vocab
from .common import Row

SECTION = "3 search"
TARGET = 1.25  # embed_texts within 1.25x of the tokeniser plus the bare forward: the image query row's margin


def _ms(seconds: float) -> str:
    """A sub-millisecond duration for the row (``common.ms`` keeps one decimal)."""
    return f"{seconds * 1e3:.2f} ms"


def text_encoding_row(model: nn.Module, vocab: Vocab, texts: list[str], what: str) -> Row:
    """p50 of ``embed_texts`` on each of ``texts`` alone against the tokeniser plus the best bare forward.

    Args:
        model: a model marked by ``runtime.fixed_weights`` (as a loaded run's is), in eval mode.
        what: the model, as the row names it.
    """
    cpu = torch.device("cpu")
    graph = runtime.select_runtime(model, cpu)  # exported or loaded here, before the clock
    used = "onnxruntime" if graph is not None else "torch"
    for text in texts[:5]:
        embed_texts(model, vocab, [text], cpu)  # warm-up: first calls, allocators
    total, tokenise, bare = [], [], {"torch": [], "onnxruntime": []}
    for text in texts:
        t0 = time.perf_counter()
        embed_texts(model, vocab, [text], cpu)
        t1 = time.perf_counter()
        tokens = vocab.encode([text])  # [1, L]
        t2 = time.perf_counter()
        with torch.no_grad():
            model.encode_text(tokens)  # [1, D]
        t3 = time.perf_counter()
        if graph is not None:
            graph(tokens)
            bare["onnxruntime"].append(time.perf_counter() - t3)
        total.append(t1 - t0)
        tokenise.append(t2 - t1)
        bare["torch"].append(t3 - t2)
    p50 = {name: float(np.median(v)) for name, v in bare.items() if v}
    best = min(p50, key=p50.get)
    limit = float(np.median(tokenise)) + p50[best]
    ratio = float(np.median(total)) / limit
    threads = graph.threads if graph is not None else torch.get_num_threads()
    return Row(SECTION, f"text encoding: one caption through embed_texts ({what}, {used}, {threads} thread"
               f"{'s' if threads > 1 else ''}; {len(texts)} captions)",
               f"p50 {_ms(np.median(total))} / p95 {_ms(np.percentile(total, 95))}",
               f"tokenise p50 {_ms(np.median(tokenise))} + bare {best} p50 {_ms(p50[best])} "
               f"(torch {_ms(p50['torch'])})",
               f"{ratio:.2f}x", f"<= {TARGET:.2f}x", ratio <= TARGET)
