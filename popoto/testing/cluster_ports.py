"""Pick loopback ports for cluster nodes: P and its cluster bus port P+10000 both free."""

from __future__ import annotations

import random
import socket

_BUS_PORT_OFFSET = 10000
_MAX_CLUSTER_PORT = 65535 - _BUS_PORT_OFFSET
_MIN_CLUSTER_PORT = 12000


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
