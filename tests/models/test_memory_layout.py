"""Storage compactness: @idx records stay short so small hashes keep Redis's compact encoding."""

from popoto import Field, IndexedField, IntField, Model, SortedField


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
