"""Handlers for stream events, registered by model and operation.

::

    from popoto.workers import handler

    @handler("Order", "create")          # model label or class name, op
    def project_order(event): ...

    @handler("Order")                    # every op of Order
    @handler("*", "delete")              # deletes of every model

Handlers run in registration order. A handler that raises leaves the entry
unacknowledged: it is delivered again (to this or another consumer) until it
succeeds or is dead-lettered after ``max_deliveries``. Delivery is therefore
at-least-once; write handlers idempotently (see :mod:`popoto.workers.idempotency`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .events import Event

Handler = Callable[[Event], Any]
ANY = "*"


def _short(model: str) -> str:
    return model.rsplit(".", 1)[-1]


class HandlerRegistry:
    """Maps ``(model, op)`` to handler functions; ``"*"`` matches anything."""

    def __init__(self) -> None:
        self._handlers: list[tuple[str, str, Handler]] = []

    def register(self, model: str, op: str, fn: Handler) -> Handler:
        entry = (_short(model) if model != ANY else ANY, op, fn)
        if entry not in self._handlers:
            self._handlers.append(entry)
        return fn

    def handler(self, model: str = ANY, op: str = ANY) -> Callable[[Handler], Handler]:
        """Decorator form of :meth:`register`."""

        def decorate(fn: Handler) -> Handler:
            return self.register(model, op, fn)

        return decorate

    def resolve(self, model: str, op: str) -> list[Handler]:
        """Handlers for an event of ``model`` (label or class name) and ``op``."""
        name = _short(model)
        return [fn for m, o, fn in self._handlers
                if m in (ANY, name) and o in (ANY, op)]

    def unregister(self, fn: Handler) -> None:
        self._handlers = [h for h in self._handlers if h[2] is not fn]

    def clear(self) -> None:
        self._handlers.clear()

    def __len__(self) -> int:
        return len(self._handlers)


#: The process-wide registry used by ``python -m popoto.workers consume`` and the drain task.
registry = HandlerRegistry()
handler = registry.handler
