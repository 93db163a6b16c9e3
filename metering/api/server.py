"""Serving the API: uvicorn, with the limits a public endpoint needs.

What uvicorn and FastAPI provide is used as is: FastAPI's `max_body_size` (413 for a
body over METERING_HTTP_MAX_BODY_BYTES as it is read, e.g. a chunked one), uvicorn's
`limit_concurrency` (503 beyond METERING_HTTP_MAX_CONCURRENCY connections and requests)
and keep-alive timeout. What neither has, for the httptools parser uvicorn uses here, is
added by `GuardedProtocol`:

- a `Content-Length` over METERING_HTTP_MAX_BODY_BYTES: 413 as soon as the headers are
  in, before the application runs or a byte of the body is read (FastAPI refuses it too,
  but answers in plain text and only once the application reads the body);

- a request line and headers larger than METERING_HTTP_MAX_HEADER_BYTES, or more than
  METERING_HTTP_MAX_HEADERS headers: 431, and the connection is closed — counted as the
  bytes arrive, so a 4 MB header is refused at 16 KB, not buffered;
- headers not complete within METERING_HTTP_HEADER_TIMEOUT_S of the connection (or of
  the first byte of a later request on it): 408 and closed (a connection that never
  sent a byte is just closed) — slow-loris connections cannot pile up;
- a body not complete within METERING_HTTP_BODY_TIMEOUT_S of its headers: 408 and
  closed, whatever the application was waiting for.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, ClassVar

import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from metering.settings import Settings

KEEP_ALIVE_S = 5  # uvicorn's default: an idle keep-alive connection is closed after it


@dataclass(frozen=True)
class HttpLimits:
    max_header_bytes: int
    max_headers: int
    header_timeout_s: float
    body_timeout_s: float
    max_body_bytes: int

    @classmethod
    def of(cls, settings: Settings) -> HttpLimits:
        return cls(
            settings.http_max_header_bytes,
            settings.http_max_headers,
            settings.http_header_timeout_s,
            settings.http_body_timeout_s,
            settings.http_max_body_bytes,
        )


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with header limits and read timeouts (module doc).
    `limits` is set on a subclass per server (`guarded_protocol`)."""

    limits: ClassVar[HttpLimits]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._reading_headers = True  # from the connection (or a request's first byte)
        self._request_started = False  # a byte of the request arrived (it is not idle)
        self._header_bytes = 0
        self._header_count = 0
        self._too_large: str | None = None  # why the headers are refused, once known
        self._refused = False
        self._header_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None

    # -- the connection ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_timer = self.loop.call_later(
            self.limits.header_timeout_s, self._headers_too_slow
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # answered and closing: whatever else arrives is not read
        counting = self._reading_headers
        if counting:
            self._header_bytes += len(data)
        super().data_received(data)
        # Still in the headers with more than the limit received: refused now, before
        # the parser buffers any more of them.
        if counting and self._reading_headers and self._header_bytes > self.limits.max_header_bytes:
            self._refuse(431, f"request headers over {self.limits.max_header_bytes} bytes")

    # -- parser callbacks ---------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._reading_headers = True
        self._request_started = True
        self._header_count = 0
        if self._header_timer is None:  # a later request on a kept-alive connection
            self._header_bytes = 0
            self._header_timer = self.loop.call_later(
                self.limits.header_timeout_s, self._headers_too_slow
            )

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > self.limits.max_headers:
            self._too_large = f"more than {self.limits.max_headers} request headers"
            return  # not kept: refused once the headers end
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._reading_headers = False
        self._request_started = False
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if self._too_large is None and size > self.limits.max_header_bytes:
            self._too_large = f"request headers over {self.limits.max_header_bytes} bytes"
        if self._too_large is not None:
            self._refuse(431, self._too_large)
            return  # the application never sees this request
        length = next((v for n, v in self.headers if n == b"content-length"), b"0")
        if not length.isdigit() or int(length) > self.limits.max_body_bytes:
            self._refuse(413, f"request body over {self.limits.max_body_bytes} bytes")
            return
        super().on_headers_complete()
        if self._body_timer is not None:
            self._body_timer.cancel()
        self._body_timer = self.loop.call_later(self.limits.body_timeout_s, self._body_too_slow)

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._refused:
            return
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        super().on_message_complete()

    # -- refusals -----------------------------------------------------------------------

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if not self._reading_headers or self.transport.is_closing():
            return
        if not self._request_started:
            self.transport.close()  # never said a word: nothing to answer
        else:
            self._refuse(
                408, f"request headers not received within {self.limits.header_timeout_s:g} s"
            )

    def _body_too_slow(self) -> None:
        self._body_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_started:
            self._refuse(408, f"request body not received within {self.limits.body_timeout_s:g} s")
        else:
            self.transport.close()  # answered already; the rest of the body is not read

    def _refuse(self, status: int, detail: str) -> None:
        """Answer `status` with a JSON detail and close the connection."""
        if self._refused:
            return
        self._refused = True
        self._cancel_timers()
        body = json.dumps({"detail": detail}).encode()
        head = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}".encode()]
        head += [name + b": " + value for name, value in self.server_state.default_headers]
        head += [
            b"content-type: application/json",
            b"content-length: " + str(len(body)).encode(),
            b"connection: close",
        ]
        self.transport.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
        self.transport.close()
        if self.cycle is not None and not self.cycle.response_complete:
            # The application, if it is waiting for the body, gets a disconnect.
            self.cycle.disconnected = True
            self.cycle.message_event.set()

    def _cancel_timers(self) -> None:
        for timer in (self._header_timer, self._body_timer):
            if timer is not None:
                timer.cancel()
        self._header_timer = self._body_timer = None


def guarded_protocol(limits: HttpLimits) -> type[GuardedProtocol]:
    """A protocol class for one server, carrying its limits (uvicorn instantiates the
    class it is given with its own arguments)."""
    return type("GuardedHttpToolsProtocol", (GuardedProtocol,), {"limits": limits})


def server_config(app: FastAPI, settings: Settings, host: str, port: int) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        http=guarded_protocol(HttpLimits.of(settings)),
        limit_concurrency=settings.http_max_concurrency,
        timeout_keep_alive=KEEP_ALIVE_S,
    )


def serve(app: FastAPI, settings: Settings, host: str, port: int) -> None:
    """Run the API until SIGTERM/SIGINT."""
    uvicorn.Server(server_config(app, settings, host, port)).run()
