"""The plain floor: what a user writes by hand with redis-py and msgpack, nothing else.

For every scenario the primary ratio of the benchmark is an implementation's throughput
divided by this code's, doing the fewest commands for the same user-visible result
(issue 13):

* save: ``MULTI``, ``HSET``, ``SADD`` of the class set, ``ZADD``/``SADD`` per index, ``EXEC``;
* get: ``HGETALL``;
* bulk: a non-transactional pipeline of those, 1,000 objects per flush;
* range filter: ``ZRANGEBYSCORE``, then a pipeline of ``HGETALL``;
* top-N: ``ZREVRANGEBYSCORE ... LIMIT``, then a pipeline;
* ``all()``: ``SMEMBERS``, then pipelines of 1,000 ``HGETALL``;
* ``count()``: ``SCARD`` / ``ZCOUNT``.

The bottom of ``popoto.ops.bench`` with ``timing``: it imports **no popoto** (and no sibling), so
the popoto 1.10.1 runner (``popoto1_child``), which runs in another virtualenv where
``popoto`` is the upstream library, times the very same floor in its own process.
"""

from __future__ import annotations

import datetime as _dt
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import msgpack
import redis

FIELDS = ("sku", "score", "color", "name", "qty", "price", "created")
PER_COLOR = 500  # objects per IndexedField value
_BASE_TIME = _dt.datetime(2024, 1, 1, 12, 0, 0)
_DATETIME_EXT = 2  # the msgpack extension code of a datetime (Popoto's storage format)
FLUSH = 1000  # objects per pipeline of the bulk floor


@dataclass(frozen=True)
class Row:
    sku: str
    score: float
    color: str
    name: str
    qty: int
    price: float
    created: _dt.datetime

    def kwargs(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in FIELDS}


