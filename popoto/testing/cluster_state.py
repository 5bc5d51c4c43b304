"""State of an :class:`~popoto.testing.cluster.EmbeddedCluster` and how to inspect it.

:class:`ClusterState` holds the nodes, their ports and ids and one admin client per
port, and answers the questions formation and failover wait on: which nodes run,
what each one sees (``CLUSTER NODES`` / ``SLOTS`` / ``INFO``), and whether the running
nodes form a healthy cluster (:meth:`ClusterState._health_problem`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from popoto.testing.cluster_topology import SLOT_COUNT, SlotMap, _NodeLine, _parse_cluster_nodes
from popoto.testing.embedded import HOST, EmbeddedRedis, Started

__all__ = ["DEFAULT_FORM_TIMEOUT", "ClusterState"]

DEFAULT_FORM_TIMEOUT = 30.0
_POLL_INTERVAL = 0.05
_LOG_TAIL_LINES = 12


def _tail(path: str | None, lines: int = _LOG_TAIL_LINES) -> str:
    if not path or not os.path.exists(path):
        return "(no log)"
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        fh.seek(max(0, fh.tell() - 200 * lines))
        text = fh.read().decode("utf-8", errors="replace")
    return "\n".join(text.strip().splitlines()[-lines:]) or "(empty log)"


class ClusterState(Started):
    """Nodes, ports, ids and admin clients of a cluster; health and topology queries."""

    def __init__(
        self,
        masters: int = 3,
        replicas_per_master: int = 0,
        node_timeout_ms: int = 1000,
        *,
        executable: str | None = None,
        startup_timeout: float = DEFAULT_FORM_TIMEOUT,
    ) -> None:
        if masters < 1:
            raise ValueError(f"a cluster needs at least one master, got masters={masters}")
        if replicas_per_master < 0:
            raise ValueError(f"replicas_per_master must be >= 0, got {replicas_per_master}")
        if node_timeout_ms < 1:
            raise ValueError(f"node_timeout_ms must be positive, got {node_timeout_ms}")
        self.master_count = masters
        self.replicas_per_master = replicas_per_master
        self.node_timeout_ms = node_timeout_ms
        self.startup_timeout = startup_timeout
        self.host: str = HOST
        self._executable = executable
        self._nodes: list[EmbeddedRedis] = []
        self._ports: list[int] = []  # parallel to _nodes; kept after a node is stopped
        self._ids: list[str] = []
        self._admins: dict[int, redis.Redis[str]] = {}
        self._stopped_master_slots: dict[int, tuple[tuple[int, int], ...]] = {}

    # ----------------------------------------------------------------- internals

    def _live(self) -> list[tuple[EmbeddedRedis, int]]:
        return [(n, p) for n, p in zip(self._nodes, self._ports) if n.running]

    def _port_of(self, node: EmbeddedRedis) -> int:
        for candidate, port in zip(self._nodes, self._ports):
            if candidate is node:
                return port
        raise ValueError(f"{node!r} is not a node of this cluster")

    def _node_at(self, port: int) -> EmbeddedRedis | None:
        for node, node_port in zip(self._nodes, self._ports):
            if node_port == port:
                return node
        return None

    def _admin(self, port: int) -> redis.Redis[str]:
        client = self._admins.get(port)
        if client is None:
            client = redis.Redis(
                host=self.host,
                port=port,
                decode_responses=True,
                socket_connect_timeout=1.0,
                socket_timeout=5.0,
                retry=Retry(NoBackoff(), 0),
            )
            self._admins[port] = client
        return client

    def _nodes_view(self, port: int) -> list[_NodeLine]:
        return _parse_cluster_nodes(self._admin(port).execute_command("CLUSTER", "NODES"))

    def _myself(self, port: int) -> _NodeLine:
        for line in self._nodes_view(port):
            if "myself" in line.flags:
                return line
        raise RuntimeError(f"{self.host}:{port} did not list itself in CLUSTER NODES")

    def _slot_map(self, port: int) -> SlotMap:
        entries = []
        for start, end, master, *replicas in self._admin(port).execute_command(
            "CLUSTER", "SLOTS"
        ):
            entries.append((
                int(start), int(end), int(master[1]), tuple(sorted(int(r[1]) for r in replicas))
            ))
        return tuple(sorted(entries))

    def _health_problem(
        self, live: Sequence[tuple[EmbeddedRedis, int]], check_roles: bool = False
    ) -> str | None:
        """None when the running nodes form a healthy cluster, else what is wrong."""
        if not live:
            return "no node is running"
        live_ids = {self._ids[self._nodes.index(node)] for node, _ in live}
        live_ports = {port for _, port in live}
        maps: dict[SlotMap, list[int]] = {}
        for node, port in live:
            admin = self._admin(port)
            state = self._cluster_info(port).get("cluster_state")
            if state != "ok":
                return f"{self.host}:{port} reports cluster_state:{state}"
            view = self._nodes_view(port)
            healthy = {line.node_id for line in view if not line.failing}
            if not live_ids <= healthy:
                return f"{self.host}:{port} does not yet see every running node as healthy"
            myself = next(line for line in view if "myself" in line.flags)
            if check_roles:
                index = self._nodes.index(node)
                want_master = index < self.master_count
                if myself.is_master != want_master:
                    role = "master" if want_master else "replica"
                    return f"{self.host}:{port} is not yet a {role}"
            if not myself.is_master:
                link = admin.info("replication").get("master_link_status")
                if link != "up":
                    return f"replica {self.host}:{port} has master_link_status:{link}"
            slot_map = self._slot_map(port)
            maps.setdefault(slot_map, []).append(port)
        if len(maps) > 1:
            return f"nodes disagree on CLUSTER SLOTS ({len(maps)} different views)"
        (slot_map,) = maps
        covered = sum(end - start + 1 for start, end, _, _ in slot_map)
        if covered != SLOT_COUNT:
            return f"only {covered}/{SLOT_COUNT} slots are assigned"
        for start, end, master, replicas in slot_map:
            if master not in live_ports or not set(replicas) <= live_ports:
                return f"slots {start}-{end} still list a stopped node"
        return None

    def _cluster_info(self, port: int) -> dict[str, str]:
        text = self._admin(port).execute_command("CLUSTER", "INFO")
        return dict(
            line.split(":", 1) for line in str(text).splitlines() if ":" in line
        )

    def _wait_until(self, problem: Callable[[], str | None], what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                issue = problem()
            except (redis.RedisError, OSError) as exc:
                issue = repr(exc)
            if issue is None:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"Redis Cluster did not {what} within {timeout:.1f}s: {issue}\n"
                    + self._describe()
                )
            time.sleep(_POLL_INTERVAL)

    def _describe(self) -> str:
        parts = []
        for node, port in zip(self._nodes, self._ports):
            state = "running" if node.running else "stopped"
            parts.append(f"--- node {self.host}:{port} ({state}) log tail:\n{_tail(node.log_path)}")
        return "\n".join(parts)
