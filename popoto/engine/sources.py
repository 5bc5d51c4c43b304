"""Index sources: what a lookup contributes to a query plan evaluated in Redis.

A query's condition tree compiles to a small program that one Lua script runs
inside Redis: each source materialises into a temporary sorted set, AND/OR/NOT
combine them with ZINTERSTORE / ZUNIONSTORE / ZDIFFSTORE, and the script
returns the size of the result and one page of it. Temporary keys are deleted
before the script returns (and carry a short expiry in case it is killed), so
no index ever travels to Python. The script is popoto/lua/query.lua
(:data:`popoto.engine.scripts.QUERY`); its op codes are the ``OP_*`` of
:mod:`popoto.protocol`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, cast

from popoto.protocol import (
    OP_AND,
    OP_AND_SMALL,
    OP_GEO,
    OP_KEYS,
    OP_NOT,
    OP_OR,
    OP_PART_KEY,
    OP_PART_RANGE,
    OP_PATTERN,
    OP_RANGE,
)

#: compile context entry naming the tag group a query source is built for
NS_CONTEXT = "@ns"
#: compile context entry: a dict shared by the compilations of one query for every tag
#: group (sources whose result does not depend on the group compute it once)
PLAN_MEMO_CONTEXT = "@memo"


@dataclass
class Program:
    """Accumulates ops; keys go to KEYS (index positions), literals to ARGV."""

    keys: list[str] = field(default_factory=list)
    ops: list[list[Any]] = field(default_factory=list)
    n_temps: int = 0
    temp_prefix: str = ""
    ns: str = ""  # the tag group the program runs in (sources built per group use it)
    _positions: dict[str, int] = field(default_factory=dict, repr=False)

    def key(self, name: str) -> int:
        position = self._positions.get(name)
        if position is None:  # (a dict: an OR of thousands of index sets stays linear)
            self.keys.append(name)
            position = self._positions[name] = len(self.keys)
        return position

    def temp(self) -> int:
        self.n_temps += 1
        return self.key(f"{self.temp_prefix}:{self.n_temps}")

    def op(self, *args: Any) -> None:
        self.ops.append(list(args))


class Source:
    """Something Redis can turn into a sorted set of instance keys."""

    #: True when the source's scores are meaningful (sorted field, distance)
    scored = False

    def emit(self, prog: Program) -> int:
        """Emit ops producing a key (KEYS index) holding a set or zset of instance keys."""
        raise NotImplementedError

    def retarget(self, old_ns: str, new_ns: str) -> Source:
        """This source in another tag group: every key naming ``old_ns`` names ``new_ns``.

        A sharded query is compiled once and retargeted to each group. Safe as a
        string replacement: a namespace carries the only ``{`` of a key.
        """
        changed = {name: value.replace(old_ns, new_ns) for name, value in vars(self).items()
                   if isinstance(value, str) and old_ns in value}
        if not changed:
            return self
        clone = copy.copy(self)
        clone.__dict__.update(changed)
        return clone


@dataclass
class SetSource(Source):
    """An existing Redis set (class set, equality index)."""

    key: str

    def emit(self, prog: Program) -> int:
        return prog.key(self.key)


@dataclass
class ScoreRange(Source):
    """Members of a sorted set whose score lies in [low, high] (Redis range syntax)."""

    key: str
    low: str
    high: str
    scored = True

    def emit(self, prog: Program) -> int:
        dst = prog.temp()
        prog.op(OP_RANGE, dst, prog.key(self.key), self.low, self.high)
        return dst

    def intersect(self, other: ScoreRange) -> ScoreRange:
        """The range of scores in both (same sorted set): the higher low, the lower high;
        on a tie the exclusive bound wins. May be empty (then Redis returns nothing)."""
        low = max(self.low, other.low, key=lambda b: _bound(b, exclusive_above=True))
        high = min(self.high, other.high, key=lambda b: _bound(b, exclusive_above=False))
        return ScoreRange(self.key, low, high)


def _bound(text: str, exclusive_above: bool) -> tuple[float, int]:
    """A Redis range bound (``5``, ``(5``, ``-inf``, ``+inf``) as a sortable pair: an
    exclusive low bound sorts above its value, an exclusive high bound below it."""
    exclusive = text.startswith("(")
    value = float(text[1:] if exclusive else text)
    return value, (1 if exclusive_above else -1) if exclusive else 0


def merge_ranges(parts: list[Source]) -> list[Source]:
    """AND parts with every ScoreRange on one sorted set merged into one interval
    (``x__gte=a, x__lte=b`` reads one range, never two half-indexes intersected);
    nested unscored ANDs are flattened first. Order is kept (first occurrence)."""
    flat: list[Source] = []
    for part in parts:
        if isinstance(part, Combine) and part.kind == "AND" and part.score_from is None:
            flat += part.parts
        else:
            flat.append(part)
    out: list[Source] = []
    ranges: dict[str, int] = {}  # sorted set -> position of its (merged) ScoreRange in out
    for part in flat:
        if isinstance(part, ScoreRange):
            at = ranges.get(part.key)
            if at is not None:
                out[at] = cast(ScoreRange, out[at]).intersect(part)
                continue
            ranges[part.key] = len(out)
        out.append(part)
    return out


@dataclass
class KeyPattern(Source):
    """Members of a set matching a glob pattern (SSCAN MATCH inside Redis)."""

    key: str
    pattern: str

    def emit(self, prog: Program) -> int:
        dst = prog.temp()
        prog.op(OP_PATTERN, dst, prog.key(self.key), self.pattern)
        return dst


@dataclass
class KeyList(Source):
    """An explicit list of instance keys."""

    members: list[str]

    def emit(self, prog: Program) -> int:
        members = self.members
        if prog.ns.startswith("{"):  # a tag group holds only its own keys
            members = [m for m in members if m.split(":", 1)[0] == prog.ns]
        dst = prog.temp()
        prog.op(OP_KEYS, dst, len(members), *members)
        return dst

    def retarget(self, old_ns: str, new_ns: str) -> Source:
        return self  # instance keys stay as they are; emit() keeps the group's own


@dataclass
class GeoRadius(Source):
    """Members of a geo set within a radius, scored by distance."""

    key: str
    longitude: float
    latitude: float
    radius: float
    unit: str
    scored = True

    def emit(self, prog: Program) -> int:
        dst = prog.temp()
        prog.op(OP_GEO, dst, prog.key(self.key), self.longitude, self.latitude, self.radius,
                self.unit)
        return dst


@dataclass
class Combine(Source):
    """AND / OR of sources; NOT is a difference against the class set."""

    kind: str  # "AND" | "OR" | "NOT"
    parts: list[Source]
    score_from: int | None = None  # index of the part whose scores are kept (AND)

    @property
    def scored(self) -> bool:  # type: ignore[override]  # computed here, a class flag elsewhere
        if self.kind == "AND":
            return self.score_from is not None
        if self.kind == "OR":
            return all(p.scored for p in self.parts)
        return self.parts[0].scored

    def retarget(self, old_ns: str, new_ns: str) -> Source:
        return Combine(self.kind, [p.retarget(old_ns, new_ns) for p in self.parts],
                       self.score_from)

    def emit(self, prog: Program) -> int:
        if not self.parts:  # ``field__in=[]``: nothing matches (an empty temporary)
            return KeyList([]).emit(prog)
        if self.kind == "AND" and any(isinstance(p, ScoreRange) for p in self.parts):
            return self._emit_small_and(prog)
        srcs = [p.emit(prog) for p in self.parts]
        dst = prog.temp()
        if self.kind == "NOT":
            prog.op(OP_NOT, dst, srcs[0], srcs[1])
        elif self.kind == "AND":
            weights = [1 if i == self.score_from else 0 for i in range(len(srcs))]
            prog.op(OP_AND, dst, len(srcs), *srcs, *weights)
        else:
            weights = [1 if self.scored else 0] * len(srcs)
            prog.op(OP_OR, dst, len(srcs), *srcs, *weights)
        return dst

    def _emit_small_and(self, prog: Program) -> int:
        """An AND with a score range: Redis walks its smallest input (ZCOUNT / SCARD /
        ZCARD estimates) and tests each member against the others (SISMEMBER, ZSCORE
        within the range), so no range is materialised and the work follows the
        smallest input, not the index. Other composite parts are materialised first."""
        specs: list[Any] = []
        for part in self.parts:
            if isinstance(part, ScoreRange):
                specs += [OP_PART_RANGE, prog.key(part.key), part.low, part.high]
            elif isinstance(part, SetSource):
                specs += [OP_PART_KEY, prog.key(part.key), "", ""]
            else:
                specs += [OP_PART_KEY, part.emit(prog), "", ""]
        dst = prog.temp()
        score_from = 0 if self.score_from is None else self.score_from + 1
        prog.op(OP_AND_SMALL, dst, len(self.parts), score_from, *specs)
        return dst
