"""Shared pytest fixtures: one real Redis server per test session.

* ``REDIS_URL`` unset: a private ``EmbeddedRedis`` is started for the session and
  db 0 of it is the test database.
* ``REDIS_URL`` set: that server is used, on db 15 (or ``POPOTO_TEST_DB``). Since we
  did not start that server, flushing its db 0 is refused.

Every test starts with an empty test database (``clean_db`` is autouse).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest
import redis

from popoto.testing.server import EmbeddedRedis

DEFAULT_EXTERNAL_TEST_DB = 15


@dataclass(frozen=True)
class RedisServerInfo:
    """Where the tests' Redis lives and which database they may wipe."""

    url: str  # includes the test db
    db: int
    embedded: EmbeddedRedis | None  # None when REDIS_URL was given

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


@pytest.fixture(scope="session")
def redis_server(embedded_server: EmbeddedRedis | None) -> RedisServerInfo:
    """The session's Redis server, with Popoto configured to use its test database."""
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

    import popoto  # lazily: the ORM package may be mid-development

    if hasattr(popoto, "configure"):
        popoto.configure(url=info.url)
    return info


@pytest.fixture(scope="session")
def redis_url(redis_server: RedisServerInfo) -> str:
    """URL of the test database (``redis://host:port/DB``)."""
    return redis_server.url


@pytest.fixture(scope="session")
def _flush_client(redis_server: RedisServerInfo) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url)
    yield client
    client.close()


@pytest.fixture(autouse=True)
def clean_db(redis_server: RedisServerInfo, _flush_client: redis.Redis) -> None:
    """Empty the test database before each test."""
    _refuse_unsafe_flush(redis_server)
    _flush_client.flushdb()


@pytest.fixture
def r(redis_url: str) -> Iterator[redis.Redis]:
    """A plain redis-py client on the test database (bytes responses)."""
    client = redis.Redis.from_url(redis_url, decode_responses=False)
    yield client
    client.close()
