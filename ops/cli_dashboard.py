"""``popoto-ops dashboard``: serve :mod:`popoto.dashboard` with uvicorn.

Binds 127.0.0.1 unless ``--host`` says otherwise (the dashboard shows model
data; put it behind your own proxy and authentication before exposing it).
Actions need ``POPOTO_DASHBOARD_TOKEN`` in the environment (never an option:
it would show in the process list); without it the dashboard is read-only.
Errors follow the CLI's conventions: a busy port, a missing ``dashboard`` extra
or an unreachable Redis are one line on stderr and exit code 2; Ctrl-C is 130,
SIGTERM a clean stop (0).
"""

from __future__ import annotations

import argparse
import os
import re
import signal
from typing import TextIO

DEFAULT_PORT = 8050


def _port(text: str) -> int:
    if not re.fullmatch(r"[0-9]{1,5}", text.strip()) or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"not a port number (0-65535): {text!r}")
    return int(text)


def _positive(text: str) -> int:
    if not re.fullmatch(r"[0-9]{1,9}", text.strip()) or int(text) < 1:
        raise argparse.ArgumentTypeError(f"not a whole number >= 1: {text!r}")
    return int(text)


def add_dashboard_options(p: argparse.ArgumentParser) -> None:
    """The options of ``popoto-ops dashboard`` (registered by ``popoto.ops.cli.build_parser``)."""
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=_port, default=DEFAULT_PORT,
                   help=f"port (default {DEFAULT_PORT}; 0: any free port)")
    p.add_argument("--chunk-size", type=_positive, default=None,
                   help="chunk size of the rebuild/clean jobs it starts "
                        "(default: the workers' POPOTO_CHUNK_SIZE)")


def cmd_dashboard(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from popoto.redis_db import get_client

    from .cli import OK, UsageError

    try:
        from popoto.dashboard import create_dashboard

        from .asgi import bind, serve, url_of
    except ImportError as exc:
        raise UsageError(str(exc)) from exc
    from popoto.tasks.logconfig import configure_logging

    get_client().ping()  # an unreachable Redis is a configuration error, now
    try:
        sock = bind(args.host, args.port)
    except OSError as exc:
        raise UsageError(f"cannot listen on {args.host}:{args.port}: "
                         f"{exc.strerror or exc}") from exc
    configure_logging()
    app = create_dashboard(chunk_size=args.chunk_size)
    mode = "actions need the token" if os.environ.get("POPOTO_DASHBOARD_TOKEN") \
        else "read-only: POPOTO_DASHBOARD_TOKEN is not set"
    err.write(f"popoto-ops: dashboard on {url_of(sock)}/ ({mode})\n")
    err.flush()
    if serve(app, args.host, args.port, name="dashboard", sock=sock) == signal.SIGINT:
        raise KeyboardInterrupt
    return OK
