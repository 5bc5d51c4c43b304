"""The benchmark model, its deterministic data, and the raw redis-py floor.

``BenchItem`` has one KeyField, one SortedField, one IndexedField and four
plain fields of mixed types (str, int, float, datetime). ``Raw`` does by hand,
with redis-py and msgpack only, exactly the Redis work Popoto does for the same
operation: same keys, same msgpack payloads, same script calls and pipelining.
``Raw`` shares no code with the ORM except the text of the save/delete Lua
scripts (the honest floor for "the same commands" is the same EVALSHA).
``tests/ops/test_bench_smoke.py`` checks that both write byte-identical data.
"""

from __future__ import annotations

import datetime as _dt
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

import msgpack
import redis

from popoto import Field, IndexedField, KeyField, Model, SortedField
from popoto.engine import scripts
from popoto.engine.scripts import DELETE, SAVE

MODEL = "BenchItem"
FIELDS = ("sku", "score", "color", "name", "qty", "price", "created")
PER_COLOR = 500  # objects per IndexedField value
CLASS_SET = f"$Class:{MODEL}"
SCORE_KEY = f"$SortedF:{MODEL}:score"
COLOR_PREFIX = f"$IndexF:{MODEL}:color:"
LEX_KEY = f"$LexF:{MODEL}:color"  # the IndexedField's value registry (startswith/endswith)
LEX_KEY_R = f"$LexF:{MODEL}:color:r"
#: the delete script's ARGV for one instance: flags, (owner, record base)*, no commands
DELETE_ARGV = ("-", 2, "score", SCORE_KEY, "color", COLOR_PREFIX[:-1], 0)
_BASE_TIME = _dt.datetime(2024, 1, 1, 12, 0, 0)
_DATETIME_EXT = 2  # popoto's msgpack extension code for datetime (storage format)


class BenchItem(Model):
    """The benchmark model: 1 KeyField, 1 SortedField, 1 IndexedField, 4 plain fields."""

    sku = KeyField()
    score = SortedField(type=float)
    color = IndexedField()
    name = Field(type=str)
    qty = Field(type=int)
    price = Field(type=float)
    created = Field(type=_dt.datetime)


read_all = attrgetter(*FIELDS)
"""Read every field of a loaded object (what an application does with it)."""


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

    @property
    def key(self) -> str:
        return f"{MODEL}:{self.sku}"


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


# --- raw redis-py + msgpack ---------------------------------------------------
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


