"""A local Redis 7 server for spend caps and balances."""

from __future__ import annotations

import shutil
from pathlib import Path

from metering.stack.endpoints import Endpoint
from metering.stack.process import StackError

MAIN_MARKER = "redis-server"


def check_redis_server() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        raise StackError("redis-server not found: apt-get install redis-server")
    return binary


class RedisServer:
    def __init__(self, var_dir: Path, endpoint: Endpoint) -> None:
        self.home = var_dir / "redis"
        self.endpoint = endpoint
        self.pid_file = self.home / "redis.pid"
        self.log_file = self.home / "redis.log"

    def command(self, binary: str) -> list[str]:
        self.home.mkdir(parents=True, exist_ok=True)
        return [
            binary,
            "--port",
            str(self.endpoint.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.home.resolve()),
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
