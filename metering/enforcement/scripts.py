"""The Lua scripts, loaded from the `.lua` files beside this module."""

from __future__ import annotations

from importlib import resources

from redis.asyncio import Redis
from redis.commands.core import AsyncScript


def _source(name: str) -> str:
    return (resources.files("metering.enforcement") / "lua" / name).read_text()


class Scripts:
    """Registered once per client; redis-py runs them by SHA (EVALSHA) and reloads them
    transparently after a Redis restart (NOSCRIPT)."""

    def __init__(self, client: Redis) -> None:
        self.apply_usage: AsyncScript = client.register_script(_source("apply_usage.lua"))
        self.apply_account: AsyncScript = client.register_script(_source("apply_account.lua"))
        self.restore_usage: AsyncScript = client.register_script(_source("restore_usage.lua"))
