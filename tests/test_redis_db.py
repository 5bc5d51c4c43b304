"""Connection configuration: lazy, explicit, loud on bad URLs."""

import pytest

import popoto
from popoto import redis_db
from popoto.exceptions import ConnectionConfigError


@pytest.fixture
def restore_config(redis_url):
    yield
    popoto.configure(url=redis_url)


def test_bad_scheme_is_rejected_naming_url(restore_config):
    """configure() with an unsupported scheme fails at once, naming the URL."""
    with pytest.raises(ConnectionConfigError, match="http://x"):
        popoto.configure(url="http://x")


def test_unreachable_server_names_url_with_password_masked(restore_config):
    """An unreachable server raises an error naming the URL, password masked."""
    popoto.configure(url="redis://user:s3cret@127.0.0.1:1/0", socket_connect_timeout=1)
    with pytest.raises(ConnectionConfigError) as info:
        redis_db.get_client()
    assert "127.0.0.1:1" in str(info.value)
    assert "s3cret" not in str(info.value) and "***" in str(info.value)


def test_redis_url_env_is_used(monkeypatch, redis_url, restore_config):
    """Without configure(url=...), REDIS_URL decides the server and db."""
    popoto.configure(url=None)
    monkeypatch.setenv("REDIS_URL", redis_url.rsplit("/", 1)[0] + "/3")
    client = redis_db.get_client()
    assert client.connection_pool.connection_kwargs["db"] == 3
    assert client.ping()


def test_lazy_proxy_forwards(redis_url):
    """POPOTO_REDIS_DB forwards commands to the configured client."""
    redis_db.POPOTO_REDIS_DB.set("k", "v")
    assert redis_db.get_client().get("k") == b"v"


def test_mask_url():
    """mask_url hides only the password."""
    assert redis_db.mask_url("rediss://u:p@h:1/2") == "rediss://u:***@h:1/2"
    assert redis_db.mask_url("redis://h:1/0") == "redis://h:1/0"


@pytest.mark.parametrize("url", [
    "redis://user:s3cret@127.0.0.1:6379/abc",
    "redis://user:s3cret@127.0.0.1:6379/-1",
    "redis://user:s3cret@127.0.0.1:6379/0/1",
    "rediss://user:s3cret@127.0.0.1:6379/1x",
    "redis://user:s3cret@127.0.0.1:6379/0?db=abc",
    "unix://user:s3cret@/tmp/redis.sock?db=abc",
])
def test_non_integer_db_is_rejected_naming_masked_url(url, restore_config):
    """A db that is not a whole number is an error (redis-py would silently use db 0)."""
    with pytest.raises(ConnectionConfigError) as info:
        popoto.configure(url=url)
    message = str(info.value)
    assert "database" in message
    assert "127.0.0.1" in message or "/tmp/redis.sock" in message
    assert "s3cret" not in message and "user:***@" in message


@pytest.mark.parametrize("url", [
    "redis://127.0.0.1:6379", "redis://127.0.0.1:6379/", "redis://127.0.0.1:6379/15",
    "rediss://u:p@127.0.0.1:6379/3?ssl_cert_reqs=none", "unix:///tmp/redis.sock?db=2",
    "unix:///tmp/redis.sock", "redis://127.0.0.1:7000?cluster=true",
])
def test_integer_or_absent_db_is_accepted(url, restore_config):
    popoto.configure(url=url)


# --- Popoto 1.x's client spellings ------------------------------------------------------

def test_get_redis_returns_the_configured_client(redis_url):
    """popoto.get_redis() is the process-wide synchronous client."""
    assert popoto.get_redis() is redis_db.get_client()
    popoto.get_redis().set("via", "get_redis")
    assert redis_db.POPOTO_REDIS_DB.get("via") == b"get_redis"


def test_lazy_proxy_never_connects_at_import_and_follows_configure(redis_url, restore_config):
    """POPOTO_REDIS_DB connects on first use and always talks to the current configure()."""
    import subprocess
    import sys
    code = ("import popoto, popoto.redis_db as d; from popoto.redis_db import POPOTO_REDIS_DB;"
            "repr(POPOTO_REDIS_DB); assert d._client is None; print('lazy')")
    env = {"REDIS_URL": "redis://127.0.0.1:1/0", "PATH": ""}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "lazy", out.stderr
    other = redis_url.rsplit("/", 1)[0] + "/4"
    popoto.configure(url=other)
    redis_db.POPOTO_REDIS_DB.set("where", "db4")
    assert redis_db.get_client().connection_pool.connection_kwargs["db"] == 4
    assert redis_db.get_client().get("where") == b"db4"
    redis_db.get_client().flushdb()


def test_async_client_and_scan_keys(r):
    """get_async_redis_db() is the loop's asyncio client; async_scan_keys() SCANs for keys."""
    import asyncio
    r.set("scan:a", 1)
    r.set("scan:b", 2)
    r.set("other", 3)

    async def go():
        client = redis_db.get_async_redis_db()
        assert client is redis_db.get_async_client()
        assert await client.get("scan:a") == b"1"
        return sorted(await redis_db.async_scan_keys("scan:*"))

    assert asyncio.run(go()) == ["scan:a", "scan:b"]
