"""The only place Redis key names are built.

Key segments are joined with ``:``. A segment that comes from user data is
escaped with percent-encoding of the characters ``% : * ? [ ] { } \\`` so
that every key parses back unambiguously and no user value can inject a glob
pattern into ``SCAN MATCH``. ``{`` and ``}`` are reserved for hash tags: a
cluster mode adds a tag in :func:`tag` and nowhere else.
"""

from __future__ import annotations

import re
from typing import Any
from collections.abc import Iterable

SEP = ":"
_ESCAPE_CHARS = "%:*?[]{}\\"
_ESCAPE = {ord(c): f"%{ord(c):02X}" for c in _ESCAPE_CHARS}
_UNESCAPE_RE = re.compile(r"%([0-9A-F]{2})")


def escape(value: Any) -> str:
    """Escape one key segment (user data) so it has no separator or glob characters."""
    return str(value).translate(_ESCAPE)


def unescape(segment: str) -> str:
    """Inverse of :func:`escape`."""
    return _UNESCAPE_RE.sub(lambda m: chr(int(m.group(1), 16)), segment)


def tag(model_name: str) -> str:
    """The model-name part of every key of a model (hash tags would be added here)."""
    return model_name


def instance_key(model_name: str, key_values: Iterable[Any]) -> str:
    """``Model:v1:v2`` with key values already ordered by field name."""
    return SEP.join([tag(model_name), *(escape(v) for v in key_values)])


def split_instance_key(redis_key: str) -> list[str]:
    """Return the unescaped key values of an instance key (without the model name)."""
    return [unescape(s) for s in redis_key.split(SEP)[1:]]


def class_set_key(model_name: str) -> str:
    return f"$Class{SEP}{tag(model_name)}"


def field_index_key(kind: str, model_name: str, field_name: str, *parts: Any) -> str:
    """Index owned by one field, e.g. ``$SortedF:Model:score`` or ``$IndexF:Model:color:red``."""
    return SEP.join([f"${kind}", tag(model_name), field_name, *(escape(p) for p in parts)])


def composite_index_key(model_name: str, field_names: Iterable[str]) -> str:
    return SEP.join(["$Index", tag(model_name), *field_names])


def behaviour_key(kind: str, model_name: str, *parts: Any) -> str:
    """Keys owned by a model behaviour, e.g. ``$Priority:Model``."""
    return SEP.join([f"${kind}", tag(model_name), *(escape(p) for p in parts)])


def companion_key(kind: str, instance_key: str, slot: str) -> str:
    """A key holding data of ONE instance beside its hash, e.g. ``$List:Post:42:comments``.

    ``instance_key`` is embedded as is (its segments are already escaped), so the
    companion follows its instance wherever the instance key is placed (a cluster
    hash tag in the instance key keeps both in one slot).
    """
    return SEP.join([f"${kind}", instance_key, escape(slot)])


def stream_key(name: str, partition: Any = None) -> str:
    """Mutation stream ``stream:<name>`` or ``stream:<name>:<partition>`` (both escaped)."""
    parts = ["stream", escape(name)]
    if partition is not None:
        parts.append(escape(partition))
    return SEP.join(parts)


def temp_key(token: str) -> str:
    return f"$Tmp{SEP}{token}"


def glob_escape(text: str) -> str:
    """Escape glob metacharacters for MATCH patterns (segments are already escaped)."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)
