"""The server-side script behind ``Model.atomic_increment``.

One script call reads the stored msgpack value, adds the delta exactly,
writes the new encoding back and moves the field's sorted-set entries to the
new score, so concurrent increments never lose an update and the index never
disagrees with the hash.

Exactness: Redis' Lua numbers are doubles, so ints and Decimals are added as
signed decimal strings (arbitrary precision). The new value is re-encoded
byte for byte the way :mod:`popoto.encoding` would encode it: minimal msgpack
ints, ext type 8 (decimal text) for ints beyond 64 bits, ext type 1 with
``str(Decimal)`` as payload for Decimals, float64 for floats.

KEYS: 1 instance key, 2 sorted-set key to use when the instance has no entry yet
      (KEYS[1] again when the field is not sorted: both keys are in the instance's tag
      group, so the call stays in one cluster slot)
ARGV: 1 field name, 2 kind ('i' int, 'f' float, 'd' Decimal), 3 delta (text),
      4 '1' when the field's sorted-set entries must follow the new score
Returns the new value as text (int digits, ``%.17g`` float, ``str(Decimal)``).
Errors (nothing written): ``POPOTO_MISSING <key>``, ``POPOTO_NOTNUM <hex of stored>``,
``POPOTO_RANGE <value>``.

The Lua is ``popoto/lua/increment.lua``.
"""

from __future__ import annotations

from popoto.engine.scripts import script_body

#: the body of popoto/lua/increment.lua as Redis runs it (popoto.models.bulk registers it)
INCREMENT_LUA = script_body("increment")
