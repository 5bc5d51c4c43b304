"""Shared pytest fixtures: one real Redis server per test session, for the suite
(``tests/``) and for the Python blocks of README.md and docs/*.md (run by sybil).

* ``REDIS_URL`` unset: a private ``EmbeddedRedis`` is started for the session and
  db 0 of it is the test database.
* ``REDIS_URL`` set: that server is used, on db 15 (or ``POPOTO_TEST_DB``). Since we
  did not start that server, flushing its db 0 is refused.

Every test starts with an empty test database (``clean_db`` is autouse), except
the I/O-free engine tests under ``tests/engine``: their conftest overrides
``clean_db`` with a no-op, so they run (and pass) with no server at all. They are
marked ``no_redis`` (``pytest -m no_redis`` selects them).

The docs: sybil collects every Python block of README.md and docs/*.md (pytest's
``testpaths``) as a test; each block gets the ``doc_env`` fixture (REDIS_URL = the
emptied test database, nothing configured in code, an empty model registry).

Cluster mode: with ``POPOTO_TEST_CLUSTER=1`` the session runs on a local
3-master Redis Cluster (``popoto.testing.cluster.EmbeddedCluster``) with
``popoto.configure(cluster=True)``; ``r`` is then a ``RedisCluster`` client and
every test starts with all masters flushed. Tests marked ``standalone_only``
(they inspect the unsharded key layout, use several databases, or run Celery
on the same server) are deselected there, so the cluster run is the declared
subset "everything else". Tests that need a cluster inside the standalone run
use the ``cluster`` / ``cluster_mode`` fixtures.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest
import redis
from sybil import Sybil
from sybil.parsers.markdown import PythonCodeBlockParser, SkipParser

from popoto.testing.server import EmbeddedRedis

CLUSTER_RUN = os.environ.get("POPOTO_TEST_CLUSTER", "").lower() in ("1", "true", "yes")


NO_REDIS_DIR = Path(__file__).parent / "tests" / "engine"  # I/O-free engine tests: no server


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "standalone_only: needs a standalone server (unsharded key layout, several "
        "databases, Celery on the same server); deselected in the cluster run")
    config.addinivalue_line(
        "markers", "no_redis: runs without any Redis server (set on every test under "
        "tests/engine, whose conftest drops the database cleaning)")
    config.addinivalue_line(
        "markers", "slow: takes seconds (property tests, large rebuilds, multi-process "
        "races); `make test-fast` deselects them")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if NO_REDIS_DIR in item.path.parents:
            item.add_marker(pytest.mark.no_redis)
    if not CLUSTER_RUN:
        return
    keep = [i for i in items if i.get_closest_marker("standalone_only") is None]
    dropped = [i for i in items if i.get_closest_marker("standalone_only") is not None]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep

DEFAULT_EXTERNAL_TEST_DB = 15


@dataclass(frozen=True)
class RedisServerInfo:
    """Where the tests' Redis lives and which database they may wipe."""

    url: str  # includes the test db
    db: int
    embedded: EmbeddedRedis | None  # None when REDIS_URL was given
    cluster: Any = None  # the EmbeddedCluster of a cluster run

    @property
    def owned(self) -> bool:
        """True when this test session started the server itself."""
        return self.embedded is not None


def _url_with_db(url: str, db: int) -> str:
    """Return ``url`` pointing at database ``db`` (redis://, rediss:// or unix://)."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        query = [(k, v) for k, v in parse_qsl(parts.query) if k != "db"]
        query.append(("db", str(db)))
        return urlunsplit(parts._replace(query=urlencode(query)))
    return urlunsplit(parts._replace(path=f"/{db}"))


def _refuse_unsafe_flush(info: RedisServerInfo) -> None:
    """Never wipe db 0 of a server that this test session did not start."""
    if not info.owned and info.db == 0:
        pytest.exit(
            "Refusing to run tests on db 0 of the server in REDIS_URL (every test FLUSHDBs "
            "its database). Set POPOTO_TEST_DB to another database, or unset REDIS_URL to "
            "use a private embedded server.",
            returncode=3,
        )


@pytest.fixture(scope="session")
def embedded_server() -> Iterator[EmbeddedRedis | None]:
    """The EmbeddedRedis started for this session, or None when REDIS_URL was given."""
    if os.environ.get("REDIS_URL"):
        yield None
        return
    with EmbeddedRedis() as server:
        yield server


def _start_cluster(masters: int = 3) -> Any:
    from popoto.testing.cluster import ClusterUnavailable, EmbeddedCluster

    try:
        return EmbeddedCluster(masters=masters).start()
    except ClusterUnavailable as exc:
        pytest.skip(f"the Redis server binary cannot run a cluster: {exc}")


@pytest.fixture(scope="session")
def redis_server(embedded_server: EmbeddedRedis | None) -> Iterator[RedisServerInfo]:
    """The session's Redis server, with Popoto configured to use its test database."""
    import popoto  # lazily: the ORM package may be mid-development

    if CLUSTER_RUN:
        cluster = _start_cluster()
        popoto.configure(url=cluster.url, cluster=True)
        yield RedisServerInfo(url=cluster.url, db=0, embedded=embedded_server, cluster=cluster)
        cluster.stop()
        return
    if embedded_server is not None:
        info = RedisServerInfo(url=_url_with_db(embedded_server.url, 0), db=0,
                               embedded=embedded_server)
    else:
        raw_db = os.environ.get("POPOTO_TEST_DB", str(DEFAULT_EXTERNAL_TEST_DB))
        try:
            db = int(raw_db)
        except ValueError:
            pytest.exit(f"POPOTO_TEST_DB must be an integer, got {raw_db!r}", returncode=3)
        info = RedisServerInfo(url=_url_with_db(os.environ["REDIS_URL"], db), db=db,
                               embedded=None)
    _refuse_unsafe_flush(info)
    popoto.configure(url=info.url)
    yield info


