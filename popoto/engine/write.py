"""The single write path.

Fields, composite indexes and behaviours describe what a save or delete must
do by calling methods on a :class:`WriteBatch`; they never talk to Redis.
The batch compiles into ONE call of a server-side Lua script which:

1. checks the guards (key must not exist for ``create``; unique claims are
   free or already ours) and fails with nothing written if one does not hold;
2. removes the index entries the instance owned before, read from the
   instance hash itself (``@idx:<owner>`` fields), so concurrent writers can
   never leave a stale entry behind;
3. writes the hash, the class-set entry, the new index entries, the TTL and
   any extra behaviour commands.

Entry kinds ``L`` and ``H`` are *persistent companions*: data that belongs to
one instance but is not derived from its field values (a capped list, learned
per-member state), so rewriting the owner must not reset it. On a rewrite of
the same instance they are kept; on a key migration an ``L`` key is RENAMEd to
the new entry with the same member (its "slot") and an ``H`` hash field moves
to the new instance key; they are deleted with the instance, or when a rewrite
of their owner no longer lists them. ``H`` writes its value (the score slot)
with HSETNX, i.e. only when the instance has none yet.

Sharded models (cluster mode, or ``Meta.shards`` > 1) keep a unique claim in
the tag group of its *value*, so it is global across groups but usually in
another slot than the instance. Their claims go through a two-phase protocol
around the script (:mod:`popoto.engine.claims`): the script then only records
its ``C`` entries and returns the ones the write released (flag ``X``), and
refuses to write once the claims' lease has run out.

``save()`` runs that call on its own pipeline and executes it; with
``save(pipeline=p)`` the same call is only queued on ``p``. There is no
second copy of the logic.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import msgpack

from popoto.encoding import pack
from popoto.protocol import IDX_PREFIX
from popoto.protocol import KIND_CLAIM as CLAIM
from popoto.protocol import KIND_COMPANION_FIELD as COMPANION_FIELD
from popoto.protocol import KIND_GEO as GEO
from popoto.protocol import KIND_KEY as KEY
from popoto.protocol import KIND_LINKED_KEY as LINKED_KEY
from popoto.protocol import KIND_SET as SET
from popoto.protocol import KIND_ZSET as ZSET
from popoto.protocol import text as _text

__all__ = ["CLAIM", "COMPANION_FIELD", "GEO", "IDX_PREFIX", "KEY", "LINKED_KEY", "SET", "ZSET",
           "Claim", "WriteBatch", "pack_record", "unpack_record"]
_SELF_MEMBER = frozenset({SET, ZSET, GEO})  # kinds whose member is the owner's own key


def pack_record(rows: list[tuple[str, str, str, Any]], owner_key: str) -> bytes:
    """Pack an ``@idx:<owner>`` record: ``[kind, key]`` when the member is the owner's
    own key (it usually is), else ``[kind, key, member]``. Keeping records short keeps
    small instance hashes in Redis's compact encoding (values <= 64 bytes)."""
    return pack([[k, rk] if m == owner_key and k in _SELF_MEMBER else [k, rk, m]
                 for k, rk, m, _s in rows])


def unpack_record(packed: bytes, owner_key: str) -> set[tuple[str, str, str]]:
    """The ``(kind, key, member)`` entries of a record written by :func:`pack_record`."""
    out = set()
    for row in msgpack.unpackb(packed, raw=False):
        kind, key = _text(row[0]), _text(row[1])
        out.add((kind, key, _text(row[2]) if len(row) > 2 else owner_key))
    return out


_LUA_COMMON = r"""
-- kept: persistent companions (L, H) of a rewrite, by identity; nil when deleting
-- released: when set, unique claims (C) live elsewhere: collect them instead
local function remove_entries(packed, owner_key, kept, released)
  if not packed then return end
  local entries = cmsgpack.unpack(packed)
  for _, e in ipairs(entries) do
    local kind, k, m = e[1], e[2], e[3] or owner_key
    if kept and kind == 'L' then kept['L' .. m] = e
    elseif kept and kind == 'H' then kept['H' .. k] = e
    elseif kind == 'L' then redis.call('DEL', k)
    elseif kind == 'H' then redis.call('HDEL', k, m)
    elseif kind == 'S' then redis.call('SREM', k, m)
    elseif kind == 'Z' or kind == 'G' then redis.call('ZREM', k, m)
    elseif kind == 'C' and released then released[k .. '\n' .. m] = {k, m}
    elseif kind == 'C' then
      if redis.call('HGET', k, m) == owner_key then redis.call('HDEL', k, m) end
    elseif kind == 'K' then redis.call('DEL', k)
    end
  end
end
"""

