"""Crash a node of an :class:`~popoto.testing.cluster.EmbeddedCluster`, wait for failover."""

from __future__ import annotations

import contextlib
import os
import signal

from popoto.testing.cluster_state import ClusterState
from popoto.testing.embedded import EmbeddedRedis

__all__ = ["ClusterFailover"]


class ClusterFailover(ClusterState):
    """:meth:`stop_node` (SIGKILL a node) and :meth:`wait_for_failover`."""

    def stop_node(self, node: EmbeddedRedis) -> None:
        """Kill ``node``'s process (SIGKILL, like a crash) and remove its directory."""
        port = self._port_of(node)
        if not node.running:
            return
        if self._myself(port).is_master:
            observer = next((p for n, p in self._live() if n is not node), None)
            if observer is not None:
                for line in self._nodes_view(observer):
                    if line.port == port:
                        self._stopped_master_slots[port] = line.slots
        admin = self._admins.pop(port, None)
        if admin is not None:
            admin.close()
        with contextlib.suppress(ProcessLookupError):
            os.kill(node.pid, signal.SIGKILL)
        node.stop()  # reaps the process (SHUTDOWN fails fast on a dead port)

    def wait_for_failover(self, old_master: EmbeddedRedis, timeout: float = 30.0) -> EmbeddedRedis:
        """Wait until a replica of the stopped ``old_master`` took over its slots.

        Returns when a former replica of it is a master owning all its slots, every
        running node agrees on the slot map, and every running node reports
        ``cluster_state:ok``. Returns the promoted node.
        """
        port = self._port_of(old_master)
        if old_master.running:
            raise ValueError(f"{self.host}:{port} is still running; stop_node() it first")
        if port not in self._stopped_master_slots:
            raise ValueError(f"{self.host}:{port} was not a master when it was stopped")
        old_slots = self._stopped_master_slots[port]
        old_id = self._ids[self._nodes.index(old_master)]
        promoted: list[EmbeddedRedis] = []

        def problem() -> str | None:
            live = self._live()
            issue = self._health_problem(live)
            if issue is not None:
                return issue
            slot_map = self._slot_map(live[0][1])
            for start, end in old_slots:
                owner = next(
                    (m for s, e, m, _ in slot_map if s <= start and end <= e), None
                )
                if owner is None or owner == port:
                    return f"slots {start}-{end} not yet taken over"
                node = self._node_at(owner)
                assert node is not None
                promoted[:] = [node]
            return None

        self._wait_until(problem, f"fail over from {self.host}:{port} ({old_id})", timeout)
        return promoted[0]
