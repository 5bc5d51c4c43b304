"""Q objects: filter conditions combined with ``&``, ``|`` and ``~``."""

from __future__ import annotations

from typing import Any


class Q:
    """A tree of filter conditions.

    ``Q(a=1, b__gt=2)`` is the AND of its keyword conditions; Q objects
    combine with ``&`` (and), ``|`` (or) and ``~`` (not). Expressions such as
    ``Model.score >= 10`` build Q objects too.
    """

    AND, OR = "AND", "OR"

    def __init__(self, *children: Q, _connector: str = "AND", _negated: bool = False,
                 **conditions: Any) -> None:
        self.children: list[Q | tuple[str, Any]] = [*children, *sorted(conditions.items())]
        self.connector = _connector
        self.negated = _negated

    def _combine(self, other: Q, connector: str) -> Q:
        if not isinstance(other, Q):
            return NotImplemented
        return Q(self, other, _connector=connector)

    def __and__(self, other: Q) -> Q:
        return self._combine(other, self.AND)

    def __or__(self, other: Q) -> Q:
        return self._combine(other, self.OR)

    def __invert__(self) -> Q:
        return Q(self, _negated=True)

    def __bool__(self) -> bool:
        return bool(self.children)

    def __repr__(self) -> str:
        inner = f" {self.connector} ".join(repr(c) for c in self.children)
        return f"{'NOT ' if self.negated else ''}({inner})"
