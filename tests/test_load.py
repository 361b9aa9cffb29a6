"""Many people on one dashboard (issue 20 §5): a loaded run is one object for every session, with both galleries
built once under the cache's lock; queries queue on one thread with PyTorch on one thread there; the collector
no longer walks PyTorch after every script run; and twenty real sessions searching a fresh local server at the
same moment all get their results, in bounded time, while a twenty-first opens Home.

The sessions are the bench's load client (``xmodal.bench.load``): websockets speaking Streamlit's protocol to
``streamlit run dashboard.py`` on 127.0.0.1, as a browser tab does.
"""
from __future__ import annotations

import asyncio
import gc
import os
import socket
import threading
import time
from pathlib import Path

import pytest

from xmodal.bench.load import QUERY_LABEL, Session, load_skip_reason, measure, percentiles, serve, served_copy
from xmodal.dashboard import queries, sockets, state

DASHBOARD = Path(__file__).resolve().parents[1] / "dashboard.py"


def test_a_run_is_loaded_once_for_every_session_with_both_galleries(trained_run, tmp_path, monkeypatch):
    """Eight sessions opening a fresh run at the same moment get one Run, whose galleries were embedded once."""
    import xmodal.retrieval.run as run_module
    fresh = served_copy(trained_run, tmp_path / "ckpt")  # no gallery caches: they must be embedded
    calls = {"images": 0, "texts": 0}
    images, texts = run_module.embed_catalogue_images, run_module.embed_texts

    def count(kind, fn):
        def counted(*a, **k):
            calls[kind] += 1
            time.sleep(0.2)  # a slow embedding: the other sessions arrive while it runs
            return fn(*a, **k)
        return counted
    monkeypatch.setattr(run_module, "embed_catalogue_images", count("images", images))
    monkeypatch.setattr(run_module, "embed_texts", count("texts", texts))
    state._run.clear()
    got = []
    sessions = [threading.Thread(target=lambda: got.append(state.run(fresh))) for _ in range(8)]
    for t in sessions:
        t.start()
    for t in sessions:
        t.join(300)
    state._run.clear()
    assert len(got) == 8 and all(r is got[0] for r in got)
    assert calls == {"images": 1, "texts": 1}
    assert set(got[0]._galleries) == {"images", "texts"}  # searched at once by the first query of each kind


@pytest.mark.usefixtures("two_torch_threads")
def test_queries_queue_on_one_thread_with_one_torch_thread(trained_run):
    import torch
    before = torch.get_num_threads()
    seen = [queries.on_query_thread(lambda: (threading.current_thread().name, torch.get_num_threads()))
            for _ in range(3)]
    assert len(set(seen)) == 1 and seen[0][0].startswith("xmodal-query") and seen[0][1] == 1
    assert torch.get_num_threads() == before
    with pytest.raises(ZeroDivisionError):  # an error reaches the session that asked
        queries.on_query_thread(lambda: 1 / 0)
    run = state.run(trained_run)
    assert [h.index for h in queries.text_query(run, "red shirt", k=5).hits] == \
        [h.index for h in run.search_text("red shirt", k=5)]


def test_the_collector_no_longer_walks_pytorch_after_each_rerun():
    """Streamlit collects garbage after every script run; once the heap is settled that is cheap."""
    import xmodal.retrieval.run  # noqa: F401 - PyTorch, timm, the models: what a Search page has loaded
    state.settle_heap()
    t = time.perf_counter()
    gc.collect()
    assert time.perf_counter() - t < 0.05  # it walked ~460k objects in 0.2-0.3 s before
    assert gc.get_freeze_count() > 100_000


