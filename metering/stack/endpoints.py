"""Where the services are, read from the SPEC §4 settings."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from metering.stack.process import StackError

LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    @property
    def is_local(self) -> bool:
        return self.host in LOCAL_HOSTS

    @property
    def connect_host(self) -> str:
        # Our servers bind IPv4 loopback; "localhost" may resolve to ::1 first.
        return "127.0.0.1" if self.is_local else self.host

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def kafka_endpoint(bootstrap: str) -> Endpoint:
    """The first bootstrap server. A list of several means a real cluster, never started
    by the local stack."""
    first = bootstrap.split(",", maxsplit=1)[0].strip()
    host, sep, port = first.rpartition(":")
    if not sep or not port.isdigit():
        raise StackError(f"METERING_KAFKA_BOOTSTRAP {bootstrap!r} is not host:port[,host:port…]")
    return Endpoint(host.strip("[]") or "localhost", int(port))


def redis_endpoint(url: str) -> Endpoint:
    parts = urlsplit(url)
    if parts.scheme not in {"redis", "rediss"}:
        raise StackError(f"METERING_REDIS_URL {url!r} must start with redis:// or rediss://")
    return Endpoint(parts.hostname or "localhost", parts.port or 6379)
