"""Server-side scripts, loaded once per client and called by SHA.

A script call is one command, so a ``save()`` stays one round trip; if the
server lost its script cache (restart, SCRIPT FLUSH) the script is loaded
again and the call retried.

The Lua of script ``<name>`` is the file ``popoto/lua/<name>.lua`` (package
data). The body sent to Redis is :func:`popoto.protocol.lua_prelude` (a
``local`` per shared constant: ``KIND_SET``, ``ERR_UNIQUE``...), then the
shared fragments the file names on its first line, in that order, e.g.
``--! include: remove_entries run_commands`` (each ``popoto/lua/<fragment>.lua``,
which includes nothing itself), then the file.
"""

from __future__ import annotations

import hashlib
from importlib import resources
from typing import TYPE_CHECKING, Any, Protocol, cast

import redis

from popoto.protocol import lua_prelude

if TYPE_CHECKING:
    from popoto.redis_db import AsyncClient, Client


class CommandQueue(Protocol):
    """A redis-py pipeline, sync or asyncio, plain or cluster: raw commands are queued
    with ``execute_command`` (the commands of a pipeline are looked up by name)."""

    def execute_command(self, *args: Any, **kwargs: Any) -> Any: ...


class Scripting(Protocol):
    """The script commands of a synchronous client. ``redis.Redis`` and ``RedisCluster``
    both have them; redis-py's stubs leave them untyped (and out of ``RedisCluster``)."""

    def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> Any: ...

    def script_load(self, script: str) -> str: ...


class AsyncScripting(Protocol):
    """The script commands of an asyncio client (as :class:`Scripting`)."""

    async def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> Any: ...

    async def script_load(self, script: str) -> str: ...


def load_script(client: Client, body: str) -> None:
    """SCRIPT LOAD ``body`` (on every primary of a cluster)."""
    cast(Scripting, client).script_load(body)


async def load_script_async(client: AsyncClient, body: str) -> None:
    """SCRIPT LOAD ``body`` with an asyncio client (on every primary of a cluster)."""
    await cast(AsyncScripting, client).script_load(body)


#: every script defined anywhere; reloaded together when a server lost its cache
REGISTRY: list[LuaScript] = []

#: first line of a script file that names the fragments prepended to it
INCLUDE_DIRECTIVE = "--! include:"


def lua_source(name: str) -> str:
    """The text of ``popoto/lua/<name>.lua``."""
    text = resources.files("popoto").joinpath("lua").joinpath(f"{name}.lua").read_text(
        encoding="utf-8")
    return text if text.endswith("\n") else text + "\n"


def includes_of(source: str) -> list[str]:
    """The fragments a script's first line includes (``--! include: a b``), in order."""
    first = source.split("\n", 1)[0]
    if not first.startswith(INCLUDE_DIRECTIVE):
        return []
    return first[len(INCLUDE_DIRECTIVE):].replace(",", " ").split()


def script_body(name: str) -> str:
    """The body of script ``name`` as Redis runs it: prelude, includes, the file."""
    source = lua_source(name)
    parts = [lua_prelude()]
    for fragment in includes_of(source):
        text = lua_source(fragment)
        if includes_of(text):
            raise ValueError(f"popoto/lua/{fragment}.lua: a fragment cannot include others")
        parts.append(text)
    parts.append(source)
    return "".join(parts)


class LuaScript:
    """A server-side script: ``LuaScript("save")`` runs ``script_body("save")`` (from
    ``popoto/lua/save.lua``); a ``body`` given is used as it is."""

    def __init__(self, name: str, body: str | None = None) -> None:
        self.name = name
        self.body = script_body(name) if body is None else body
        self.sha = hashlib.sha1(self.body.encode()).hexdigest()
        self._loaded: set[int] = set()
        REGISTRY.append(self)

    def ensure_loaded(self, client: Client) -> None:
        pool = getattr(client, "connection_pool", None)
        ident = id(pool)
        if ident not in self._loaded:
            load_script(client, self.body)
            self._loaded.add(ident)

    def __call__(self, client: Client, keys: list[str], args: list[Any]) -> Any:
        """Run the script now on ``client`` (reloading it once if the server forgot it)."""
        self.ensure_loaded(client)
        scripting = cast(Scripting, client)
        try:
            return scripting.evalsha(self.sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            scripting.script_load(self.body)
            return scripting.evalsha(self.sha, len(keys), *keys, *args)

    def command(self, keys: list[str], args: list[Any]) -> tuple[str, tuple[Any, ...]]:
        """This script's call as a command for :mod:`popoto.engine.io` step generators."""
        return ("evalsha", (self.sha, len(keys), *keys, *args))

    def queue_eval(self, pipe: CommandQueue, keys: list[str], args: list[Any]) -> None:
        """Queue a call on a caller's pipeline (sync or asyncio) as EVAL of the body.

        Nothing needs loading first and a server that lost its script cache
        still runs it, whichever client later executes the pipeline.
        """
        # execute_command: redis-py's cluster pipeline has no eval() of its own
        pipe.execute_command("EVAL", self.body, len(keys), *keys, *args)

    def queue(self, pipe: CommandQueue, client: Client, keys: list[str], args: list[Any]) -> None:
        """Queue a call on ``pipe`` (the script is loaded through ``client`` first)."""
        self.ensure_loaded(client)
        # execute_command: a cluster pipeline routes EVALSHA by its keys but blocks .evalsha()
        pipe.execute_command("EVALSHA", self.sha, len(keys), *keys, *args)

    def forget(self) -> None:
        self._loaded.clear()


SAVE = LuaScript("save")
DELETE = LuaScript("delete")
QUERY = LuaScript("query")
PAGE = LuaScript("page")
