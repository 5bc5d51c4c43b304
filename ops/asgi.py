"""Serving an ASGI app with uvicorn: the example web app and ``popoto-ops dashboard``.

The socket is bound here (so ``--port 0`` works and a busy port is an error before
uvicorn starts), uvicorn logs through the process's logging set-up (structlog, see
:mod:`popoto.tasks.logconfig`: ``log_config=None``, no access log of its own: the apps log
their requests), and one ``<name> listening`` line with the URL is logged once the
server accepts connections.
"""

from __future__ import annotations

import signal
import socket
import threading
from collections.abc import Callable
from typing import Any

import structlog
import uvicorn

log = structlog.stdlib.get_logger("popoto.server")


def bind(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (port 0: a free one); OSError if it cannot be."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, on_started: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_started = on_started

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            self._on_started()


def _config(app: Any) -> uvicorn.Config:
    return uvicorn.Config(app, log_config=None, access_log=False, server_header=False,
                          lifespan="off", timeout_graceful_shutdown=10)


def serve(app: Any, host: str, port: int, name: str,
          sock: socket.socket | None = None) -> int | None:
    """Serve ``app`` until SIGTERM or SIGINT (graceful: requests in flight finish).

    Returns the signal that stopped it (None if none did). Must run in the main
    thread: uvicorn handles the signals while it runs and, after its shutdown,
    raises them again for the handlers installed here, which only note them.
    """
    sock = sock or bind(host, port)
    url = url_of(sock)
    server = _Server(_config(app), lambda: log.info(f"{name} listening", url=url))
    stopped_by: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, _frame: stopped_by.append(signum))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()
        log.info(f"{name} stopped")
    return stopped_by[0] if stopped_by else None


class ServerThread:
    """``app`` served by uvicorn in a thread of this process (tests, embedding).

    ``with ServerThread(app) as server: ... server.url ...``
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0) -> None:
        self.sock = bind(host, port)
        self.url = url_of(self.sock)
        self._ready = threading.Event()
        self.server = _Server(_config(app), self._ready.set)
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                        name="uvicorn", daemon=True)

    def start(self, timeout: float = 30.0) -> ServerThread:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError(f"uvicorn did not start within {timeout:g} s")
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=15)
        self.sock.close()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
