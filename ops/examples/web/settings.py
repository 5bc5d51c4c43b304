"""Limits of the example app, from the environment (``--max-body`` / ``--request-timeout``
of ``python -m popoto.ops.examples.web`` override them)."""

from __future__ import annotations

import os


def _number(name: str, default: float, kind: type = int) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        value = -1
    if value <= 0:
        raise ValueError(f"{name} must be a positive number, got {raw!r}")
    return value


#: largest request body accepted, in bytes (``POPOTO_WEB_MAX_BODY``, default 1 MiB)
MAX_BODY_BYTES = int(_number("POPOTO_WEB_MAX_BODY", 1 << 20))
#: seconds a client may stall while sending its body (``POPOTO_WEB_REQUEST_TIMEOUT``)
REQUEST_TIMEOUT = float(_number("POPOTO_WEB_REQUEST_TIMEOUT", 30.0, float))
