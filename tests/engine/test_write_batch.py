"""WriteBatch compilation to the SAVE / DELETE script arguments, and ownership records."""

from __future__ import annotations

import msgpack

from popoto.engine.write import (
    CLAIM,
    COMPANION_FIELD,
    GEO,
    IDX_PREFIX,
    KEY,
    LINKED_KEY,
    SET,
    ZSET,
    Claim,
    WriteBatch,
    pack_record,
    unpack_record,
)

KEY_ = "M:1"
CLASS_SET = "$Class:M"


def full_batch() -> WriteBatch:
    """A batch with one entry of every kind, a claim, a command, a TTL and hash changes."""
    b = WriteBatch(key=KEY_, class_set=CLASS_SET, mapping={"name": b"ann"}, hdel=["gone"],
                   ttl=("T", 60))
    b.add("color", SET, "$IndexF:M:color:red", KEY_)
    b.add("size", ZSET, "$SortedF:M:size", KEY_, 5)
    b.claim("email", "$UniqueF:M:email", "a@b.c", "email='a@b.c'")
    b.add("place", GEO, "$GeoF:M:place", KEY_, "2.35,48.85")
    b.add("log", LINKED_KEY, "M:1:log", "log")
    b.add("seen", COMPANION_FIELD, "$Seen:M", KEY_, "0")
    b.add("extra", KEY, "M:1:extra", KEY_)
    b.own("empty")  # an owner with nothing left: its record is removed
    b.command("LTRIM", "M:1:log", 0, 9)
    return b


def split_argv(argv: list) -> dict:
    """Parse SAVE's ARGV back into its sections (the layout documented above SAVE_LUA)."""
    out = {"flags": argv[0], "ttl": (argv[1], argv[2])}
    pos = 3

    def take(n: int) -> list:
        nonlocal pos
        part = argv[pos:pos + n]
        pos += n
        return part

    n = take(1)[0]
    out["claims"] = [tuple(take(2)) for _ in range(n)]
    owners = take(2 * take(1)[0])  # (owner, record base) pairs
    out["owners"], out["bases"] = owners[0::2], owners[1::2]
    migrated = take(2 * take(1)[0])
    out["migrated"] = migrated[0::2]
    n = take(1)[0]
    out["mapping"] = dict(tuple(take(2)) for _ in range(n))
    out["hdel"] = take(take(1)[0])
    n = take(1)[0]
    out["entries"] = [tuple(take(4)) for _ in range(n)]
    n = take(1)[0]
    cmds = []
    for _ in range(n):
        cmds.append(tuple(take(take(1)[0])))
    out["commands"] = cmds
    assert pos == len(argv), "ARGV has trailing items"
    return out


def test_save_args_sections_in_order():
    """save_args lays out flags, ttl, claims, owners, migrated, hash, hdel, entries, commands."""
    b = full_batch()
    b.migrated_owners = ["old_index", "color"]  # an owner rewritten anyway is not "migrated"
    _keys, argv = b.save_args()
    parts = split_argv(argv)
    assert parts["flags"] == "-"
    assert parts["ttl"] == ("T", 60)
    assert parts["claims"] == [("$UniqueF:M:email", "a@b.c")]
    assert parts["owners"] == ["color", "size", "email", "place", "log", "seen", "extra", "empty"]
    assert parts["migrated"] == ["old_index"]
    assert parts["hdel"] == ["gone", IDX_PREFIX + "empty"]
    assert parts["entries"] == [
        (SET, "$IndexF:M:color:red", KEY_, ""),
        (ZSET, "$SortedF:M:size", KEY_, 5),
        (CLAIM, "$UniqueF:M:email", "a@b.c", ""),
        (GEO, "$GeoF:M:place", KEY_, "2.35,48.85"),
        (LINKED_KEY, "M:1:log", "log", ""),
        (COMPANION_FIELD, "$Seen:M", KEY_, "0"),
        (KEY, "M:1:extra", KEY_, ""),
    ]
    assert parts["commands"] == [("LTRIM", "M:1:log", 0, 9)]


