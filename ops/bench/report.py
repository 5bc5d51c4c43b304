"""Table, markdown and JSON output of a run, and the environment it records."""

from __future__ import annotations

import json
import os
import platform
from typing import Any

import msgpack
import redis

import popoto

from .timing import PLAIN, POPOTO, RAW, Sizes


def environment(client: redis.Redis, sizes: Sizes, mode: str) -> dict[str, Any]:
    info = client.info("server")
    try:
        from redis.utils import HIREDIS_AVAILABLE
    except ImportError:  # pragma: no cover - very old redis-py
        HIREDIS_AVAILABLE = False
    return {
        "redis_version": info.get("redis_version"),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "redis_py": redis.__version__,
        "hiredis": bool(HIREDIS_AVAILABLE),
        "msgpack": ".".join(map(str, msgpack.version)),
        "popoto": getattr(popoto, "__version__", None) or _dist_version("popoto"),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "mode": mode,
        "git": git_state(),
        "repetitions": sizes.reps,
        "counts": {k: v for k, v in sizes.__dict__.items()},
    }


def git_state() -> dict[str, Any] | None:
    """The commit measured and any uncommitted change to the library (None outside git)."""
    import subprocess

    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "popoto"],
                               capture_output=True, text=True, check=True,
                               timeout=10).stdout.split("\n")
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": head, "uncommitted_popoto_changes": [d[3:] for d in dirty if d]}


def _dist_version(name: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:  # noqa: BLE001 - metadata is informative only
        return None


def _fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def markdown(results: list[dict[str, Any]], memory: dict[str, Any],
             skipped: list[dict[str, str]], env: dict[str, Any]) -> str:
    peers = sorted({n for r in results for n in r["timings"]} - {RAW, PLAIN, POPOTO})
    head = ["#", "scenario", "stored", "raw µs/op", "popoto µs/op", "popoto/raw time",
            "target", "met", "raw-plain µs/op", *[f"{p} µs/op" for p in peers]]
    lines = [
        f"Redis {env['redis_version']}, Python {env['python']}, redis-py {env['redis_py']}, "
        f"hiredis {'on' if env['hiredis'] else 'off'}, {env['cpus']} CPUs, "
        f"median of {env['repetitions']} repetitions ({env['mode']} run).",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" for _ in head) + "|",
    ]
    for r in results:
        t = r["timings"]
        met = r["target_met"]
        cells = [r["scenario"], r["title"], str(r["stored_objects"]),
                 _fmt(t.get(RAW, {}).get("per_op_us")), _fmt(t.get(POPOTO, {}).get("per_op_us")),
                 _fmt(r["ratio_popoto_over_raw_time"], ".2f"), r["target"] or "-",
                 "-" if met is None else ("yes" if met else "**no**"),
                 _fmt(t.get(PLAIN, {}).get("per_op_us")),
                 *[_fmt(t.get(p, {}).get("per_op_us")) for p in peers]]
        lines.append("| " + " | ".join(cells) + " |")
    for s in skipped:
        lines.append(f"| {s['scenario']} | skipped: {s['reason']} |" + " |" * (len(head) - 2))
    if memory:
        lines += ["", "| 9: memory per object | hash B | index B | total B |",
                  "|---|---|---|---|"]
        for name, m in memory.items():
            lines.append(f"| {name} | {m['hash_bytes_per_object']:.0f} | "
                         f"{m['index_bytes_per_object']:.0f} | {m['bytes_per_object']:.0f} |")
    return "\n".join(lines)


def write_json(path: str, doc: dict[str, Any]) -> None:
    """``doc`` as indented JSON at ``path`` (its directory created if missing)."""
    out_dir = os.path.dirname(path)
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
    with open(path, "w") as fh:
        json.dump(doc, fh, indent=1, default=str)
        fh.write("\n")