# Runs n commands encoded in argv from pos as (nargs, cmd, args...); returns the next pos.
# Shared by every script that takes a list of raw commands (see WriteBatch.command).
RUN_COMMANDS_LUA = r"""
local function run_commands(argv, pos, n)
  for _ = 1, n do
    local nargs = tonumber(argv[pos]); pos = pos + 1
    local cmd = {}
    for j = 1, nargs do cmd[j] = argv[pos + j - 1] end
    pos = pos + nargs
    redis.call(unpack(cmd))
  end
  return pos
end
"""
_LUA_COMMON += RUN_COMMANDS_LUA

# KEYS: 1 instance key, 2 class set, 3 previous key (the key itself when none),
#       4.. every other key the call touches (declared for Redis Cluster; not read here)
# ARGV: flags, ttl_mode, ttl_value, n_claims, (hash field owner)*,
#       n_owners_replaced, owner*, n_owners_migrated, owner*,
#       n_hset_pairs, (field value)*, n_hdel, field*, n_entries, (kind key member score)*,
#       n_cmds, (nargs cmd args...)*
SAVE_LUA = _LUA_COMMON + r"""
local key, class_set, old_key = KEYS[1], KEYS[2], KEYS[3]
local flags = ARGV[1]
-- X<deadline ms>: claims are external (sharded model) and leased until the deadline
local deadline = string.match(flags, 'X(%d+)')
local released = nil
if deadline then
  local t = redis.call('TIME')
  if tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) > tonumber(deadline) then
    return redis.error_reply('POPOTO_LEASE ' .. key)
  end
  released = {}
end
if string.find(flags, 'N', 1, true) and redis.call('EXISTS', key) == 1 then
  return redis.error_reply('POPOTO_EXISTS ' .. key)
end
if string.find(flags, 'E', 1, true) and redis.call('EXISTS', key) == 0 then
  return redis.error_reply('POPOTO_MISSING ' .. key)
end
local pos = 5
local n_claims = tonumber(ARGV[4])
for i = 1, n_claims do
  local h, f = ARGV[pos], ARGV[pos + 1]
  pos = pos + 2
  local owner = redis.call('HGET', h, f)
  if owner and owner ~= key and owner ~= old_key and redis.call('EXISTS', owner) == 1 then
    return redis.error_reply('POPOTO_UNIQUE ' .. i .. ' ' .. owner)
  end
end
local n_replaced = tonumber(ARGV[pos]); pos = pos + 1
local src = key
if old_key ~= '' and old_key ~= key then src = old_key end
local kept = {}
for i = 1, n_replaced do
  remove_entries(redis.call('HGET', src, '@idx:' .. ARGV[pos]), src, kept, released)
  pos = pos + 1
end
local n_migrated = tonumber(ARGV[pos]); pos = pos + 1
for i = 1, n_migrated do
  remove_entries(redis.call('HGET', src, '@idx:' .. ARGV[pos]), src, kept, released)
  pos = pos + 1
end
if src ~= key then
  redis.call('DEL', src)
  redis.call('SREM', class_set, src)
end
local n_pairs = tonumber(ARGV[pos]); pos = pos + 1
if n_pairs > 0 then
  local hargs = {'HSET', key}
  for j = 0, 2 * n_pairs - 1 do hargs[#hargs + 1] = ARGV[pos + j] end
  redis.call(unpack(hargs))
  pos = pos + 2 * n_pairs
end
local n_hdel = tonumber(ARGV[pos]); pos = pos + 1
if n_hdel > 0 then
  local dargs = {'HDEL', key}
  for j = 0, n_hdel - 1 do dargs[#dargs + 1] = ARGV[pos + j] end
  redis.call(unpack(dargs))
  pos = pos + n_hdel
end
local n_entries = tonumber(ARGV[pos]); pos = pos + 1
for i = 1, n_entries do
  local kind, k, m, s = ARGV[pos], ARGV[pos + 1], ARGV[pos + 2], ARGV[pos + 3]
  pos = pos + 4
  if kind == 'S' then redis.call('SADD', k, m)
  elseif kind == 'Z' then redis.call('ZADD', k, s, m)
  elseif kind == 'G' then
    local sep = string.find(s, ',', 1, true)
    redis.call('GEOADD', k, string.sub(s, sep + 1), string.sub(s, 1, sep - 1), m)
  elseif kind == 'C' and released then released[k .. '\n' .. m] = nil
  elseif kind == 'C' then redis.call('HSET', k, m, key)
  elseif kind == 'L' then
    local old = kept['L' .. m]
    kept['L' .. m] = nil
    if old and old[2] ~= k and redis.call('EXISTS', old[2]) == 1 then
      redis.call('RENAME', old[2], k)
    end
  elseif kind == 'H' then
    local old = kept['H' .. k]
    kept['H' .. k] = nil
    if old and old[3] ~= m then
      local v = redis.call('HGET', k, old[3])
      if v then
        redis.call('HDEL', k, old[3])
        redis.call('HSET', k, m, v)
      end
    end
    redis.call('HSETNX', k, m, s)
  end
end
for _, e in pairs(kept) do
  if e[1] == 'L' then redis.call('DEL', e[2]) else redis.call('HDEL', e[2], e[3]) end
end
redis.call('SADD', class_set, key)
local ttl_mode = ARGV[2]
if ttl_mode == 'T' then redis.call('EXPIRE', key, ARGV[3])
elseif ttl_mode == 'A' then redis.call('EXPIREAT', key, ARGV[3])
end
local n_cmds = tonumber(ARGV[pos]); pos = pos + 1
run_commands(ARGV, pos, n_cmds)
if released then
  local out = {}
  for _, c in pairs(released) do out[#out + 1] = c[1]; out[#out + 1] = c[2] end
  return out
end
return 1
"""

