"""Drive a step generator (popoto.engine.io) with canned replies, recording its commands."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

Command = tuple[str, tuple[Any, ...]]


@dataclass
class Run:
    """What a driven generator did: the commands of each step, and how it ended."""

    steps: list[list[Command]] = field(default_factory=list)
    result: Any = None
    error: BaseException | None = None

    def value(self) -> Any:
        """The result; re-raises the generator's exception if it raised one."""
        if self.error is not None:
            raise self.error
        return self.result


def drive(gen: Any, replies_by_step: Sequence[Any]) -> Run:
    """Run ``gen`` to its end, answering step i with ``replies_by_step[i]``.

    A reply entry is either the list of replies of that step (its length must match
    the number of commands yielded) or an exception instance, thrown into the
    generator as a failed round trip. Every canned step must be consumed: a generator
    that wants more steps, or stops early, fails the test. An exception the generator
    raises is kept in ``Run.error`` (so the steps before it can still be inspected).
    """
    run = Run()
    pending = list(replies_by_step)
    try:
        commands = next(gen)
        while True:
            run.steps.append(list(commands))
            assert pending, f"step {len(run.steps)} has no canned replies: {commands}"
            reply = pending.pop(0)
            if isinstance(reply, BaseException):
                commands = gen.throw(reply)
            else:
                assert len(reply) == len(commands), (
                    f"step {len(run.steps)}: {len(commands)} commands, {len(reply)} replies")
                commands = gen.send(list(reply))
    except StopIteration as done:
        run.result = done.value
    except AssertionError:
        raise
    except Exception as exc:  # the generator's own outcome
        run.error = exc
    assert not pending, f"{len(pending)} canned steps left unused after {len(run.steps)} steps"
    return run
