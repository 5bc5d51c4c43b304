"""Connection configuration.

Nothing connects at import time. The client is created on first use from
``popoto.configure(url=...)`` or, failing that, the ``REDIS_URL`` environment
variable (default ``redis://127.0.0.1:6379/0``).

Cluster mode: ``configure(url, cluster=True)``, a ``?cluster=true`` query in the
URL, or a ``REDIS_CLUSTER_URL`` environment variable (used before ``REDIS_URL``)
makes the clients ``redis.cluster.RedisCluster`` and its asyncio twin. Models
then spread over hash-tag groups (see ``popoto.keys.group_tag``).

``POPOTO_REDIS_DB`` is a lazy proxy to the synchronous client (the name the
reference design uses): it connects on first use and always forwards to the client
of the current ``configure()``. ``get_client()`` and ``get_async_client()`` return
the real clients; ``get_redis()`` / ``get_async_redis_db()`` are the same under
Popoto 1.x's names, and ``async_scan_keys()`` is its async key scan.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import threading
import weakref
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeAlias, TypedDict, TypeVar, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster

from popoto.exceptions import ConnectionConfigError

if TYPE_CHECKING:
    from redis.asyncio.connection import AbstractConnection
    from redis.commands.core import AsyncScanCommands

#: the synchronous client: ``redis.Redis``, or ``redis.cluster.RedisCluster`` in cluster mode
Client: TypeAlias = "redis.Redis[bytes] | redis.cluster.RedisCluster[bytes]"
#: the asyncio client: ``redis.asyncio.Redis``, or its ``RedisCluster`` in cluster mode
AsyncClient: TypeAlias = "redis.asyncio.Redis[bytes] | redis.asyncio.cluster.RedisCluster[bytes]"

_T = TypeVar("_T")

ENCODING = "utf-8"
DEFAULT_URL = "redis://127.0.0.1:6379/0"
_SCHEMES = ("redis", "rediss", "unix")


class _Config(TypedDict):
    url: str | None
    kwargs: dict[str, Any]  # extra redis-py client keyword arguments
    cluster: bool | None
    generation: int


_lock = threading.Lock()
_config: _Config = {"url": None, "kwargs": {}, "cluster": None, "generation": 0}
_TRUE = ("1", "true", "yes", "on")
_client: Client | None = None
_async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncClient] = (
    weakref.WeakKeyDictionary())
_pid: int | None = None


def mask_url(url: str) -> str:
    """Return ``url`` with any password replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def _validate(url: str) -> str:
    parts = urlsplit(url)
    scheme = parts.scheme
    if scheme not in _SCHEMES:
        raise ConnectionConfigError(
            f"Unsupported Redis URL {mask_url(url)!r}: scheme must be one of {_SCHEMES}"
        )
    # the database: the path of redis:// and rediss:// URLs, a ``db`` query parameter of
    # any (redis-py would silently use db 0 for a path that is not a number)
    dbs = [v for k, v in parse_qsl(parts.query, keep_blank_values=True) if k == "db"]
    if scheme != "unix" and parts.path not in ("", "/"):
        dbs.append(parts.path[1:])
    for db in dbs:
        if not (db.isascii() and db.isdigit()):
            raise ConnectionConfigError(
                f"Bad Redis URL {mask_url(url)!r}: the database must be a whole number, "
                f"got {db!r}"
            )
    return url


def configure(url: str | None = None, cluster: bool | None = None, **redis_kwargs: Any) -> None:
    """Set the Redis URL (and extra ``redis.Redis`` keyword arguments).

    ``cluster=True`` (or ``?cluster=true`` in the URL) talks to a Redis Cluster.
    Does not connect; the next command does. Existing clients are closed.
    """
    global _client
    if url is not None:
        _validate(url)
    with _lock:
        _config["url"] = url
        _config["cluster"] = cluster
        _config["kwargs"] = dict(redis_kwargs)
        _config["generation"] += 1
        old, _client = _client, None
        _async_clients.clear()
    if old is not None:
        old.close()


