"""The gate's own Redis connection (`metering/api/gate_script.py`): replies go to their
callers in order, however many are in flight; NOSCRIPT loads the script; an error reply
raises; a lost connection fails its calls and the next call connects again."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from metering.api.gate_script import ScriptConnection
from tests.conftest import RunningStack

# A script Redis has never seen (a fresh comment): the first call meets NOSCRIPT.
ECHO = "-- {}\nreturn ARGV[1] .. '|' .. KEYS[1]"


def test_replies_go_to_their_callers_and_noscript_loads_the_script(stack: RunningStack) -> None:
    async def run() -> None:
        connection = ScriptConnection.for_url(
            stack.settings.redis_url, ECHO.format(uuid.uuid4().hex)
        )
        assert connection is not None
        try:
            replies = await asyncio.gather(*(connection([f"k{n}"], [f"a{n}"]) for n in range(200)))
            assert replies == [f"a{n}|k{n}".encode() for n in range(200)]
        finally:
            await connection.aclose()

    asyncio.run(run())


def test_an_error_raises_and_a_lost_connection_is_replaced(stack: RunningStack) -> None:
    async def run() -> None:
        failing = ScriptConnection.for_url(
            stack.settings.redis_url, "return redis.error_reply('boom')"
        )
        echo = ScriptConnection.for_url(stack.settings.redis_url, ECHO.format("lost"))
        assert failing is not None and echo is not None
        try:
            with pytest.raises(ResponseError, match="boom"):
                await failing([], [])
            assert await echo(["k"], ["a"]) == b"a|k"
            protocol = echo._protocol
            assert protocol is not None and protocol.transport is not None
            protocol.transport.abort()
            await asyncio.sleep(0.05)  # the loop tells the protocol
            with pytest.raises(RedisConnectionError):
                await protocol.send(b"PING\r\n")
            assert await echo(["k"], ["b"]) == b"b|k"  # on a new connection
            assert echo._protocol is not protocol
        finally:
            await failing.aclose()
            await echo.aclose()

    asyncio.run(run())


@pytest.mark.parametrize(
    "url",
    ["rediss://localhost:6379/0", "unix:///tmp/redis.sock", "redis://localhost/0?socket_timeout=3"],
)
def test_only_plain_urls_are_served_this_way(url: str) -> None:
    """Anything else keeps redis-py, which knows TLS, sockets and options."""
    assert ScriptConnection.for_url(url, "return 1") is None
    assert ScriptConnection.for_url("redis://user:pw@localhost:6380/2", "return 1") is not None
