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

Where the code lives (this module re-exports it, so ``popoto.testing.server.EmbeddedRedis``
and the other names keep working):

* :mod:`popoto.testing.binary`: :func:`find_redis_server`;
* :mod:`popoto.testing.embedded`: :class:`EmbeddedRedis`, :class:`Started`, ``HOST``;
* :mod:`popoto.testing.child`: :func:`run_command` (signal forwarding to the child);
* this module: the ``run`` command line.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

from popoto.testing.binary import find_redis_server
from popoto.testing.child import run_command
from popoto.testing.embedded import DEFAULT_STARTUP_TIMEOUT as DEFAULT_STARTUP_TIMEOUT
from popoto.testing.embedded import HOST as HOST
from popoto.testing.embedded import EmbeddedRedis
from popoto.testing.embedded import Started as Started

__all__ = ["EmbeddedRedis", "find_redis_server", "main"]

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------- CLI

_USAGE = """\
usage: python -m popoto.testing.server run -- CMD [ARGS...]

Run CMD with REDIS_URL set. If REDIS_URL is already set in the environment, CMD runs
unchanged; otherwise a private redis-server is started on 127.0.0.1, REDIS_URL points
at it, and it is stopped when CMD exits. Exits with CMD's exit code.
"""


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
