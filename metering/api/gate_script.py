"""The gate's Redis connection: one Lua script (`enforcement/lua/gate_read.lua`) run by
EVALSHA over a pipelined connection of the API's own.

Why not redis-py: a call through its asyncio client (connection pool, retry wrapper,
observability hooks, a stream reader) costs ~80 µs of CPU, more than the rest of a gate
request together; writing the command on a socket and matching replies to callers in
order costs ~15 µs. The gate sends nothing but this one script, whose reply is one bulk
string, so what is needed is small: requests are written as they come (pipelined on one
connection, no pool, no lock), replies are parsed by hiredis (the C parser redis-py
uses), and each reply resolves the oldest waiting call.

Semantics as redis-py's for what the gate sees: an error reply raises `ResponseError`;
NOSCRIPT (Redis restarted or its scripts flushed) loads the script and runs it again;
a lost connection fails every call waiting on it with `ConnectionError` (the request
answers 500, as through redis-py) and the next call connects anew. Only plain URLs are
served this way — `redis://[user:password@]host[:port][/db]` —; any other (TLS, a Unix
socket, connection options) keeps redis-py (`ScriptConnection.for_url` returns None).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import deque
from collections.abc import Sequence
from typing import cast

import hiredis
from redis.asyncio.connection import parse_url
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError

_PLAIN_URL_PARTS = frozenset({"host", "port", "db", "username", "password"})


def pack(*parts: str | bytes | int) -> bytes:
    """A command in RESP: an array of bulk strings."""
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        raw = part if isinstance(part, bytes) else str(part).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(out)


def _error(message: str) -> ResponseError:
    if message.startswith("NOSCRIPT"):
        return NoScriptError(message)
    return ResponseError(message)


class _Protocol(asyncio.Protocol):
    """Replies in the order the requests were written: each resolves the oldest call."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.waiting: deque[asyncio.Future[bytes | None]] = deque()
        self.reader = hiredis.Reader(replyError=ResponseError)
        self.lost: Exception | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, but are one.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = RedisConnectionError(f"connection to Redis lost: {exc or 'closed'}")
        while self.waiting:
            future = self.waiting.popleft()
            if not future.done():
                future.set_exception(self.lost)

    def data_received(self, data: bytes) -> None:
        # Replies are parsed by hiredis (redis-py's own C parser); `gets` is False until
        # a whole reply has arrived.
        self.reader.feed(data)
        while (value := self.reader.gets()) is not False:
            if isinstance(value, list):  # an array: never a reply to what is sent here
                assert self.transport is not None
                self.transport.abort()  # connection_lost fails every waiting call
                return
            future = self.waiting.popleft()
            if future.done():  # its caller was cancelled (e.g. the client went away)
                continue
            if isinstance(value, ResponseError):
                future.set_exception(_error(str(value)))
            else:
                future.set_result(value)

    def send(self, command: bytes) -> asyncio.Future[bytes | None]:
        if self.lost is not None or self.transport is None or self.transport.is_closing():
            raise self.lost or RedisConnectionError("connection to Redis closed")
        future: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
        self.transport.write(command)
        self.waiting.append(future)
        return future


class ScriptConnection:
    """Runs one script by EVALSHA: `await run(keys, args)` → its reply (bytes)."""

    def __init__(
        self,
        script: str,
        *,
        host: str = "localhost",
        port: int = 6379,
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self._script = script
        self._sha = hashlib.sha1(script.encode()).hexdigest()  # how Redis names a script
        self._address = (host, port)
        self._handshake: list[bytes] = []
        if password is not None:
            auth = (username, password) if username else (password,)
            self._handshake.append(pack("AUTH", *auth))
        if db:
            self._handshake.append(pack("SELECT", db))
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Lock | None = None

    @classmethod
    def for_url(cls, url: str, script: str) -> ScriptConnection | None:
        """A connection for a plain `redis://` URL; None for any other (module doc)."""
        if not url.startswith("redis://"):
            return None
        options = parse_url(url)
        if not set(options) <= _PLAIN_URL_PARTS:
            return None
        return cls(
            script,
            host=options.get("host", "localhost"),
            port=int(options.get("port", 6379)),
            db=int(options.get("db", 0)),
            username=options.get("username"),
            password=options.get("password"),
        )

    async def __call__(self, keys: Sequence[str], args: Sequence[str]) -> bytes:
        command = pack("EVALSHA", self._sha, len(keys), *keys, *args)
        protocol = await self._connected()
        try:
            reply = await protocol.send(command)
        except NoScriptError:
            await protocol.send(pack("SCRIPT", "LOAD", self._script))
            reply = await protocol.send(command)
        if not isinstance(reply, bytes):
            raise ResponseError(f"unexpected reply to the gate's script: {reply!r}")
        return reply

    async def _connected(self) -> _Protocol:
        protocol = self._protocol
        if protocol is not None and protocol.lost is None:
            return protocol
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:  # one connection attempt at a time
            protocol = self._protocol
            if protocol is None or protocol.lost is not None:
                try:
                    _, protocol = await asyncio.get_running_loop().create_connection(
                        _Protocol, *self._address
                    )
                except OSError as exc:
                    raise RedisConnectionError(f"cannot connect to Redis: {exc}") from exc
                try:
                    for command in self._handshake:  # AUTH, SELECT: +OK, or raises
                        await protocol.send(command)
                except BaseException:
                    assert protocol.transport is not None
                    protocol.transport.close()
                    raise
                self._protocol = protocol
            return protocol

    async def aclose(self) -> None:
        protocol, self._protocol = self._protocol, None
        if protocol is not None and protocol.transport is not None:
            protocol.transport.close()
