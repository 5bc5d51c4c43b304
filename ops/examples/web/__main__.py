"""``python -m popoto.ops.examples.web``: the example app on uvicorn (the Procfile's
``web`` process)."""

from __future__ import annotations

import argparse
import os
import sys

from popoto.tasks.logconfig import configure_logging

from popoto.ops.asgi import serve
from . import settings
from .routes import create_app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m popoto.ops.examples.web",
                                     description="example web app")
    parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    parser.add_argument("--max-body", type=int, default=settings.MAX_BODY_BYTES,
                        metavar="BYTES",
                        help="largest request body (default: POPOTO_WEB_MAX_BODY or 1 MiB)")
    parser.add_argument("--request-timeout", type=float, default=settings.REQUEST_TIMEOUT,
                        metavar="SECONDS",
                        help="a client stalling mid-body longer than this gets a 408 "
                             "(default: POPOTO_WEB_REQUEST_TIMEOUT or 30)")
    args = parser.parse_args(argv)
    configure_logging()
    app = create_app(max_body=args.max_body, request_timeout=args.request_timeout)
    serve(app, args.host, args.port, name="web app")
    return 0


if __name__ == "__main__":
    sys.exit(main())