def _split_cluster_flag(url: str) -> tuple[str, bool]:
    """Remove a ``cluster=`` query parameter from ``url``; return it and whether it was true."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query)
    flag = [v for k, v in query if k == "cluster"]
    if not flag:
        return url, False
    rest = urlencode([(k, v) for k, v in query if k != "cluster"])
    return urlunsplit(parts._replace(query=rest)), flag[-1].lower() in _TRUE


def _resolve() -> tuple[str, bool]:
    """(URL without the cluster flag, cluster mode) from configure() and the environment."""
    url = _config["url"]
    cluster = _config["cluster"]
    if url is None and cluster is not False and os.environ.get("REDIS_CLUSTER_URL"):
        url, cluster = os.environ["REDIS_CLUSTER_URL"], True
    url = _validate(url or os.environ.get("REDIS_URL") or DEFAULT_URL)
    url, flagged = _split_cluster_flag(url)
    return url, bool(cluster) or flagged


def current_url() -> str:
    """The URL the client uses (configured, else ``REDIS_CLUSTER_URL``/``REDIS_URL``)."""
    return _resolve()[0]


def is_cluster() -> bool:
    """True when Popoto talks to a Redis Cluster."""
    return _resolve()[1]


def generation() -> int:
    """Changes on every ``configure()``: caches derived from the connection check it."""
    return _config["generation"]


def _check(client: Client, url: str) -> None:
    try:
        client.ping()
    except redis.exceptions.AuthenticationError as exc:
        raise ConnectionConfigError(
            f"Redis at {mask_url(url)} refused the credentials: {exc}"
        ) from exc
    except (redis.exceptions.ConnectionError, OSError) as exc:
        raise ConnectionConfigError(f"Cannot reach Redis at {mask_url(url)}: {exc}") from exc


def _script_routing() -> dict[str, Any]:
    """Cluster client options routing EVAL/EVALSHA by their KEYS (as redis-py does outside
    pipelines). Without them redis-py's sync cluster pipeline asks the server for the keys
    of every queued script call (COMMAND GETKEYS: one extra round trip per call)."""
    try:
        from redis._parsers.commands import CommandPolicies, RequestPolicy, ResponsePolicy
        from redis.commands.policies import BasePolicyResolver, StaticPolicyResolver
    except ImportError:  # redis-py without command policies: nothing to configure
        return {}
    keyed = CommandPolicies(request_policy=RequestPolicy.DEFAULT_KEYED,
                            response_policy=ResponsePolicy.DEFAULT_KEYED)

    class ScriptPolicies(BasePolicyResolver):
        def __init__(self, fallback: Any = None) -> None:
            super().__init__({"core": {"eval": keyed, "evalsha": keyed}}, fallback)

        def with_fallback(self, fallback: Any) -> Any:
            return ScriptPolicies(fallback)

    return {"policy_resolver": StaticPolicyResolver(fallback=ScriptPolicies())}


if TYPE_CHECKING:  # the stubs' client classes are generic, the runtime ones are not
    _RedisCluster = redis.cluster.RedisCluster[bytes]
    _AsyncRedisCluster = redis.asyncio.cluster.RedisCluster[bytes]
else:
    _RedisCluster = redis.cluster.RedisCluster
    _AsyncRedisCluster = redis.asyncio.cluster.RedisCluster


class _ClusterClient(_RedisCluster):
    """``RedisCluster`` whose pipelines use the client's command policies (redis-py 8
    builds every ``ClusterPipeline`` with the default ones, see ``_script_routing``)."""

    def pipeline(self, transaction: Any = None, shard_hint: Any = None
                 ) -> redis.cluster.ClusterPipeline[bytes]:
        pipe: redis.cluster.ClusterPipeline[bytes] = super().pipeline(transaction, shard_hint)
        resolver = getattr(self, "_policy_resolver", None)
        if resolver is not None and hasattr(pipe, "_policy_resolver"):
            pipe._policy_resolver = resolver
        return pipe


def get_client() -> Client:
    """The process-wide synchronous client; created (and pinged) on first use.

    A ``redis.cluster.RedisCluster`` in cluster mode (same command API).
    """
    global _client, _pid
    client = _client
    if client is not None and _pid == os.getpid():
        return client
    with _lock:
        if _client is None or _pid != os.getpid():
            url, cluster = _resolve()
            if cluster:
                try:
                    client = _ClusterClient.from_url(
                        url, **{**_script_routing(), **_config["kwargs"]})
                except (redis.exceptions.RedisError, OSError) as exc:
                    raise ConnectionConfigError(
                        f"Cannot reach Redis Cluster at {mask_url(url)}: {exc}") from exc
            else:
                client = redis.Redis.from_url(url, **_config["kwargs"])
            _check(client, url)
            _client, _pid = client, os.getpid()
        return _client


def get_async_client() -> AsyncClient:
    """An asyncio client for the running event loop (one per loop).

    Its pool waits for a free connection when many tasks use it at once,
    instead of failing with "Too many connections" (the cluster client's pools
    cannot wait, so it admits at most :data:`ASYNC_CLUSTER_CONCURRENCY` commands
    or pipelines at a time instead).
    """
    loop = asyncio.get_running_loop()
    client = _async_clients.get(loop)
    if client is None:
        url, cluster = _resolve()
        if cluster:
            cluster_client = _AsyncClusterClient.from_url(url, **_config["kwargs"])
            cluster_client._popoto_gate = asyncio.Semaphore(ASYNC_CLUSTER_CONCURRENCY)
            _async_clients[loop] = cluster_client
            return cluster_client
        pool: redis.asyncio.BlockingConnectionPool[AbstractConnection] = \
            redis.asyncio.BlockingConnectionPool.from_url(url, **_config["kwargs"])
        client = redis.asyncio.Redis(connection_pool=pool)
        _async_clients[loop] = client
    return client


#: concurrent commands/pipelines one asyncio cluster client runs (each takes at most one
#: connection per node; redis-py's per-node pools hold 100 and raise when exhausted)
ASYNC_CLUSTER_CONCURRENCY = 64
_in_gate: contextvars.ContextVar[bool] = contextvars.ContextVar("popoto_in_gate", default=False)


class _AsyncClusterClient(_AsyncRedisCluster):
    """An asyncio ``RedisCluster`` whose commands and pipelines wait for a free slot
    (a semaphore) instead of failing with MaxConnectionsError under load."""

    _popoto_gate: asyncio.Semaphore

    async def _gated(self, call: Callable[..., Awaitable[_T]], *args: Any, **kwargs: Any) -> _T:
        if _in_gate.get():  # already admitted (a command issued inside a pipeline run)
            return await call(*args, **kwargs)
        async with self._popoto_gate:
            token = _in_gate.set(True)
            try:
                return await call(*args, **kwargs)
            finally:
                _in_gate.reset(token)

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        return await self._gated(super().execute_command, *args, **kwargs)

    def pipeline(self, transaction: Any = None, shard_hint: Any = None
                 ) -> redis.asyncio.cluster.ClusterPipeline[bytes]:
        pipe = super().pipeline(transaction, shard_hint)
        execute = pipe.execute

        async def gated_execute(*args: Any, **kwargs: Any) -> list[Any]:
            return await self._gated(execute, *args, **kwargs)

        # an instance attribute shadowing the method, on purpose
        pipe.execute = gated_execute  # type: ignore[method-assign]
        return pipe


def get_redis() -> Client:
    """The configured synchronous client (Popoto 1.x's name for :func:`get_client`)."""
    return get_client()


def get_async_redis_db() -> AsyncClient:
    """The asyncio client of the running loop (1.x's name for :func:`get_async_client`)."""
    return get_async_client()


async def async_scan_keys(pattern: str = "*", count: int = 1000) -> list[str]:
    """Every key matching the glob ``pattern``, found with SCAN on the async client
    (never KEYS); in cluster mode every master is scanned. Returns ``str`` keys."""
    # both clients have redis-py's async SCAN commands (the cluster one's stubs lack them)
    client = cast("AsyncScanCommands[bytes]", get_async_client())
    return [k.decode() if isinstance(k, bytes) else k
            async for k in client.scan_iter(match=pattern, count=count)]


class _LazyClient:
    """Forwards attribute access to ``get_client()`` so importing never connects."""

    def __getattr__(self, name: str) -> Any:
        return getattr(get_client(), name)

    def __repr__(self) -> str:
        return f"<POPOTO_REDIS_DB {mask_url(current_url())}>"


POPOTO_REDIS_DB: Any = _LazyClient()
