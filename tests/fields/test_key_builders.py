"""Popoto 1.x's key spellings: key objects and the fields' key builders give our real keys."""

import pytest

from popoto import (
    CyclicDecayField,
    DB_key,
    Field,
    GeoField,
    IndexedField,
    IntField,
    KeyField,
    Model,
    ModelException,
    Relationship,
    SortedField,
    UnknownFieldError,
)
from popoto.fields.decaying import TemporalPeriod


class KbShop(Model):
    name = KeyField()
    color = IndexedField(null=True)
    price = SortedField(type=int, null=True)
    region = KeyField(default="eu")
    by_region = SortedField(type=int, null=True, partition_by="region")
    place = GeoField(null=True)
    code = Field(type=str, null=True, unique=True)


class KbHabit(Model):
    name = KeyField()
    urge = CyclicDecayField(cycles=[(TemporalPeriod.DAY, 2.0)], pressure_rate=0.5)


class KbVisit(Model):
    shop = Relationship(KbShop, null=True)
    n = IntField(default=0)


def _saved_shop():
    return KbShop.create(name="a:b", color="red", price=5, by_region=7, place=(1.0, 2.0),
                       code="X1")


def test_instance_db_key_is_a_key_object(r):
    """instance.db_key is a DB_key equal to the stored key; .redis_key is that key as str."""
    shop = _saved_shop()
    key = shop.db_key
    assert isinstance(key, DB_key) and isinstance(key, str)
    assert key == shop.pk and key.redis_key == shop.pk and type(key.redis_key) is str
    assert r.exists(key.redis_key) and r.exists(key)
    assert KbShop.query.get(redis_key=key) == shop


@pytest.mark.standalone_only
def test_meta_class_keys_are_key_objects(r):
    """_meta.db_class_key / db_class_set_key are DB_keys of the namespace and class set."""
    shop = _saved_shop()
    meta = KbShop._meta
    assert isinstance(meta.db_class_key, DB_key) and meta.db_class_key.redis_key == "KbShop"
    assert isinstance(meta.db_class_set_key, DB_key)
    assert meta.db_class_set_key.redis_key == "$Class:KbShop"
    assert r.sismember(meta.db_class_set_key.redis_key, shop.pk)


@pytest.mark.standalone_only
def test_special_use_keys_are_the_index_keys_written(r):
    """get_special_use_field_db_key(model, name) (class or field) names each field's index."""
    shop = _saved_shop()
    fields = KbShop._meta.fields
    price = fields["price"].get_special_use_field_db_key(KbShop, "price")
    assert isinstance(price, DB_key) and price == "$SortedF:KbShop:price"
    assert r.zscore(price.redis_key, shop.pk) == 5
    color = IndexedField.get_special_use_field_db_key(KbShop, "color")
    assert color == "$IndexF:KbShop:color" and r.sismember(DB_key(color, "red"), shop.pk)
    assert Field.get_special_use_field_db_key(shop, "code") == "$UniqueF:KbShop:code"
    assert r.hexists(Field.get_special_use_field_db_key(KbShop, "code"),
                     KbShop._meta.fields["code"].unique_token("X1"))
    assert KeyField.get_special_use_field_db_key(KbShop, "name") == "$KeyF:KbShop:name"
    visit = KbVisit.create(shop=shop)
    rel = Relationship.get_special_use_field_db_key(KbVisit, "shop")
    assert r.sismember(DB_key(rel, shop.pk), visit.pk)


def test_sorted_and_geo_builders_name_the_keys_written(r):
    """get_sortedset_db_key / get_partitioned_sortedset_db_key / get_geo_db_key are real."""
    shop = _saved_shop()
    assert r.zscore(SortedField.get_sortedset_db_key(shop, "price"), shop.pk) == 5
    part = SortedField.get_partitioned_sortedset_db_key(shop, "by_region")
    assert isinstance(part, DB_key) and part.redis_key.endswith(":by_region:eu")
    assert r.zscore(part.redis_key, shop.pk) == 7
    geo = GeoField.get_geo_db_key(shop, "place")
    assert r.geopos(geo.redis_key, shop.pk)[0] is not None


def test_cycle_and_pressure_hash_builders_name_the_state_hashes(r):
    """get_cycles_hash_key / get_pressure_hash_key name the hashes holding a member's state."""
    habit = KbHabit.create(name="run")
    cycles = CyclicDecayField.get_cycles_hash_key(habit, "urge")
    pressure = KbHabit._meta.fields["urge"].get_pressure_hash_key(habit, "urge")
    assert isinstance(cycles, DB_key) and isinstance(pressure, DB_key)
    assert r.hexists(cycles.redis_key, habit.pk) and r.hexists(pressure.redis_key, habit.pk)


def test_key_builders_refuse_unknown_fields(r):
    """A builder given a name that is no field raises UnknownFieldError (an AttributeError)."""
    with pytest.raises(UnknownFieldError, match="KbShop has no field 'nope'"):
        SortedField.get_sortedset_db_key(KbShop, "nope")
    with pytest.raises(AttributeError):
        GeoField.get_geo_db_key(KbShop, "nope")


@pytest.mark.standalone_only
def test_sharded_model_class_keys_need_a_group(r):
    """A sharded model's class-level key names one group: ModelException says so."""

    class Sharded(Model):
        name = KeyField()
        score = SortedField(null=True)

        class Meta:
            shards = 4

    with pytest.raises(ModelException, match="sharded"):
        _ = Sharded._meta.db_class_key
    obj = Sharded.create(name="x", score=1.0)
    assert r.zscore(SortedField.get_sortedset_db_key(obj, "score"), obj.pk) == 1.0