def test_save_args_writes_one_record_per_owner_with_entries():
    """Each owner with entries gets its packed @idx record in the hash mapping."""
    b = full_batch()
    _keys, argv = b.save_args()
    mapping = split_argv(argv)["mapping"]
    assert mapping["name"] == b"ann"
    for owner, rows in b.entries.items():
        if rows:
            assert mapping[IDX_PREFIX + owner] == pack_record(rows, KEY_)
    assert IDX_PREFIX + "empty" not in mapping


def test_save_args_records_lists_written_and_removed_records():
    """After save_args, ``records`` maps each @idx field to its packed value, or None."""
    b = full_batch()
    b.hdel.append(IDX_PREFIX + "stale_owner")
    b.save_args()
    assert b.records[IDX_PREFIX + "empty"] is None
    assert b.records[IDX_PREFIX + "stale_owner"] is None
    assert b.records[IDX_PREFIX + "color"] == pack_record(b.entries["color"], KEY_)
    assert "name" not in b.records and "gone" not in b.records
    assert len(b.records) == 9


def test_save_args_keys_declare_every_touched_key_once():
    """KEYS: instance, class set, previous key (self when none), then entry and command keys."""
    b = full_batch()
    b.add("color2", SET, "$IndexF:M:color:red", KEY_)  # same key twice: declared once
    keys, _argv = b.save_args()
    assert keys == [KEY_, CLASS_SET, KEY_, "$IndexF:M:color:red", "$SortedF:M:size",
                    "$UniqueF:M:email", "$GeoF:M:place", "M:1:log", "$Seen:M", "M:1:extra"]


def test_save_args_command_key_is_declared():
    """A queued command's key is declared in KEYS even when no entry names it."""
    b = WriteBatch(key=KEY_, class_set=CLASS_SET)
    b.command("XADD", "M:stream", "*", "f", "v")
    keys, argv = b.save_args()
    assert keys == [KEY_, CLASS_SET, KEY_, "M:stream"]
    assert split_argv(argv)["commands"] == [("XADD", "M:stream", "*", "f", "v")]


def test_save_args_flags_create_and_update():
    """must_not_exist -> N, must_exist -> E, both -> NE, neither -> '-'."""
    cases = {(True, False): "N", (False, True): "E", (True, True): "NE", (False, False): "-"}
    for (new, existing), flags in cases.items():
        b = WriteBatch(key=KEY_, class_set=CLASS_SET, must_not_exist=new, must_exist=existing)
        assert b.save_args()[1][0] == flags


def test_save_args_no_ttl():
    """Without a TTL the ttl mode is '-' and the value 0."""
    b = WriteBatch(key=KEY_, class_set=CLASS_SET)
    assert split_argv(b.save_args()[1])["ttl"] == ("-", 0)


def test_save_args_external_claims_carry_lease_deadline_and_no_claim_checks():
    """Sharded: flag X<deadline>, no claims for the script to check, claim keys undeclared."""
    b = full_batch()
    b.external_claims = True
    b.must_not_exist = True
    keys, argv = b.save_args(lease_deadline=123456)
    parts = split_argv(argv)
    assert parts["flags"] == "NX123456"
    assert parts["claims"] == []
    assert (CLAIM, "$UniqueF:M:email", "a@b.c", "") in parts["entries"]  # still recorded
    assert "$UniqueF:M:email" not in keys


def test_save_args_external_claims_without_deadline_never_expire():
    """External claims with no lease (no claims acquired) get a far-future deadline."""
    b = WriteBatch(key=KEY_, class_set=CLASS_SET, external_claims=True)
    assert b.save_args()[1][0] == f"X{2**52}"


def test_save_args_previous_key_is_third_key():
    """A key migration names the previous key as KEYS[3]."""
    b = WriteBatch(key="M:2", class_set=CLASS_SET, old_key="M:1")
    assert b.save_args()[0][:3] == ["M:2", CLASS_SET, "M:1"]


