"""Tests for popoto.testing.cluster: the local Redis Cluster used by cluster-mode tests."""

from __future__ import annotations

import os
import re
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.exceptions import CrossSlotTransactionError

from popoto.testing.cluster import ClusterUnavailable, EmbeddedCluster

REDIS_CLI_SPLIT = [(0, 5460), (5461, 10922), (10923, 16383)]  # `redis-cli --cluster create`

CLUSTER_CHILD = (
    "import os, sys\n"
    "from redis.cluster import RedisCluster\n"
    "client = RedisCluster.from_url(os.environ['REDIS_CLUSTER_URL'], decode_responses=True)\n"
    "assert client.cluster_info()['cluster_state'] == 'ok'\n"
    "keys = [f'{{cli{i}}}:x' for i in range(30)]\n"
    "for i, key in enumerate(keys):\n"
    "    client.set(key, i)\n"
    "assert [client.get(key) for key in keys] == [str(i) for i in range(30)]\n"
    "assert len(client.cluster_nodes()) == 3\n"
    "print(os.environ['REDIS_CLUSTER_URL'])\n"
    "print(os.environ.get('REDIS_URL'))\n"
    "sys.exit(int(sys.argv[1]))\n"
)


pytestmark = pytest.mark.slow  # forms a local Redis Cluster (make test-fast skips it)


def _start_or_skip(cluster: EmbeddedCluster) -> EmbeddedCluster:
    try:
        return cluster.start()
    except ClusterUnavailable as exc:
        pytest.skip(exc.reason)


@pytest.fixture(scope="module")
def cluster() -> Iterator[EmbeddedCluster]:
    started = _start_or_skip(EmbeddedCluster(masters=3))
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture
def empty_cluster(cluster: EmbeddedCluster) -> EmbeddedCluster:
    cluster.flushall()
    return cluster


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _owned_ranges(node_client: redis.Redis, port: int) -> list[tuple[int, int]]:
    slots = node_client.execute_command("CLUSTER", "SLOTS")
    return sorted((int(s), int(e)) for s, e, master, *_ in slots if int(master[1]) == port)


def _run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "popoto.testing.cluster", "run", *args],
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_three_masters_cover_all_slots(cluster: EmbeddedCluster) -> None:
    """Three masters split the 16384 slots like redis-cli, and every node reports state ok."""
    masters = cluster.masters()
    assert masters == cluster.nodes and cluster.replicas() == []
    ranges = []
    for node in masters:
        client = node.client()
        assert client.execute_command("CLUSTER", "INFO").decode().count("cluster_state:ok") == 1
        ranges += _owned_ranges(client, node.port)
        client.close()
        assert os.path.isfile(os.path.join(node.tmpdir or "", "nodes.conf"))
    assert sorted(ranges) == REDIS_CLI_SPLIT
    assert cluster.startup_nodes == [("127.0.0.1", node.port) for node in masters]
    assert re.fullmatch(r"redis://127\.0\.0\.1:\d+", cluster.url)


def test_hash_tags_spread_over_all_masters(empty_cluster: EmbeddedCluster) -> None:
    """300 keys with distinct hash tags reach all three masters, each where node_for_key says."""
    client = empty_cluster.client(decode_responses=True)
    keys = [f"{{t{i}}}:x" for i in range(300)]
    for i, key in enumerate(keys):
        client.set(key, i)
    counts = empty_cluster.key_counts()
    assert set(counts) == {node.port for node in empty_cluster.masters()}
    assert sum(counts.values()) == 300
    assert min(counts.values()) >= 60, counts  # ~100 each; all three really used
    for i, key in enumerate(keys):
        owner = empty_cluster.node_for_key(key).client(decode_responses=True)
        assert owner.get(key) == str(i)
        owner.close()
    client.close()


def test_transaction_pipeline_on_one_hash_tag(empty_cluster: EmbeddedCluster) -> None:
    """A redis.cluster MULTI/EXEC pipeline on one hash tag runs as MULTI/EXEC on its owner."""
    client = empty_cluster.client(decode_responses=True)
    owner = empty_cluster.node_for_key("{order:7}:total").client(decode_responses=True)
    before = owner.info("commandstats").get("cmdstat_exec", {}).get("calls", 0)
    with client.pipeline(transaction=True) as pipe:
        pipe.set("{order:7}:total", 10)
        pipe.incrby("{order:7}:total", 5)
        pipe.rpush("{order:7}:items", "a", "b")
        # (redis-py's cluster transactions return SET's raw "OK", not True)
        assert pipe.execute() == ["OK", 15, 2]
    assert owner.info("commandstats")["cmdstat_exec"]["calls"] == before + 1
    assert owner.get("{order:7}:total") == "15"
    with pytest.raises(CrossSlotTransactionError):  # noqa: PT012 - the error comes at execute
        with client.pipeline(transaction=True) as pipe:
            pipe.set("{a}:x", 1)
            pipe.set("{b}:x", 1)
            pipe.execute()
    assert client.exists("{a}:x", "{b}:x") == 0
    owner.close()
    client.close()


