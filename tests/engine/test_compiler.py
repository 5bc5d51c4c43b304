"""Q trees compiled to index sources and to the QUERY script's program (no server:
defining a model and compiling a query never connects)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from popoto import Field, IndexedField, KeyField, Model, Q, QueryException, SortedField, keys
from popoto.engine.sources import (
    Combine,
    KeyList,
    KeyPattern,
    Program,
    ScoreRange,
    SetSource,
)
from popoto.query.compiler import compile_q, keep_scores, set_score_source


class EngineQItem(Model):
    name = KeyField()
    color = IndexedField(null=True)
    size = SortedField(type=int)
    note = Field(null=True)


NS = EngineQItem._meta.groups[0]
CLASS = keys.class_set_key(NS)
RED = keys.field_index_key("IndexF", NS, "color", "red")
BLUE = keys.field_index_key("IndexF", NS, "color", "blue")
SIZE = keys.field_index_key("SortedF", NS, "size")


def program(q: Q) -> tuple[Program, int]:
    """Emit the compiled source of ``q``; returns the program and the result's KEYS index."""
    compiled = compile_q(EngineQItem, q)
    assert compiled.source is not None
    prog = Program(temp_prefix="T", ns=NS)
    return prog, compiled.source.emit(prog)


def obj(**values) -> SimpleNamespace:
    base = {"name": "a", "color": None, "size": 0, "note": None}
    return SimpleNamespace(**{**base, **values})


def test_exact_on_indexed_field_is_its_index_set_with_no_ops():
    """color='red' reads the index set directly: KEYS=[set], no ops, nothing left for Python."""
    compiled = compile_q(EngineQItem, Q(color="red"))
    assert compiled.source == SetSource(RED)
    assert compiled.residual is None and compiled.exact == {"color": "red"}
    prog, result = program(Q(color="red"))
    assert (prog.keys, prog.ops, result) == ([RED], [], 1)


def test_or_of_indexed_values_is_one_union_op():
    """OR of two index sets: one OR op over both keys into a temp, unweighted."""
    prog, result = program(Q(color="red") | Q(color="blue"))
    assert prog.keys == [RED, BLUE, "T:1"]
    assert prog.ops == [["OR", 3, 2, 1, 2, 0, 0]]
    assert result == 3


def test_not_is_a_difference_against_the_class_set():
    """~Q(color='red') -> NOT(class set, index) into a temp."""
    prog, result = program(~Q(color="red"))
    assert prog.keys == [CLASS, RED, "T:1"]
    assert prog.ops == [["NOT", 3, 1, 2]]
    assert result == 3


def test_range_on_sorted_field_is_a_score_range():
    """size__gte=3 -> ZR (ZRANGESTORE BYSCORE) of [3, +inf]; size__lt=5 -> (-inf, 5)."""
    assert compile_q(EngineQItem, Q(size__gte=3)).source == ScoreRange(SIZE, "3.0", "+inf")
    assert compile_q(EngineQItem, Q(size__lt=5)).source == ScoreRange(SIZE, "-inf", "(5.0")
    prog, result = program(Q(size__gte=3))
    assert prog.keys == ["T:1", SIZE]
    assert prog.ops == [["ZR", 1, 2, "3.0", "+inf"]]
    assert result == 1


def test_and_of_index_and_range_is_driven_by_the_smallest_input():
    """AND(index, range): one ANDS op; the range is never materialised (Redis walks the
    smaller input and tests the other)."""
    prog, result = program(Q(color="red", size__lt=5))
    assert prog.keys == [RED, SIZE, "T:1"]
    assert prog.ops == [["ANDS", 3, 2, 0, "K", 1, "", "", "R", 2, "-inf", "(5.0"]]
    assert result == 3


def test_two_sided_range_on_one_field_is_one_interval():
    """gte + lte (and gt/lt, between, nested filters) on one sorted field merge into one
    ScoreRange: read directly, no temporary, no intersection."""
    for q in (Q(size__gte=2, size__lte=5), Q(size__gte=2) & Q(size__lte=5),
              Q(size__between=(2, 5)) & Q(size__gte=1)):
        assert compile_q(EngineQItem, q).source == ScoreRange(SIZE, "2.0", "5.0")
    assert compile_q(EngineQItem, Q(size__gt=2, size__lt=5, size__gte=2)).source == \
        ScoreRange(SIZE, "(2.0", "(5.0")
    assert compile_q(EngineQItem, Q(size__gt=5, size__lt=2)).source == \
        ScoreRange(SIZE, "(5.0", "(2.0")  # empty: Redis answers nothing


def test_keep_scores_keeps_the_scored_part_of_an_and():
    """keep_scores on AND(index, range) scores by the range (its scores order the result)."""
    source = keep_scores(compile_q(EngineQItem, Q(color="red", size__lt=5)).source)
    assert source.score_from == 1 and source.scored
    prog = Program(temp_prefix="T", ns=NS)
    source.emit(prog)
    assert prog.ops[-1][:4] == ["ANDS", 3, 2, 2]


