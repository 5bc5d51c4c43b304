"""msgpack encoding of field values.

Every field value is one msgpack document. Types msgpack has no native form
for travel as extension types, one table below, so each round trip is exact:
Decimal keeps every digit, tuples stay tuples, sets stay sets, naive datetimes
stay naive and aware ones keep their offset. ``None`` is msgpack nil.
"""

from __future__ import annotations

import datetime as _dt
import math
import reprlib
import threading
from collections.abc import Callable
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Protocol

import msgpack

from popoto.exceptions import DecodeError

# code -> (python type, to-bytes, from-bytes); codes are part of the storage format.
_EXT: dict[int, tuple[type, Callable[[Any], bytes], Callable[[bytes], Any]]] = {
    1: (Decimal, lambda v: str(v).encode(), lambda b: Decimal(b.decode())),
    2: (_dt.datetime, lambda v: v.isoformat().encode(),
        lambda b: _dt.datetime.fromisoformat(b.decode())),
    3: (_dt.date, lambda v: v.isoformat().encode(), lambda b: _dt.date.fromisoformat(b.decode())),
    4: (_dt.time, lambda v: v.isoformat().encode(), lambda b: _dt.time.fromisoformat(b.decode())),
    5: (tuple, lambda v: pack(list(v)), lambda b: tuple(unpack(b))),
    6: (set, lambda v: pack(_sorted_items(v)), lambda b: set(unpack(b))),
    7: (frozenset, lambda v: pack(_sorted_items(v)), lambda b: frozenset(unpack(b))),
}
_BIG_INT = 8  # ints outside msgpack's 64-bit range, as decimal text
_BY_TYPE = {typ: (code, enc) for code, (typ, enc, _dec) in _EXT.items()}

#: (base type, converter) for subclasses of the types msgpack encodes natively
_PLAIN_BASES: tuple[tuple[type, Callable[[Any], Any]], ...] = (
    (bool, bool), (int, int), (float, float), (str, str), (bytes, bytes), (dict, dict),
    (list, list))

if TYPE_CHECKING:
    class _Packer(Protocol):
        """What :func:`pack` uses of ``msgpack.Packer`` (msgpack ships no type information)."""

        def pack(self, obj: Any) -> bytes: ...


def _sorted_items(values: Any) -> list[Any]:
    try:
        return sorted(values)
    except TypeError:
        return list(values)


def _default(value: Any) -> Any:
    entry = _BY_TYPE.get(type(value))
    if entry is not None:
        code, enc = entry
        return msgpack.ExtType(code, enc(value))
    # subclasses (IntEnum, str enums, OrderedDict...) fall back to their base type
    for base, plain in _PLAIN_BASES:
        if isinstance(value, base):
            return plain(value)
    for typ, (code, enc) in _BY_TYPE.items():
        if isinstance(value, typ):
            return msgpack.ExtType(code, enc(value))
    raise TypeError(f"cannot encode value of type {type(value).__name__}: {value!r}")


def _big_ints(value: Any) -> Any:
    """Replace ints msgpack cannot hold with ExtType(8, decimal text), recursively."""
    if isinstance(value, int) and not isinstance(value, bool):
        if -(2**63) <= value < 2**64:
            return value
        return msgpack.ExtType(_BIG_INT, str(value).encode())
    if type(value) in (list, tuple):
        return type(value)(_big_ints(v) for v in value)
    if isinstance(value, (set, frozenset)):
        return type(value)(_big_ints(v) for v in value)
    if isinstance(value, dict):
        return {_big_ints(k): _big_ints(v) for k, v in value.items()}
    return value


def _ext_hook(code: int, data: bytes) -> Any:
    if code == _BIG_INT:
        return int(data.decode())
    entry = _EXT.get(code)
    if entry is None:
        return msgpack.ExtType(code, data)
    return entry[2](data)


def _new_packer() -> _Packer:
    packer: _Packer = msgpack.Packer(default=_default, strict_types=True, use_bin_type=True)
    return packer


_local = threading.local()  # one reusable Packer per thread (packb builds one per call)


def pack(value: Any) -> bytes:
    """Encode one value to msgpack bytes."""
    local = _local
    packer: _Packer | None = getattr(local, "packer", None)
    if packer is None:
        packer = _new_packer()
    else:
        local.packer = None  # taken: a nested pack() (ext encoders call it) builds its own
    try:
        return packer.pack(value)  # a failed pack leaves the Packer's buffer empty
    except OverflowError:
        return _new_packer().pack(_big_ints(value))
    finally:
        local.packer = packer


def unpack(data: bytes) -> Any:
    """Decode msgpack bytes produced by :func:`pack`."""
    return msgpack.unpackb(data, ext_hook=_ext_hook, raw=False, strict_map_key=False,
                           use_list=True)


def decode_field(data: bytes, redis_key: str, field_name: str) -> Any:
    """Decode a stored value, naming key and field when it is corrupt."""
    try:  # unpack() inlined: this runs once per field read of every loaded instance
        return msgpack.unpackb(data, ext_hook=_ext_hook, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated exception types
        raise DecodeError(
            f"Cannot decode field {field_name!r} of {redis_key!r}: {exc} (raw {data[:40]!r})"
        ) from exc


def is_finite_number(value: Any) -> bool:
    """An int or float (not a bool) that is finite."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value)


_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = _SHORT.maxlong = 60
_SHORT.maxlist = _SHORT.maxtuple = _SHORT.maxset = _SHORT.maxfrozenset = 6
_SHORT.maxdict = _SHORT.maxlevel = 4

#: errors encoding a value can raise (unencodable object, too deep or self-referencing
#: container, lone surrogate, int or float out of range)
ENCODE_ERRORS = (TypeError, ValueError, OverflowError, RecursionError, UnicodeError)


def short_repr(value: Any) -> str:
    """``repr(value)`` cut to a readable length (error messages name huge values too)."""
    try:
        return _SHORT.repr(value)
    except Exception:  # a user type whose __repr__ fails
        return f"<{type(value).__name__}>"


def is_text(value: str) -> bool:
    """True when ``value`` can be stored as UTF-8 (no lone surrogates)."""
    if value.isascii():
        return True
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True
