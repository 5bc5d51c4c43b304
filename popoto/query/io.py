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

from collections.abc import Awaitable, Callable, Generator
from typing import Any, TypeVar

import redis

from ..redis_db import get_async_client, get_client

T = TypeVar("T")
Command = tuple[str, tuple[Any, ...]]
Steps = Generator[list[Command], list[Any], T]


def _scripts() -> tuple[Any, ...]:
    from ..models.scripts import ALL_SCRIPTS

    return ALL_SCRIPTS


def _queue(pipe: Any, commands: list[Command]) -> None:
    """Queue commands, looking each method up once per run (large reads repeat one)."""
    methods: dict[str, Any] = {}
    for name, args in commands:
        method = methods.get(name)
        if method is None:
            method = methods[name] = (_evalsha(pipe) if name == "evalsha"
                                      else getattr(pipe, name))
        method(*args)


def _evalsha(pipe: Any) -> Any:
    """EVALSHA through execute_command: a cluster pipeline blocks ``.evalsha()`` but
    routes the raw command by its keys like any other."""
    execute_command = pipe.execute_command

    def call(*args: Any) -> Any:
        return execute_command("EVALSHA", *args)

    return call


def _send(client: Any, commands: list[Command]) -> list[Any]:
    if len(commands) == 1:  # one command: no pipeline object to build
        name, args = commands[0]
        return [getattr(client, name)(*args)]
    pipe = client.pipeline(transaction=False)
    _queue(pipe, commands)
    return pipe.execute()


def execute(client: Any, commands: list[Command]) -> list[Any]:
    """One round trip on a synchronous client (reloading scripts once if needed)."""
    try:
        return _send(client, commands)
    except redis.exceptions.NoScriptError:
        for script in _scripts():
            client.script_load(script.body)
        return _send(client, commands)


def run(steps: Steps[T], send: Callable[[Any, list[Command]], list[Any]] = execute) -> T:
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
        return done.value


async def _send_async(client: Any, commands: list[Command]) -> list[Any]:
    if len(commands) == 1:
        name, args = commands[0]
        return [await getattr(client, name)(*args)]
    pipe = client.pipeline(transaction=False)
    _queue(pipe, commands)
    return await pipe.execute()


async def execute_async(client: Any, commands: list[Command]) -> list[Any]:
    """One round trip on an asyncio client (reloading scripts once if needed)."""
    try:
        return await _send_async(client, commands)
    except redis.exceptions.NoScriptError:
        for script in _scripts():
            await client.script_load(script.body)
        return await _send_async(client, commands)


async def run_async(steps: Steps[T],
                    send: Callable[[Any, list[Command]], Awaitable[list[Any]]] | None = None
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
        return done.value
