"""The Lua scripts, loaded from the `.lua` files beside this module."""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
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
        for keys, args in calls:
            pipe.evalsha(script.sha, len(keys), *keys, *args)
        replies: list[Any] = await pipe.execute(raise_on_error=False)
        if any(isinstance(reply, NoScriptError) for reply in replies):
            if attempt:
                raise next(r for r in replies if isinstance(r, NoScriptError))
            script.sha = await client.script_load(script.script)
            continue
        if raise_on_error:
            for reply in replies:
                if isinstance(reply, ResponseError):
                    raise reply
        return replies
    raise AssertionError("unreachable")
