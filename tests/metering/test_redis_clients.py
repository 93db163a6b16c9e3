"""Which Redis answers are transient (retried, never a verdict on an event), and the
clients each setting gives. The cluster's own behaviour is tested on a real cluster
(tests/metering/enforcement/test_scripts_on_cluster.py, tests/e2e/test_redis_cluster.py)."""

from __future__ import annotations

from threading import Event

import pytest
import redis
import redis.asyncio
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.exceptions import (
    ClusterDownError,
    MovedError,
    NoScriptError,
    ReadOnlyError,
    RedisClusterException,
    ResponseError,
    TryAgainError,
)

from metering.redis_clients import (
    RedisUnsettled,
    async_client,
    is_cluster,
    is_transient,
    raise_transient,
    sync_client,
    sync_client_when_reachable,
)
from metering.settings import Settings


@pytest.mark.parametrize(
    "reply",
    [
        TryAgainError("Multiple keys request during rehashing of slot"),
        MovedError("3999 127.0.0.1:7001"),
        ClusterDownError("The cluster is down"),
        ReadOnlyError("You can't write against a read only replica."),
        redis.ConnectionError("Connection refused"),
        # What a script meets inside Redis comes back as a plain error reply:
        ResponseError("Script attempted to access a non local key in a cluster node script"),
        ResponseError("TRYAGAIN Multiple keys request during rehashing of slot"),
        ResponseError("ERR Script attempted to execute a command while the cluster is down"),
    ],
)
def test_cluster_and_connection_answers_are_transient(reply: Exception) -> None:
    assert is_transient(reply)
    with pytest.raises(RedisUnsettled):
        raise_transient([b"ok", reply])


@pytest.mark.parametrize(
    "reply",
    [
        ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"),
        ResponseError("ERR apply_usage: invalid partition"),
        NoScriptError("No matching script. Please use EVAL."),  # loaded and run again
    ],
)
def test_an_org_s_own_failure_is_not_transient(reply: Exception) -> None:
    """These stay in place: the caller dead-letters that org's events (or reloads)."""
    assert not is_transient(reply)
    raise_transient([b"ok", reply])  # nothing raised


def test_a_transient_error_is_one_every_retry_loop_already_catches() -> None:
    assert issubclass(RedisUnsettled, redis.ConnectionError)


def test_the_setting_chooses_the_client() -> None:
    single = Settings(redis_url="redis://127.0.0.1:6399/0")
    cluster = single.model_copy(update={"redis_cluster": True})
    assert type(sync_client(single)) is redis.Redis
    assert type(async_client(single)) is redis.asyncio.Redis
    assert not is_cluster(sync_client(single))
    # A cluster client learns the slot map from the node when created: none answers here.
    with pytest.raises(RedisClusterException):
        sync_client(cluster)
    stop = Event()
    stop.set()
    assert sync_client_when_reachable(cluster, stop) is None  # gave up when told to
    assert is_cluster(AsyncRedisCluster(host="127.0.0.1", port=6399))


def test_a_cluster_url_must_name_database_0() -> None:
    with pytest.raises(ValueError, match="only database 0"):
        Settings(redis_url="redis://127.0.0.1:7000/2", redis_cluster=True)
