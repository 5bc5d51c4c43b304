"""``python -m popoto.workers consume --stream NAME --group GROUP --consumer NAME``.

Imports the handler modules (``--handlers`` or ``POPOTO_HANDLER_MODULES``) and
model modules (``--models`` or ``POPOTO_MODEL_MODULES``), then consumes until
SIGTERM/SIGINT (graceful: the current batch is finished and acknowledged) or
until ``--max-entries`` / ``--max-seconds``. Logs are JSON lines on stderr
(``POPOTO_LOG_FORMAT=console`` for development).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

import structlog

from popoto.exceptions import PopotoError

from .consumer import StreamConsumer, default_consumer_name


def _modules(value: str) -> list[str]:
    return [m.strip() for m in value.split(",") if m.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m popoto.workers",
                                     description="Popoto event-stream consumers")
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("consume", help="consume a stream with a consumer group")
    c.add_argument("--stream", required=True,
                   help="stream name (key stream:NAME; a sharded model: all its group streams)")
    c.add_argument("--group", required=True, help="consumer group")
    c.add_argument("--consumer", default=None,
                   help="consumer name; keep it stable across restarts (default host-pid)")
    c.add_argument("--handlers", default=os.environ.get("POPOTO_HANDLER_MODULES", ""),
                   help="comma-separated modules registering handlers")
    c.add_argument("--models", default=os.environ.get("POPOTO_MODEL_MODULES", ""),
                   help="comma-separated modules defining models")
    c.add_argument("--batch-size", type=int, default=100)
    c.add_argument("--block-ms", type=int, default=1000)
    c.add_argument("--claim-idle-ms", type=int, default=60_000,
                   help="reclaim entries idle this long (above the slowest handler)")
    c.add_argument("--claim-interval", type=float, default=None,
                   help="seconds between reclaim passes (default claim-idle/2)")
    c.add_argument("--max-deliveries", type=int, default=5,
                   help="dead-letter an entry after this many failed deliveries")
    c.add_argument("--start-id", default="0",
                   help="where a new group starts: 0 = whole stream, $ = new entries only")
    c.add_argument("--trim-interval", type=float, default=60.0)
    c.add_argument("--max-entries", type=int, default=None)
    c.add_argument("--max-seconds", type=float, default=None)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from popoto.tasks.logconfig import configure_logging

        configure_logging()
    except PopotoError as exc:  # a bad setting: one line, not the import's traceback
        sys.stderr.write(f"python -m popoto.workers: {exc}\n")
        return 2
    log = structlog.stdlib.get_logger("popoto.workers")
    for module in (*_modules(args.models), *_modules(args.handlers)):
        importlib.import_module(module)
    consumer = StreamConsumer(
        args.stream, args.group, args.consumer or default_consumer_name(),
        batch_size=args.batch_size, block_ms=args.block_ms,
        claim_idle_ms=args.claim_idle_ms, claim_interval=args.claim_interval,
        max_deliveries=args.max_deliveries, start_id=args.start_id,
        trim_interval=args.trim_interval,
    )
    if not len(consumer.registry):
        log.warning("no handlers registered: entries are acknowledged without effect",
                    handlers=args.handlers)
    consumer.install_signal_handlers()
    try:
        consumer.run(max_entries=args.max_entries, max_seconds=args.max_seconds)
    except PopotoError as exc:
        log.error("consumer cannot run", error=str(exc))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
