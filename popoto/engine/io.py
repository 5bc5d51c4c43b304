"""Run I/O-free query steps on redis-py or redis.asyncio.

A *step generator* holds the whole control flow of a read: it yields a list
of commands — ``(redis-py method name, positional args)`` — to send in one
pipelined round trip, receives their replies, and finally returns its result.
:func:`run` drives it with the synchronous client and :func:`run_async` with
the asyncio client, so every query exists once and executes two ways.

Script calls are plain ``evalsha`` commands; if the server has lost its script
cache the scripts are loaded again and the round trip is repeated (safe: a
NOSCRIPT reply means no script ran).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import redis

from popoto.engine.scripts import REGISTRY, CommandQueue, LuaScript, load_script, load_script_async
from popoto.redis_db import get_async_client, get_client

if TYPE_CHECKING:
    from popoto.redis_db import AsyncClient, Client

T = TypeVar("T")
S = TypeVar("S")
Command = tuple[str, tuple[Any, ...]]
#: a step generator: yields the commands of a round trip, is sent their replies, returns T
Steps = Generator[list[Command], list[Any], T]


def chunks(items: Sequence[S], size: int) -> Iterator[Sequence[S]]:
    """Consecutive slices of at most ``size`` items."""
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _queue(pipe: CommandQueue, commands: list[Command]) -> None:
    """Queue commands, looking each method up once per run (large reads repeat one)."""
    methods: dict[str, Callable[..., Any]] = {}
    for name, args in commands:
        method = methods.get(name)
        if method is None:
            method = methods[name] = (_evalsha(pipe) if name == "evalsha"
                                      else getattr(pipe, name))
        method(*args)


def _evalsha(pipe: CommandQueue) -> Callable[..., Any]:
    """EVALSHA through execute_command: a cluster pipeline blocks ``.evalsha()`` but
    routes the raw command by its keys like any other."""
    execute_command = pipe.execute_command

    def call(*args: Any) -> Any:
        return execute_command("EVALSHA", *args)

    return call


def _send(client: Client, commands: list[Command]) -> list[Any]:
    if len(commands) == 1:  # one command: no pipeline object to build
        name, args = commands[0]
        return [getattr(client, name)(*args)]
    pipe = client.pipeline(transaction=False)
    _queue(pipe, commands)
    return pipe.execute()


def execute(client: Client, commands: list[Command]) -> list[Any]:
    """One round trip on a synchronous client (reloading scripts once if needed)."""
    try:
        return _send(client, commands)
    except redis.exceptions.NoScriptError:
        for script in REGISTRY:
            load_script(client, script.body)
        return _send(client, commands)


def run(steps: Steps[T], send: Callable[[Client, list[Command]], list[Any]] = execute) -> T:
    """Drive a step generator with the synchronous client.

    A Redis error of a round trip is thrown into the generator, which may
    translate it (e.g. a script's error reply into UniqueViolation). ``send``
    performs one round trip (bulk writes pass one that keeps error replies inline).
    """
    client = get_client()
    try:
        commands = next(steps)
        while True:
            try:
                replies = send(client, commands)
            except redis.exceptions.RedisError as exc:
                commands = steps.throw(exc)
                continue
            commands = steps.send(replies)
    except StopIteration as done:
        result: T = done.value  # what the generator returned
        return result


async def _send_async(client: AsyncClient, commands: list[Command]) -> list[Any]:
    if len(commands) == 1:
        name, args = commands[0]
        return [await getattr(client, name)(*args)]
    pipe = client.pipeline(transaction=False)
    _queue(pipe, commands)
    return await pipe.execute()


async def execute_async(client: AsyncClient, commands: list[Command]) -> list[Any]:
    """One round trip on an asyncio client (reloading scripts once if needed)."""
    try:
        return await _send_async(client, commands)
    except redis.exceptions.NoScriptError:
        for script in REGISTRY:
            await load_script_async(client, script.body)
        return await _send_async(client, commands)


async def run_async(steps: Steps[T],
                    send: Callable[[AsyncClient, list[Command]], Awaitable[list[Any]]] | None = None
                    ) -> T:
    """Drive a step generator with the event loop's asyncio client (``send``: as in run)."""
    client = get_async_client()
    send = send or execute_async
    try:
        commands = next(steps)
        while True:
            try:
                replies = await send(client, commands)
            except redis.exceptions.RedisError as exc:
                commands = steps.throw(exc)
                continue
            commands = steps.send(replies)
    except StopIteration as done:
        result: T = done.value  # what the generator returned
        return result


# --- round trips whose error replies stay inline (bulk writes) -------------------

def send_inline(client: Client, commands: list[Command]) -> list[Any]:
    """One non-transactional pipeline; replies in order, error replies inline.

    If the server lost its script cache, the script calls that got NOSCRIPT ran
    nowhere: they are sent once more after loading their scripts.
    """
    pipe = client.pipeline(transaction=False)
    _queue(pipe, commands)
    replies = pipe.execute(raise_on_error=False)
    lost = [i for i, r in enumerate(replies) if isinstance(r, redis.exceptions.NoScriptError)]
    if lost:
        for script in lost_scripts(commands, lost):
            script.forget()
            load_script(client, script.body)
        pipe = client.pipeline(transaction=False)
        _queue(pipe, [commands[i] for i in lost])
        for i, reply in zip(lost, pipe.execute(raise_on_error=False)):
            replies[i] = reply
    return replies


def lost_scripts(commands: Sequence[Command], lost: Sequence[int]) -> list[LuaScript]:
    """The scripts of the ``lost`` script calls among ``commands``."""
    by_sha = {s.sha: s for s in REGISTRY}
    return [by_sha[sha] for sha in {commands[i][1][0] for i in lost} if sha in by_sha]


def run_inline(steps: Steps[T]) -> T:
    """Drive ``steps`` with the synchronous client; each round trip is :func:`send_inline`.

    A failed round trip (e.g. a lost connection) is thrown into the generator.
    """
    return run(steps, send_inline)


async def send_inline_async(client: AsyncClient, commands: list[Command]) -> list[Any]:
    """Async twin of :func:`send_inline` (one pipeline, errors inline)."""
    async def send(batch: list[Command]) -> list[Any]:
        pipe = client.pipeline(transaction=False)
        _queue(pipe, batch)
        return await pipe.execute(raise_on_error=False)

    replies = await send(commands)
    lost = [i for i, r in enumerate(replies) if isinstance(r, redis.exceptions.NoScriptError)]
    if lost:
        for script in lost_scripts(commands, lost):
            await load_script_async(client, script.body)
        for i, reply in zip(lost, await send([commands[i] for i in lost])):
            replies[i] = reply
    return replies


async def run_inline_async(steps: Steps[T]) -> T:
    """Async twin of :func:`run_inline`."""
    return await run_async(steps, send_inline_async)


def lockstep(gens: Sequence[Steps[Any]]) -> Steps[list[Any]]:
    """Run step generators side by side: every round trip carries the next step of
    each generator still running, so N writes of k phases take k round trips.

    A generator receives its own replies (or has the first error among them
    thrown in, as :func:`popoto.engine.io.run` does). Returns, in order, what each
    generator returned or the exception it raised.
    """
    results: list[Any] = [None] * len(gens)
    waiting: dict[int, list[Command]] = {}

    def advance(i: int, reply: Any, error: BaseException | None) -> None:
        gen = gens[i]
        try:
            commands = gen.throw(error) if error is not None else gen.send(reply)
            while not commands:
                commands = gen.send([])
            waiting[i] = commands
        except StopIteration as done:
            results[i] = done.value
        except Exception as exc:  # the generator's own outcome, e.g. a UniqueViolation
            results[i] = exc

    for i in range(len(gens)):
        advance(i, None, None)
    while waiting:
        batch = list(waiting.items())
        waiting.clear()
        try:
            replies = yield [c for _i, commands in batch for c in commands]
        except redis.exceptions.RedisError as exc:  # the whole round trip failed
            for i, _commands in batch:
                advance(i, None, exc)
            continue
        pos = 0
        for i, commands in batch:
            part = replies[pos:pos + len(commands)]
            pos += len(commands)
            advance(i, part, next((r for r in part if isinstance(r, Exception)), None))
    return results
