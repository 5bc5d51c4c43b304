"""Table, markdown and JSON output of a run, and the environment it records."""

from __future__ import annotations

import json
import os
import platform
from typing import Any

import msgpack
import redis

import popoto

from .timing import PLAIN, POPOTO, Sizes


def environment(client: redis.Redis[bytes], sizes: Sizes, mode: str) -> dict[str, Any]:
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


def ratio_text(value: float | None) -> str:
    """A ratio with two decimals, or three significant digits below 0.1 (never '0.00')."""
    if value is None:
        return "-"
    return f"{value:.2f}" if value >= 0.1 else f"{value:.3g}"


PEER_ORDER = ("walrus", "redis-om", "popoto-1.10.1")


def peer_names(doc: dict[str, Any]) -> list[str]:
    """Every peer of the run, present or not, in a fixed order."""
    names = list(doc.get("peers", {}))
    return sorted(names, key=lambda n: (PEER_ORDER.index(n) if n in PEER_ORDER else 9, n))


def peer_cell(result: dict[str, Any], name: str, status: dict[str, Any]) -> str:
    """A peer's ratio against its own floor, or why there is none."""
    ratio = result.get("peer_ratios", {}).get(name)
    if ratio is not None:
        return ratio_text(ratio)
    if status.get("status") != "present":
        return "MISSING" if status.get("status") in ("missing", "failed") else "off"
    if name in result.get("peers_unsupported", {}):
        return "n/a"
    return "-"


def missing_peers(doc: dict[str, Any]) -> list[str]:
    """One loud line per peer that was wanted and did not run."""
    return [f"MISSING PEER {name}: {st.get('status')} - {st.get('reason')}"
            for name, st in doc.get("peers", {}).items()
            if st.get("status") in ("missing", "failed")]


def markdown(doc: dict[str, Any]) -> str:
    """The results table (every ratio a throughput ratio against a floor) and the rest."""
    results, memory, env = doc["scenarios"], doc.get("memory", {}), doc["environment"]
    peers = peer_names(doc)
    statuses = doc.get("peers", {})
    head = ["#", "scenario", "plain µs/op", "popoto µs/op", "**Popoto / plain**", "target",
            "met", "Popoto / same-script (overhead)",
            *[f"{p} / its floor" for p in peers]]
    lines = [
        f"Redis {env['redis_version']}, Python {env['python']}, redis-py {env['redis_py']}, "
        f"hiredis {'on' if env['hiredis'] else 'off'}, {env['cpus']} CPUs, "
        f"median of {env['repetitions']} paired repetitions ({env['mode']} run). "
        "Ratios are throughput over the floor's: above 1.00 is faster than the floor.",
        "",
    ]
    lines += [f"**{line}**" for line in missing_peers(doc)]
    if missing_peers(doc):
        lines.append("")
    lines += ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in results:
        t = r["timings"]
        met = r["target_met"]
        cells = [r["scenario"], r["title"], _fmt(t.get(PLAIN, {}).get("per_op_us")),
                 _fmt(t.get(POPOTO, {}).get("per_op_us")),
                 f"**{ratio_text(r['ratio_vs_plain'])}**", r["target"] or "-",
                 "-" if met is None else ("yes" if met else "**no**"),
                 ratio_text(r["popoto_overhead"]),
                 *[peer_cell(r, p, statuses.get(p, {})) for p in peers]]
        lines.append("| " + " | ".join(cells) + " |")
    for s in doc.get("skipped", []):
        lines.append(f"| {s['scenario']} | skipped: {s['reason']} |" + " |" * (len(head) - 2))
    lines += ["", "Peers: " + "; ".join(
        f"{n} {st.get('status')}" + (f" ({st['version']})" if st.get("version") else "")
        + (f": {st['reason']}" if st.get("reason") else "") for n, st in statuses.items())
        + ". n/a = the library cannot do this scenario (see `peers_unsupported` in the JSON)."]
    if memory:
        lines += ["", "| 9: memory per object | hash B | index B | total B | / plain |",
                  "|---|---|---|---|---|"]
        plain_total = memory.get(PLAIN, {}).get("bytes_per_object")
        for name, m in memory.items():
            rel = "-" if not plain_total else f"{m['bytes_per_object'] / plain_total:.2f}"
            lines.append(f"| {name} | {m['hash_bytes_per_object']:.0f} | "
                         f"{m['index_bytes_per_object']:.0f} | {m['bytes_per_object']:.0f} | "
                         f"{rel} |")
    plots = doc.get("plots", {})
    if plots.get("skipped"):
        lines += ["", f"**PLOTS NOT WRITTEN: {plots['skipped']}**"]
    elif plots:
        lines += ["", "Plots: " + ", ".join(plots.get("files", []))]
    return "\n".join(lines)


def write_json(path: str, doc: dict[str, Any]) -> None:
    """``doc`` as indented JSON at ``path`` (its directory created if missing)."""
    out_dir = os.path.dirname(path)
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
    with open(path, "w") as fh:
        json.dump(doc, fh, indent=1, default=str)
        fh.write("\n")
