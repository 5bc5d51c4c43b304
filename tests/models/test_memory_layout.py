"""Storage compactness: @idx records stay short so small hashes keep Redis's compact encoding."""

import msgpack
import pytest

from popoto import Field, IndexedField, IntField, KeyField, Model, SortedField
from tests.helpers import db_keys


class Compact(Model):
    name = Field()
    qty = IntField(default=0)
    score = SortedField(type=float, null=True)
    color = IndexedField(null=True)


def test_uuid_keyed_instance_hash_stays_compact(r):
    """An instance with a 32-char auto key and two indexes is stored as a ziplist/listpack."""
    obj = Compact(name="x", score=1.5, color="red")
    obj.save()
    assert len(obj._auto_key) == 32
    assert r.object("encoding", obj.db_key) in (b"ziplist", b"listpack")
    # the record omits the member when it is the instance's own key
    assert obj.db_key.encode() not in r.hget(obj.db_key, "@idx:score")


class Stock(Model):
    sku = KeyField()
    name = Field(null=True)
    qty = IntField(default=0)
    price = SortedField(type=float, null=True)
    color = IndexedField(null=True)

    class Meta:
        namespace = "Stock"


def _memory(r, keys) -> int:
    return sum(r.memory_usage(k, samples=0) or 0 for k in keys)


@pytest.mark.standalone_only  # one server's MEMORY USAGE of the unsharded layout
def test_memory_per_object_is_within_15_percent_of_the_plain_layout(r):
    """Popoto's hash + index layout (with its @idx records) costs at most 1.15x what a
    user writes by hand for the same data: a hash of the msgpack values, the class set,
    the sorted set and the equality sets (MEMORY USAGE over every key, 300 objects)."""
    rows = [dict(sku=f"s{i:05d}", name=f"item {i}", qty=i, price=i / 4,
                 color=("red", "green", "blue")[i % 3]) for i in range(300)]
    Stock.bulk_create([Stock(**row) for row in rows])
    popoto_keys = {k for k in db_keys(r)}
    pipe = r.pipeline(transaction=False)
    for row in rows:
        key = f"Plain:{row['sku']}"
        pipe.hset(key, mapping={f: msgpack.packb(v) for f, v in row.items()})
        pipe.sadd("$Class:Plain", key)
        pipe.zadd("$SortedF:Plain:price", {key: row["price"]})
        pipe.sadd(f"$IndexF:Plain:color:{row['color']}", key)
    pipe.execute()
    plain_keys = db_keys(r) - popoto_keys
    ratio = _memory(r, popoto_keys) / _memory(r, plain_keys)
    assert ratio <= 1.15, ratio
