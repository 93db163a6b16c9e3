"""Revoked service tokens: a deny-list in Redis, checked on every request.

`metering token revoke --service NAME` records the moment (Unix seconds) NAME's tokens
were revoked; a service token of NAME issued at or before that moment is refused (401).
A token issued afterwards works: re-keying a service is revoke, then issue. Member
tokens need no list: a member's rights come from the org's member list on every request,
so removing the member is their revocation.

Each API process keeps the list in memory and re-reads it at most every
REFRESH_S seconds (one HGETALL a second, not a round trip per gate call), so a revocation
takes effect everywhere within about a second."""

from __future__ import annotations

import asyncio
import time

import redis
from redis.asyncio import Redis as AsyncRedis

REFRESH_S = 1.0


def revocations_key(prefix: str) -> str:
    """Hash: service name → Unix seconds of its revocation. Not org-scoped."""
    return f"{prefix}metering:revoked_services"


def revoke(client: redis.Redis, prefix: str, service: str, at: int) -> None:
    client.hset(revocations_key(prefix), service, str(at))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def revoked(client: redis.Redis, prefix: str) -> dict[str, int]:
    raw = client.hgetall(revocations_key(prefix))
    return {_text(name): int(moment) for name, moment in raw.items()}


class Revocations:
    """The deny-list as one API process sees it, at most REFRESH_S seconds old."""

    def __init__(self, client: AsyncRedis, prefix: str) -> None:
        self._client = client
        self._key = revocations_key(prefix)
        self._revoked: dict[str, int] = {}
        self._read_at = float("-inf")
        self._lock = asyncio.Lock()

    async def is_revoked(self, service: str, issued_at: int) -> bool:
        if time.monotonic() - self._read_at >= REFRESH_S:
            async with self._lock:  # one read at a time; the others use its result
                if time.monotonic() - self._read_at >= REFRESH_S:
                    raw = await self._client.hgetall(self._key)
                    self._revoked = {_text(k): int(v) for k, v in raw.items()}
                    self._read_at = time.monotonic()
        moment = self._revoked.get(service)
        return moment is not None and issued_at <= moment
