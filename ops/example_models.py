"""Models used by the example web app, the Procfile processes, the demo and the fault tests.

Workers find them by label once this module is imported
(``POPOTO_MODEL_MODULES=ops.example_models``).
"""

from __future__ import annotations

from popoto import (
    AutoKeyField,
    DatetimeField,
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
