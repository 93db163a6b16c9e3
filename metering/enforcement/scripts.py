"""The Lua scripts, loaded from the `.lua` files beside this module."""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from typing import Any

import redis
from redis.asyncio import Redis
from redis.commands.core import AsyncScript, Script
from redis.exceptions import NoScriptError, ResponseError


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
        pipe.evalsha(sha, len(keys), *keys, *args)


def _missing_script(replies: list[Any]) -> NoScriptError | None:
    return next((r for r in replies if isinstance(r, NoScriptError)), None)


def _raise_first_error(replies: list[Any]) -> None:
    for reply in replies:
        if isinstance(reply, ResponseError):
            raise reply


async def run_pipelined(
    client: Redis,
    script: AsyncScript,
    calls: Sequence[tuple[Sequence[Any], Sequence[Any]]],
    *,
    raise_on_error: bool = True,
) -> list[Any]:
    """Run `script` once per (keys, args) of `calls`, in one pipelined round trip, by SHA.

    redis-py checks a pipeline's registered scripts with SCRIPT EXISTS before every
    execution, a second round trip per batch; here the SHA is sent as is, and after a
    NOSCRIPT (Redis restarted or its scripts flushed) the script is loaded and the whole
    pipeline run again — which callers' scripts must allow (ours are idempotent).

    With `raise_on_error=False` a call the script failed (`ResponseError`) is returned in
    its place instead of raised, so one org's failure does not stop the others'.
    Connection errors are raised either way."""
    for attempt in range(2):
        pipe = client.pipeline(transaction=False)
        _queue(pipe, script.sha, calls)
        replies: list[Any] = await pipe.execute(raise_on_error=False)
        missing = _missing_script(replies)
        if missing is not None:
            if attempt:
                raise missing
            script.sha = await client.script_load(script.script)
            continue
        if raise_on_error:
            _raise_first_error(replies)
        return replies
    raise AssertionError("unreachable")


def run_pipelined_sync(
    client: redis.Redis,
    script: Script,
    calls: Sequence[tuple[Sequence[Any], Sequence[Any]]],
    *,
    raise_on_error: bool = True,
) -> list[Any]:
    """`run_pipelined` for a synchronous client."""
    for attempt in range(2):
        pipe = client.pipeline(transaction=False)
        _queue(pipe, script.sha, calls)
        replies: list[Any] = pipe.execute(raise_on_error=False)
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
    ours are idempotent, so the caller runs them again). After a NOSCRIPT the script is
    loaded and every call run again."""

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
        if not calls:
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
        connection, self._connection = self._connection, None
        if connection is None:
            if self._calls:
                raise RuntimeError("replies() is read once")
            return []
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
        return replies
