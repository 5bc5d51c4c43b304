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
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import random
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.retry import Retry

from popoto.testing.server import HOST, EmbeddedRedis, Started, find_redis_server, run_command

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["ClusterUnavailable", "EmbeddedCluster", "main"]

logger = logging.getLogger(__name__)

SLOT_COUNT = 16384
DEFAULT_FORM_TIMEOUT = 30.0
_ADDSLOTS_CHUNK = 1000
_POLL_INTERVAL = 0.05
_LOG_TAIL_LINES = 12
_PORT_ATTEMPTS = 3
_BUS_PORT_OFFSET = 10000
_MAX_CLUSTER_PORT = 65535 - _BUS_PORT_OFFSET
_MIN_CLUSTER_PORT = 12000

#: A node's view of the slot map: sorted (start, end, master port, replica ports).
SlotMap = tuple[tuple[int, int, int, tuple[int, ...]], ...]


class ClusterUnavailable(RuntimeError):
    """The Redis server binary cannot run in cluster mode; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class _NodeLine:
    """One line of ``CLUSTER NODES``."""

    node_id: str
    port: int
    flags: frozenset[str]
    master_id: str | None
    slots: tuple[tuple[int, int], ...] = field(default=())

    @property
    def is_master(self) -> bool:
        return "master" in self.flags

    @property
    def failing(self) -> bool:
        return bool(self.flags & {"fail", "fail?", "handshake", "noaddr"})


def _parse_cluster_nodes(text: str) -> list[_NodeLine]:
    lines = []
    for raw in text.splitlines():
        parts = raw.split()
        if len(parts) < 8:
            continue
        address = parts[1].split(",")[0].split("@")[0]  # ip:port@cport[,hostname]
        port_text = address.rsplit(":", 1)[-1]
        slots = []
        for item in parts[8:]:
            if item.startswith("["):  # migrating / importing marker
                continue
            start, _, end = item.partition("-")
            slots.append((int(start), int(end or start)))
        lines.append(_NodeLine(
            node_id=parts[0],
            port=int(port_text) if port_text.isdigit() else 0,
            flags=frozenset(parts[2].split(",")),
            master_id=None if parts[3] == "-" else parts[3],
            slots=tuple(slots),
        ))
    return lines


def _bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def _ephemeral_floor() -> int:
    """Lowest port the kernel hands out for outgoing connections (Linux), else 32768."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as fh:
            return int(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _pick_cluster_port(host: str, taken: set[int]) -> int:
    """A free port P whose cluster bus port P+10000 is free too.

    Redis refuses ports above 55535 in cluster mode (the bus port would overflow), and
    the kernel's free-port pick lands there often. Both ports are taken below the
    ephemeral range when possible, so outgoing connections cannot grab them before the
    node binds them.
    """
    high = min(_MAX_CLUSTER_PORT, _ephemeral_floor() - 1 - _BUS_PORT_OFFSET)
    low = _MIN_CLUSTER_PORT
    if high - low < 1000:
        low, high = 1024, _MAX_CLUSTER_PORT
    rng = random.Random()
    for _ in range(500):
        port = rng.randint(low, high)
        if port in taken or port + _BUS_PORT_OFFSET in taken:
            continue
        if _bindable(host, port) and _bindable(host, port + _BUS_PORT_OFFSET):
            return port
    raise RuntimeError(f"no free port pair (P, P+{_BUS_PORT_OFFSET}) found in {low}-{high}")


def _f32(value: float) -> float:
    return float(struct.unpack("f", struct.pack("f", value))[0])


def _slot_ranges(masters: int) -> list[tuple[int, int]]:
    """The split ``redis-cli --cluster create`` makes (contiguous, as even as possible).

    Mirrors redis-cli's single-precision arithmetic, e.g. 3 masters get 0-5460,
    5461-10922 and 10923-16383.
    """
    per_node = _f32(SLOT_COUNT / masters)
    cursor, first, ranges = 0.0, 0, []
    for i in range(masters):
        last = math.floor(_f32(_f32(cursor + per_node) - 1) + 0.5)  # C lround()
        if last > SLOT_COUNT or i == masters - 1:
            last = SLOT_COUNT - 1
        last = max(last, first)
        ranges.append((first, last))
        first = last + 1
        cursor = _f32(cursor + per_node)
    return ranges


def _tail(path: str | None, lines: int = _LOG_TAIL_LINES) -> str:
    if not path or not os.path.exists(path):
        return "(no log)"
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        fh.seek(max(0, fh.tell() - 200 * lines))
        text = fh.read().decode("utf-8", errors="replace")
    return "\n".join(text.strip().splitlines()[-lines:]) or "(empty log)"


class EmbeddedCluster(Started):
    """A local Redis Cluster of ``masters`` masters with ``replicas_per_master`` replicas each.

    Use as a context manager, or call :meth:`start` / :meth:`stop`. Raises
    :class:`ClusterUnavailable` from :meth:`start` if the server binary has no cluster
    mode. Node roles change on failover, so :meth:`masters` / :meth:`replicas` ask the
    running nodes each time.
    """

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
        self._admins: dict[int, redis.Redis] = {}
        self._stopped_master_slots: dict[int, tuple[tuple[int, int], ...]] = {}

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

    def client(self, **kwargs: Any) -> RedisCluster:
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

    # ----------------------------------------------------------------- lifecycle

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

    def __repr__(self) -> str:
        if not self._nodes:
            return "<EmbeddedCluster stopped>"
        ports = ",".join(str(p) for _, p in self._live())
        return f"<EmbeddedCluster {self.host} ports={ports}>"

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

    def _admin(self, port: int) -> redis.Redis:
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
            pipe = admin.pipeline(transaction=False)
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
