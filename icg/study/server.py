"""Serving an ASGI app (the study, later the explorer) with uvicorn on a socket bound here first.

Binding the socket ourselves turns "port in use" into one clear line before uvicorn starts, and lets tests ask for
port 0 (any free port) and learn which one they got.
"""

from __future__ import annotations

import errno
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn

from icg.errors import UserError

LOOPBACK = "127.0.0.1"


class ListenError(UserError, OSError):
    """The server cannot listen where asked (a bad host or port)."""


class PortInUseError(ListenError):
    """The port asked for is taken; the message suggests ``--port``."""


def bind(host: str = LOOPBACK, port: int = 8000) -> socket.socket:
    """A listening TCP socket on ``host:port`` (``port=0``: any free port).

    Raises:
        PortInUseError: another process listens there.
        ListenError: any other reason the socket cannot be bound (port out of range, unknown host, no permission).
    """
    if not 0 <= port <= 65535:
        raise ListenError(f"--port {port}: a port is a number from 0 to 65535 (e.g. --port 8000)")
    # IPPROTO_TCP, not the default 0: asyncio sets TCP_NODELAY only on connections whose socket says TCP, and accepted
    # sockets inherit it; without it a reply's second write waited for the client's delayed ACK (~40 ms a request).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a listener still fails; TIME_WAIT leftovers do not
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        if err.errno == errno.EADDRINUSE:
            raise PortInUseError(
                f"port {port} on {host} is in use (another server?); pick a free one with --port {port + 1}"
            ) from None
        raise ListenError(f"cannot listen on {host}:{port} ({err.strerror or err}); check --host and --port") from None
    sock.listen(128)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{host}:{port}"


def make_server(app, log_level: str = "warning") -> uvicorn.Server:
    return uvicorn.Server(uvicorn.Config(app, log_level=log_level, access_log=False, lifespan="off"))


def serve_until_stopped(app, sock: socket.socket) -> None:
    """Serve ``app`` on ``sock`` in this thread until Ctrl-C (or SIGTERM), then raise KeyboardInterrupt.

    uvicorn catches the signal, shuts down, and re-raises it through the handler it found, which under ``asyncio.run``
    is asyncio's own: that only cancels the serving task, and when the task has no await left the run ends normally.
    So whether Ctrl-C surfaced as KeyboardInterrupt was a race (``icg serve`` exited 0 instead of 130 once in a
    fresh-clone CI run, 2026-12-05); a server that stopped because it was told to always raises it here.
    """
    server = make_server(app)
    server.run(sockets=[sock])
    if server.should_exit:
        raise KeyboardInterrupt


@contextmanager
def running(app, host: str = LOOPBACK, port: int = 0, timeout_s: float = 20.0) -> Iterator[str]:
    """Serve ``app`` in a background thread; yields the base URL and stops the server on exit (tests, notebooks)."""
    sock = bind(host, port)
    server = make_server(app)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            sock.close()
            raise RuntimeError("the server did not start")
        time.sleep(0.02)
    try:
        yield url_of(sock)
    finally:
        server.should_exit = True
        thread.join(timeout_s)
        sock.close()
