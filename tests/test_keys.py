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
