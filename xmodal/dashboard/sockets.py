"""Every message of a rerun reaches the browser as soon as it is written (TCP_NODELAY on the server's sockets).

Streamlit's server binds its own listening socket with protocol 0 (``socket.socket(family)``), and asyncio sets
TCP_NODELAY only on connections whose ``sock.proto`` is TCP's. Its connections therefore keep Nagle's algorithm:
after the first small message of a rerun, the rest wait until the browser acknowledges it, and a receiver delays
that acknowledgement (40 ms on Linux). Every search, click and rerun stalled those 40 ms, on an idle server as
under load (docs/performance.md, "Twenty tabs at once").

``send_at_once`` is called by ``dashboard.py`` on every run (it does its work once per server): connections
accepted later get TCP_NODELAY from asyncio, and on Linux the sockets already open (the listening socket, whose
option new connections inherit, and the first tabs' connections) get it at once through ``/proc/self/fd``.
"""
from __future__ import annotations

import asyncio.base_events as events  # the hook asyncio's transports call for each new connection
import contextlib
import os
import socket
import threading
from collections.abc import Callable

_LOCK = threading.Lock()
_done: list[bool] = []


def nodelay(sock: socket.socket) -> bool:
    """Set TCP_NODELAY on ``sock`` when it is an IPv4/IPv6 stream socket; whether it was set."""
    if sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.type != socket.SOCK_STREAM:
        return False
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:  # closed meanwhile, or not TCP after all
        return False
    return True


def _patched(original: Callable[[socket.socket], None]) -> Callable[[socket.socket], None]:
    def set_nodelay(sock: socket.socket) -> None:
        original(sock)
        nodelay(sock)
    set_nodelay.xmodal_nodelay, set_nodelay.__wrapped__ = True, original
    return set_nodelay


def open_sockets() -> int:
    """Set TCP_NODELAY on the stream sockets this process has open now (Linux: ``/proc/self/fd``); how many."""
    fds = "/proc/self/fd"
    if not os.path.isdir(fds):
        return 0
    count = 0
    for name in os.listdir(fds):
        with contextlib.suppress(OSError, ValueError):
            if not os.readlink(f"{fds}/{name}").startswith("socket:"):
                continue
            with socket.socket(fileno=os.dup(int(name))) as dup:  # a duplicate: the option is the socket's own
                count += nodelay(dup)
    return count


def send_at_once() -> None:
    """Once per process: TCP_NODELAY on every connection the server accepts from now on, and on those open now."""
    with _LOCK:
        if _done:
            return
        if not getattr(events._set_nodelay, "xmodal_nodelay", False):
            events._set_nodelay = _patched(events._set_nodelay)
        open_sockets()
        _done.append(True)
