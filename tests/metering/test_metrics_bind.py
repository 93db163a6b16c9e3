"""Worker and sink metrics listen on loopback unless told otherwise (issue 20): a port
nobody decided to expose is not reachable from other machines."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx

from metering import metrics
from metering.settings import Settings
from metering.stack.process import free_port


def listening_addresses(port: int) -> set[str]:
    """Local addresses with a listening TCP socket on `port` (from /proc/net/tcp)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
            found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return found


def test_metrics_bind_loopback_by_default() -> None:
    assert Settings().metrics_host == "127.0.0.1"
    port = free_port()
    assert metrics.serve(port, "test")
    assert listening_addresses(port) == {"127.0.0.1"}
    assert httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).status_code == 200


def test_metrics_bind_where_configured() -> None:
    port = free_port()
    assert metrics.serve(port, "test", Settings(metrics_host="0.0.0.0").metrics_host)
    assert listening_addresses(port) == {"0.0.0.0"}
