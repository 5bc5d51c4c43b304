"""Start a real, throwaway Redis Cluster on 127.0.0.1 for tests and demos.

Library use::

    from popoto.testing.cluster import EmbeddedCluster

    with EmbeddedCluster(masters=3, replicas_per_master=1) as cluster:
        client = cluster.client()
        client.set("{user:1}:name", "ada")
        old = cluster.node_for_key("{user:1}:name")
        cluster.stop_node(old)
        cluster.wait_for_failover(old)

Command line use::

    python -m popoto.testing.cluster run [--masters N] [--replicas R] -- CMD ARGS...

runs ``CMD`` with ``REDIS_CLUSTER_URL`` pointing at a freshly started cluster (or, when
``REDIS_CLUSTER_URL`` is already set, runs ``CMD`` unchanged) and exits with CMD's exit
code. ``REDIS_URL`` is left alone.

Every node is an :class:`~popoto.testing.server.EmbeddedRedis` (same binary, private
directory, free loopback port, no persistence) started with ``--cluster-enabled yes``.
The cluster is formed from Python with redis-py, the way ``redis-cli --cluster create``
does it (no redis-cli needed): contiguous slot ranges per master, distinct config
epochs, ``CLUSTER MEET`` to the first node, ``CLUSTER REPLICATE`` for replicas.

Where the code lives (this module re-exports it, so ``popoto.testing.cluster.EmbeddedCluster``
and the other names keep working):

* :mod:`popoto.testing.cluster_topology`: ``CLUSTER NODES`` parsing, the slot split;
* :mod:`popoto.testing.cluster_ports`: free port pairs (P, P+10000) for the nodes;
* :mod:`popoto.testing.cluster_state`: nodes, admin clients, health checks, waiting;
* :mod:`popoto.testing.cluster_formation`: ``start`` / ``stop``, :class:`ClusterUnavailable`;
* :mod:`popoto.testing.cluster_failover`: ``stop_node`` / ``wait_for_failover``;
* this module: :class:`EmbeddedCluster` (their union, plus queries) and the ``run`` CLI.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from redis.cluster import ClusterNode, RedisCluster

from popoto.testing.binary import find_redis_server as find_redis_server
from popoto.testing.child import run_command
from popoto.testing.cluster_failover import ClusterFailover
from popoto.testing.cluster_formation import ClusterFormation, ClusterUnavailable
from popoto.testing.cluster_state import DEFAULT_FORM_TIMEOUT as DEFAULT_FORM_TIMEOUT
from popoto.testing.cluster_topology import SLOT_COUNT as SLOT_COUNT
from popoto.testing.cluster_topology import SlotMap as SlotMap
from popoto.testing.embedded import HOST as HOST
from popoto.testing.embedded import EmbeddedRedis
from popoto.testing.embedded import Started as Started

__all__ = ["ClusterUnavailable", "EmbeddedCluster", "main"]

logger = logging.getLogger(__name__)


class EmbeddedCluster(ClusterFormation, ClusterFailover):
    """A local Redis Cluster of ``masters`` masters with ``replicas_per_master`` replicas each.

    Use as a context manager, or call :meth:`start` / :meth:`stop`. Raises
    :class:`ClusterUnavailable` from :meth:`start` if the server binary has no cluster
    mode. Node roles change on failover, so :meth:`masters` / :meth:`replicas` ask the
    running nodes each time.
    """

    # ----------------------------------------------------------------- properties

    @property
    def nodes(self) -> list[EmbeddedRedis]:
        """Every node of the cluster, in creation order (masters first), stopped ones too."""
        return list(self._nodes)

    @property
    def running(self) -> bool:
        """True while at least one node is running."""
        return any(node.running for node in self._nodes)

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        """``(host, port)`` of every running node."""
        return [(self.host, port) for node, port in self._live()]

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT`` of a running master (cluster mode has only db 0)."""
        masters = self.masters()
        if not masters:
            raise RuntimeError("EmbeddedCluster has no running master")
        return f"redis://{self.host}:{self._port_of(masters[0])}"

    def masters(self) -> list[EmbeddedRedis]:
        """Running nodes that currently are masters (each node is asked about itself)."""
        return [node for node, port in self._live() if self._myself(port).is_master]

    def replicas(self) -> list[EmbeddedRedis]:
        """Running nodes that currently are replicas."""
        return [node for node, port in self._live() if not self._myself(port).is_master]

    def client(self, **kwargs: Any) -> RedisCluster[Any]:
        """A new ``redis.cluster.RedisCluster`` seeded with every running node."""
        nodes = [ClusterNode(host, port) for host, port in self.startup_nodes]
        return RedisCluster(startup_nodes=nodes, **kwargs)

    def node_for_key(self, key: str | bytes) -> EmbeddedRedis:
        """The running master that owns ``key``'s slot (``CLUSTER KEYSLOT`` + slot map)."""
        live = self._live()
        if not live:
            raise RuntimeError("EmbeddedCluster is not running")
        slot = int(self._admin(live[0][1]).execute_command("CLUSTER", "KEYSLOT", key))
        for start, end, master_port, _ in self._slot_map(live[0][1]):
            if start <= slot <= end:
                node = self._node_at(master_port)
                if node is not None and node.running:
                    return node
                raise RuntimeError(f"slot {slot} of {key!r} is served by stopped node "
                                   f"{self.host}:{master_port} (failover pending?)")
        raise RuntimeError(f"slot {slot} of {key!r} is not assigned")

    def key_counts(self) -> dict[int, int]:
        """``{port: DBSIZE}`` of every running master."""
        return {
            self._port_of(node): int(self._admin(self._port_of(node)).dbsize())
            for node in self.masters()
        }

    def flushall(self) -> None:
        """FLUSHALL every running master (replicas follow through replication)."""
        for node in self.masters():
            self._admin(self._port_of(node)).flushall()

    def __repr__(self) -> str:
        if not self._nodes:
            return "<EmbeddedCluster stopped>"
        ports = ",".join(str(p) for _, p in self._live())
        return f"<EmbeddedCluster {self.host} ports={ports}>"


