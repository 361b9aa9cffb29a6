"""One dashboard tab as the server sees it, for the load section (``xmodal.bench.load``) and its tests.

A websocket on ``/_stcore/stream`` speaking Streamlit's own protocol (the ``BackMsg``/``ForwardMsg`` protobufs the
browser's JavaScript sends and receives), so the server does for it exactly what it does for a browser: a page
run when the tab opens a page, a fragment run when a widget inside a fragment changes (the Search page's text
tab), the sidebar's timed fragment reruns when ``poll`` is on.
"""
from __future__ import annotations

import asyncio
import contextlib
import time

SEARCH_PAGE, HOME_PAGE = "search", ""  # url paths of pages/search.py and the Home page
QUERY_LABEL = "Describe a product"  # the Search page's text box (pages/search.py)
HIT_PREFIX = "score "  # in the caption under each result's photo (xmodal.dashboard.ui.hit_grid)

class LoadError(RuntimeError):
    """A session the server did not answer as a browser expects (an exception on the page, no text box)."""


class Session:
    """One browser tab of the dashboard: a websocket on ``url`` and what the server last drew in it."""

    def __init__(self, url: str, timeout: float, poll: bool = False):
        self.url, self.timeout, self.poll = url, timeout, poll
        self.widgets: dict[str, str] = {}  # label -> widget id, as the browser learns them from the page
        self.fragments: dict[str, str] = {}  # label -> the fragment a widget sits in ("" for none)
        self.hits = 0  # results drawn by the last run
        self.page_elements = 0  # elements the last run drew outside any fragment (0 for a fragment run alone)
        self.errors: list[str] = []  # exceptions the last full run showed
        self._states: list = []  # the widget states this tab sends with every rerun
        self._fragment = ""  # the fragment whose run the tab waits for ("" for the page's)
        self._page, self._page_hash = SEARCH_PAGE, ""  # the page opened (URL path), and its script's hash
        self._done = asyncio.Event()
        self._timers: dict[str, float] = {}  # fragment id -> seconds between its automatic reruns
        self._tasks: list[asyncio.Task] = []

    async def __aenter__(self) -> Session:
        import websockets  # lazy: the sessions' client, optional for the bench
        self.ws = await asyncio.wait_for(websockets.connect(
            self.url.replace("http://", "ws://") + "/_stcore/stream", subprotocols=["streamlit"], max_size=None,
            ping_interval=None, open_timeout=self.timeout), self.timeout)
        self._tasks = [asyncio.create_task(self._read())] + ([asyncio.create_task(self._poll())] if self.poll else [])
        return self

    async def __aexit__(self, *exc) -> None:
        for task in self._tasks:
            task.cancel()
        with contextlib.suppress(Exception):
            await self.ws.close()

    async def open(self, page: str = SEARCH_PAGE) -> float:
        """Seconds until ``page`` has been drawn in full (a tab opened on its URL)."""
        self._page, self._page_hash, self._states = page, "", []
        return await self._rerun()

    async def search(self, query: str) -> float:
        """Seconds from typing ``query`` into the Search page's text box until its results are drawn."""
        from streamlit.proto.WidgetStates_pb2 import WidgetState  # lazy: Streamlit, optional for the bench
        if QUERY_LABEL not in self.widgets:
            raise LoadError(f"the page has no {QUERY_LABEL!r} text box (is it the Search page with a run?)")
        self._states = [WidgetState(id=self.widgets[QUERY_LABEL], string_value=query)]
        seconds = await self._rerun(self.fragments.get(QUERY_LABEL, ""))
        if self.errors or not self.hits:
            raise LoadError(f"no results for {query!r}: {self.errors[0] if self.errors else 'none drawn'}")
        return seconds

    async def _rerun(self, fragment_id: str = "") -> float:
        """Seconds until the run asked for has finished: the page's, or (``fragment_id``) one fragment's, which is
        what a browser asks for when a widget inside a fragment changes."""
        self._done.clear()
        self.hits, self.errors, self._fragment, self.page_elements = 0, [], fragment_id, 0
        t = time.perf_counter()
        await self.ws.send(self._message(fragment_id, auto=False))
        await asyncio.wait_for(self._done.wait(), self.timeout)
        return time.perf_counter() - t

    def _message(self, fragment_id: str = "", auto: bool = True) -> bytes:
        from streamlit.proto.BackMsg_pb2 import BackMsg  # lazy: Streamlit, optional for the bench
        msg = BackMsg()
        msg.rerun_script.page_name = self._page
        msg.rerun_script.page_script_hash = self._page_hash  # as the browser sends its current page's (none yet
        # when it opens a URL): a rerun the script asks for (st.rerun) then stays on this page
        msg.rerun_script.widget_states.widgets.extend(self._states)
        if fragment_id:
            msg.rerun_script.fragment_id, msg.rerun_script.is_auto_rerun = fragment_id, auto
        return msg.SerializeToString()

    async def _read(self) -> None:
        from streamlit.proto.ForwardMsg_pb2 import ForwardMsg  # lazy: Streamlit, optional for the bench
        async for raw in self.ws:
            msg = ForwardMsg()
            msg.ParseFromString(raw)
            self._handle(msg)

    def _handle(self, msg) -> None:
        """Note what one ``ForwardMsg`` from the server says: widgets, results, errors, timers, a finished run.
        Elements of other fragments (the sidebar's timed progress) are not the page's answer."""
        kind = msg.WhichOneof("type")
        if kind == "delta" and msg.delta.WhichOneof("type") == "new_element":
            element, fragment = msg.delta.new_element, msg.delta.fragment_id
            what = element.WhichOneof("type")
            ours = fragment in ("", self.fragments.get(QUERY_LABEL, ""))
            self.page_elements += not fragment
            if what == "text_input":
                self.widgets[element.text_input.label] = element.text_input.id
                self.fragments[element.text_input.label] = fragment
            elif not ours:
                pass
            elif what == "imgs":
                self.hits += sum(HIT_PREFIX in img.caption for img in element.imgs.imgs)
            elif what == "markdown" and element.markdown.body.startswith(HIT_PREFIX):  # a result card, or the
                self.hits += 1  # grid of checkouts before the one-element grid (served with --dashboard)
            elif what == "exception":
                self.errors.append(f"{element.exception.type}: {element.exception.message}"[:200])
        elif kind == "navigation":  # the page shown (st.navigation's), which the browser names in its reruns
            self._page_hash = msg.navigation.page_script_hash
        elif kind == "auto_rerun":
            self._timers[msg.auto_rerun.fragment_id] = msg.auto_rerun.interval
        elif kind == "stop_auto_rerun":
            self._timers.clear()
        elif kind == "script_finished" and (msg.script_finished == msg.FINISHED_SUCCESSFULLY or self._fragment and
                                            msg.script_finished == msg.FINISHED_FRAGMENT_RUN_SUCCESSFULLY):
            self._done.set()

    async def _poll(self) -> None:
        """The reruns an open tab sends by itself: each fragment's ``run_every`` timer."""
        due: dict[str, float] = {}
        while True:
            await asyncio.sleep(0.5)
            now = time.perf_counter()
            for fragment, interval in list(self._timers.items()):
                if now >= due.setdefault(fragment, now + interval):
                    due[fragment] = now + interval
                    await self.ws.send(self._message(fragment))
