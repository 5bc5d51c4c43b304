"""Start the nodes of an :class:`~popoto.testing.cluster.EmbeddedCluster` and form it.

The cluster is formed from Python with redis-py, the way ``redis-cli --cluster create``
does it: contiguous slot ranges per master, distinct config epochs, ``CLUSTER MEET``
to the first node, ``CLUSTER REPLICATE`` for replicas.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Protocol

from popoto.testing.binary import find_redis_server
from popoto.testing.cluster_ports import _pick_cluster_port
from popoto.testing.cluster_state import ClusterState
from popoto.testing.cluster_topology import _slot_ranges
from popoto.testing.embedded import EmbeddedRedis

if TYPE_CHECKING:
    from typing_extensions import Self

    class _RawPipeline(Protocol):
        """A redis-py pipeline queueing raw commands (its stubs leave them untyped)."""

        def execute_command(self, *args: Any) -> Any: ...

        def execute(self) -> list[Any]: ...

__all__ = ["ClusterFormation", "ClusterUnavailable"]

# The logger name predates the split of popoto.testing.cluster; kept for log configs.
logger = logging.getLogger("popoto.testing.cluster")

_ADDSLOTS_CHUNK = 1000
_PORT_ATTEMPTS = 3


class ClusterUnavailable(RuntimeError):
    """The Redis server binary cannot run in cluster mode; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ClusterFormation(ClusterState):
    """:meth:`start` (start every node, form the cluster, wait until healthy) and :meth:`stop`."""

    def start(self) -> Self:
        """Start every node, form the cluster and wait until it is healthy. Returns self."""
        if self._nodes:
            return self
        executable = self._executable or find_redis_server()
        args = [
            "--cluster-enabled", "yes",
            # Relative to --dir, i.e. the node's private directory.
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(self.node_timeout_ms),
            # Tests kill masters at will: let any replica take over, however stale.
            "--cluster-replica-validity-factor", "0",
            "--repl-diskless-sync", "yes",
            "--repl-diskless-sync-delay", "0",
        ]
        total = self.master_count * (1 + self.replicas_per_master)
        try:
            for index in range(total):
                node = self._start_node(executable, args)
                self._nodes.append(node)
                self._ports.append(node.port)
                if index == 0:
                    self._check_cluster_enabled(node)
            self._form()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every node and remove their directories. Idempotent."""
        for client in self._admins.values():
            client.close()
        self._admins.clear()
        for node in self._nodes:
            node.stop()
        self._nodes.clear()
        self._ports.clear()
        self._ids.clear()
        self._stopped_master_slots.clear()

    def _start_node(self, executable: str, args: list[str]) -> EmbeddedRedis:
        attempt = 0
        while True:
            attempt += 1
            port = _pick_cluster_port(self.host, set(self._ports))
            node = EmbeddedRedis(executable=executable, extra_args=args, port=port)
            try:
                return node.start()
            except RuntimeError as exc:
                if "cluster-enabled" in str(exc):  # "Bad directive" from a non-cluster build
                    raise ClusterUnavailable(
                        f"{executable} cannot run in cluster mode: {exc}"
                    ) from exc
                if "in use" not in str(exc) or attempt >= _PORT_ATTEMPTS:
                    raise
                logger.warning("cluster node failed to start on port %d; retrying", port)

    def _check_cluster_enabled(self, node: EmbeddedRedis) -> None:
        info = self._admin(node.port).info("cluster")
        if int(info.get("cluster_enabled", 0)) != 1:
            raise ClusterUnavailable(
                f"{node.executable} (redis {node.version}) started without cluster mode "
                f"(INFO cluster: {info})"
            )

    def _form(self) -> None:
        ports = self._ports
        admins = [self._admin(port) for port in ports]
        self._ids = [str(admin.execute_command("CLUSTER", "MYID")) for admin in admins]
        for admin, (start, end) in zip(admins, _slot_ranges(self.master_count)):
            pipe: _RawPipeline = admin.pipeline(transaction=False)
            for chunk in range(start, end + 1, _ADDSLOTS_CHUNK):
                pipe.execute_command(
                    "CLUSTER", "ADDSLOTS", *range(chunk, min(chunk + _ADDSLOTS_CHUNK, end + 1))
                )
            pipe.execute()
        # Distinct epochs up front (as redis-cli does) spare the nodes the slow
        # epoch-collision resolution; only allowed while a node knows no peers.
        for epoch, admin in enumerate(admins, start=1):
            admin.execute_command("CLUSTER", "SET-CONFIG-EPOCH", epoch)
        for admin in admins[1:]:
            admin.execute_command("CLUSTER", "MEET", self.host, ports[0])
        self._wait_until(self._meet_problem, "finish the CLUSTER MEET handshake",
                         self.startup_timeout)
        for i in range(self.master_count):
            for j in range(self.replicas_per_master):
                index = self.master_count + i * self.replicas_per_master + j
                admins[index].execute_command("CLUSTER", "REPLICATE", self._ids[i])
        self._wait_until(lambda: self._health_problem(self._live(), check_roles=True),
                         "converge", self.startup_timeout)

    def _meet_problem(self) -> str | None:
        expected = set(self._ids)
        for port in self._ports:
            known = {line.node_id for line in self._nodes_view(port) if not line.failing}
            if known != expected:
                return f"{self.host}:{port} knows {len(known & expected)}/{len(expected)} nodes"
        return None
