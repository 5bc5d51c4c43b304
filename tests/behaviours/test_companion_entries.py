"""Persistent companion entries (L keys, H hash fields) of the single write path."""

from popoto import KeyField, Model, keys
from popoto.engine import scripts
from popoto.engine.write import COMPANION_FIELD, LINKED_KEY, WriteBatch
from popoto.redis_db import get_client
from tests.helpers import db_keys, key_of, same_group_value


class Box(Model):
    name = KeyField()


def layout():
    """Box "a", another Box key in its tag group (slot in a cluster), the group and the
    test's H hash in it (built once the session's layout is configured)."""
    box_a = key_of(Box, "a")
    ns = keys.ns_of(box_a)
    return box_a, key_of(Box, same_group_value(Box, box_a, prefix="b")), ns, \
        keys.behaviour_key("H", ns)


def linked(instance_key):
    """The test's L key of one Box instance."""
    return keys.companion_key("L", instance_key, "s")


def run(batch):
    """Execute a save batch directly."""
    return scripts.SAVE(get_client(), *batch.save_args())


def batch_for(key, entries, old_key="", commands=()):
    """A save batch of owner 'x' with the given (kind, key, member, score) entries."""
    ns = keys.ns_of(key)
    batch = WriteBatch(key=key, class_set=keys.class_set_key(ns), ns=ns, old_key=old_key)
    batch.mapping = {"name": b"\xa1a"}
    batch.own("x")
    for entry in entries:
        batch.add("x", *entry)
    for command in commands:
        batch.command(*command)
    return batch


def entries_of(key, h):
    """An L entry with slot 's' and an H entry in the hash ``h``, for instance ``key``."""
    return [(LINKED_KEY, linked(key), "s"), (COMPANION_FIELD, h, key, "1")]


def test_rewrite_keeps_companions_and_hsetnx_keeps_values(r):
    """Re-adding L/H entries keeps the key and never overwrites the hash field value."""
    box_a, _b, _ns, h = layout()
    run(batch_for(box_a, entries_of(box_a, h), commands=[("RPUSH", linked(box_a), "v")]))
    assert r.hget(h, box_a) == b"1"
    r.hset(h, box_a, "learned")
    run(batch_for(box_a, [(LINKED_KEY, linked(box_a), "s"), (COMPANION_FIELD, h, box_a, "2")]))
    assert r.lrange(linked(box_a), 0, -1) == [b"v"]
    assert r.hget(h, box_a) == b"learned"


def test_rewrite_without_the_entries_deletes_them(r):
    """A rewrite of the owner that no longer lists a companion deletes it."""
    box_a, _b, _ns, h = layout()
    run(batch_for(box_a, entries_of(box_a, h), commands=[("RPUSH", linked(box_a), "v")]))
    run(batch_for(box_a, []))
    assert not r.exists(linked(box_a)) and not r.exists(h)
    assert r.exists(box_a)


def test_migration_moves_companions_and_delete_removes_them(r):
    """On a key change L keys are renamed by slot and H values move; delete removes both."""
    box_a, box_b, ns, h = layout()
    assert box_b != box_a and keys.ns_of(box_b) == ns
    run(batch_for(box_a, entries_of(box_a, h), commands=[("RPUSH", linked(box_a), "v")]))
    r.hset(h, box_a, "learned")
    run(batch_for(box_b, entries_of(box_b, h), old_key=box_a))
    assert r.lrange(linked(box_b), 0, -1) == [b"v"] and not r.exists(linked(box_a))
    assert r.hgetall(h) == {box_b.encode(): b"learned"}
    assert not r.exists(box_a)
    gone = WriteBatch(key=box_b, class_set=keys.class_set_key(ns), ns=ns)
    gone.owners = ["x"]
    scripts.DELETE(get_client(), *gone.delete_args())
    assert db_keys(r) == set()
