"""``EmbeddedRedis``: a real, throwaway ``redis-server`` process on 127.0.0.1.

Also :class:`Started`, the ``with X() as x:`` base shared with
:class:`~popoto.testing.cluster.EmbeddedCluster`. The server listens on 127.0.0.1
only, on a free port, keeps its files in a private temporary directory, persists
nothing (``--save "" --appendonly no``) and is stopped when the interpreter exits.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import logging
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from popoto.testing.binary import find_redis_server

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["DEFAULT_STARTUP_TIMEOUT", "HOST", "EmbeddedRedis", "Started"]

# The logger name predates the split of popoto.testing.server; kept for log configs.
logger = logging.getLogger("popoto.testing.server")

HOST = "127.0.0.1"
DEFAULT_STARTUP_TIMEOUT = 10.0
_STOP_TIMEOUT = 5.0
_LOG_TAIL_BYTES = 4000
_PORT_ATTEMPTS = 3
_PR_SET_PDEATHSIG = 1


def _free_port(host: str = HOST) -> int:
    """Ask the kernel for a currently free TCP port on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _make_pdeathsig_preexec() -> Callable[[], None] | None:
    """Return a preexec_fn asking Linux to SIGTERM the server if we die, or None.

    This only protects against the parent being killed outright (SIGKILL); normal
    exits go through atexit. The death signal follows the thread that forks, and a
    preexec_fn is only safe while no other thread can hold a lock across fork(), so
    it is used only when the main thread is the sole thread.
    """
    if not sys.platform.startswith("linux"):
        return None
    if threading.active_count() != 1 or threading.current_thread() is not threading.main_thread():
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None

    def _preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)

    return _preexec


class _StartupError(RuntimeError):
    """The server process could not be brought up."""