def test_ordering_by_a_ranged_field_reuses_the_range():
    """order_by on the field a range already reads: the range carries the scores, the
    whole sorted set is not added to the AND."""
    ranged = compile_q(EngineQItem, Q(color="red", size__lt=5)).source
    ordered = set_score_source(ranged, SetSource(SIZE))
    assert ordered == Combine("AND", [SetSource(RED), ScoreRange(SIZE, "-inf", "(5.0")],
                              score_from=1)
    alone = ScoreRange(SIZE, "1.0", "2.0")
    assert set_score_source(alone, SetSource(SIZE)) is alone


def test_set_score_source_appends_the_scored_set():
    """Ordering by a sorted field ANDs its zset in and keeps its scores."""
    ordered = set_score_source(SetSource(RED), SetSource(SIZE))
    assert ordered == Combine("AND", [SetSource(RED), SetSource(SIZE)], score_from=1)
    assert set_score_source(None, SetSource(SIZE)) == SetSource(SIZE)


def test_the_same_key_is_passed_once():
    """A key used twice in one program gets one KEYS slot."""
    prog, _result = program(Q(color="red") | (Q(color="red") & Q(size__gte=1)))
    assert prog.keys.count(RED) == 1


def test_key_field_exact_is_a_key_list_and_prefix_is_a_pattern():
    """name='a' needs no index (the key is known); name__startswith scans the class set."""
    assert compile_q(EngineQItem, Q(name="a")).source == KeyList([f"{NS}:a"])
    prog, _result = program(Q(name="a"))
    assert prog.ops == [["KEYS", 1, 1, f"{NS}:a"]]
    source = compile_q(EngineQItem, Q(name__startswith="a")).source
    assert source == KeyPattern(CLASS, f"{NS}:a*")


def test_key_list_in_a_tag_group_keeps_only_its_own_keys():
    """In a tag group ({...}) a key list emits only the members of that group."""
    prog = Program(temp_prefix="T", ns="{M#1}")
    KeyList(["{M#1}:a", "{M#2}:b", "{M#1}:c"]).emit(prog)
    assert prog.ops == [["KEYS", 1, 2, "{M#1}:a", "{M#1}:c"]]


def test_plain_field_condition_is_a_python_residual():
    """note='x' has no index: no source, the residual predicate does the filtering."""
    compiled = compile_q(EngineQItem, Q(note="x"))
    assert compiled.source is None
    assert compiled.residual(obj(note="x")) and not compiled.residual(obj(note="y"))


def test_and_with_a_plain_condition_keeps_the_index_and_a_residual():
    """AND(indexed, plain): Redis narrows by the index, Python checks only the plain part."""
    compiled = compile_q(EngineQItem, Q(color="red", note="x"))
    assert compiled.source == SetSource(RED)
    assert compiled.residual(obj(color="blue", note="x"))  # the index already checked color
    assert not compiled.residual(obj(color="red", note="y"))
    assert compiled.full(obj(color="red", note="x")) and not compiled.full(obj(note="x"))


def test_or_with_a_plain_condition_runs_in_python():
    """OR(indexed, plain): Redis cannot answer it, the whole node is a Python predicate."""
    compiled = compile_q(EngineQItem, Q(color="red") | Q(note="x"))
    assert compiled.source is None
    check = compiled.residual
    assert check(obj(color="red")) and check(obj(note="x")) and not check(obj(color="blue"))


def test_negated_plain_condition_is_a_negated_predicate():
    """~Q(note='x') has no source; its predicate is the negation."""
    compiled = compile_q(EngineQItem, ~Q(note="x"))
    assert compiled.source is None
    assert compiled.residual(obj(note="y")) and not compiled.residual(obj(note="x"))


def test_unknown_field_names_close_matches():
    """A misspelt field raises QueryException with a suggestion."""
    with pytest.raises(QueryException, match="Did you mean 'color'"):
        compile_q(EngineQItem, Q(colour="red"))


def test_retarget_moves_a_source_to_another_tag_group():
    """retarget() renames the group in every key of a source tree (key lists excepted)."""
    source = Combine("AND", [SetSource("$IndexF:{M#0}:color:red"),
                             ScoreRange("$SortedF:{M#0}:size", "1", "2"),
                             KeyList(["{M#0}:a"])])
    moved = source.retarget("{M#0}", "{M#5}")
    assert moved.parts[0] == SetSource("$IndexF:{M#5}:color:red")
    assert moved.parts[1] == ScoreRange("$SortedF:{M#5}:size", "1", "2")
    assert moved.parts[2] is source.parts[2]
    assert source.parts[0].key == "$IndexF:{M#0}:color:red"  # the original is unchanged
