"""msgpack encoding of field values: exact round trips and clear errors."""

import datetime as dt
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from popoto.encoding import decode_field, pack, unpack
from popoto.exceptions import DecodeError

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False), st.text(), st.binary(),
    st.decimals(allow_nan=False, allow_infinity=False),
    st.dates(), st.times(), st.datetimes(),
    # aware datetimes keep their UTC offset (not a zone name), so draw fixed offsets
    st.datetimes(timezones=st.integers(-1439, 1439).map(
        lambda m: dt.timezone(dt.timedelta(minutes=m)))),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.tuples(inner, inner),
        st.dictionaries(st.text(max_size=5), inner, max_size=4),
        st.frozensets(st.integers(), max_size=4).map(set),
    ),
    max_leaves=10,
)


@given(values)
def test_round_trip_is_exact(value):
    """Every supported value decodes to an equal value of the same type."""
    back = unpack(pack(value))
    assert back == value
    assert type(back) is type(value)


def test_decimal_keeps_every_digit():
    """A Decimal with many significant digits survives unchanged."""
    d = Decimal("12345678901234567890.123456789")
    assert unpack(pack(d)) == d and str(unpack(pack(d))) == str(d)


def test_datetime_naive_and_aware():
    """Naive datetimes stay naive; aware ones keep their offset."""
    naive = dt.datetime(2024, 1, 2, 3, 4, 5, 6)
    aware = dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30)))
    assert unpack(pack(naive)).tzinfo is None
    assert unpack(pack(aware)).utcoffset() == dt.timedelta(hours=5, minutes=30)


def test_none_is_nil_not_string():
    """None is stored as msgpack nil, never as the string 'None'."""
    assert pack(None) == b"\xc0"


def test_corrupt_value_names_key_and_field():
    """An undecodable stored value raises DecodeError naming key and field."""
    with pytest.raises(DecodeError, match=r"'score'.*'User:1'"):
        decode_field(b"\xc1\xff", "User:1", "score")


def test_unencodable_type_is_rejected():
    """A value of an unsupported type raises TypeError naming the type."""
    with pytest.raises(TypeError, match="object"):
        pack(object())


def test_ints_beyond_64_bits_round_trip():
    """Python ints outside msgpack's 64-bit range still round trip exactly."""
    for value in (2**64, -(2**63) - 1, 10**40, [1, 2**100], {"k": {-(10**30)}}):
        assert unpack(pack(value)) == value