class Dataset:
    """``n`` deterministic rows; ``score`` is a permutation of 0..n-1 (so ranges are exact)."""

    def __init__(self, n: int, seed: int = 7, prefix: str = "sku") -> None:
        rng = random.Random(seed)
        scores = list(range(n))
        rng.shuffle(scores)
        n_colors = max(1, n // PER_COLOR)
        letters = "abcdefghijklmnopqrstuvwxyz"
        self.n_colors = n_colors
        self.rows = [
            Row(
                sku=f"{prefix}{i:07d}",
                score=float(scores[i]),
                color=f"c{i % n_colors}",
                name="".join(rng.choices(letters, k=12)),
                qty=rng.randrange(1000),
                price=round(rng.uniform(1, 500), 2),
                created=_BASE_TIME + _dt.timedelta(seconds=i),
            )
            for i in range(n)
        ]

    def chunks(self, size: int, rows: list[Row] | None = None) -> Iterator[list[Row]]:
        rows = self.rows if rows is None else rows
        for start in range(0, len(rows), size):
            yield rows[start:start + size]


def range_lows(n: int, width: int, count: int) -> list[float]:
    """``count`` lower bounds of ranges ``width`` wide over scores 0..n-1 (spread, fixed)."""
    return [float((i * 7919) % max(1, n - width)) for i in range(count)]


def top_lows(n: int, count: int) -> list[float]:
    """``count`` lower bounds of top-N queries (the lower half of the scores)."""
    return [float((i * 104729) % max(1, n // 2)) for i in range(count)]


# --- msgpack ------------------------------------------------------------------
def _ext_default(value: Any) -> Any:
    if isinstance(value, _dt.datetime):
        return msgpack.ExtType(_DATETIME_EXT, value.isoformat().encode())
    raise TypeError(f"cannot pack {type(value).__name__}")


def _ext_hook(code: int, data: bytes) -> Any:
    if code == _DATETIME_EXT:
        return _dt.datetime.fromisoformat(data.decode())
    return msgpack.ExtType(code, data)


_PACKER = msgpack.Packer(default=_ext_default, use_bin_type=True)  # the bench is one thread
pack = _PACKER.pack


def unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, ext_hook=_ext_hook, raw=False)


_BFIELDS = tuple(f.encode() for f in FIELDS)


def decode_row(reply: dict[bytes, bytes], _unpackb: Any = msgpack.unpackb) -> list[Any]:
    """Decode the seven field values of an HGETALL reply (the raw equivalent of reading them)."""
    return [_unpackb(reply[f], ext_hook=_ext_hook, raw=False) for f in _BFIELDS]


# --- keys -----------------------------------------------------------------------
@dataclass(frozen=True)
class Layout:
    """The key names of one model's data: hash, class set, sorted index, equality sets."""

    model: str

    def key(self, sku: str) -> str:
        return f"{self.model}:{sku}"

    @property
    def class_set(self) -> str:
        return f"$Class:{self.model}"

    @property
    def score_key(self) -> str:
        return f"$SortedF:{self.model}:score"

    @property
    def color_prefix(self) -> str:
        return f"$IndexF:{self.model}:color:"

    @property
    def patterns(self) -> tuple[str, ...]:
        """Every key of the layout, as SCAN patterns."""
        return (f"{self.model}:*", self.class_set, f"$SortedF:{self.model}:*",
                f"$IndexF:{self.model}:*", f"$LexF:{self.model}:*")


# A user's own increment: one script, the value read, changed, re-encoded and re-indexed.
INCREMENT_LUA = """
local v = cmsgpack.unpack(redis.call('HGET', KEYS[1], ARGV[1])) + tonumber(ARGV[2])
redis.call('HSET', KEYS[1], ARGV[1], cmsgpack.pack(v))
if ARGV[3] == '1' then redis.call('ZADD', KEYS[2], v, KEYS[1]) end
return tostring(v)
"""


class Plain:
    """The hand-written floor over one :class:`Layout` (see the module docstring)."""

    def __init__(self, client: redis.Redis, layout: Layout) -> None:
        self.r = client
        self.layout = layout
        self.increment_sha: str | None = None

    # --- writes -------------------------------------------------------
    def _queue(self, pipe: Any, row: Row) -> None:
        lay = self.layout
        key = lay.key(row.sku)
        pipe.hset(key, mapping={f: pack(getattr(row, f)) for f in FIELDS})
        pipe.sadd(lay.class_set, key)
        pipe.zadd(lay.score_key, {key: row.score})
        pipe.sadd(lay.color_prefix + row.color, key)

    def save(self, row: Row) -> None:
        """MULTI / HSET / SADD class / ZADD score / SADD color / EXEC."""
        pipe = self.r.pipeline(transaction=True)
        self._queue(pipe, row)
        pipe.execute()

    def bulk_create(self, rows: list[Row], chunk: int = FLUSH) -> None:
        """HSET/SADD/ZADD/SADD per row, ``chunk`` rows per non-transactional pipeline."""
        for start in range(0, len(rows), chunk):
            pipe = self.r.pipeline(transaction=False)
            for row in rows[start:start + chunk]:
                self._queue(pipe, row)
            pipe.execute()

    def load(self, rows: Iterable[Row], chunk: int = 2000) -> None:
        """Store ``rows`` (setup only)."""
        self.bulk_create(list(rows), chunk)

    def update_qty(self, row: Row, qty: int) -> None:
        self.r.hset(self.layout.key(row.sku), "qty", pack(qty))

    def delete(self, row: Row) -> None:
        lay = self.layout
        key = lay.key(row.sku)
        pipe = self.r.pipeline(transaction=True)
        pipe.delete(key)
        pipe.srem(lay.class_set, key)
        pipe.zrem(lay.score_key, key)
        pipe.srem(lay.color_prefix + row.color, key)
        pipe.execute()

    def unload(self, rows: Iterable[Row], chunk: int = 2000) -> None:
        """Delete ``rows`` and their index entries (setup only)."""
        lay = self.layout
        rows = list(rows)
        for start in range(0, len(rows), chunk):
            pipe = self.r.pipeline(transaction=False)
            for row in rows[start:start + chunk]:
                key = lay.key(row.sku)
                pipe.delete(key)
                pipe.srem(lay.class_set, key)
                pipe.zrem(lay.score_key, key)
                pipe.srem(lay.color_prefix + row.color, key)
            pipe.execute()

    def increment(self, row: Row, field: str, delta: Any) -> Any:
        """One EVALSHA of the user's own increment script (re-indexes ``score``)."""
        if self.increment_sha is None:
            self.increment_sha = self.r.script_load(INCREMENT_LUA)
        key = self.layout.key(row.sku)
        return self.r.evalsha(self.increment_sha, 2, key, self.layout.score_key, field,
                              repr(delta), "1" if field == "score" else "0")

    # --- reads --------------------------------------------------------
    def get(self, row: Row) -> list[Any]:
        return decode_row(self.r.hgetall(self.layout.key(row.sku)))

    def hydrate(self, keys: list[bytes]) -> list[list[Any]]:
        pipe = self.r.pipeline(transaction=False)
        for key in keys:
            pipe.hgetall(key)
        return [decode_row(reply) for reply in pipe.execute() if reply]

    def score_range(self, low: float | str, high: float | str) -> list[list[Any]]:
        """``low``/``high`` as ZRANGEBYSCORE takes them (``"(5"`` is an open bound)."""
        return self.hydrate(self.r.zrangebyscore(self.layout.score_key, low, high))

    def range_page(self, low: float, high: float, n: int) -> list[list[Any]]:
        """The first ``n`` by score within [low, high]: ZRANGEBYSCORE ... LIMIT 0 n."""
        return self.hydrate(self.r.zrangebyscore(self.layout.score_key, low, high,
                                                 start=0, num=n))

    def range_color(self, low: float, high: float, color: str) -> list[list[Any]]:
        """Range AND color: one pipeline of ZRANGEBYSCORE + SMEMBERS, intersected here."""
        pipe = self.r.pipeline(transaction=False)
        pipe.zrangebyscore(self.layout.score_key, low, high)
        pipe.smembers(self.layout.color_prefix + color)
        in_range, members = pipe.execute()
        return self.hydrate([k for k in in_range if k in members])

    def top(self, low: float, n: int) -> list[list[Any]]:
        return self.hydrate(self.r.zrevrangebyscore(self.layout.score_key, "+inf", low,
                                                    start=0, num=n))

    def by_color(self, color: str) -> list[list[Any]]:
        return self.hydrate(list(self.r.smembers(self.layout.color_prefix + color)))

    def all(self, chunk: int = 1000) -> list[list[Any]]:
        keys = list(self.r.smembers(self.layout.class_set))
        out: list[list[Any]] = []
        for start in range(0, len(keys), chunk):
            out += self.hydrate(keys[start:start + chunk])
        return out

    def count(self) -> int:
        return self.r.scard(self.layout.class_set)

    def count_range(self, low: float, high: float) -> int:
        return self.r.zcount(self.layout.score_key, low, high)


def delete_namespace(client: redis.Redis, patterns: Iterable[str]) -> int:
    """UNLINK every key matching ``patterns`` (the harness only removes keys it made)."""
    removed = 0
    for pattern in patterns:
        batch: list[bytes] = []
        for key in client.scan_iter(match=pattern, count=2000):
            batch.append(key)
            if len(batch) >= 2000:
                removed += client.unlink(*batch)
                batch = []
        if batch:
            removed += client.unlink(*batch)
    return removed


def memory_usage(client: redis.Redis, patterns: Iterable[str]) -> dict[str, int]:
    """``MEMORY USAGE ... SAMPLES 0`` of every key matching ``patterns``, hashes apart."""
    out = {"hash_bytes": 0, "index_bytes": 0, "hashes": 0, "index_keys": 0}
    for pattern in patterns:
        keys = list(client.scan_iter(match=pattern, count=2000))
        for start in range(0, len(keys), 2000):
            pipe = client.pipeline(transaction=False)
            for k in keys[start:start + 2000]:
                pipe.type(k)
                pipe.memory_usage(k, samples=0)
            replies = pipe.execute()
            for kind, used in zip(replies[0::2], replies[1::2]):
                if kind in (b"hash", "hash"):
                    out["hash_bytes"] += used or 0
                    out["hashes"] += 1
                else:
                    out["index_bytes"] += used or 0
                    out["index_keys"] += 1
    return out
