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
(:func:`workers.streams.trim_acknowledged`) only drops entries every group
acknowledged.

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
from dataclasses import asdict, dataclass
from typing import Any

import redis
import structlog

from popoto.redis_db import get_client

from .events import Event, MalformedEntry
from .registry import HandlerRegistry, registry as default_registry
from .streams import dead_letter, stream_key, trim_acknowledged

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


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class StreamConsumer:
    """Reads one stream as one consumer of one group and dispatches to handlers."""

    def __init__(
        self,
        stream: str,
        group: str,
        consumer: str | None = None,
        *,
        registry: HandlerRegistry | None = None,
        client: redis.Redis | None = None,
        batch_size: int = 100,
        block_ms: int = 1000,
        claim_idle_ms: int = 60_000,
        claim_interval: float | None = None,
        max_deliveries: int = 5,
        start_id: str = "0",
        trim_interval: float = 60.0,
        trim_approximate: bool = True,
    ) -> None:
        if max_deliveries < 1:
            raise ValueError(f"max_deliveries must be >= 1, got {max_deliveries}")
        self.stream = stream_key(stream)
        self.group = group
        self.consumer = consumer or default_consumer_name()
        self.registry = registry if registry is not None else default_registry
        self.client = client if client is not None else get_client()
        self.batch_size = batch_size
        self.block_ms = block_ms
        self.claim_idle_ms = claim_idle_ms
        self.claim_interval = (claim_interval if claim_interval is not None
                               else max(claim_idle_ms / 2000.0, 0.05))
        self.max_deliveries = max_deliveries
        self.start_id = start_id
        self.trim_interval = trim_interval
        self.trim_approximate = trim_approximate
        self.stats = ConsumerStats()
        self._stopping = False
        self._signals = 0
        self._deadline: float | None = None
        self._own_cursor: str | None = "0"  # None once own pending entries were read
        self._claim_cursor = "0-0"
        self._next_claim = 0.0
        self._next_trim = time.monotonic() + trim_interval
        self.log = log.bind(stream=self.stream, group=group, consumer=self.consumer)

    # --- setup / control -------------------------------------------------
    def ensure_group(self) -> bool:
        """``XGROUP CREATE ... MKSTREAM``; True if created, False if it existed."""
        try:
            self.client.xgroup_create(self.stream, self.group, id=self.start_id, mkstream=True)
        except redis.exceptions.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
            return False
        self.log.info("consumer group created", start_id=self.start_id)
        return True

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
        """One cycle: own pending, else a due reclaim, else new entries. Returns entries seen."""
        count = count or self.batch_size
        if self._own_cursor is not None:
            entries = self._read_own_pending(count)
            if entries:
                self._process(entries, self._deliveries([e[0] for e in entries]))
                return len(entries)
        now = time.monotonic()
        if now >= self._next_claim:
            claimed = self._reclaim(count)
            if claimed:
                self.stats.reclaimed += len(claimed)
                self._process(claimed, self._deliveries([e[0] for e in claimed]))
                return len(claimed)
        if now >= self._next_trim:
            self.stats.trimmed += self.trim_now()
        entries = self._read_new(count, self.block_ms if block_ms is None else block_ms)
        if entries:
            self._process(entries, {})
        return len(entries)

    # --- reading ---------------------------------------------------------
    def _read_own_pending(self, count: int) -> list[tuple[str, dict[Any, Any]]]:
        reply = self.client.xreadgroup(self.group, self.consumer,
                                       {self.stream: self._own_cursor}, count=count)
        entries = [(_text(i), f) for i, f in (reply[0][1] if reply else [])]
        if len(entries) < count:
            self._own_cursor = None
        elif entries:
            self._own_cursor = entries[-1][0]
        if entries:
            self.log.info("resuming own pending entries", entries=len(entries))
        return entries

    def _reclaim(self, count: int) -> list[tuple[str, dict[Any, Any]]]:
        reply = self.client.xautoclaim(self.stream, self.group, self.consumer,
                                       min_idle_time=self.claim_idle_ms,
                                       start_id=self._claim_cursor, count=count)
        next_cursor, rows = _text(reply[0]), reply[1]
        self._claim_cursor = next_cursor
        if next_cursor == "0-0":
            self._next_claim = time.monotonic() + self.claim_interval
        entries = [(_text(i), f) for i, f in rows if i is not None]
        if len(entries) < len(rows):
            # Redis 6.2 returns deleted entries as nil (no id): they are ours now, and
            # reading our own pending list returns them with their ids (acked below).
            self._own_cursor = "0"
        if entries:
            self.log.info("reclaimed idle entries", entries=len(entries),
                          min_idle_ms=self.claim_idle_ms)
        return entries

    def _read_new(self, count: int, block_ms: int) -> list[tuple[str, dict[Any, Any]]]:
        reply = self.client.xreadgroup(self.group, self.consumer, {self.stream: ">"},
                                       count=count, block=block_ms)
        return [(_text(i), f) for i, f in (reply[0][1] if reply else [])]

    def _deliveries(self, ids: list[str]) -> dict[str, int]:
        """Delivery counts (this delivery included) of pending entries of this consumer."""
        if not ids:
            return {}
        rows = self.client.xpending_range(self.stream, self.group, min=ids[0], max=ids[-1],
                                          count=len(ids) * 4 + 100,
                                          consumername=self.consumer)
        return {_text(r["message_id"]): int(r["times_delivered"]) for r in rows}

    # --- handling --------------------------------------------------------
    def _process(self, entries: list[tuple[str, dict[Any, Any]]],
                 deliveries: dict[str, int]) -> None:
        self.stats.batches += 1
        ack: list[str] = []
        for position, (entry_id, fields) in enumerate(entries):
            if position and self._deadline is not None and time.monotonic() >= self._deadline:
                # time is up (a drain task): the rest stays pending for this consumer name,
                # which reads its own pending entries first on its next run
                self._own_cursor = "0"
                break
            count = deliveries.get(entry_id, 1)
            if not fields:
                ack.append(entry_id)  # deleted from the stream while pending
                self.stats.skipped += 1
                continue
            try:
                event = Event.from_entry(self.stream, entry_id, fields, count)
            except MalformedEntry as exc:
                self._dead_letter(entry_id, fields, count, f"MalformedEntry: {exc}")
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
                    self._dead_letter(entry_id, fields, count, error)
                else:
                    self.stats.failed += 1
                    self.log.warning("handler failed; entry stays pending", entry_id=entry_id,
                                     model=event.model, op=event.op, deliveries=count,
                                     max_deliveries=self.max_deliveries, error=error)
                continue
            ack.append(entry_id)
            self.stats.handled += 1
        if ack:
            self.client.xack(self.stream, self.group, *ack)
        self.log.debug("batch done", entries=len(entries), acked=len(ack))

    def _dead_letter(self, entry_id: str, fields: dict[Any, Any], deliveries: int,
                     error: str) -> None:
        dead_id = dead_letter(self.client, self.stream, self.group, self.consumer, entry_id,
                              fields, deliveries, error)
        self.stats.dead_lettered += 1
        self.log.error("entry dead-lettered", entry_id=entry_id, dead_letter_id=dead_id,
                       deliveries=deliveries, error=error)

    def trim_now(self) -> int:
        """Trim entries every group acknowledged (never an unacknowledged one)."""
        self._next_trim = time.monotonic() + self.trim_interval
        removed = trim_acknowledged(self.client, self.stream, approximate=self.trim_approximate)
        if removed:
            self.log.info("trimmed acknowledged entries", removed=removed)
        return removed
