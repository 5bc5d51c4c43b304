"""The names Python and the Lua scripts share: entry kinds, save flags, reply tags.

One definition: the scripts' Lua sees each constant as a ``local`` of the same
name (``KIND_SET``, ``FLAG_NEW``, ``ERR_UNIQUE``...), prepended by the script
registry (:func:`lua_prelude`), so a kind or a tag is never spelled twice.
"""

from __future__ import annotations

import math
from typing import Any

#: hash field prefix of an instance's ownership record of one index owner
IDX_PREFIX = "@idx:"

# --- entry kinds: how an index entry is added and removed -------------------
KIND_SET = "S"  # SADD/SREM member of a set
KIND_ZSET = "Z"  # ZADD/ZREM member of a sorted set
KIND_CLAIM = "C"  # HSET/HDEL of a unique claim (claim hash, value -> owner key)
KIND_KEY = "K"  # a key owned whole (DEL on removal)
KIND_GEO = "G"  # GEOADD/ZREM member of a geo set
KIND_LINKED_KEY = "L"  # persistent companion: a key beside the hash (renamed on a move)
KIND_COMPANION_FIELD = "H"  # persistent companion: a field of another hash

# --- save flags (first ARGV of the save script) -----------------------------
FLAG_NEW = "N"  # create only: refuse when the key exists
FLAG_EXISTING = "E"  # update only: refuse when the key is gone
FLAG_EXTERNAL = "X"  # claims are external (sharded model); followed by the lease deadline

# --- TTL modes ---------------------------------------------------------------
TTL_SECONDS = "T"
TTL_AT = "A"

# --- error-reply tags: ``<tag> <detail>`` ------------------------------------
ERR_EXISTS = "POPOTO_EXISTS"
ERR_UNIQUE = "POPOTO_UNIQUE"
ERR_LEASE = "POPOTO_LEASE"
ERR_MISSING = "POPOTO_MISSING"
ERR_NOTNUM = "POPOTO_NOTNUM"
ERR_RANGE = "POPOTO_RANGE"

# --- claim-script statuses -----------------------------------------------------
CLAIM_OK = "OK"
CLAIM_BUSY = "BUSY"
CLAIM_HELD = "HELD"
#: prefix of a pending claim value another save of its holder released meanwhile
CLAIM_RELEASED_MARK = "!"

# --- query program op codes (popoto.engine.sources compiles, query.lua runs) ---
OP_RANGE = "ZR"  # members of a sorted set within a score range
OP_PATTERN = "PAT"  # members of a set matching a glob pattern
OP_KEYS = "KEYS"  # an explicit list of instance keys
OP_GEO = "GEO"  # members of a geo set within a radius, scored by distance
OP_LEX = "LEX"  # members of a lex index in a score range whose str value starts/ends so
OP_AND = "AND"  # ZINTERSTORE
OP_AND_SMALL = "ANDS"  # AND driven by its smallest input, ranges never materialised
OP_PART_RANGE = "R"  # an OP_AND_SMALL part: a score range of a sorted set
OP_PART_KEY = "K"  # an OP_AND_SMALL part: a set or sorted set
OP_OR = "OR"  # ZUNIONSTORE (AGGREGATE MIN)
OP_NOT = "NOT"  # ZDIFFSTORE

# --- time decay (popoto.fields.decaying; top_by_decay.lua, scale_cycles.lua) ---
DECAY_DAY_S = 86400  # seconds per day: elapsed time and pressure are counted in days
DECAY_MIN_ELAPSED_DAYS = 0.01  # elapsed days below this count as this (no division blow-up)
DECAY_MAX_AMPLITUDE = 100.0  # a cycle's amplitude is at most this (scaling clamps to it)
DECAY_MIN_AMPLITUDE = 0.01  # scaling snaps an amplitude below this to 0
# flags of the ranking call: which of its optional keys are used
DECAY_FLAG_BOUNDED = "M"  # the base field's sorted set bounds the base (early stop)
DECAY_FLAG_CYCLES = "C"  # the cycles hash
DECAY_FLAG_PRESSURE = "P"  # the pressure hash

_SHARED = {name: value for name, value in dict(globals()).items()
           if name.startswith(("KIND_", "FLAG_", "TTL_", "ERR_", "CLAIM_", "OP_", "DECAY_"))
           or name == "IDX_PREFIX"}
_TAGS = tuple(v for k, v in _SHARED.items() if k.startswith("ERR_"))


def _lua_literal(value: str | int | float) -> str:
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n")
        return f"'{escaped}'"
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return repr(value)
    raise TypeError(f"no Lua literal for {value!r}")


def lua_prelude() -> str:
    """Lua ``local`` declarations of every shared constant (prepended to each script)."""
    return "".join(f"local {name} = {_lua_literal(value)}\n"
                   for name, value in sorted(_SHARED.items()))


def text(value: Any) -> str:
    """A reply value as ``str`` (bytes decoded as UTF-8)."""
    return value.decode() if isinstance(value, bytes) else str(value)


def lenient_text(value: Any) -> str:
    """As :func:`text`, with bytes that are not UTF-8 replaced (data written by others,
    shown or dead-lettered rather than refused)."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def error_tag(error: Any) -> tuple[str, str] | None:
    """``(tag, detail)`` of a script's tagged error reply, or None for any other error."""
    message = text(error)
    for tag in _TAGS:
        at = message.find(tag)
        if at >= 0 and (len(message) == at + len(tag) or message[at + len(tag)] == " "):
            return tag, message[at + len(tag):].strip()
    return None