@pytest.fixture(scope="session")
def redis_url(redis_server: RedisServerInfo) -> str:
    """URL of the test database (``redis://host:port/DB``)."""
    return redis_server.url


def _client_for(info: RedisServerInfo, **kwargs: Any) -> Any:
    if info.cluster is not None:
        return info.cluster.client(**kwargs)
    return redis.Redis.from_url(info.url, **kwargs)


@pytest.fixture(scope="session")
def _flush_client(redis_server: RedisServerInfo) -> Iterator[redis.Redis]:
    client = _client_for(redis_server)
    yield client
    client.close()


@pytest.fixture(autouse=True)
def clean_db(redis_server: RedisServerInfo, _flush_client: redis.Redis) -> None:
    """Empty the test database before each test (tests/engine overrides it: no server)."""
    _refuse_unsafe_flush(redis_server)
    if redis_server.cluster is not None:
        redis_server.cluster.flushall()
    else:
        _flush_client.flushdb()


@pytest.fixture
def r(redis_server: RedisServerInfo) -> Iterator[redis.Redis]:
    """A plain redis-py client on the test database (bytes responses; RedisCluster in a
    cluster run)."""
    client = _client_for(redis_server, decode_responses=False)
    yield client
    client.close()


@pytest.fixture(scope="session")
def cluster() -> Iterator[Any]:
    """A local 3-master Redis Cluster for this session (started on first use)."""
    started = _start_cluster()
    yield started
    started.stop()


@pytest.fixture
def cluster_mode(cluster: Any, redis_server: RedisServerInfo) -> Iterator[Any]:
    """Popoto configured for the session cluster (flushed) during one test; restored after."""
    import popoto

    cluster.flushall()
    popoto.configure(url=cluster.url, cluster=True)
    try:
        yield cluster
    finally:
        popoto.configure(url=redis_server.url, cluster=True if redis_server.cluster else None)


# --- the docs: every Python block of README.md and docs/*.md runs (sybil) ------------

@pytest.fixture
def doc_env(redis_server: RedisServerInfo, clean_db: None,
            monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """What a Python block of the docs runs with, as a reader's program would: REDIS_URL
    names the (emptied) test database and nothing is configured in code; the model
    registry starts empty (the docs' Book or Order do not clash with the suite's
    models) and is restored after, like Popoto's configuration and Celery's current app.
    """
    if redis_server.cluster is not None:
        pytest.skip("the docs run on the standalone test server")
    import popoto
    from celery import current_app
    from popoto import registry

    monkeypatch.setenv("REDIS_URL", redis_server.url)
    monkeypatch.delenv("REDIS_CLUSTER_URL", raising=False)
    monkeypatch.setattr(registry, "_models", {})
    monkeypatch.setattr(registry, "_namespaces", {})
    celery_app = current_app._get_current_object()
    popoto.configure()  # from the environment, as in a fresh process
    try:
        yield
    finally:
        popoto.configure(url=redis_server.url)
        celery_app.set_current()


def _doc_namespace(namespace: dict[str, Any]) -> None:
    namespace["__name__"] = "docs"  # the module name of the classes a block defines


pytest_collect_file = Sybil(
    parsers=[PythonCodeBlockParser(), SkipParser()],
    patterns=["README.md", "docs/*.md"],
    fixtures=["doc_env"],
    setup=_doc_namespace,
).pytest()
