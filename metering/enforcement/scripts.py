"""The Lua scripts, loaded from the `.lua` files beside this module."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from importlib import resources
from typing import Any

import redis
from redis.asyncio import Redis
from redis.commands.core import AsyncScript, Script
from redis.exceptions import NoScriptError, ResponseError

from metering.redis_clients import (
    REDIS_RETRYABLE,
    is_cluster,
    raise_transient,
    refresh_slots,
    refresh_slots_async,
)


def _source(name: str) -> str:
    return (resources.files("metering.enforcement") / "lua" / name).read_text()


class Scripts:
    """Registered once per client; redis-py runs them by SHA (EVALSHA) and reloads them
    transparently after a Redis restart (NOSCRIPT)."""

    def __init__(self, client: Redis) -> None:
        self.apply_usage: AsyncScript = client.register_script(_source("apply_usage.lua"))
        self.apply_account: AsyncScript = client.register_script(_source("apply_account.lua"))
        self.restore_usage: AsyncScript = client.register_script(_source("restore_usage.lua"))


def usage_script(client: redis.Redis) -> Script:
    """`apply_usage.lua` for a synchronous client (the usage hot path's thread)."""
    return client.register_script(_source("apply_usage.lua"))


def _queue(pipe: Any, sha: str, calls: Sequence[tuple[Sequence[Any], Sequence[Any]]]) -> None:
    for keys, args in calls:
        # As a raw command: redis-py's cluster pipeline blocks its `evalsha` method (it
        # cannot load scripts on the nodes), but routes a raw EVALSHA by its keys' slot;
        # loading is done here (NOSCRIPT below).
        pipe.execute_command("EVALSHA", sha, len(keys), *keys, *args)


def _missing_script(replies: list[Any]) -> NoScriptError | None:
    return next((r for r in replies if isinstance(r, NoScriptError)), None)


def _raise_first_error(replies: list[Any]) -> None:
    for reply in replies:
        if isinstance(reply, ResponseError):
            raise reply


async def run_queued(
    client: Redis, scripts: Sequence[AsyncScript], queue: Callable[[Any], None]
) -> list[Any]:
    """The commands `queue` puts on a pipeline (not a transaction), in one round trip;
    `scripts` are the scripts among them, queued by SHA with `queue_script`. Every reply
    in its place, error replies included — except the ones below.

    redis-py checks a pipeline's registered scripts with SCRIPT EXISTS before every
    execution, a second round trip per batch; here SHAs are sent as they are, and after a
    NOSCRIPT (Redis restarted, its scripts flushed, or a cluster node that never ran
    them) the scripts are loaded and the whole pipeline run again — which the queued
    commands must allow (ours are idempotent).

    A connection error is raised, and so is a reply saying a Redis Cluster is moving a
    slot or failing over (`RedisUnsettled`): the caller retries, it is never one org's
    failure. On a cluster the pipeline is redis-py's: commands grouped per node (by hash
    slot), `MOVED`/`ASK` followed."""
    for attempt in range(2):
        pipe = client.pipeline(transaction=False)
        queue(pipe)
        try:
            replies: list[Any] = await pipe.execute(raise_on_error=False)
            raise_transient(replies)
        except REDIS_RETRYABLE:
            await refresh_slots_async(client)
            raise
        missing = _missing_script(replies)
        if missing is not None:
            if attempt:
                raise missing
            for script in scripts:
                script.sha = await client.script_load(script.script)
            continue
        return replies
    raise AssertionError("unreachable")


def queue_script(
    pipe: Any, script: AsyncScript | Script, keys: Sequence[Any], args: Sequence[Any]
) -> None:
    """One call of `script`, by SHA, on a pipeline of `run_queued`."""
    _queue(pipe, script.sha, [(keys, args)])


async def run_pipelined(
    client: Redis, script: AsyncScript, calls: Sequence[tuple[Sequence[Any], Sequence[Any]]]
) -> list[Any]:
    """Run `script` once per (keys, args) of `calls`, in one round trip (`run_queued`);
    an error reply is raised."""

    def queue(pipe: Any) -> None:
        for keys, args in calls:
            queue_script(pipe, script, keys, args)

    replies = await run_queued(client, [script], queue)
    _raise_first_error(replies)
    return replies


def run_pipelined_sync(
    client: redis.Redis,
    script: Script,
    calls: Sequence[tuple[Sequence[Any], Sequence[Any]]],
    *,
    raise_on_error: bool = True,
) -> list[Any]:
    """Run `script` once per (keys, args) of `calls`, in one pipelined round trip, by SHA
    (synchronous client; the NOSCRIPT and cluster handling of `run_queued`). With
    `raise_on_error=False` a call the script failed (`ResponseError`) is returned in its
    place instead of raised, so one org's failure does not stop the others'."""
    for attempt in range(2):
        pipe = client.pipeline(transaction=False)
        _queue(pipe, script.sha, calls)
        try:
            replies: list[Any] = pipe.execute(raise_on_error=False)
            raise_transient(replies)
        except REDIS_RETRYABLE:
            refresh_slots(client)
            raise
        missing = _missing_script(replies)
        if missing is not None:
            if attempt:
                raise missing
            script.sha = client.script_load(script.script)
            continue
        if raise_on_error:
            _raise_first_error(replies)
        return replies
    raise AssertionError("unreachable")


class SentScriptCalls:
    """Calls of `script` sent to Redis now, in one write, and read later: the caller
    works meanwhile while Redis runs them (synchronous client). `replies()` once.

    A connection error is raised (the connection is dropped; the calls may have run:
    ours are idempotent, so the caller runs them again), as is a reply saying the
    cluster is not settled (`run_queued`). After a NOSCRIPT the script is loaded and
    every call run again.

    On a Redis Cluster the calls go to several nodes: they run, through redis-py's
    cluster pipeline, when `replies()` is read (no overlap with the caller's work)."""

    def __init__(
        self,
        client: redis.Redis,
        script: Script,
        calls: Sequence[tuple[Sequence[Any], Sequence[Any]]],
    ) -> None:
        self._client = client
        self._script = script
        self._calls = calls
        self._connection: Any = None
        self._read = False
        if not calls or is_cluster(client):
            return
        pool = client.connection_pool
        # redis-py's connection methods are untyped: the connection is held as Any.
        connection: Any = pool.get_connection()
        try:
            connection.send_packed_command(
                connection.pack_commands(
                    [("EVALSHA", script.sha, len(keys), *keys, *args) for keys, args in calls]
                )
            )
        except BaseException:
            connection.disconnect()
            pool.release(connection)
            raise
        self._connection = connection

    def replies(self) -> list[Any]:
        """Each call's reply, or the `ResponseError` Redis answered it with."""
        if self._read:
            raise RuntimeError("replies() is read once")
        self._read = True
        connection, self._connection = self._connection, None
        if connection is None:
            if not self._calls:
                return []
            return run_pipelined_sync(self._client, self._script, self._calls, raise_on_error=False)
        replies: list[Any] = []
        try:
            for _ in self._calls:
                try:
                    replies.append(connection.read_response())
                except ResponseError as exc:
                    replies.append(exc)
        except BaseException:
            connection.disconnect()  # the rest of the replies are lost with it
            raise
        finally:
            self._client.connection_pool.release(connection)
        if _missing_script(replies) is not None:
            return run_pipelined_sync(self._client, self._script, self._calls, raise_on_error=False)
        raise_transient(replies)
        return replies
