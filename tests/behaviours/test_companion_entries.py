"""Persistent companion entries (L keys, H hash fields) of the single write path."""

import pytest

from popoto import KeyField, Model
from popoto.models import scripts
from popoto.models.write import COMPANION_FIELD, LINKED_KEY, WriteBatch
from popoto.redis_db import get_client


class Box(Model):
    name = KeyField()


def run(batch):
    """Execute a save batch directly."""
    return scripts.SAVE(get_client(), *batch.save_args())


def batch_for(key, entries, old_key="", commands=()):
    """A save batch of owner 'x' with the given (kind, key, member, score) entries."""
    batch = WriteBatch(key=key, class_set="$Class:Box", old_key=old_key)
    batch.mapping = {"name": b"\xa1a"}
    batch.own("x")
    for entry in entries:
        batch.add("x", *entry)
    for command in commands:
        batch.command(*command)
    return batch


@pytest.mark.standalone_only
def test_rewrite_keeps_companions_and_hsetnx_keeps_values(r):
    """Re-adding L/H entries keeps the key and never overwrites the hash field value."""
    run(batch_for("Box:a", [(LINKED_KEY, "$L:Box:a", "s"), (COMPANION_FIELD, "$H", "Box:a", "1")],
                  commands=[("RPUSH", "$L:Box:a", "v")]))
    r.hset("$H", "Box:a", "learned")
    run(batch_for("Box:a", [(LINKED_KEY, "$L:Box:a", "s"), (COMPANION_FIELD, "$H", "Box:a", "2")]))
    assert r.lrange("$L:Box:a", 0, -1) == [b"v"]
    assert r.hget("$H", "Box:a") == b"learned"


@pytest.mark.standalone_only
def test_rewrite_without_the_entries_deletes_them(r):
    """A rewrite of the owner that no longer lists a companion deletes it."""
    run(batch_for("Box:a", [(LINKED_KEY, "$L:Box:a", "s"), (COMPANION_FIELD, "$H", "Box:a", "1")],
                  commands=[("RPUSH", "$L:Box:a", "v")]))
    run(batch_for("Box:a", []))
    assert not r.exists("$L:Box:a") and not r.exists("$H")


@pytest.mark.standalone_only
def test_migration_moves_companions_and_delete_removes_them(r):
    """On a key change L keys are renamed by slot and H values move; delete removes both."""
    run(batch_for("Box:a", [(LINKED_KEY, "$L:Box:a", "s"), (COMPANION_FIELD, "$H", "Box:a", "1")],
                  commands=[("RPUSH", "$L:Box:a", "v")]))
    r.hset("$H", "Box:a", "learned")
    moved = batch_for("Box:b", [(LINKED_KEY, "$L:Box:b", "s"),
                                (COMPANION_FIELD, "$H", "Box:b", "1")], old_key="Box:a")
    run(moved)
    assert r.lrange("$L:Box:b", 0, -1) == [b"v"] and not r.exists("$L:Box:a")
    assert r.hgetall("$H") == {b"Box:b": b"learned"}
    gone = WriteBatch(key="Box:b", class_set="$Class:Box")
    gone.owners = ["x"]
    scripts.DELETE(get_client(), *gone.delete_args())
    assert r.keys("*") == []
