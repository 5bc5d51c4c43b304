"""Model behaviours: mixins that plug hooks into the single write path.

A behaviour is a class with ``popoto_behaviour = True`` implementing hooks of
:class:`popoto.behaviours.base.BehaviourHooks`; they are compiled once per model
class into ``_meta.hooks`` (:func:`popoto.behaviours.base.compile_hooks`). Everything a
behaviour writes is a command or entry of the save/delete WriteBatch, so it
commits or fails with the write it belongs to.
"""

from popoto.behaviours.access_tracker import AccessTrackerMixin
from popoto.behaviours.event_stream import EventStreamMixin, parse_event
from popoto.behaviours.write_filter import SkipSaveException, WriteFilterMixin

__all__ = [
    "AccessTrackerMixin",
    "EventStreamMixin",
    "SkipSaveException",
    "WriteFilterMixin",
    "parse_event",
]
