"""The names Python and the Lua scripts share: entry kinds, save flags, reply tags.

One definition: the scripts' Lua sees each constant as a ``local`` of the same
name (``KIND_SET``, ``FLAG_NEW``, ``ERR_UNIQUE``...), prepended by the script
registry (:func:`lua_prelude`), so a kind or a tag is never spelled twice.
"""

from __future__ import annotations

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

_SHARED = {name: value for name, value in dict(globals()).items()
           if name.startswith(("KIND_", "FLAG_", "TTL_", "ERR_", "CLAIM_"))
           or name == "IDX_PREFIX"}
_TAGS = tuple(v for k, v in _SHARED.items() if k.startswith("ERR_"))


def lua_prelude() -> str:
    """Lua ``local`` declarations of every shared constant (prepended to each script)."""
    return "".join(f"local {name} = '{value}'\n" for name, value in sorted(_SHARED.items()))


def text(value: Any) -> str:
    """A reply value as ``str`` (bytes decoded as UTF-8)."""
    return value.decode() if isinstance(value, bytes) else str(value)


def error_tag(error: Any) -> tuple[str, str] | None:
    """``(tag, detail)`` of a script's tagged error reply, or None for any other error."""
    message = text(error)
    for tag in _TAGS:
        at = message.find(tag)
        if at >= 0 and (len(message) == at + len(tag) or message[at + len(tag)] == " "):
            return tag, message[at + len(tag):].strip()
    return None
