"""Tests for popoto.testing.server: the embedded Redis used by tests, demos and `make run`."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys

import pytest
import redis

from popoto.testing.server import EmbeddedRedis, find_redis_server

PING_CHILD = (
    "import os, sys, redis; "
    "client = redis.Redis.from_url(os.environ['REDIS_URL']); "
    "assert client.ping(); "
    "print(os.environ['REDIS_URL']); "
    "sys.exit(int(sys.argv[1]))"
)


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still "exists"; Popen.wait() in stop() reaps it, so this is a real process.
    return True


def _run_cli(*cmd: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "popoto.testing.server", "run", "--", *cmd],
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _env_without_redis_url() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "REDIS_URL"}


def test_find_redis_server_returns_executable() -> None:
    """find_redis_server() returns the path of an existing, executable file."""
    path = find_redis_server()
    assert os.path.isfile(path)
    assert os.access(path, os.X_OK)


def test_embedded_redis_lifecycle() -> None:
    """EmbeddedRedis starts, answers PING, is Redis >= 6.2, and stop() frees port and dir."""
    server = EmbeddedRedis().start()
    try:
        port, pid, tmpdir = server.port, server.pid, server.tmpdir
        assert server.url == f"redis://127.0.0.1:{port}/0"
        assert tmpdir is not None and os.path.isdir(tmpdir)
        client = redis.Redis.from_url(server.url)
        assert client.ping() is True
        assert client.info("server")["redis_version"] == server.version
        client.close()
        major, minor = (int(part) for part in server.version.split(".")[:2])
        assert (major, minor) >= (6, 2)
        assert _pid_alive(pid)
    finally:
        server.stop()
    assert not server.running
    assert not _pid_alive(pid)
    assert _port_is_free(port)
    assert not os.path.exists(tmpdir)
    server.stop()  # idempotent


def test_context_manager_and_extra_args() -> None:
    """`with EmbeddedRedis(extra_args=...)` applies the extra args and stops on exit."""
    with EmbeddedRedis(extra_args=["--maxmemory", "10mb"]) as server:
        client = server.client(decode_responses=True)
        assert client.config_get("maxmemory") == {"maxmemory": "10485760"}
        assert client.config_get("save") == {"save": ""}
        client.close()
        port = server.port
    assert not server.running
    assert _port_is_free(port)


def test_startup_failure_reports_server_log() -> None:
    """A server that dies at startup raises RuntimeError carrying its log output."""
    server = EmbeddedRedis(extra_args=["--no-such-option", "1"])
    with pytest.raises(RuntimeError, match="(?i)no-such-option|bad directive"):
        server.start()
    assert not server.running
    assert server.tmpdir is None


def test_restart_keeps_same_port() -> None:
    """restart() runs a new server process on the same port; the old one is gone."""
    with EmbeddedRedis() as server:
        port, old_pid = server.port, server.pid
        client = server.client()
        client.set("k", "v")
        server.restart()
        assert server.port == port
        assert server.pid != old_pid
        assert not _pid_alive(old_pid)
        assert client.ping() is True  # the client reconnects to the same address
        assert client.get("k") is None  # nothing persisted (--save "" --appendonly no)
        client.close()


def test_run_cli_passes_redis_url_and_exit_code() -> None:
    """`run -- CMD` gives CMD a live REDIS_URL, returns CMD's exit code, then stops Redis."""
    result = _run_cli(sys.executable, "-c", PING_CHILD, "7", env=_env_without_redis_url())
    assert result.returncode == 7, result.stderr
    url = result.stdout.strip()
    match = re.fullmatch(r"redis://127\.0\.0\.1:(\d+)/0", url)
    assert match, url
    assert url in result.stderr and "redis-server" in result.stderr
    assert _port_is_free(int(match.group(1)))

    ok = _run_cli(sys.executable, "-c", PING_CHILD, "0", env=_env_without_redis_url())
    assert ok.returncode == 0, ok.stderr


def test_run_cli_keeps_existing_redis_url(redis_url: str) -> None:
    """With REDIS_URL already set, `run -- CMD` starts nothing and passes it through."""
    env = dict(os.environ, REDIS_URL=redis_url)
    result = _run_cli(sys.executable, "-c", PING_CHILD, "3", env=env)
    assert result.returncode == 3, result.stderr
    assert result.stdout.strip() == redis_url


def test_run_cli_reports_missing_command() -> None:
    """`run -- no-such-program` fails with exit code 127 instead of a traceback."""
    result = _run_cli("popoto-no-such-program-xyz", env=_env_without_redis_url())
    assert result.returncode == 127
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_password_option_requires_auth() -> None:
    """`EmbeddedRedis(password=...)`: the server wants it; url, client() and stop() use it."""
    with EmbeddedRedis(password="p@ss:w/rd") as server:
        assert server.url == f"redis://:p%40ss%3Aw%2Frd@127.0.0.1:{server.port}/0"
        assert "p@ss" not in repr(server)
        anonymous = redis.Redis(host=server.host, port=server.port)
        with pytest.raises(redis.AuthenticationError):
            anonymous.ping()
        anonymous.close()
        for client in (server.client(), redis.Redis.from_url(server.url)):
            assert client.ping() is True
            client.close()
        port = server.port
    assert not server.running
    assert _port_is_free(port)
