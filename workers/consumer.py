"""A consumer-group reader for event streams: at-least-once, with reclaim and dead letters.

One cycle of :meth:`StreamConsumer.run`:

1. at start (and after a reclaim met a deleted entry) its **own pending**
   entries, read with ``XREADGROUP ... 0`` — what this consumer name had read
   but not acknowledged before a crash or restart;
2. every ``claim_interval``, ``XAUTOCLAIM`` of entries idle longer than
   ``claim_idle_ms`` (set it above the slowest handler): entries of a dead
   consumer, and this consumer's own failed entries, which is how failures are
   retried;
3. otherwise new entries, ``XREADGROUP ... >`` blocking ``block_ms``.

Each entry goes to the handlers registered for its model and op; entries whose
handlers all succeeded are acknowledged with one ``XACK`` per batch. An entry
that failed ``max_deliveries`` times, or cannot be decoded, is moved to the
dead-letter stream (``XADD`` there + ``XACK`` here in one MULTI). Trimming
(:func:`popoto.workers.streams.trim_acknowledged`) only drops entries every group
acknowledged.

Several streams: a consumer reads every stream its name resolves to
(:func:`popoto.workers.streams.stream_keys`: one per tag group of a sharded model) or
every key of a given list, each with its own group, pending list and reclaim
cursor. Every command names one stream (one cluster slot), except the read of
new entries on a standalone server: one ``XREADGROUP ... STREAMS`` over all of
them, blocking. In cluster mode the streams are in different slots, so new
entries are read with one pipelined non-blocking ``XREADGROUP`` per stream,
polled every ``poll_ms`` while idle. One step handles at most ``count``
entries; what a multi-stream read returned beyond that is kept and handled
first by the next step.

SIGTERM / SIGINT (after :meth:`install_signal_handlers`) stop the loop after
the current batch: its entries are handled and acknowledged, then ``run``
returns. ``run(max_seconds=T)`` is stricter: when T passes mid-batch, the rest
of the batch stays pending for this consumer name and is handled first next
time (a drain task must end before its time limit). A second signal exits at
once (entries stay pending and are reclaimed).
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import redis
import redis.cluster
import structlog

from popoto.protocol import text as _text
from popoto.redis_db import Client, get_client

from .events import Event, MalformedEntry
from .registry import HandlerRegistry
from .registry import registry as default_registry
from .streams import dead_letter, stream_keys, trim_acknowledged

log = structlog.stdlib.get_logger("popoto.workers")


def default_consumer_name() -> str:
    """``<host>-<pid>``. Give a stable name (``--consumer``) to resume own pending entries."""
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass
class ConsumerStats:
    handled: int = 0  # entries whose handlers all succeeded (acknowledged)
    failed: int = 0  # handler failures (entry left pending for a retry)
    dead_lettered: int = 0
    reclaimed: int = 0  # entries taken over with XAUTOCLAIM
    skipped: int = 0  # deleted entries or entries without handlers (acknowledged)
    batches: int = 0
    trimmed: int = 0

    @property
    def processed(self) -> int:
        return self.handled + self.failed + self.dead_lettered + self.skipped

    def as_dict(self) -> dict[str, int]:
        return {**asdict(self), "processed": self.processed}


Entries = list[tuple[str, dict[Any, Any]]]


class StreamConsumer:
    """Reads a stream (or all streams of a sharded model) as one consumer of one group and
    dispatches to handlers.

    ``stream`` is a stream name, a full ``stream:...`` key, or a list of them
    (e.g. ``Model.stream_keys()``); see :func:`popoto.workers.streams.stream_keys`.
    """

    def __init__(
        self,
        stream: str | Sequence[str],
        group: str,
        consumer: str | None = None,
        *,
        registry: HandlerRegistry | None = None,
        client: Client | None = None,
        batch_size: int = 100,
        block_ms: int = 1000,
        claim_idle_ms: int = 60_000,
        claim_interval: float | None = None,
        max_deliveries: int = 5,
        start_id: str = "0",
        trim_interval: float = 60.0,
        trim_approximate: bool = True,
        poll_ms: int = 100,
    ) -> None:
        if max_deliveries < 1:
            raise ValueError(f"max_deliveries must be >= 1, got {max_deliveries}")
        names = [stream] if isinstance(stream, str) else list(stream)
        self.streams: list[str] = list(dict.fromkeys(k for n in names for k in stream_keys(n)))
        if not self.streams:
            raise ValueError("StreamConsumer needs at least one stream")
        self.stream = self.streams[0]
        self.group = group
        self.consumer = consumer or default_consumer_name()
        self.registry = registry if registry is not None else default_registry
        self.client: Client = client if client is not None else get_client()
        self.batch_size = batch_size
        self.block_ms = block_ms
        self.claim_idle_ms = claim_idle_ms
        self.claim_interval = (claim_interval if claim_interval is not None
                               else max(claim_idle_ms / 2000.0, 0.05))
        self.max_deliveries = max_deliveries
        self.start_id = start_id
        self.trim_interval = trim_interval
        self.trim_approximate = trim_approximate
        self.poll_ms = poll_ms
        self.stats = ConsumerStats()
        self._stopping = False
        self._signals = 0
        self._deadline: float | None = None
        # per stream: own pending cursor (None once own pending entries were read),
        # reclaim cursor, next reclaim time
        self._own_cursor: dict[str, str | None] = dict.fromkeys(self.streams, "0")
        self._claim_cursor = dict.fromkeys(self.streams, "0-0")
        self._next_claim = dict.fromkeys(self.streams, 0.0)
        self._backlog: list[tuple[str, Entries]] = []  # read, not handled yet
        self._next_trim = time.monotonic() + trim_interval
        shown = self.stream if len(self.streams) == 1 else ",".join(names)
        self.log = log.bind(stream=shown, group=group, consumer=self.consumer)
        if len(self.streams) > 1:
            self.log = self.log.bind(streams=len(self.streams))

    # --- setup / control -------------------------------------------------
    def ensure_group(self) -> bool:
        """``XGROUP CREATE ... MKSTREAM`` on every stream; True if one was created, False
        if the group existed on all of them."""
        created = []
        for stream in self.streams:
            try:
                self.client.xgroup_create(stream, self.group, id=self.start_id, mkstream=True)
            except redis.exceptions.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
                continue
            created.append(stream)
        if created:
            self.log.info("consumer group created", start_id=self.start_id,
                          **({"keys": created} if len(self.streams) > 1 else {}))
        return bool(created)

    def stop(self) -> None:
        """Finish the current batch, acknowledge it, then return from :meth:`run`."""
        self._stopping = True

    @property
    def stopping(self) -> bool:
        return self._stopping

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT: graceful stop; a second signal exits at once."""

        def on_signal(signum: int, _frame: Any) -> None:
            self._signals += 1
            if self._signals > 1:
                raise SystemExit(128 + signum)
            self.log.info("stopping after the current batch", signal=signal.Signals(signum).name)
            self.stop()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)

    # --- main loop -------------------------------------------------------
    def run(self, max_entries: int | None = None, max_seconds: float | None = None,
            until_idle: bool = False) -> ConsumerStats:
        """Consume until :meth:`stop`, ``max_entries`` processed or ``max_seconds`` passed,
        or (``until_idle``) a blocking read found nothing new.

        Bounds count from this call; ``stats`` accumulate across calls.
        """
        self.ensure_group()
        deadline = None if max_seconds is None else time.monotonic() + max_seconds
        self._deadline = deadline
        start = self.stats.processed
        self.log.info("consumer running", max_entries=max_entries, max_seconds=max_seconds)
        while not self._stopping:
            budget = self.batch_size
            if max_entries is not None:
                budget = min(budget, max_entries - (self.stats.processed - start))
                if budget <= 0:
                    break
            block = self.block_ms
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                block = max(1, min(block, int(left * 1000)))
            if not self.step(budget, block) and until_idle:
                break
        self.log.info("consumer stopped", **self.stats.as_dict())
        return self.stats

    def step(self, count: int | None = None, block_ms: int | None = None) -> int:
        """One cycle: entries kept from the last read, else own pending, else a due
        reclaim, else new entries. Returns entries seen."""
        count = count or self.batch_size
        if self._backlog:
            return self._handle_new(self._take_backlog(count))
        for stream, cursor in self._own_cursor.items():
            if cursor is not None:
                entries = self._read_own_pending(stream, count)
                if entries:
                    self._process(stream, entries,
                                  self._deliveries(stream, [e[0] for e in entries]))
                    return len(entries)
        now = time.monotonic()
        for stream in self.streams:
            if now >= self._next_claim[stream]:
                claimed = self._reclaim(stream, count)
                if claimed:
                    self.stats.reclaimed += len(claimed)
                    self._process(stream, claimed,
                                  self._deliveries(stream, [e[0] for e in claimed]))
                    return len(claimed)
        if now >= self._next_trim:
            self.stats.trimmed += self.trim_now()
        self._backlog = self._read_new(count, self.block_ms if block_ms is None else block_ms)
        return self._handle_new(self._take_backlog(count))

    def _take_backlog(self, count: int) -> list[tuple[str, Entries]]:
        """At most ``count`` entries of the backlog (the rest stays for the next step)."""
        taken: list[tuple[str, Entries]] = []
        while self._backlog and count > 0:
            stream, entries = self._backlog.pop(0)
            if len(entries) > count:
                self._backlog.insert(0, (stream, entries[count:]))
                entries = entries[:count]
            taken.append((stream, entries))
            count -= len(entries)
        return taken

    def _handle_new(self, batches: list[tuple[str, Entries]]) -> int:
        for position, (stream, entries) in enumerate(batches):
            if position and self._deadline is not None and time.monotonic() >= self._deadline:
                self._backlog[:0] = batches[position:]  # time is up: next step (or run)
                break
            self._process(stream, entries, {})
        return sum(len(entries) for _stream, entries in batches)

    # --- reading ---------------------------------------------------------
    def _read_own_pending(self, stream: str, count: int) -> Entries:
        reply = self.client.xreadgroup(self.group, self.consumer,
                                       {stream: self._own_cursor[stream]}, count=count)
        entries = [(_text(i), f) for i, f in (reply[0][1] if reply else [])]
        if len(entries) < count:
            self._own_cursor[stream] = None
        elif entries:
            self._own_cursor[stream] = entries[-1][0]
        if entries:
            self.log.info("resuming own pending entries", entries=len(entries), key=stream)
        return entries

    def _reclaim(self, stream: str, count: int) -> Entries:
        reply = self.client.xautoclaim(stream, self.group, self.consumer,
                                       min_idle_time=self.claim_idle_ms,
                                       start_id=self._claim_cursor[stream], count=count)
        next_cursor, rows = _text(reply[0]), reply[1]
        self._claim_cursor[stream] = next_cursor
        if next_cursor == "0-0":
            self._next_claim[stream] = time.monotonic() + self.claim_interval
        entries = [(_text(i), f) for i, f in rows if i is not None]
        if len(entries) < len(rows):
            # Redis 6.2 returns deleted entries as nil (no id): they are ours now, and
            # reading our own pending list returns them with their ids (acked below).
            self._own_cursor[stream] = "0"
        if entries:
            self.log.info("reclaimed idle entries", entries=len(entries),
                          min_idle_ms=self.claim_idle_ms, key=stream)
        return entries

    def _read_new(self, count: int, block_ms: int) -> list[tuple[str, Entries]]:
        """New entries of every stream, per stream (at most ``count`` from each)."""
        cluster = isinstance(self.client, redis.cluster.RedisCluster)
        if len(self.streams) == 1 or not cluster:
            reply = self.client.xreadgroup(self.group, self.consumer,
                                           dict.fromkeys(self.streams, ">"),
                                           count=count, block=block_ms)
            return [(_text(stream), [(_text(i), f) for i, f in rows])
                    for stream, rows in (reply or []) if rows]
        # cluster: each stream is in its own slot, so one non-blocking read per stream
        pipe = self.client.pipeline(transaction=False)
        for stream in self.streams:
            pipe.xreadgroup(self.group, self.consumer, {stream: ">"}, count=count)
        found = [(stream, [(_text(i), f) for i, f in reply[0][1]])
                 for stream, reply in zip(self.streams, pipe.execute()) if reply and reply[0][1]]
        if not found and block_ms:
            time.sleep(min(block_ms, self.poll_ms) / 1000.0)
        return found

    def _deliveries(self, stream: str, ids: list[str]) -> dict[str, int]:
        """Delivery counts (this delivery included) of pending entries of this consumer."""
        if not ids:
            return {}
        rows = self.client.xpending_range(stream, self.group, min=ids[0], max=ids[-1],
                                          count=len(ids) * 4 + 100,
                                          consumername=self.consumer)
        return {_text(r["message_id"]): int(r["times_delivered"]) for r in rows}

    # --- handling --------------------------------------------------------
    def _process(self, stream: str, entries: Entries, deliveries: dict[str, int]) -> None:
        self.stats.batches += 1
        ack: list[str] = []
        for position, (entry_id, fields) in enumerate(entries):
            if position and self._deadline is not None and time.monotonic() >= self._deadline:
                # time is up (a drain task): the rest stays pending for this consumer name,
                # which reads its own pending entries first on its next run
                self._own_cursor[stream] = "0"
                break
            count = deliveries.get(entry_id, 1)
            if not fields:
                ack.append(entry_id)  # deleted from the stream while pending
                self.stats.skipped += 1
                continue
            try:
                event = Event.from_entry(stream, entry_id, fields, count)
            except MalformedEntry as exc:
                self._dead_letter(stream, entry_id, fields, count, f"MalformedEntry: {exc}")
                continue
            handlers = self.registry.resolve(event.model, event.op)
            if not handlers:
                ack.append(entry_id)
                self.stats.skipped += 1
                continue
            try:
                for fn in handlers:
                    fn(event)
            except Exception as exc:  # noqa: BLE001 - any handler error is a failed delivery
                error = f"{type(exc).__name__}: {exc}"
                if count >= self.max_deliveries:
                    self._dead_letter(stream, entry_id, fields, count, error)
                else:
                    self.stats.failed += 1
                    self.log.warning("handler failed; entry stays pending", entry_id=entry_id,
                                     model=event.model, op=event.op, deliveries=count,
                                     max_deliveries=self.max_deliveries, error=error)
                continue
            ack.append(entry_id)
            self.stats.handled += 1
        if ack:
            # types-redis leaves XACK unannotated (it replies how many were acknowledged)
            xack: Callable[..., int] = self.client.xack
            xack(stream, self.group, *ack)
        self.log.debug("batch done", entries=len(entries), acked=len(ack), key=stream)

    def _dead_letter(self, stream: str, entry_id: str, fields: dict[Any, Any],
                     deliveries: int, error: str) -> None:
        dead_id = dead_letter(self.client, stream, self.group, self.consumer, entry_id,
                              fields, deliveries, error)
        self.stats.dead_lettered += 1
        self.log.error("entry dead-lettered", entry_id=entry_id, dead_letter_id=dead_id,
                       deliveries=deliveries, error=error)

    def trim_now(self) -> int:
        """Trim entries every group acknowledged (never an unacknowledged one)."""
        self._next_trim = time.monotonic() + self.trim_interval
        removed = sum(trim_acknowledged(self.client, stream, approximate=self.trim_approximate)
                      for stream in self.streams)
        if removed:
            self.log.info("trimmed acknowledged entries", removed=removed)
        return removed