def test_previous_records_declare_the_keys_they_clean_up():
    """Keys listed in the previous @idx records (packed for the old key) are declared too."""
    old = pack_record([(SET, "$IndexF:M:color:blue", "M:1", ""),
                       (CLAIM, "$UniqueF:M:email", "old@b.c", ""),
                       (SET, "$IndexF:M:color:red", "M:1", "")], "M:1")
    b = WriteBatch(key="M:2", class_set=CLASS_SET, old_key="M:1",
                   previous=[("color", old), ("junk", b"\xc1junk")])
    b.add("color", SET, "$IndexF:M:color:red", "M:2")
    keys, _argv = b.save_args()
    assert keys[:4] == ["M:2", CLASS_SET, "M:1", "$IndexF:M:color:red"]
    # a record unpacks to a set: its keys come in no particular order, each once
    assert sorted(keys[4:]) == ["$IndexF:M:color:blue", "$UniqueF:M:email"]


def test_previous_claims_are_not_declared_when_external():
    """A sharded model's previous claim keys live in other slots: never declared."""
    old = pack_record([(CLAIM, "$UniqueF:{M#3}:email", "old@b.c", ""),
                       (SET, "{M#0}:idx", "{M#0}:1", "")], "{M#0}:1")
    b = WriteBatch(key="{M#0}:1", class_set="$Class:{M#0}", external_claims=True,
                   previous=[("email", old)])
    assert b.save_args()[0] == ["{M#0}:1", "$Class:{M#0}", "{M#0}:1", "{M#0}:idx"]


def test_delete_args_layout():
    """DELETE ARGV: flag, owners, commands; KEYS: instance, class set, declared keys."""
    b = full_batch()
    keys, argv = b.delete_args()
    assert argv[:2] == ["-", 8]
    assert argv[2:18:2] == ["color", "size", "email", "place", "log", "seen", "extra", "empty"]
    assert argv[3:18:2] == [""] * 8  # no record bases given: every record is absolute
    assert argv[18:] == [1, 4, "LTRIM", "M:1:log", 0, 9]
    assert keys[:2] == [KEY_, CLASS_SET]
    assert "$UniqueF:M:email" in keys and "M:1:log" in keys


def test_delete_args_external_flag():
    """A sharded model's delete has flag X (its claims are released outside the script)."""
    b = WriteBatch(key=KEY_, class_set=CLASS_SET, external_claims=True)
    b.claim("email", "$UniqueF:M:email", "a@b.c")
    keys, argv = b.delete_args()
    assert argv == ["X", 1, "email", "", 0]
    assert keys == [KEY_, CLASS_SET]


def test_records_are_relative_to_the_owners_base():
    """With record bases, set/sorted-set/geo rows in the owner's own index are written
    relative to it (lower-case kind, rest of the key) and read back whole; claims,
    companions and other keys stay absolute; save and delete pass each owner's base."""
    base = "$IndexF:M:color"
    rows = [(SET, "$IndexF:M:color:red", KEY_, ""), (SET, "$IndexF:M:color:x", "Other:1", ""),
            (CLAIM, "$UniqueF:M:color", "tok", ""), (SET, "$Elsewhere:red", KEY_, "")]
    packed = pack_record(rows, KEY_, base)
    assert msgpack.unpackb(packed, raw=False) == [
        ["s", ":red"], ["s", ":x", "Other:1"], [CLAIM, "$UniqueF:M:color", "tok"],
        [SET, "$Elsewhere:red"]]
    assert unpack_record(packed, KEY_, base) == {(k, rk, m) for k, rk, m, _s in rows}
    assert msgpack.unpackb(pack_record([(ZSET, "$SortedF:M:size", KEY_, 5)], KEY_,
                                       "$SortedF:M:size"), raw=False) == [["z"]]
    b = WriteBatch(key=KEY_, class_set=CLASS_SET, bases={"color": base})
    b.add("color", SET, "$IndexF:M:color:red", KEY_)
    _keys, argv = b.save_args()
    parts = split_argv(argv)
    assert parts["owners"] == ["color"] and parts["bases"] == [base]
    assert parts["mapping"][IDX_PREFIX + "color"] == pack_record(b.entries["color"], KEY_, base)
    assert b.delete_args()[1][:4] == ["-", 1, "color", base]


