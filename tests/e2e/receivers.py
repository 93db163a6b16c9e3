"""Real receivers on loopback for the notification tests: an HTTP server that records
every webhook request (and answers what the test scripts), and an SMTP server
(aiosmtpd) that records every message."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from metering.stack.process import free_port


@dataclass(frozen=True)
class Request:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float  # time.time() on arrival
    answered: int

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]


@dataclass
class WebhookReceiver:
    """`answer(request_number_for_this_webhook_id, path) -> HTTP status` decides each
    answer (default 200); `delay_s` makes every answer slow; `refusal_headers` go with
    every answer that is not 2xx (e.g. a Retry-After)."""

    port: int = field(default_factory=free_port)
    answer: Callable[[int, str], int] = lambda _n, _path: 200
    delay_s: float = 0.0
    refusal_headers: dict[str, str] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self) -> WebhookReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                headers = {k.lower(): v for k, v in self.headers.items()}
                with receiver._lock:
                    seen = sum(
                        1 for r in receiver.requests if r.webhook_id == headers.get("webhook-id")
                    )
                    status = receiver.answer(seen + 1, self.path)
                    receiver.requests.append(Request(self.path, headers, body, time.time(), status))
                if receiver.delay_s:
                    time.sleep(receiver.delay_s)
                try:
                    self.send_response(status)
                    if not 200 <= status < 300:
                        for name, value in receiver.refusal_headers.items():
                            self.send_header(name, value)
                    self.send_header("content-length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the sender went away (killed, or timed out): nothing to answer

            def log_message(self, *_args: Any) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def taken(self) -> list[Request]:
        """Requests answered 2xx."""
        with self._lock:
            return [r for r in self.requests if 200 <= r.answered < 300]

    def ids(self) -> list[str]:
        return [r.webhook_id for r in self.taken()]

    def wait(self, predicate: Callable[[WebhookReceiver], bool], timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate(self):
            if time.monotonic() > deadline:
                raise AssertionError(f"receiver: timed out; got {len(self.requests)} requests")
            time.sleep(0.05)


class _Collect:
    def __init__(self) -> None:
        self.messages: list[tuple[list[str], Message]] = []

    async def handle_DATA(self, _server: SMTP, _session: Session, envelope: Envelope) -> str:  # noqa: N802
        content = envelope.content if isinstance(envelope.content, bytes) else b""
        self.messages.append(
            (list(envelope.rcpt_tos), message_from_bytes(content, policy=policy.default))
        )
        return "250 OK"


class SmtpSink:
    """aiosmtpd on loopback, no TLS offered (so the notifier sends in the clear)."""

    def __init__(self) -> None:
        self.port = free_port()
        self._handler = _Collect()
        self._controller = Controller(self._handler, hostname="127.0.0.1", port=self.port)

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    @property
    def messages(self) -> list[tuple[list[str], Message]]:
        return self._handler.messages

    def start(self) -> SmtpSink:
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()

    def wait(self, count: int, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.messages) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"SMTP: {len(self.messages)} messages, expected {count}")
            time.sleep(0.05)
