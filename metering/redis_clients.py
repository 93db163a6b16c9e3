"""Every process's Redis client, for one server or a Redis Cluster, and which Redis
failures are transient (retried, never turned into a verdict on an event).

`METERING_REDIS_CLUSTER=true` (with `METERING_REDIS_URL` naming any one node) gives
redis-py's cluster clients: they learn the slot map from that node, route each command
by its key's hash slot, group a pipeline's commands per node, and follow `MOVED` and
`ASK` (a slot that moved, or is moving). Every key of an org shares the `{org_id}` hash
tag (`metering.enforcement.keys`), so one org's script runs on one node.

The clients are typed as the single-server classes: the cluster classes offer the same
commands, and the few places that need more than commands (the hot path's own
pipelining, the gate's own connection) ask `is_cluster` first.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from threading import Event
from typing import Any, cast

import redis
import redis.asyncio
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.exceptions import (
    AskError,
    ClusterError,
    ReadOnlyError,
    RedisClusterException,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from metering.retry import backoff_s
from metering.settings import Settings

log = logging.getLogger("metering.redis")

# What a cluster answers while a slot moves or a primary fails over. redis-py's cluster
# client already retries these a few times; what is still failing after that is
# retried by our callers with their back-off (metering/retry.py), like a lost
# connection — never dead-lettered: the same call succeeds once the cluster settles.
#   AskError (and its subclass MovedError): a slot's owner changed;
#   TryAgainError: a script's keys are split by a slot migration in progress;
#   ClusterError (ClusterDownError, MasterDownError): slots not covered during failover;
#   ReadOnlyError: a write reached a primary that has just been demoted;
#   RedisClusterException: e.g. no node reachable for a slot.
REDIS_RETRYABLE: tuple[type[Exception], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    OSError,
    AskError,
    TryAgainError,
    ClusterError,
    ReadOnlyError,
    RedisClusterException,
)

# What the API answers 503 (with Retry-After) rather than 500: the Redis failures above,
# not any OSError of the process.
REDIS_UNAVAILABLE: tuple[type[Exception], ...] = tuple(
    error for error in REDIS_RETRYABLE if error is not OSError
)
REDIS_UNAVAILABLE_DETAIL = "Redis is unavailable or moving data: retry shortly"

# The same situations when a script meets them inside Redis: the script's error reply
# names them in its text, without the reply prefix redis-py maps to a class.
_TRANSIENT_TEXTS = (
    "TRYAGAIN",
    "MOVED",
    "ASK ",
    "CLUSTERDOWN",
    "MASTERDOWN",
    "READONLY",
    "LOADING",
    "non local key",
    "cluster is down",
)


class RedisUnsettled(RedisConnectionError):
    """A reply said the cluster is moving a slot or failing over: retry the call."""


def is_transient(reply: object) -> bool:
    """A reply (or an error raised) that says: the same call will succeed later."""
    if isinstance(reply, REDIS_RETRYABLE):
        return True
    if isinstance(reply, redis.ResponseError):
        text = str(reply)
        return any(marker in text for marker in _TRANSIENT_TEXTS)
    return False


def raise_transient(replies: Iterable[Any]) -> None:
    """Raise the first reply that is a transient cluster error (as `RedisUnsettled`, a
    connection error every caller already retries); other error replies stay in place
    for the caller to judge (e.g. a corrupt counter: that org's events dead-lettered)."""
    for reply in replies:
        if isinstance(reply, Exception) and is_transient(reply):
            raise RedisUnsettled(f"Redis is not settled: {reply}") from reply


def refresh_slots(client: object) -> None:
    """After a transient failure of a cluster client: read the slot map again now.

    redis-py re-reads it after most failures, but not when a pipeline of raw EVALSHA
    calls meets a primary that died: it would go on sending that node's scripts to it
    after its replica took over (measured: never recovered). A failure to read the map
    is left to the caller's next attempt."""
    if isinstance(client, redis.RedisCluster):
        try:
            client.nodes_manager.initialize()
        except REDIS_RETRYABLE as exc:
            log.warning("reading the Redis Cluster slot map failed: %s", exc)


async def refresh_slots_async(client: object) -> None:
    """`refresh_slots` for an asyncio cluster client."""
    if isinstance(client, AsyncRedisCluster):
        try:
            await client.nodes_manager.initialize()
        except REDIS_RETRYABLE as exc:
            log.warning("reading the Redis Cluster slot map failed: %s", exc)


def is_cluster(client: object) -> bool:
    return isinstance(client, (redis.RedisCluster, AsyncRedisCluster))


def sync_client(settings: Settings, **options: Any) -> redis.Redis:
    """A synchronous client of the configured Redis (or Redis Cluster)."""
    if settings.redis_cluster:
        return cast(redis.Redis, redis.RedisCluster.from_url(settings.redis_url, **options))
    return redis.Redis.from_url(settings.redis_url, **options)


def sync_client_when_reachable(settings: Settings, stop: Event) -> redis.Redis | None:
    """`sync_client`, waiting with the back-off while no node answers: a synchronous
    cluster client reads the slot map when it is created (a single-server client, and
    the asyncio cluster client, connect on first use instead). None if `stop` is set
    first."""
    attempt = 0
    while True:
        try:
            return sync_client(settings)
        except REDIS_RETRYABLE as exc:
            delay = backoff_s(attempt)
            log.warning("Redis Cluster not reachable (%s); retrying in %.1f s", exc, delay)
            if stop.wait(delay):
                return None
            attempt += 1


def async_client(settings: Settings, **options: Any) -> redis.asyncio.Redis:
    """An asyncio client of the configured Redis (or Redis Cluster)."""
    if settings.redis_cluster:
        return cast(redis.asyncio.Redis, AsyncRedisCluster.from_url(settings.redis_url, **options))
    return redis.asyncio.Redis.from_url(settings.redis_url, **options)