def test_pack_record_round_trip():
    """unpack_record(pack_record(rows)) gives back every (kind, key, member)."""
    rows = [(SET, "s", KEY_, ""), (ZSET, "z", KEY_, 3), (GEO, "g", KEY_, "1,2"),
            (CLAIM, "h", "a@b.c", ""), (LINKED_KEY, "M:1:log", "log", ""),
            (COMPANION_FIELD, "hh", KEY_, "0"), (KEY, "M:1:x", KEY_, ""),
            (SET, "s2", "Other:9", "")]
    assert unpack_record(pack_record(rows, KEY_), KEY_) == {(k, rk, m) for k, rk, m, _s in rows}


def test_pack_record_omits_self_member_only_for_set_zset_geo():
    """Rows whose member is the owner key are stored as [kind, key] for S/Z/G only."""
    rows = [(SET, "s", KEY_, ""), (ZSET, "z", KEY_, 1), (GEO, "g", KEY_, "1,2"),
            (CLAIM, "h", KEY_, ""), (KEY, "k", KEY_, ""), (SET, "s2", "Other:9", "")]
    packed = msgpack.unpackb(pack_record(rows, KEY_), raw=False)
    assert [len(r) for r in packed] == [2, 2, 2, 3, 3, 3]


def test_unpack_record_reads_members_relative_to_the_given_key():
    """A two-element row's member is whatever owner key the reader passes (key migration)."""
    packed = pack_record([(SET, "s", "M:1", "")], "M:1")
    assert unpack_record(packed, "M:2") == {(SET, "s", "M:2")}


def test_claim_records_claim_and_entry_and_label():
    """claim() adds a Claim, a C entry for its owner, and labels it (owner name by default)."""
    b = WriteBatch(key=KEY_, class_set=CLASS_SET)
    b.claim("email", "$UniqueF:M:email", "a@b.c", "email='a@b.c'")
    b.claim("handle", "$UniqueF:M:handle", "ann")
    assert b.claims == [Claim("email", "$UniqueF:M:email", "a@b.c", "email='a@b.c'"),
                        Claim("handle", "$UniqueF:M:handle", "ann", "handle")]
    assert b.entries["handle"] == [(CLAIM, "$UniqueF:M:handle", "ann", "")]
    assert [b.claim_label(0), b.claim_label(1)] == ["email='a@b.c'", "handle"]


def test_drop_claims_removes_claim_and_its_entry_only():
    """drop_claims takes out the claim and its C entry; other claims and entries stay."""
    b = WriteBatch(key=KEY_, class_set=CLASS_SET)
    b.add("pair", SET, "$IndexF:M:pair:x", KEY_)
    b.claim("pair", "$UniqueF:M:pair", "x|y")
    b.claim("handle", "$UniqueF:M:handle", "ann")
    first, second = b.claims
    b.drop_claims([first])
    assert b.claims == [second]
    assert b.entries == {"pair": [(SET, "$IndexF:M:pair:x", KEY_, "")],
                         "handle": [(CLAIM, "$UniqueF:M:handle", "ann", "")]}
    assert b.owners == ["pair", "handle"]  # the owner still rewrites its record
    parts = split_argv(b.save_args()[1])
    assert parts["claims"] == [("$UniqueF:M:handle", "ann")]
    assert unpack_record(b.records[IDX_PREFIX + "pair"], KEY_) == {
        (SET, "$IndexF:M:pair:x", KEY_)}


def test_drop_claims_of_only_entry_removes_the_record():
    """An owner whose only entry was the dropped claim gets its record deleted (hdel)."""
    b = WriteBatch(key=KEY_, class_set=CLASS_SET)
    b.claim("email", "$UniqueF:M:email", "a@b.c")
    b.drop_claims(list(b.claims))
    parts = split_argv(b.save_args()[1])
    assert parts["claims"] == [] and parts["entries"] == []
    assert parts["hdel"] == [IDX_PREFIX + "email"]
    assert b.records == {IDX_PREFIX + "email": None}


def test_drop_claims_with_nothing_is_a_no_op():
    """drop_claims([]) changes nothing."""
    b = WriteBatch(key=KEY_, class_set=CLASS_SET)
    b.claim("email", "$UniqueF:M:email", "a@b.c")
    before = (list(b.claims), {o: list(r) for o, r in b.entries.items()})
    b.drop_claims([])
    assert (b.claims, b.entries) == before
