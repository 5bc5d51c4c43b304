"""Server-side scripts, loaded once per client and called by SHA.

A script call is one command, so a ``save()`` stays one round trip; if the
server lost its script cache (restart, SCRIPT FLUSH) the script is loaded
again and the call retried.
"""

from __future__ import annotations

import hashlib
from typing import Any

import redis

from popoto.engine.sources import QUERY_LUA
from popoto.engine.write import DELETE_LUA, SAVE_LUA

#: every script defined anywhere; reloaded together when a server lost its cache
REGISTRY: list[LuaScript] = []


class LuaScript:
    def __init__(self, name: str, body: str) -> None:
        self.name = name
        self.body = body
        self.sha = hashlib.sha1(body.encode()).hexdigest()
        self._loaded: set[int] = set()
        REGISTRY.append(self)

    def ensure_loaded(self, client: Any) -> None:
        pool = getattr(client, "connection_pool", None)
        ident = id(pool)
        if ident not in self._loaded:
            client.script_load(self.body)
            self._loaded.add(ident)

    def __call__(self, client: redis.Redis, keys: list[str], args: list[Any]) -> Any:
        """Run the script now on ``client`` (reloading it once if the server forgot it)."""
        self.ensure_loaded(client)
        try:
            return client.evalsha(self.sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            client.script_load(self.body)
            return client.evalsha(self.sha, len(keys), *keys, *args)

    def command(self, keys: list[str], args: list[Any]) -> tuple[str, tuple[Any, ...]]:
        """This script's call as a command for :mod:`popoto.engine.io` step generators."""
        return ("evalsha", (self.sha, len(keys), *keys, *args))

    def queue_eval(self, pipe: Any, keys: list[str], args: list[Any]) -> None:
        """Queue a call on a caller's pipeline (sync or asyncio) as EVAL of the body.

        Nothing needs loading first and a server that lost its script cache
        still runs it, whichever client later executes the pipeline.
        """
        # execute_command: redis-py's cluster pipeline has no eval() of its own
        pipe.execute_command("EVAL", self.body, len(keys), *keys, *args)

    def queue(self, pipe: Any, client: redis.Redis, keys: list[str], args: list[Any]) -> None:
        """Queue a call on ``pipe`` (the script is loaded through ``client`` first)."""
        self.ensure_loaded(client)
        # execute_command: a cluster pipeline routes EVALSHA by its keys but blocks .evalsha()
        pipe.execute_command("EVALSHA", self.sha, len(keys), *keys, *args)

    def forget(self) -> None:
        self._loaded.clear()


SAVE = LuaScript("save", SAVE_LUA)
DELETE = LuaScript("delete", DELETE_LUA)
QUERY = LuaScript("query", QUERY_LUA)
