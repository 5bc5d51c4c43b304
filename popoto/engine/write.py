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
from popoto.protocol import FLAG_EXISTING, FLAG_EXTERNAL, FLAG_NEW, IDX_PREFIX
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
_RELATIVE = frozenset(k.lower() for k in _SELF_MEMBER)  # their rows relative to a base


def pack_record(rows: list[tuple[str, str, str, Any]], owner_key: str, base: str = "") -> bytes:
    """Pack an ``@idx:<owner>`` record, short so small hashes keep Redis's compact encoding.

    A row is ``[kind, key]`` when the member is the owner's own key (it usually is),
    else ``[kind, key, member]``. A set, sorted-set or geo entry in the owner's own index
    (its key starts with the owner's ``base``, ``ModelOptions.record_base``) is written
    relative to it: the kind in lower case, then the rest of the key when there is one
    (``["z"]`` for ``$SortedF:M:score``, ``["s", ":red"]`` for ``$IndexF:M:color:red``).
    """
    out = []
    for k, rk, m, _s in rows:
        own = m == owner_key and k in _SELF_MEMBER
        if base and k in _SELF_MEMBER and rk.startswith(base):
            rest = rk[len(base):]
            row = [k.lower(), rest] if rest or not own else [k.lower()]
        else:
            row = [k, rk]
        out.append(row if own else [*row, m])
    return pack(out)


def unpack_record(packed: bytes, owner_key: str, base: str = "") -> set[tuple[str, str, str]]:
    """The ``(kind, key, member)`` entries of a record written by :func:`pack_record`
    (``base``: the owner's, to expand relative rows)."""
    out = set()
    for row in msgpack.unpackb(packed, raw=False):
        kind = _text(row[0])
        if kind in _RELATIVE:
            kind, key = kind.upper(), base + (_text(row[1]) if len(row) > 1 else "")
        else:
            key = _text(row[1])
        out.add((kind, key, _text(row[2]) if len(row) > 2 else owner_key))
    return out


# The SAVE and DELETE scripts (popoto.engine.scripts.SAVE/DELETE) are popoto/lua/save.lua
# and popoto/lua/delete.lua, with the fragments remove_entries.lua and run_commands.lua;
# save_args() and delete_args() below build their KEYS and ARGV.


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
    idempotent_commands: list[tuple[Any, ...]] = field(default_factory=list)
    #: keys the script may touch besides entries and commands (declared in KEYS only)
    extra_keys: list[str] = field(default_factory=list)
    #: the instance's previous ``@idx:`` records as the client last saw them ``(owner,
    #: packed)``, so the keys the script will clean up can be declared in KEYS too
    previous: list[tuple[str, bytes]] = field(default_factory=list)
    #: each owner's record base (``ModelOptions.record_bases``): relative record rows
    bases: dict[str, str] = field(default_factory=dict)
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

    def command(self, *args: Any, idempotent: bool = False) -> None:
        """Queue a raw Redis command that runs after the write succeeds, in the same script.

        Single-key commands only, the key first (``"LTRIM", key, ...``): it is declared
        in the script's KEYS and must be in the instance's slot. ``idempotent`` commands
        (running them again changes nothing, e.g. a ZADD to a registry) are also run by
        a reindex, which drops the others (stream events, trims).
        """
        self.commands.append(args)
        if idempotent:
            self.idempotent_commands.append(args)

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
        for k in [*(str(cmd[1]) for cmd in self.commands), *self.extra_keys]:
            if k not in seen:
                seen.add(k)
                out.append(k)
        for owner, packed in self.previous:
            try:
                recorded = unpack_record(packed, origin, self.bases.get(owner, ""))
            except (ValueError, TypeError, IndexError, msgpack.ExtraData):
                continue  # an unreadable copy: the script reads the stored record anyway
            for kind, k, _m in recorded:
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
        flags = ((FLAG_NEW if self.must_not_exist else "")
                 + (FLAG_EXISTING if self.must_exist else ""))
        if self.external_claims:
            flags += f"{FLAG_EXTERNAL}{lease_deadline if lease_deadline is not None else 2**52}"
        ttl_mode, ttl_value = self.ttl or ("", 0)
        claims = [] if self.external_claims else self.claims
        argv: list[Any] = [flags or "-", ttl_mode or "-", ttl_value, len(claims)]
        for c in claims:
            argv += [c.hash_key, c.field]
        bases = self.bases
        argv.append(len(self.owners))
        for owner in self.owners:
            argv += [owner, bases.get(owner, "")]
        migrated = [o for o in self.migrated_owners if o not in self.entries]
        argv.append(len(migrated))
        for owner in migrated:
            argv += [owner, bases.get(owner, "")]
        mapping = dict(self.mapping)
        hdel = list(self.hdel)
        for owner in self.owners:
            rows = self.entries[owner]
            if rows:
                mapping[IDX_PREFIX + owner] = pack_record(rows, self.key, bases.get(owner, ""))
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
        argv: list[Any] = [FLAG_EXTERNAL if self.external_claims else "-", len(self.owners)]
        for owner in self.owners:
            argv += [owner, self.bases.get(owner, "")]
        argv.append(len(self.commands))
        for cmd in self.commands:
            argv.append(len(cmd))
            argv += cmd
        return [self.key, self.class_set, *self.declared_keys()], argv
