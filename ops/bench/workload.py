"""The benchmark model and the same-script floor (``Raw``).

``BenchItem`` has one KeyField, one SortedField, one IndexedField and four
plain fields of mixed types (str, int, float, datetime). ``Raw`` is the second
floor of the benchmark ("Popoto overhead"): for writes it sends, with redis-py
and msgpack only, exactly the script calls Popoto sends for the same operation
(same keys, same msgpack payloads, same EVALSHA); for reads it is the plain
floor's hand-written commands (``plain.Plain``) over Popoto's own stored layout.
``Raw`` shares no code with the ORM except the text of the save/delete Lua
scripts. ``tests/ops/test_bench_smoke.py`` checks that both write byte-identical data.
The primary floor, what a user writes by hand, is ``plain.Plain`` (its own module, so
that the popoto 1.10.1 runner can time it without importing this Popoto).
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterable
from operator import attrgetter
from typing import Any

import redis

from popoto import Field, IndexedField, KeyField, Model, SortedField
from popoto.engine import scripts
from popoto.engine.scripts import DELETE, SAVE

from .plain import (
    FIELDS,
    PER_COLOR,
    Dataset,
    EvalSha,
    Layout,
    Plain,
    Row,
    ScriptLoad,
    decode_row,
    delete_namespace,
    pack,
    unpack,
)

MODEL = "BenchItem"
LAYOUT = Layout(MODEL)
PLAIN_LAYOUT = Layout("PlainItem")  # the plain floor's own data (no owned-entry records)
CLASS_SET = LAYOUT.class_set
SCORE_KEY = LAYOUT.score_key
COLOR_PREFIX = LAYOUT.color_prefix
LEX_KEY = f"$LexF:{MODEL}:color"  # the IndexedField's value registry (startswith/endswith)
LEX_KEY_R = f"$LexF:{MODEL}:color:r"
#: the delete script's ARGV for one instance: flags, (owner, record base)*, no commands
DELETE_ARGV = ("-", 2, "score", SCORE_KEY, "color", COLOR_PREFIX[:-1], 0)


def row_key(row: Row) -> str:
    """The key of ``row``'s object in Popoto's layout."""
    return LAYOUT.key(row.sku)


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


class Raw(Plain):
    """The same-script floor: Popoto's exact script calls for writes; for reads, the plain
    floor's commands over Popoto's layout (inherited from :class:`Plain`)."""

    def __init__(self, client: redis.Redis[bytes]) -> None:
        super().__init__(client, LAYOUT)
        script_load: ScriptLoad = client.script_load
        self.save_sha = script_load(SAVE.body)
        self.delete_sha = script_load(DELETE.body)
        self.script_increment_sha: str | None = None

    # --- writes -------------------------------------------------------
    @staticmethod
    def save_argv(row: Row, flags: str = "-") -> list[Any]:
        """KEYS + ARGV of the save script for a full save of ``row`` (Popoto's exact call).

        ``flags="N"`` is a create (the key must not exist), as ``bulk_create`` sends.
        """
        key = row_key(row)
        ckey = COLOR_PREFIX + row.color
        color = row.color.encode()
        return [
            7, key, CLASS_SET, key, SCORE_KEY, ckey, LEX_KEY, LEX_KEY_R,  # every key it touches
            flags, "-", 0, 0, 2, "score", SCORE_KEY, "color", COLOR_PREFIX[:-1], 0, 9,
            "sku", pack(row.sku), "score", pack(row.score), "color", pack(row.color),
            "name", pack(row.name), "qty", pack(row.qty), "price", pack(row.price),
            "created", pack(row.created),
            "@idx:score", pack([["z"]]),  # rows relative to the owner's record base
            "@idx:color", pack([["s", ":" + row.color]]),
            0, 2, "Z", SCORE_KEY, key, repr(row.score), "S", ckey, key, "",
            2, 4, "ZADD", LEX_KEY, 0, color,  # the color's value registry (startswith)
            4, "ZADD", LEX_KEY_R, 0, row.color[::-1].encode() + b"\xff" + color,
        ]

    def save(self, row: Row) -> None:
        evalsha: EvalSha = self.r.evalsha
        evalsha(self.save_sha, *self.save_argv(row))

    def load(self, rows: Iterable[Row], chunk: int = 2000) -> None:
        """Store ``rows`` in Popoto's layout with pipelined save-script calls (setup only)."""
        rows = list(rows)
        for start in range(0, len(rows), chunk):
            pipe = self.r.pipeline(transaction=False)
            for row in rows[start:start + chunk]:
                pipe.evalsha(self.save_sha, *self.save_argv(row))
            pipe.execute()

    def bulk_create(self, rows: list[Row], chunk: int = 1000) -> None:
        """``chunk`` create-only save-script calls per pipeline, errors collected not raised."""
        sha = self.save_sha
        for start in range(0, len(rows), chunk):
            pipe = self.r.pipeline(transaction=False)
            for row in rows[start:start + chunk]:
                pipe.evalsha(sha, *self.save_argv(row, "N"))
            pipe.execute(raise_on_error=False)

    def script_increment(self, row: Row, field: str, kind: str, delta: str, zkey: str
                         ) -> bytes:
        """The increment script call of ``atomic_increment`` (``zkey``: the sorted set to move)."""
        if self.script_increment_sha is None:
            script_load: ScriptLoad = self.r.script_load
            self.script_increment_sha = script_load(scripts.script_body("increment"))
        key = row_key(row)
        evalsha: EvalSha = self.r.evalsha
        reply: bytes = evalsha(self.script_increment_sha, 2, key, zkey or key, field, kind,
                               delta, "1" if zkey else "0")
        return reply

    def update_qty(self, row: Row, qty: int) -> None:
        """The save script call of ``save(update_fields=["qty"])`` (qty owns no index)."""
        evalsha: EvalSha = self.r.evalsha
        evalsha(self.save_sha, 3, row_key(row), CLASS_SET, row_key(row),
                "-", "-", 0, 0, 0, 0, 1, "qty", pack(qty), 0, 0, 0)

    def delete(self, row: Row) -> None:
        evalsha: EvalSha = self.r.evalsha
        evalsha(self.delete_sha, 4, row_key(row), CLASS_SET, LEX_KEY, LEX_KEY_R, *DELETE_ARGV)

    def unload(self, rows: Iterable[Row], chunk: int = 2000) -> None:
        """Delete ``rows`` and their index entries (setup only)."""
        rows = list(rows)
        for start in range(0, len(rows), chunk):
            pipe = self.r.pipeline(transaction=False)
            for row in rows[start:start + chunk]:
                pipe.evalsha(self.delete_sha, 4, row_key(row), CLASS_SET, LEX_KEY, LEX_KEY_R,
                             *DELETE_ARGV)
            pipe.execute()


POPOTO_PATTERNS = LAYOUT.patterns

__all__ = ["FIELDS", "PER_COLOR", "Dataset", "Layout", "Plain", "Row", "decode_row",
           "delete_namespace", "pack", "unpack", "BenchItem", "Raw", "read_all"]