# --------------------------------------------------------------------------- CLI

_ENV_VAR = "REDIS_CLUSTER_URL"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m popoto.testing.cluster",
        description="Run a command against a throwaway local Redis Cluster.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser(
        "run",
        help=f"run CMD with {_ENV_VAR} set (REDIS_URL is left alone)",
        description=(
            f"Run CMD with {_ENV_VAR} set. If {_ENV_VAR} is already set, CMD runs "
            "unchanged; otherwise a private cluster is started on 127.0.0.1 and stopped "
            "when CMD exits. Exits with CMD's exit code."
        ),
    )
    run.add_argument("--masters", type=int, default=3, help="number of masters (default 3)")
    run.add_argument("--replicas", type=int, default=0, help="replicas per master (default 0)")
    run.add_argument("--node-timeout", type=int, default=1000, metavar="MS",
                     help="cluster-node-timeout in milliseconds (default 1000)")
    run.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD [ARGS...]")
    run.set_defaults(usage=run.format_usage())
    return parser


def _cmd_run(args: argparse.Namespace) -> int:
    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        sys.stderr.write(f"{args.usage}popoto.testing.cluster: missing CMD\n")
        return 2
    if os.environ.get(_ENV_VAR):
        print(f"popoto.testing.cluster: using {_ENV_VAR}={os.environ[_ENV_VAR]} from the "
              "environment", file=sys.stderr)
        sys.stderr.flush()
        try:
            os.execvp(cmd[0], cmd)
        except OSError as exc:
            print(f"popoto.testing.cluster: cannot run {cmd[0]!r}: {exc}", file=sys.stderr)
            return 127
    began = time.monotonic()
    try:
        cluster = EmbeddedCluster(args.masters, args.replicas, args.node_timeout).start()
    except (RuntimeError, ValueError) as exc:
        print(f"popoto.testing.cluster: {exc}", file=sys.stderr)
        return 1
    try:
        url = cluster.url
        node = cluster.nodes[0]
        print(
            f"popoto.testing.cluster: started a {len(cluster.nodes)}-node Redis Cluster "
            f"(redis-server {node.version}, {node.executable}) in "
            f"{time.monotonic() - began:.1f}s at {url}",
            file=sys.stderr,
        )
        return run_command("popoto.testing.cluster", cmd, dict(os.environ, **{_ENV_VAR: url}))
    finally:
        cluster.stop()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m popoto.testing.cluster``."""
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    return _cmd_run(args)


if __name__ == "__main__":
    logging.basicConfig(level=os.environ.get("POPOTO_LOG_LEVEL", "WARNING"))
    sys.exit(main())