def test_wait_for_failover_rejects_running_master(cluster: EmbeddedCluster) -> None:
    """wait_for_failover() on a master that was never stopped fails at once with ValueError."""
    with pytest.raises(ValueError, match="still running"):
        cluster.wait_for_failover(cluster.masters()[0], timeout=1)


@pytest.mark.slow
def test_failover_loses_no_replicated_keys() -> None:
    """Killing a master with a synced replica: the replica takes its slots, all keys survive."""
    with _start_or_skip(EmbeddedCluster(masters=3, replicas_per_master=1)) as cluster:
        assert len(cluster.masters()) == 3 and len(cluster.replicas()) == 3
        old_client = cluster.client(decode_responses=True)
        keys = [f"{{t{i}}}:x" for i in range(200)]
        for i, key in enumerate(keys):
            old_client.set(key, i)
        for master in cluster.masters():
            admin = master.client()
            assert admin.execute_command("WAIT", 1, 1000) == 1  # its replica has everything
            admin.close()
        replicas_before = cluster.replicas()
        victim = cluster.node_for_key("{t7}:x")
        victim_port = victim.port

        cluster.stop_node(victim)
        promoted = cluster.wait_for_failover(victim, timeout=30)

        assert not victim.running
        assert promoted in replicas_before
        assert promoted in cluster.masters() and len(cluster.masters()) == 3
        assert cluster.node_for_key("{t7}:x") is promoted
        assert victim_port not in cluster.key_counts()
        fresh = cluster.client(decode_responses=True)
        assert [fresh.get(key) for key in keys] == [str(i) for i in range(200)]
        assert fresh.set("{t7}:x", "after") is True
        assert old_client.get("{t7}:x") == "after"  # the old client re-learns the slot map
        assert old_client.set("{t7}:y", "new") is True
        assert sum(cluster.key_counts().values()) == 201
        fresh.close()
        old_client.close()


def test_cli_run_passes_cluster_url_and_exit_code() -> None:
    """`run -- CMD` gives CMD a working REDIS_CLUSTER_URL, keeps REDIS_URL, returns its code."""
    env = dict(os.environ, REDIS_URL="redis://untouched.invalid:1/0")
    env.pop("REDIS_CLUSTER_URL", None)
    result = _run_cli("--masters", "3", "--", sys.executable, "-c", CLUSTER_CHILD, "5", env=env)
    if "cannot run in cluster mode" in result.stderr:
        pytest.skip(result.stderr.strip())
    assert result.returncode == 5, result.stderr
    url, redis_url = result.stdout.split()
    match = re.fullmatch(r"redis://127\.0\.0\.1:(\d+)", url)
    assert match, url
    assert redis_url == "redis://untouched.invalid:1/0"
    assert url in result.stderr and "3-node Redis Cluster" in result.stderr
    assert _port_is_free(int(match.group(1)))  # the cluster was stopped


def test_cli_run_keeps_existing_cluster_url(cluster: EmbeddedCluster) -> None:
    """With REDIS_CLUSTER_URL already set, `run -- CMD` starts nothing and passes it through."""
    env = dict(os.environ, REDIS_CLUSTER_URL=cluster.url)
    result = _run_cli("--", sys.executable, "-c", CLUSTER_CHILD, "0", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[0] == cluster.url


def test_binary_without_cluster_mode_raises_cluster_unavailable(tmp_path: Path) -> None:
    """A server build that rejects cluster-enabled yields ClusterUnavailable naming the reason."""
    # Stand-in for a redis-server built without cluster support: it fails exactly like
    # such a build does at startup (Redis's own "Bad directive" config error).
    fake = tmp_path / "redis-server"
    fake.write_text(
        "#!/bin/sh\n"
        "echo '*** FATAL CONFIG FILE ERROR (Redis 2.8.0) ***'\n"
        "echo \">>> 'cluster-enabled \\\"yes\\\"'\"\n"
        "echo 'Bad directive or wrong number of arguments'\n"
        "exit 1\n"
    )
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    cluster = EmbeddedCluster(masters=1, executable=str(fake))
    with pytest.raises(ClusterUnavailable, match="cluster-enabled") as info:
        cluster.start()
    assert "cannot run in cluster mode" in info.value.reason
    assert cluster.nodes == [] and not cluster.running
