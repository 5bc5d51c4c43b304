"""Merging the per-group replies of a sharded model into the order one server gives."""

from __future__ import annotations

from typing import Any

from popoto import keys
from popoto.protocol import text


def scored_merge_key(row: tuple[Any, float]) -> tuple[float, bytes]:
    """Sort key of a ``(member, score)`` row across groups: score, then the key without
    its tag, which is the order one server gives (its keys share one prefix)."""
    member = row[0]
    if isinstance(member, str):
        member = member.encode()
    return row[1], member.split(b":", 1)[-1]


def best_rows(replies: list[list[Any]], n: int) -> list[tuple[str, float]]:
    """Merge per-group ``(member, score)*`` replies into the n best ``(member, score)`` rows:
    score descending, then key ascending without its group tag (the unsharded order)."""
    rows = [(text(m), float(s)) for flat in replies for m, s in zip(flat[0::2], flat[1::2])]
    rows.sort(key=lambda row: (-row[1], row[0].split(keys.SEP, 1)[-1]))
    return rows[:n]
