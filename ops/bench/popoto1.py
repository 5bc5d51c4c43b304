"""The popoto 1.10.1 peer: the upstream library from PyPI, run in a subprocess.

It cannot share this project's virtualenv (both import as ``popoto``), so ``make bench``
creates ``.venv-popoto1`` on first use (``pip install popoto==1.10.1 hiredis``) and the
harness runs ``popoto1_child`` with that interpreter. There the checkout's ``ops/``
folder is imported as the top-level package ``ops`` (``popoto`` being 1.10.1), which is
why ``popoto1_child``, ``plain`` and ``timing`` use relative imports only.

Protocol (version 1):

* the parent starts ``PYTHON -c BOOTSTRAP`` in an empty temporary directory, with
  ``REDIS_URL`` set and ``PYTHONPATH`` unset, and writes one JSON request on its stdin:
  ``{"protocol": 1, "url": ..., "root": <repo>, "sizes": {...}, "reply_path": ...}``;
* the bootstrap appends ``root`` to the **end** of ``sys.path`` (so ``popoto`` is the
  venv's 1.10.1, ``ops`` this checkout's) and calls ``popoto1_child.main(request)``;
* the child logs progress to stderr (passed through) and writes the reply JSON to
  ``reply_path``: ``{"protocol": 1, "impl": "popoto-1.10.1", "environment": {...},
  "scenarios": [{"scenario": id, "title": ..., "timings": {"plain": T, "popoto-1.10.1":
  T}}], "unsupported": [{"scenario", "reason"}], "memory": {...}}`` where ``T`` is
  ``timing.measure``'s record (``ops``, ``median_s``, ``per_op_us``, ``samples_s``), or
  ``{"protocol": 1, "error": ..., "traceback": ...}``.

The parent stores the child's floor as ``plain@popoto-1.10.1`` beside the scenario's
other timings, so popoto 1.10.1's ratio is against its own floor. A peer that cannot run
(no interpreter, a failed child, a malformed reply) is reported with its reason, in the
printed output and in the JSON: never skipped silently.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .timing import PLAIN, Result, Sizes

PROTOCOL = 1
VERSION = "1.10.1"
IMPL = f"popoto-{VERSION}"
FLOOR = f"{PLAIN}@{IMPL}"
ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / ".venv-popoto1"
BOOTSTRAP = ("import json, sys; request = json.load(sys.stdin); "
             "sys.path.append(request['root']); "
             "from ops.bench.popoto1_child import main; sys.exit(main(request))")
TIMEOUT_S = 3600


class ReplyError(ValueError):
    """The child's reply does not follow the protocol."""


def default_python() -> str:
    """``$POPOTO1_PYTHON``, else ``.venv-popoto1/bin/python`` of this checkout."""
    return os.environ.get("POPOTO1_PYTHON") or str(VENV / "bin" / "python")


def parse_reply(doc: Any) -> dict[str, Any]:
    """Check a reply's structure; raise :class:`ReplyError` naming what is wrong."""
    if not isinstance(doc, dict) or doc.get("protocol") != PROTOCOL:
        raise ReplyError(f"not a protocol-{PROTOCOL} reply: {str(doc)[:200]}")
    if "error" in doc:
        raise ReplyError(f"the runner failed: {doc['error']}")
    scenarios = doc.get("scenarios")
    if not isinstance(scenarios, list):
        raise ReplyError("reply has no 'scenarios' list")
    for sc in scenarios:
        timings = sc.get("timings") if isinstance(sc, dict) else None
        if not isinstance(timings, dict) or set(timings) != {PLAIN, IMPL}:
            raise ReplyError(f"scenario {sc!r:.120}: timings must be {PLAIN!r} and {IMPL!r}")
        for name, t in timings.items():
            samples = t.get("samples_s") if isinstance(t, dict) else None
            if (not isinstance(samples, list) or not samples
                    or not all(isinstance(x, (int, float)) and x > 0 for x in samples)
                    or not isinstance(t.get("ops"), int) or t["ops"] <= 0):
                raise ReplyError(f"scenario {sc.get('scenario')!r}: bad timing of {name!r}")
    return doc


def run_child(python: str, url: str, sizes: Sizes, log: Callable[[str], None],
              timeout: float = TIMEOUT_S) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """(parsed reply or None, peer status) of one run of the popoto 1.10.1 runner."""
    if not Path(python).exists():
        return None, {"status": "missing",
                      "reason": f"no interpreter at {python}: `make bench` creates "
                                f".venv-popoto1 (pip install popoto=={VERSION}); or set "
                                "POPOTO1_PYTHON"}
    with tempfile.TemporaryDirectory(prefix="popoto1-") as tmp:
        reply_path = os.path.join(tmp, "reply.json")
        request = {"protocol": PROTOCOL, "url": url, "root": str(ROOT),
                   "sizes": sizes.__dict__, "reply_path": reply_path}
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
        env["REDIS_URL"] = url
        try:
            proc = subprocess.run([python, "-c", BOOTSTRAP], input=json.dumps(request),
                                  text=True, cwd=tmp, env=env, timeout=timeout,
                                  stdout=subprocess.PIPE, check=False)
            for line in proc.stdout.splitlines():  # progress goes to stderr (inherited)
                log(f"  [{IMPL} stdout] {line}")
        except (OSError, subprocess.TimeoutExpired) as exc:
            return None, {"status": "failed", "reason": f"runner did not complete: {exc}"}
        try:
            with open(reply_path) as fh:
                raw = json.load(fh)
        except (OSError, ValueError) as exc:
            return None, {"status": "failed",
                          "reason": f"runner exited {proc.returncode} without a reply ({exc})"}
    try:
        reply = parse_reply(raw)
    except ReplyError as exc:
        return None, {"status": "failed", "reason": str(exc)}
    env_doc = reply.get("environment", {})
    return reply, {"status": "present", "version": env_doc.get("popoto"),
                   "python": python, "environment": env_doc,
                   "floor": "plain, timed in the runner's own process"}


def merge(results: list[Result], reply: dict[str, Any]) -> list[str]:
    """Add the reply's timings to the parent's results of the same ids; returns the ids
    of the reply that matched no result (reported, not dropped silently)."""
    by_id = {r.scenario: r for r in results}
    unmatched = []
    for sc in reply["scenarios"]:
        res = by_id.get(sc["scenario"])
        if res is None:
            unmatched.append(sc["scenario"])
            continue
        res.timings[IMPL] = sc["timings"][IMPL]
        res.timings[FLOOR] = sc["timings"][PLAIN]
        res.floors[IMPL] = FLOOR
    for item in reply.get("unsupported", []):
        res = by_id.get(item["scenario"])
        if res is not None:
            res.unsupported[IMPL] = item["reason"]
    return unmatched


__all__ = ["FLOOR", "IMPL", "ReplyError", "default_python", "merge", "parse_reply",
           "run_child"]
