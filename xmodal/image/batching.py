"""Batches loaded ahead of their consumer by a few threads, in order: the decoding side of feature
extraction and of the distillation's training loop (``xmodal.image.extraction.extract_features``,
``xmodal.image.distill``).
"""
from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor
from itertools import islice

import torch


def ordered_map(fn, items, threads: int, ahead: int, initializer=None):
    """``map(fn, items)`` in order, computed by ``threads`` threads at most ``ahead`` items in front of the
    consumer (the rest is not started: a consumer that stops early cancels it). ``initializer`` runs once in
    each thread before its first item."""
    items = iter(items)
    pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="xmodal-decode", initializer=initializer)
    try:
        pending = deque(pool.submit(fn, item) for item in islice(items, max(1, ahead)))
        while pending:
            result = pending.popleft().result()
            nxt = next(items, _END)
            if nxt is not _END:
                pending.append(pool.submit(fn, nxt))
            yield result
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


_END = object()


def decoded_batches(items: list, load_batch, batch_size: int, threads: int, ahead: int = 2):
    """Batches ``load_batch(items[s:s + batch_size])`` in order, loaded by ``threads`` threads at most ``ahead``
    batches in front of the consumer.

    Threads, not DataLoader processes: simplejpeg and Pillow decode, PyTorch resizes and ONNX Runtime runs
    with the GIL released, so a thread overlaps decoding with the forward just as well, without a fork. (A
    forked worker makes the parent's first batches pay a copy-on-write fault on every page it touches.)
    ``threads=0`` loads in the caller's thread, between its steps.
    """
    def load(start: int) -> torch.Tensor:
        return load_batch(items[start:start + batch_size])

    starts = range(0, len(items), batch_size)
    if threads <= 0:
        yield from map(load, starts)
    else:
        yield from ordered_map(load, starts, threads, ahead)


__all__ = ["ordered_map", "decoded_batches"]
