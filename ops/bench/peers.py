"""The in-process peers: walrus and redis-om (the ``bench`` extra, which ``make bench``
installs). The third peer, popoto 1.10.1, runs in its own virtualenv (``popoto1``).

Each adapter exposes the operations its library supports with plain Redis
(no RediSearch module): walrus models keep their own sets/sorted sets, so they
can run most scenarios; redis-om ``HashModel`` without RediSearch can only
save, get by primary key, update and delete. Both are compared with the plain
floor of this process. A missing library yields no adapter and a "missing" status
with the reason, which the report prints loudly and writes to the JSON.
"""

from __future__ import annotations

import datetime as _dt
import itertools
import os
from collections.abc import Callable, Iterable
from typing import Any

import redis

from .workload import FIELDS, Row, delete_namespace, read_all


class WalrusPeer:
    name = "walrus"

    def __init__(self, url: str) -> None:
        from walrus import Database, DateTimeField, FloatField, IntegerField, Model, TextField

        self.db = Database.from_url(url)

        def model_on(database: Any) -> type[Any]:
            class BenchWalrus(Model):  # type: ignore[misc]  # walrus is untyped: Model is Any
                __database__ = database
                sku = TextField(primary_key=True)
                score = FloatField(index=True)
                color = TextField(index=True)
                name = TextField()
                qty = IntegerField()
                price = FloatField()
                created = DateTimeField()

            return BenchWalrus

        self.model = model_on(self.db)
        self._buffer = _BufferedWalrusDatabase.make(Database, url)
        self._loader_model = model_on(self._buffer)

    def clear(self) -> None:
        delete_namespace(self.db, ["benchwalrus:*"])

    def load(self, rows: Iterable[Row]) -> None:
        """Store rows through walrus's own save code, its commands pipelined (setup only)."""
        for row in rows:
            self._loader_model.create(**row.kwargs())
            if len(self._buffer.pending) >= 5000:
                self._buffer.flush()
        self._buffer.flush()

    # operations
    def save(self, row: Row) -> None:
        self.model.create(**row.kwargs())

    def get(self, row: Row) -> tuple[Any, ...]:
        return read_all(self.model.load(row.sku))

    def update_qty(self, obj: Any, qty: int) -> None:
        obj.qty = qty
        obj.save()

    def delete(self, obj: Any) -> None:
        obj.delete()

    def increment(self, obj: Any, name: str, delta: Any) -> None:
        obj.incr(getattr(self.model, name), delta)

    def instances(self, rows: Iterable[Row]) -> list[Any]:
        return [self.model(**row.kwargs()) for row in rows]

    def score_range(self, low: float, high: float) -> list[tuple[Any, ...]]:
        m = self.model
        return [read_all(o) for o in m.query(m.score.between(low, high))]

    def range_gte_lte(self, low: float, high: float) -> list[tuple[Any, ...]]:
        m = self.model
        return [read_all(o) for o in m.query((m.score >= low) & (m.score <= high))]

    def range_open(self, low: float, high: float) -> list[tuple[Any, ...]]:
        m = self.model
        return [read_all(o) for o in m.query((m.score > low) & (m.score < high))]

    def range_color(self, low: float, high: float, color: str) -> list[tuple[Any, ...]]:
        m = self.model
        return [read_all(o) for o in m.query(m.score.between(low, high) & (m.color == color))]

    def range_page(self, low: float, high: float, n: int) -> list[tuple[Any, ...]]:
        m = self.model
        found = m.query(m.score.between(low, high), order_by=m.score)
        return [read_all(o) for o in itertools.islice(found, n)]

    def top(self, low: float, n: int) -> list[tuple[Any, ...]]:
        m = self.model
        found = m.query(m.score >= low, order_by=m.score.desc())
        return [read_all(o) for o in itertools.islice(found, n)]

    def by_color(self, color: str) -> list[tuple[Any, ...]]:
        m = self.model
        return [read_all(o) for o in m.query(m.color == color)]

    def all(self) -> list[tuple[Any, ...]]:
        return [read_all(o) for o in self.model.all()]

    def count(self) -> int:
        found: int = self.model.count()
        return found


class _BufferedWalrusDatabase:
    """A walrus Database whose commands are queued on a pipeline (for fast, exact loading)."""

    @staticmethod
    def make(database_cls: type, url: str) -> Any:
        class Buffered(database_cls):  # type: ignore[misc]  # walrus is untyped
            pending: list[tuple[Any, ...]]  # commands queued, sent by flush()
            target: redis.Redis[bytes]

            def execute_command(self, *args: Any, **options: Any) -> Any:
                self.pending.append(args)
                return 0

            def flush(self) -> None:
                pipe = self.target.pipeline(transaction=False)
                # types-redis leaves Pipeline.execute_command unannotated (it queues)
                queue: Callable[..., object] = pipe.execute_command
                for args in self.pending:
                    queue(*args)
                pipe.execute()
                self.pending = []

        db = Buffered.from_url(url)
        db.pending = []
        db.target = redis.Redis.from_url(url)
        return db


class RedisOmPeer:
    name = "redis-om"

    def __init__(self, url: str) -> None:
        os.environ.setdefault("REDIS_OM_URL", url)
        from redis_om import Field, HashModel

        client = redis.Redis.from_url(url, decode_responses=True)

        # redis-om is untyped: HashModel is Any (and its class keywords unknown to mypy)
        class BenchOm(HashModel, index=True):  # type: ignore[misc, call-arg]
            sku: str = Field(primary_key=True)
            score: float
            color: str
            name: str
            qty: int
            price: float
            created: _dt.datetime

            class Meta:
                database = client
                global_key_prefix = "benchom"

        self.model = BenchOm
        self.client = client

    def clear(self) -> None:
        delete_namespace(self.client, ["benchom:*"])

    def load(self, rows: Iterable[Row]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for i, row in enumerate(rows, 1):
            self.model(**row.kwargs()).save(pipeline=pipe)
            if i % 2000 == 0:
                pipe.execute()
        pipe.execute()

    def save(self, row: Row) -> None:
        self.model(**row.kwargs()).save()

    def bulk_create(self, rows: list[Row]) -> None:
        self.model.add([self.model(**row.kwargs()) for row in rows])

    def get(self, row: Row) -> tuple[Any, ...]:
        return read_all(self.model.get(row.sku))

    def instances(self, rows: Iterable[Row]) -> list[Any]:
        return [self.model(**row.kwargs()) for row in rows]

    def update_qty(self, obj: Any, qty: int) -> None:
        obj.update(qty=qty)

    def delete(self, obj: Any) -> None:
        self.model.delete(obj.sku)


def _version(dist: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:  # noqa: BLE001 - informative only
        return None


def load_peers(url: str, wanted: bool) -> tuple[list[Any], dict[str, dict[str, Any]]]:
    """(available peer adapters, ``{name: {"status": present|missing|disabled, ...}}``)."""
    peers: list[Any] = []
    status: dict[str, dict[str, Any]] = {}
    for cls, dist in ((WalrusPeer, "walrus"), (RedisOmPeer, "redis-om")):
        if not wanted:
            status[cls.name] = {"status": "disabled", "reason": "--no-peers"}
            continue
        try:
            peers.append(cls(url))
        except ImportError as exc:
            status[cls.name] = {"status": "missing",
                                "reason": f"not installed ({exc}); make bench installs it "
                                          "(pip install -e '.[bench]')"}
        else:
            status[cls.name] = {"status": "present", "version": _version(dist),
                                "floor": "plain (this process)"}
    return peers, status


__all__ = ["FIELDS", "RedisOmPeer", "WalrusPeer", "load_peers"]
