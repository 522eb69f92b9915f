"""Free TCP ports for the processes a test starts, chosen below the kernel's ephemeral range.

A port from ``bind(("127.0.0.1", 0))`` comes from the ephemeral range, the range the kernel also draws
the local end of every outbound connection from (Redis clients, gRPC channels, Prometheus scrapes). Between
the test closing its probe socket and the child process binding the port, any of those connections can
take it: CI once failed with ``reward-0 exited 2: cannot listen on 0.0.0.0:49459 ... Address already in
use``. Ports below the ephemeral range are only ever taken by an explicit bind, so a port that binds here
stays free for the child; the set below keeps one test process from handing the same port out twice.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

_LOW = 20000
_given: set[int] = set()


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _binds(port: int) -> bool:
    for family, host in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        try:
            with socket.socket(family, socket.SOCK_STREAM) as s:
                if family == socket.AF_INET6:
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                s.bind((host, port))
        except OSError as err:
            if family == socket.AF_INET6 and not socket.has_ipv6:
                continue
            if family == socket.AF_INET6 and err.errno in (97, 99):  # no IPv6 on this machine
                continue
            return False
    return True


def free_port() -> int:
    """A port nothing listens on (IPv4 or IPv6), outside the ephemeral range, not given out before."""
    high = max(_LOW + 1000, _ephemeral_low())
    candidates = list(range(_LOW, high))
    random.shuffle(candidates)
    for port in candidates:
        if port not in _given and _binds(port):
            _given.add(port)
            return port
    raise RuntimeError(f"no free port in {_LOW}..{high - 1}")
