"""One stream entry, decoded: what a handler receives."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from popoto.protocol import lenient_text

#: Fields every mutation entry has (``old_pk`` only after a key migration); anything else
#: is metadata: field values the model copies into its entries, as JSON.
CORE_FIELDS = ("model", "pk", "op", "ts", "changed_fields", "old_pk")
#: Fields a dead-letter entry adds to the original ones (stripped again on replay).
DEAD_LETTER_FIELDS = ("dl_stream", "dl_group", "dl_consumer", "dl_id", "dl_deliveries",
                      "dl_error", "dl_ts")
#: Set on a replayed entry: the id of the entry it was first written as.
ORIGIN_FIELD = "origin_id"


class MalformedEntry(ValueError):
    """A stream entry lacks the fields of a mutation event (it is dead-lettered at once)."""


def _json_orlenient_text(value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        return value


def _changed_fields(raw: str | None) -> list[Any] | dict[str, Any] | None:
    """``changed_fields`` as written by the ORM: names joined by "," (Popoto 1.x's form;
    "" -> None), or JSON (a list or dict, as written by earlier versions)."""
    if not raw:
        return None
    if raw[0] in "[{":
        decoded: list[Any] | dict[str, Any] = json.loads(raw)  # JSON of "[" or "{"
        return decoded
    return raw.split(",")


@dataclass(frozen=True)
class Event:
    """A mutation read from a stream.

    Fields follow the ``EventStreamMixin`` entry format: ``changed_fields`` is
    the list of changed field names (None when the entry names none: creates, full
    saves, deletes), ``metadata`` the copied field values
    (decoded from JSON), ``old_pk`` the previous key after a key migration.
    ``event_id`` is stable across dead-letter replays (the id the entry was
    first written with); idempotent handlers key their effects on it.
    ``deliveries`` is how often the group has delivered this entry so far.
    """

    stream: str
    entry_id: str
    model: str
    pk: str
    op: str
    ts: float
    changed_fields: list[Any] | dict[str, Any] | None
    metadata: dict[str, Any] = field(default_factory=dict)
    old_pk: str | None = None
    deliveries: int = 1
    raw: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def event_id(self) -> str:
        return str(self.metadata.get(ORIGIN_FIELD) or self.entry_id)

    @classmethod
    def from_entry(cls, stream: str, entry_id: str, fields: dict[Any, Any],
                   deliveries: int = 1) -> Event:
        """Decode an XREADGROUP entry; raises MalformedEntry naming what is wrong."""
        data = {lenient_text(k): lenient_text(v) for k, v in fields.items()}
        missing = [name for name in ("model", "pk", "op") if not data.get(name)]
        if missing:
            raise MalformedEntry(f"entry {entry_id} of {stream} has no {', '.join(missing)} "
                                 f"(fields: {', '.join(sorted(data)) or 'none'})")
        try:
            ts = float(data.get("ts") or 0.0)
        except ValueError:
            raise MalformedEntry(f"entry {entry_id} of {stream}: ts={data['ts']!r} is not a "
                                 "number") from None
        changed_raw = data.get("changed_fields")
        try:
            changed = _changed_fields(changed_raw)
        except json.JSONDecodeError as exc:
            raise MalformedEntry(f"entry {entry_id} of {stream}: changed_fields is not JSON "
                                 f"({exc})") from None
        metadata = {k: _json_orlenient_text(v) for k, v in data.items() if k not in CORE_FIELDS}
        if ORIGIN_FIELD in data:
            metadata[ORIGIN_FIELD] = data[ORIGIN_FIELD]
        return cls(stream=stream, entry_id=entry_id, model=data["model"], pk=data["pk"],
                   op=data["op"], ts=ts, changed_fields=changed, metadata=metadata,
                   old_pk=data.get("old_pk"), deliveries=deliveries, raw=data)
