"""Key building: escaping makes keys unambiguous and glob-safe."""

import fnmatch

from hypothesis import given
from hypothesis import strategies as st

from popoto import keys


@given(st.lists(st.text(), min_size=1, max_size=3))
def test_instance_key_parses_back(values):
    """Every instance key splits back into exactly its key values."""
    key = keys.instance_key("M", values)
    assert keys.split_instance_key(key) == values


@given(st.text())
def test_escaped_segment_has_no_special_characters(value):
    """An escaped segment contains no separator, glob or hash-tag characters."""
    seg = keys.escape(value)
    assert not set(seg) & set(":*?[]{}\\")
    assert keys.unescape(seg) == value


def test_colon_value_never_collides_with_two_key_fields():
    """KeyField value 'a:b' and two key fields 'a', 'b' give different keys."""
    assert keys.instance_key("M", ["a:b"]) != keys.instance_key("M", ["a", "b"])


def test_glob_injection_is_neutralised():
    """A value full of glob characters matches only itself in a MATCH pattern."""
    evil = keys.escape("*?[a-z]")
    pattern = keys.instance_key("M", ["*?[a-z]"])
    assert fnmatch.fnmatchcase(keys.instance_key("M", ["*?[a-z]"]), pattern)
    assert not fnmatch.fnmatchcase(keys.instance_key("M", ["x"]), pattern)
    assert "*" not in evil


def test_plain_values_are_unchanged():
    """Ordinary values appear verbatim: ClassName:v1:v2."""
    assert keys.instance_key("User", ["alice@example.com", 7]) == "User:alice@example.com:7"
    assert keys.class_set_key("User") == "$Class:User"


# --- DB_key: Popoto 1.x's key object -------------------------------------------------

def test_db_key_is_a_str_with_redis_key():
    """DB_key is a str subclass equal to its key; .redis_key is the plain str."""
    key = keys.DB_key("User:alice")
    assert isinstance(key, str) and key == "User:alice" and hash(key) == hash("User:alice")
    assert key.redis_key == "User:alice" and type(key.redis_key) is str
    assert str(key) == "User:alice" and type(str(key)) is str
    assert f"{key}" == "User:alice" and key + ":x" == "User:alice:x"
    assert {key: 1}["User:alice"] == 1


def test_db_key_joins_parts_escaping_user_values():
    """Later parts are escaped key segments; DB_key parts and a first str part stay as is."""
    base = keys.DB_key("$IndexF:Shop:color")
    assert keys.DB_key(base, "a:b*") == "$IndexF:Shop:color:a%3Ab%2A"
    assert keys.DB_key("$Class", keys.DB_key("Shop")) == "$Class:Shop"
    assert keys.DB_key("Shop", ["x:y", 2]) == "Shop:x%3Ay:2"
    assert keys.DB_key(keys.DB_key("Shop:x%3Ay")).segments == ["Shop", "x:y"]


def test_db_key_survives_msgpack_pickle_and_redis(r):
    """A DB_key packs like its str, pickles to an equal DB_key and works as a redis-py key."""
    import pickle

    from popoto.encoding import pack, unpack
    key = keys.DB_key("Note:1")
    assert pack(key) == pack("Note:1") and unpack(pack(key)) == "Note:1"
    copy = pickle.loads(pickle.dumps(key))
    assert copy == key and isinstance(copy, keys.DB_key)
    r.set(key, "v")
    assert r.get("Note:1") == b"v"