@pytest.mark.slow
def test_twenty_sessions_search_a_fresh_server_at_once(trained_run, tiny_catalogue, tmp_path):
    reason = load_skip_reason(DASHBOARD)
    if reason:
        pytest.skip(reason)
    ckpt = tmp_path / "ckpt"
    served_copy(trained_run, ckpt)  # without its gallery caches: the first sessions wait for one gallery
    default_threads = {"OMP_NUM_THREADS": None, "MKL_NUM_THREADS": None}  # the server as a user starts it
    with serve(DASHBOARD, ckpt, str(tiny_catalogue), tmp_path / "streamlit.log", env=default_threads) as (url, pid):
        res = asyncio.run(asyncio.wait_for(measure(url, pid, sessions=20, single=10, rounds=1, soak=60,
                                                   timeout=120), 900))

        async def one_tab() -> list:
            async with Session(url, 120) as tab:
                await tab.open()
                await tab.search("red striped shirt")
                seen = [tab.fragments.get(QUERY_LABEL, ""), tab.hits, tab.page_elements]
                weights = ckpt / trained_run.name / "best.safetensors"  # new best weights, as a training run writes
                os.utime(weights, ns=(time.time_ns(), weights.stat().st_mtime_ns + 2_000_000_000))
                await tab.search("blue jeans for men")
                return seen + [tab.hits, tab.page_elements]
        fragment, hits, page, hits_after, page_after = asyncio.run(one_tab())
    assert fragment and hits == 8 and page == 0  # a typed query reruns the text tab's fragment alone: 8 results
    assert hits_after == 8 and page_after > 0  # new weights: the whole page reran, badges and results agree
    assert not res.failures, res.failures
    assert len(res.cold) == 20 and len(res.single) == 10 and len(res.together) == 20 and len(res.soak) == 60
    assert res.extra_home is not None  # the server answered a newcomer while twenty searched
    alone, together = percentiles(res.single), percentiles(res.together)
    assert together[1] < 30, f"20 at once: p95 {together[1]:.1f} s (one alone: p50 {alone[0]:.2f} s)"
    before, after = res.rss_mb
    assert after - before < 100, f"the server grew from {before:.0f} to {after:.0f} MB over 60 searches"


def _accepted_nodelay(listener: socket.socket) -> tuple[int, int]:
    """TCP_NODELAY of the server side of one connection to ``listener``, as asyncio's server makes it, and of a
    second one accepted after ``sockets.send_at_once``."""
    async def main() -> tuple[int, int]:
        seen: list[int] = []

        class Note(asyncio.Protocol):
            def connection_made(self, transport):
                seen.append(transport.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

        server = await asyncio.get_running_loop().create_server(Note, sock=listener)
        port = listener.getsockname()[1]
        for step in range(2):
            if step:
                sockets.send_at_once()
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            for _ in range(100):
                if len(seen) > step:
                    break
                await asyncio.sleep(0.01)
            writer.close()
        server.close()
        return seen[0], seen[1]
    return asyncio.run(main())


def test_the_server_sends_each_message_at_once(monkeypatch):
    """Streamlit binds its listening socket with protocol 0, so asyncio leaves Nagle's algorithm on the connections
    it accepts (a 40 ms stall inside every rerun); the dashboard turns it off, for connections open already and
    for those accepted later."""
    import asyncio.base_events as events
    # asyncio's own hook (an AppTest of dashboard.py in this process may have wrapped it), put back after the test
    monkeypatch.setattr(events, "_set_nodelay", getattr(events._set_nodelay, "__wrapped__", events._set_nodelay))
    monkeypatch.setattr(sockets, "_done", [])
    listener = socket.socket(family=socket.AF_INET)  # as streamlit.web.server.starlette binds it
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.setblocking(False)
    with listener:
        before, after = _accepted_nodelay(listener)
    assert before == 0 and after != 0
    assert getattr(events._set_nodelay, "xmodal_nodelay", False)
    sockets.send_at_once()  # once per process: the hook is not wrapped twice
    assert getattr(events._set_nodelay, "xmodal_nodelay", False) and sockets._done == [True]
    with socket.socket(family=socket.AF_INET) as open_one:  # a socket open before the first run (Linux)
        open_one.bind(("127.0.0.1", 0))
        open_one.listen(1)
        if sockets.open_sockets():
            assert open_one.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
