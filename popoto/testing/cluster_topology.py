"""Redis Cluster topology: ``CLUSTER NODES`` lines and the initial slot split.

Pure functions and data, no I/O: :func:`_parse_cluster_nodes` reads ``CLUSTER NODES``
output, :func:`_slot_ranges` splits the 16384 slots among masters the way
``redis-cli --cluster create`` does.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field

__all__ = ["SLOT_COUNT", "SlotMap"]

SLOT_COUNT = 16384

#: A node's view of the slot map: sorted (start, end, master port, replica ports).
SlotMap = tuple[tuple[int, int, int, tuple[int, ...]], ...]


@dataclass(frozen=True)
class _NodeLine:
    """One line of ``CLUSTER NODES``."""

    node_id: str
    port: int
    flags: frozenset[str]
    master_id: str | None
    slots: tuple[tuple[int, int], ...] = field(default=())

    @property
    def is_master(self) -> bool:
        return "master" in self.flags

    @property
    def failing(self) -> bool:
        return bool(self.flags & {"fail", "fail?", "handshake", "noaddr"})


def _parse_cluster_nodes(text: str) -> list[_NodeLine]:
    lines = []
    for raw in text.splitlines():
        parts = raw.split()
        if len(parts) < 8:
            continue
        address = parts[1].split(",")[0].split("@")[0]  # ip:port@cport[,hostname]
        port_text = address.rsplit(":", 1)[-1]
        slots = []
        for item in parts[8:]:
            if item.startswith("["):  # migrating / importing marker
                continue
            start, _, end = item.partition("-")
            slots.append((int(start), int(end or start)))
        lines.append(_NodeLine(
            node_id=parts[0],
            port=int(port_text) if port_text.isdigit() else 0,
            flags=frozenset(parts[2].split(",")),
            master_id=None if parts[3] == "-" else parts[3],
            slots=tuple(slots),
        ))
    return lines


def _f32(value: float) -> float:
    return float(struct.unpack("f", struct.pack("f", value))[0])


def _slot_ranges(masters: int) -> list[tuple[int, int]]:
    """The split ``redis-cli --cluster create`` makes (contiguous, as even as possible).

    Mirrors redis-cli's single-precision arithmetic, e.g. 3 masters get 0-5460,
    5461-10922 and 10923-16383.
    """
    per_node = _f32(SLOT_COUNT / masters)
    cursor, first, ranges = 0.0, 0, []
    for i in range(masters):
        last = math.floor(_f32(_f32(cursor + per_node) - 1) + 0.5)  # C lround()
        if last > SLOT_COUNT or i == masters - 1:
            last = SLOT_COUNT - 1
        last = max(last, first)
        ranges.append((first, last))
        first = last + 1
        cursor = _f32(cursor + per_node)
    return ranges