# KEYS: 1 instance key, 2 class set, 3.. the other keys it touches (declared only)
# ARGV: flags ('X': claims are external), n_owners, owner*, n_cmds, (nargs cmd args...)*
# Returns 1/0 (existed); with 'X' {existed, (claim hash, claim field)*} of the claims to release.
DELETE_LUA = _LUA_COMMON + r"""
local key, class_set = KEYS[1], KEYS[2]
local released = nil
if ARGV[1] == 'X' then released = {} end
local n_owners = tonumber(ARGV[2])
local pos = 3
for i = 1, n_owners do
  remove_entries(redis.call('HGET', key, '@idx:' .. ARGV[pos]), key, nil, released)
  pos = pos + 1
end
local existed = redis.call('DEL', key)
redis.call('SREM', class_set, key)
local n_cmds = tonumber(ARGV[pos]); pos = pos + 1
if existed == 1 then run_commands(ARGV, pos, n_cmds) end
if released then
  local out = {existed}
  for _, c in pairs(released) do out[#out + 1] = c[1]; out[#out + 1] = c[2] end
  return out
end
return existed
"""


@dataclass(frozen=True)
class Claim:
    """A unique value a write claims: field ``field`` of the claim hash ``hash_key``
    maps the value to the instance key holding it."""

    owner: str  # the index owner (field or composite index name) whose record lists it
    hash_key: str
    field: str
    label: str  # the value as error messages name it, e.g. ``email='a@b.c'``