class Started:
    """``with X() as x:`` for servers that ``start()`` (returning themselves) and ``stop()``."""

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class EmbeddedRedis(Started):
    """A real ``redis-server`` process bound to 127.0.0.1 on a free port.

    Use as a context manager, or call :meth:`start` / :meth:`stop` yourself. A
    started server is also stopped on interpreter exit (atexit).

    ``password``: the server requires it (``--requirepass``); :attr:`url`,
    :meth:`client` and the start/stop probes then authenticate with it.
    """

    def __init__(
        self,
        *,
        executable: str | None = None,
        extra_args: Sequence[str] | None = None,
        port: int | None = None,
        startup_timeout: float = DEFAULT_STARTUP_TIMEOUT,
        password: str | None = None,
    ) -> None:
        self.executable: str = executable or find_redis_server()
        self.extra_args: list[str] = list(extra_args or [])
        self.password: str | None = password
        self.host: str = HOST
        self.startup_timeout = startup_timeout
        self._requested_port = port
        self._port: int | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._tmpdir: str | None = None
        self._version: str | None = None
        self._atexit_registered = False

    # ----------------------------------------------------------------- properties

    @property
    def port(self) -> int:
        """TCP port the server listens on (fixed once started, kept by restart)."""
        if self._port is None:
            raise RuntimeError("EmbeddedRedis has not been started")
        return self._port

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0`` (``redis://:PASSWORD@127.0.0.1:PORT/0`` with a password)."""
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{auth}{self.host}:{self.port}/0"

    @property
    def pid(self) -> int:
        """Process id of the running server."""
        if self._process is None:
            raise RuntimeError("EmbeddedRedis is not running")
        return self._process.pid

    @property
    def version(self) -> str:
        """``redis_version`` as reported by INFO server."""
        if self._version is None:
            raise RuntimeError("EmbeddedRedis has not been started")
        return self._version

    @property
    def tmpdir(self) -> str | None:
        """Private working directory of the server (removed by :meth:`stop`)."""
        return self._tmpdir

    @property
    def log_path(self) -> str | None:
        """File that receives the server's stdout/stderr."""
        return os.path.join(self._tmpdir, "redis.log") if self._tmpdir else None

    @property
    def running(self) -> bool:
        """True while the server process is alive."""
        return self._process is not None and self._process.poll() is None

    def client(self, db: int = 0, **kwargs: Any) -> redis.Redis[Any]:
        """A new redis-py client connected to this server."""
        if self.password:
            kwargs.setdefault("password", self.password)
        return redis.Redis(host=self.host, port=self.port, db=db, **kwargs)

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> Self:
        """Start the server and wait until it answers PING. Returns self."""
        if self.running:
            return self
        if self._tmpdir is None:
            self._tmpdir = tempfile.mkdtemp(prefix="popoto-redis-")
        if not self._atexit_registered:
            atexit.register(self.stop)
            self._atexit_registered = True
        try:
            fixed = self._port if self._port is not None else self._requested_port
            attempts = 1 if fixed is not None else _PORT_ATTEMPTS
            for attempt in range(1, attempts + 1):
                port = fixed if fixed is not None else _free_port(self.host)
                try:
                    self._launch(port)
                except _StartupError as exc:
                    if attempt == attempts or "in use" not in str(exc):
                        raise
                    logger.warning("redis-server failed to start on port %d; retrying", port)
                else:
                    break
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Shut the server down and remove its temporary directory. Idempotent."""
        self._stop_process()
        self._port = None
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None
        if self._atexit_registered:
            atexit.unregister(self.stop)
            self._atexit_registered = False

    def restart(self) -> Self:
        """Stop the server process and start it again on the SAME port.

        The temporary directory is kept, so data survives only if ``extra_args``
        enabled persistence (e.g. ``["--appendonly", "yes"]``).
        """
        port = self.port
        self._stop_process()
        self._port = port
        self._launch(port)
        return self

    def __repr__(self) -> str:
        state = (f"{self._public_url()} pid={self._process.pid}"
                 if self.running and self._process else "stopped")
        return f"<EmbeddedRedis {state}>"

    # ----------------------------------------------------------------- internals

    def _public_url(self) -> str:
        """:attr:`url` without the password (for logs and reprs)."""
        return f"redis://{self.host}:{self._port}/0"

    def _command(self, port: int) -> list[str]:
        assert self._tmpdir is not None
        return [
            self.executable,
            "--port", str(port),
            "--bind", self.host,
            "--dir", self._tmpdir,
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            *(["--requirepass", self.password] if self.password else []),
            *self.extra_args,
        ]

    def _launch(self, port: int) -> None:
        assert self._tmpdir is not None and self.log_path is not None
        cmd = self._command(port)
        shown = ["***" if self.password and arg == self.password else arg for arg in cmd]
        logger.debug("starting %s", shlex.join(shown))
        try:
            with open(self.log_path, "ab") as log_file:  # the child keeps its own copy
                process = subprocess.Popen(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    cwd=self._tmpdir,
                    # Own session: a terminal Ctrl-C reaches our code, which then shuts
                    # the server down in order, instead of killing it mid-teardown.
                    start_new_session=True,
                    preexec_fn=_make_pdeathsig_preexec(),  # noqa: PLW1509 - single-threaded only
                )
        except OSError as exc:
            raise RuntimeError(f"could not execute {self.executable}: {exc}") from exc
        self._process = process
        self._port = port
        try:
            self._version = self._wait_ready(process, port)
        except _StartupError:
            self._stop_process()
            raise
        logger.info(
            "started redis-server %s (%s) pid=%d at %s",
            self._version, self.executable, process.pid, self._public_url(),
        )

    def _probe_client(self, port: int) -> redis.Redis[bytes]:
        """A client that fails fast: no retries (redis-py >= 6 retries by default)."""
        return redis.Redis(
            host=self.host,
            port=port,
            password=self.password,
            socket_connect_timeout=1.0,
            socket_timeout=5.0,
            retry=Retry(NoBackoff(), 0),
        )

    def _wait_ready(self, process: subprocess.Popen[bytes], port: int) -> str:
        deadline = time.monotonic() + self.startup_timeout
        last_error: Exception | None = None
        while True:
            code = process.poll()
            if code is not None:
                raise _StartupError(
                    f"redis-server exited with code {code} during startup "
                    f"(port {port}).\nServer log:\n{self._log_tail()}"
                )
            client = self._probe_client(port)
            try:
                if client.ping():
                    info = client.info("server")
                    # Whoever answers must be our process, not another server that
                    # grabbed the port first (ours then exits with "in use").
                    if int(info.get("process_id", process.pid)) == process.pid:
                        return str(info.get("redis_version", "unknown"))
                    last_error = RuntimeError(f"port {port} is answered by another server")
            except (redis.RedisError, OSError) as exc:
                last_error = exc
            finally:
                client.close()
            if time.monotonic() > deadline:
                raise _StartupError(
                    f"redis-server did not answer PING on {self.host}:{port} within "
                    f"{self.startup_timeout:.0f}s (last error: {last_error!r}).\n"
                    f"Server log:\n{self._log_tail()}"
                )
            time.sleep(0.05)

    def _log_tail(self) -> str:
        path = self.log_path
        if not path or not os.path.exists(path):
            return "(no log)"
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - _LOG_TAIL_BYTES))
            text = fh.read().decode("utf-8", errors="replace").strip()
        return text or "(empty log)"

    def _stop_process(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            if process.poll() is None:
                self._shutdown_nosave(process)
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.terminate()
                try:
                    process.wait(timeout=_STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    logger.warning("redis-server pid %d ignored SIGTERM; killing", process.pid)
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()
                    process.wait()
            logger.info("stopped redis-server pid=%d (port %s)", process.pid, self._port)

    def _shutdown_nosave(self, process: subprocess.Popen[bytes]) -> None:
        if self._port is None:
            return
        client = self._probe_client(self._port)
        try:
            client.shutdown(nosave=True)
        except (redis.RedisError, OSError) as exc:
            logger.debug("SHUTDOWN NOSAVE failed (%r); will terminate", exc)
        finally:
            client.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=_STOP_TIMEOUT)
