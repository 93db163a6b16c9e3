"""A local Redis 7 server for spend caps and balances."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from metering.stack.endpoints import Endpoint
from metering.stack.process import StackError

MAIN_MARKER = "redis-server"
# Redis rewrites its process title to "<binary> <addr>:<port> [cluster]".
_TITLE_PORT = re.compile(rb"\s\S*:(\d+)(?:\s|\x00|$)")


def check_redis_server() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        raise StackError("redis-server not found: apt-get install redis-server")
    return binary


def probe_client(host: str, port: int, **options: Any) -> redis.Redis:
    """A client for asking a local server whether it answers, and what it says: short
    timeouts and no retries (redis-py retries a refused connection three times with
    back-off by default, 3.5 s per question to a server that is down)."""
    return redis.Redis(
        host=host,
        port=port,
        socket_timeout=2,
        socket_connect_timeout=1,
        retry=Retry(NoBackoff(), 0),
        **options,
    )


def redis_flags(port: int, home: Path) -> list[str]:
    """The options every local Redis gets, a single server or a node of the local cluster
    (README › The local stack): loopback only, data and logs in `home`, AOF."""
    home.mkdir(parents=True, exist_ok=True)
    return [
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(home.resolve()),
        "--daemonize",
        "no",
        # Redis is a projection of Kafka (rebuildable), but losing it costs a replay:
        # an append-only file synced every second keeps restarts cheap.
        "--appendonly",
        "yes",
        "--appendfsync",
        "everysec",
        "--save",
        "",
        "--protected-mode",
        "yes",
        # An org's `ids` hash (one field per usage event) is read and written once per
        # event; as a listpack every access scans it, so small hashes switch to a real
        # hash table earlier than 512 entries: Redis CPU per event 18 → 11 µs measured
        # (docs/benchmarks.md). Caps, members and spend hashes stay small either way.
        "--hash-max-listpack-entries",
        "128",
    ]


def running_port(pid: int) -> int | None:
    """The port a running redis-server listens on, from its process title (or its
    `--port` argument when the title was not rewritten); None if it cannot be told."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    arguments = cmdline.split(b"\x00")
    if b"--port" in arguments[:-1]:
        value = arguments[arguments.index(b"--port") + 1]
        return int(value) if value.isdigit() else None
    found = _TITLE_PORT.search(cmdline)
    return int(found[1]) if found else None


class RedisServer:
    def __init__(self, var_dir: Path, endpoint: Endpoint) -> None:
        self.home = var_dir / "redis"
        self.endpoint = endpoint
        self.pid_file = self.home / "redis.pid"
        self.log_file = self.home / "redis.log"

    def command(self, binary: str) -> list[str]:
        return [binary, *redis_flags(self.endpoint.port, self.home)]