@dataclass
class WriteBatch:
    """What one save or delete of one instance must do, filled in by hooks."""

    key: str
    class_set: str
    ns: str = ""  # the instance's namespace (tag group); hooks build index keys in it
    external_claims: bool = False  # sharded model: claims are settled around the script
    old_key: str = ""
    is_create: bool = False
    must_not_exist: bool = False
    must_exist: bool = False
    update_fields: frozenset[str] | None = None
    mapping: dict[str, bytes] = field(default_factory=dict)
    hdel: list[str] = field(default_factory=list)
    ttl: tuple[str, int] | None = None
    claims: list[Claim] = field(default_factory=list)
    owners: list[str] = field(default_factory=list)
    migrated_owners: list[str] = field(default_factory=list)
    entries: dict[str, list[tuple[str, str, str, Any]]] = field(default_factory=dict)
    commands: list[tuple[Any, ...]] = field(default_factory=list)
    #: the instance's previous ``@idx:`` records as the client last saw them (packed), so
    #: the keys the script will clean up can be declared in KEYS too
    previous: list[bytes] = field(default_factory=list)
    #: after save_args(): the ``@idx:`` fields written (packed) or removed (None)
    records: dict[str, bytes | None] = field(default_factory=dict)

    # --- API for hooks -------------------------------------------------
    def own(self, owner: str) -> None:
        """Declare that ``owner`` (a field or index name) rewrites its entries in this write."""
        if owner not in self.entries:
            self.owners.append(owner)
            self.entries[owner] = []

    def add(self, owner: str, kind: str, key: str, member: str, score: Any = "") -> None:
        """Add an index entry owned by ``owner``; it is removed on the next write or delete."""
        self.own(owner)
        self.entries[owner].append((kind, key, member, score))

    def claim(self, owner: str, hash_key: str, hash_field: str, label: str = "") -> None:
        """Claim a unique value: fails the whole write if another live instance holds it.

        ``label`` (e.g. ``"email='a@b.c'"``) names the value in the error message.
        """
        self.claims.append(Claim(owner, hash_key, hash_field, label or owner))
        self.add(owner, CLAIM, hash_key, hash_field)

    def claim_label(self, index: int) -> str:
        """The label of claim ``index`` (0-based, the order the save script checks them)."""
        return self.claims[index].label

    def drop_claims(self, dropped: Iterable[Claim]) -> None:
        """Take claims out of the write, with their index entries (another instance
        holds them: a reindex rebuilds the instance's other entries without them)."""
        gone = {(c.hash_key, c.field) for c in dropped}
        if not gone:
            return
        self.claims = [c for c in self.claims if (c.hash_key, c.field) not in gone]
        for owner, rows in self.entries.items():
            self.entries[owner] = [r for r in rows
                                   if not (r[0] == CLAIM and (r[1], r[2]) in gone)]

    def command(self, *args: Any) -> None:
        """Queue a raw Redis command that runs after the write succeeds, in the same script.

        Single-key commands only, the key first (``"LTRIM", key, ...``): it is declared
        in the script's KEYS and must be in the instance's slot.
        """
        self.commands.append(args)

    def declared_keys(self) -> list[str]:
        """Every key the script will touch besides the instance key, class set and previous
        key: index entries, command keys and the previous entries it removes (as far as
        the client knows them; the script reads the authoritative record itself). A
        sharded model's claims live in other slots and are settled outside the script."""
        origin = self.old_key or self.key
        seen = {self.key, self.class_set, origin}
        out: list[str] = []
        external = self.external_claims
        for rows in self.entries.values():
            for kind, k, _m, _s in rows:
                if k not in seen and not (external and kind == CLAIM):
                    seen.add(k)
                    out.append(k)
        for cmd in self.commands:
            k = str(cmd[1])
            if k not in seen:
                seen.add(k)
                out.append(k)
        for packed in self.previous:
            try:
                rows = unpack_record(packed, origin)
            except (ValueError, TypeError, IndexError, msgpack.ExtraData):
                continue  # an unreadable copy: the script reads the stored record anyway
            for kind, k, _m in rows:
                if k not in seen and not (external and kind == CLAIM):
                    seen.add(k)
                    out.append(k)
        return out

    # --- compilation ---------------------------------------------------
    def save_args(self, lease_deadline: int | None = None) -> tuple[list[str], list[Any]]:
        """KEYS and ARGV of the SAVE script.

        ``lease_deadline`` (ms, server clock) is given when the claims are
        external (sharded model): the script then checks none of them and
        refuses to write after the deadline.
        """
        flags = ("N" if self.must_not_exist else "") + ("E" if self.must_exist else "")
        if self.external_claims:
            flags += f"X{lease_deadline if lease_deadline is not None else 2**52}"
        ttl_mode, ttl_value = self.ttl or ("", 0)
        claims = [] if self.external_claims else self.claims
        argv: list[Any] = [flags or "-", ttl_mode or "-", ttl_value, len(claims)]
        for c in claims:
            argv += [c.hash_key, c.field]
        argv.append(len(self.owners))
        argv += self.owners
        migrated = [o for o in self.migrated_owners if o not in self.entries]
        argv.append(len(migrated))
        argv += migrated
        mapping = dict(self.mapping)
        hdel = list(self.hdel)
        for owner in self.owners:
            rows = self.entries[owner]
            if rows:
                mapping[IDX_PREFIX + owner] = pack_record(rows, self.key)
            else:
                hdel.append(IDX_PREFIX + owner)
        argv.append(len(mapping))
        for f, v in mapping.items():
            argv += [f, v]
        argv.append(len(hdel))
        argv += hdel
        n = sum(len(rows) for rows in self.entries.values())
        argv.append(n)
        for rows in self.entries.values():
            for kind, k, m, s in rows:
                argv += [kind, k, m, s]
        argv.append(len(self.commands))
        for cmd in self.commands:
            argv.append(len(cmd))
            argv += cmd
        keys = [self.key, self.class_set, self.old_key or self.key, *self.declared_keys()]
        self.records = {f: v for f, v in mapping.items() if f.startswith(IDX_PREFIX)}
        self.records.update(dict.fromkeys(h for h in hdel if h.startswith(IDX_PREFIX)))
        return keys, argv

    def delete_args(self) -> tuple[list[str], list[Any]]:
        argv: list[Any] = ["X" if self.external_claims else "-", len(self.owners),
                           *self.owners, len(self.commands)]
        for cmd in self.commands:
            argv.append(len(cmd))
            argv += cmd
        return [self.key, self.class_set, *self.declared_keys()], argv
