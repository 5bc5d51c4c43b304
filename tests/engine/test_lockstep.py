"""io.lockstep: several step generators share each round trip."""

from __future__ import annotations

import redis

from popoto.engine.io import lockstep
from tests.engine.driver import drive


def counter(name: str, n: int, seen: list):
    """Yields n one-command steps ("get", (name:i)); records its replies; returns name."""
    for i in range(n):
        (reply,) = yield [("get", (f"{name}:{i}",))]
        seen.append((name, reply))
    return name


def test_generators_of_different_lengths_take_the_longest_number_of_round_trips():
    """N generators of lengths 1, 3, 2 run in 3 round trips, the finished ones drop out."""
    seen: list = []
    gens = [counter("a", 1, seen), counter("b", 3, seen), counter("c", 2, seen)]
    run = drive(lockstep(gens), [["a0", "b0", "c0"], ["b1", "c1"], ["b2"]])
    assert run.steps == [
        [("get", ("a:0",)), ("get", ("b:0",)), ("get", ("c:0",))],
        [("get", ("b:1",)), ("get", ("c:1",))],
        [("get", ("b:2",))],
    ]
    assert run.value() == ["a", "b", "c"]


def test_each_generator_receives_its_own_replies():
    """Replies are split back by position: every generator sees exactly its slice."""
    seen: list = []

    def pair(name: str):
        got = yield [("get", (name + "1",)), ("get", (name + "2",))]
        seen.append((name, got))
        return got

    run = drive(lockstep([pair("x"), counter("y", 1, seen), pair("z")]),
                [["x1", "x2", "y0", "z1", "z2"]])
    assert run.value() == [["x1", "x2"], "y", ["z1", "z2"]]
    assert seen == [("x", ["x1", "x2"]), ("y", "y0"), ("z", ["z1", "z2"])]


def test_error_reply_is_thrown_into_its_generator_only():
    """An inline error reply is thrown into the generator that sent the command; the
    generator's exception is its result and the others carry on."""
    seen: list = []
    boom = redis.exceptions.ResponseError("WRONGTYPE")

    def fragile():
        yield [("get", ("f",))]
        yield [("get", ("never",))]

    run = drive(lockstep([counter("a", 2, seen), fragile(), counter("c", 2, seen)]),
                [["a0", boom, "c0"], ["a1", "c1"]])
    assert run.steps[1] == [("get", ("a:1",)), ("get", ("c:1",))]
    results = run.value()
    assert results[0] == "a" and results[2] == "c" and results[1] is boom
    assert seen == [("a", "a0"), ("c", "c0"), ("a", "a1"), ("c", "c1")]


def test_generator_may_catch_a_thrown_error_and_continue():
    """A generator that handles its error reply keeps its place in later round trips."""
    def tolerant():
        try:
            yield [("get", ("k",))]
        except redis.exceptions.ResponseError:
            (again,) = yield [("get", ("k2",))]
            return again
        return "no error"

    run = drive(lockstep([tolerant()]), [[redis.exceptions.ResponseError("x")], ["v"]])
    assert run.value() == ["v"]


def test_failed_round_trip_is_thrown_into_every_waiting_generator():
    """A RedisError of the whole round trip reaches each generator still running."""
    lost = redis.exceptions.ConnectionError("gone")
    seen: list = []
    run = drive(lockstep([counter("a", 1, seen), counter("b", 2, seen)]), [lost])
    assert run.value() == [lost, lost]
    assert seen == []


def test_empty_steps_and_generators_without_steps():
    """A generator yielding [] is advanced at once; one that never yields just returns."""
    def empty_then_one():
        got = yield []
        assert got == []
        (reply,) = yield [("get", ("e",))]
        return reply

    def none():
        return "done"
        yield  # pragma: no cover

    run = drive(lockstep([none(), empty_then_one()]), [["e!"]])
    assert run.steps == [[("get", ("e",))]]
    assert run.value() == ["done", "e!"]


def test_lockstep_of_nothing():
    """lockstep([]) returns [] without a round trip."""
    assert drive(lockstep([]), []).value() == []