class Raw:
    """Hand-written redis-py doing the same Redis work as Popoto for each operation."""

    def __init__(self, client: redis.Redis) -> None:
        self.r = client
        self.save_sha = client.script_load(SAVE.body)
        self.delete_sha = client.script_load(DELETE.body)
        self.increment_sha: str | None = None

    # --- writes -------------------------------------------------------
    @staticmethod
    def save_argv(row: Row, flags: str = "-") -> list[Any]:
        """KEYS + ARGV of the save script for a full save of ``row`` (Popoto's exact call).

        ``flags="N"`` is a create (the key must not exist), as ``bulk_create`` sends.
        """
        key = row.key
        ckey = COLOR_PREFIX + row.color
        return [
            7, key, CLASS_SET, key, SCORE_KEY, ckey, LEX_KEY, LEX_KEY_R,  # every key it touches
            flags, "-", 0, 0, 2, "score", SCORE_KEY, "color", COLOR_PREFIX[:-1], 0, 9,
            "sku", pack(row.sku), "score", pack(row.score), "color", pack(row.color),
            "name", pack(row.name), "qty", pack(row.qty), "price", pack(row.price),
            "created", pack(row.created),
            "@idx:score", pack([["z"]]),  # rows relative to the owner's record base
            "@idx:color", pack([["s", ":" + row.color]]),
            0, 2, "Z", SCORE_KEY, key, repr(row.score), "S", ckey, key, "",
            2, 4, "ZADD", LEX_KEY, 0, row.color.encode(),  # the color's value registry
            4, "ZADD", LEX_KEY_R, 0, row.color[::-1].encode() + b"\xff" + row.color.encode(),
        ]

    def save(self, row: Row) -> None:
        self.r.evalsha(self.save_sha, *self.save_argv(row))

    def save_plain(self, row: Row) -> None:
        """The plain floor: MULTI/HSET/SADD/ZADD/SADD/EXEC (no script, no owned-entry record)."""
        key = row.key
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(key, mapping={f: pack(getattr(row, f)) for f in FIELDS})
        pipe.sadd(CLASS_SET, key)
        pipe.zadd(SCORE_KEY, {key: row.score})
        pipe.sadd(COLOR_PREFIX + row.color, key)
        pipe.zadd(LEX_KEY, {row.color.encode(): 0})  # the distinct-value registry
        pipe.zadd(LEX_KEY_R, {row.color[::-1].encode() + b"\xff" + row.color.encode(): 0})
        pipe.execute()

    def load(self, rows: Iterable[Row], chunk: int = 2000) -> None:
        """Store ``rows`` in Popoto's layout with pipelined save-script calls (setup only)."""
        rows = list(rows)
        for start in range(0, len(rows), chunk):
            pipe = self.r.pipeline(transaction=False)
            for row in rows[start:start + chunk]:
                pipe.evalsha(self.save_sha, *self.save_argv(row))
            pipe.execute()

    def load_plain(self, rows: Iterable[Row], chunk: int = 2000) -> None:
        """Store ``rows`` in the plain layout (hash without owned-entry records + indexes)."""
        rows = list(rows)
        for start in range(0, len(rows), chunk):
            pipe = self.r.pipeline(transaction=False)
            for row in rows[start:start + chunk]:
                key = row.key
                pipe.hset(key, mapping={f: pack(getattr(row, f)) for f in FIELDS})
                pipe.sadd(CLASS_SET, key)
                pipe.zadd(SCORE_KEY, {key: row.score})
                pipe.sadd(COLOR_PREFIX + row.color, key)
            pipe.execute()

    def bulk_create(self, rows: list[Row], chunk: int = 1000) -> None:
        """``chunk`` create-only save-script calls per pipeline, errors collected not raised."""
        sha = self.save_sha
        for start in range(0, len(rows), chunk):
            pipe = self.r.pipeline(transaction=False)
            for row in rows[start:start + chunk]:
                pipe.evalsha(sha, *self.save_argv(row, "N"))
            pipe.execute(raise_on_error=False)

    def bulk_create_plain(self, rows: list[Row], chunk: int = 1000) -> None:
        """HSET/SADD/ZADD/SADD per row, ``chunk`` rows per pipeline (no atomicity per row)."""
        self.load_plain(rows, chunk)

    def increment(self, row: Row, field: str, kind: str, delta: str, zkey: str) -> bytes:
        """The increment script call of ``atomic_increment`` (``zkey``: the sorted set to move)."""
        if self.increment_sha is None:

            self.increment_sha = self.r.script_load(scripts.script_body("increment"))
        return self.r.evalsha(self.increment_sha, 2, row.key, zkey or row.key, field, kind,
                              delta, "1" if zkey else "0")

    def update_qty(self, row: Row, qty: int) -> None:
        """The save script call of ``save(update_fields=["qty"])`` (qty owns no index)."""
        self.r.evalsha(self.save_sha, 3, row.key, CLASS_SET, row.key,
                       "-", "-", 0, 0, 0, 0, 1, "qty", pack(qty), 0, 0, 0)

    def update_qty_plain(self, row: Row, qty: int) -> None:
        self.r.hset(row.key, "qty", pack(qty))

    def delete(self, row: Row) -> None:
        self.r.evalsha(self.delete_sha, 4, row.key, CLASS_SET, LEX_KEY, LEX_KEY_R,
                       *DELETE_ARGV)

    def delete_plain(self, row: Row) -> None:
        key = row.key
        pipe = self.r.pipeline(transaction=True)
        pipe.delete(key)
        pipe.srem(CLASS_SET, key)
        pipe.zrem(SCORE_KEY, key)
        pipe.srem(COLOR_PREFIX + row.color, key)
        pipe.execute()

    def unload(self, rows: Iterable[Row], chunk: int = 2000) -> None:
        """Delete ``rows`` and their index entries (setup only)."""
        rows = list(rows)
        for start in range(0, len(rows), chunk):
            pipe = self.r.pipeline(transaction=False)
            for row in rows[start:start + chunk]:
                pipe.evalsha(self.delete_sha, 4, row.key, CLASS_SET, LEX_KEY, LEX_KEY_R,
                             *DELETE_ARGV)
            pipe.execute()

    # --- reads --------------------------------------------------------
    def get(self, row: Row) -> list[Any]:
        return decode_row(self.r.hgetall(row.key))

    def hydrate(self, keys: list[bytes]) -> list[list[Any]]:
        pipe = self.r.pipeline(transaction=False)
        for key in keys:
            pipe.hgetall(key)
        return [decode_row(reply) for reply in pipe.execute() if reply]

    def score_range(self, low: float, high: float) -> list[list[Any]]:
        return self.hydrate(self.r.zrangebyscore(SCORE_KEY, low, high))

    def top(self, low: float, n: int) -> list[list[Any]]:
        return self.hydrate(self.r.zrevrangebyscore(SCORE_KEY, "+inf", low, start=0, num=n))

    def by_color(self, color: str) -> list[list[Any]]:
        return self.hydrate(list(self.r.smembers(COLOR_PREFIX + color)))

    def all(self, chunk: int = 1000) -> list[list[Any]]:
        keys = list(self.r.smembers(CLASS_SET))
        out: list[list[Any]] = []
        for start in range(0, len(keys), chunk):
            out += self.hydrate(keys[start:start + chunk])
        return out

    def count(self) -> int:
        return self.r.scard(CLASS_SET)


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


POPOTO_PATTERNS = (f"{MODEL}:*", CLASS_SET, f"$SortedF:{MODEL}:*", f"$IndexF:{MODEL}:*",
                   f"$LexF:{MODEL}:*")
