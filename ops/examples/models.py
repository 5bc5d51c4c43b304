"""Models used by the example web app, the Procfile processes, the demo and the fault tests.

Workers find them by label once this module is imported
(``POPOTO_MODEL_MODULES=popoto.ops.examples.models``).
"""

from __future__ import annotations

from popoto import (
    AutoKeyField,
    DatetimeField,
    DecimalField,
    EventStreamMixin,
    IndexedField,
    KeyField,
    Model,
    SortedField,
    StringField,
)


class Note(Model):
    """A note: indexed by tag, ranked by score."""

    note_id = AutoKeyField()
    title = StringField(default="")
    tag = IndexedField(type=str)
    score = SortedField(type=float, default=0.0)
    created = DatetimeField(auto_now_add=True)


class Session(Model):
    """A login session that expires: its index entries are cleaned up by beat."""

    token = KeyField()
    user = IndexedField(type=str)

    class Meta:
        ttl = 3600


class Order(EventStreamMixin, Model):
    """An order whose every write appends to ``stream:orders`` (read by the consumer).

    No producer-side cap (``_stream_max_length = None``): the consumer trims only
    what every group has acknowledged, so no unread event is ever dropped.
    """

    order_id = KeyField()
    customer = IndexedField(type=str)
    status = IndexedField(type=str, default="new")
    total = DecimalField(default=0)

    _stream_name = "orders"
    _stream_max_length = None
    _stream_metadata_fields = ("status", "total")
