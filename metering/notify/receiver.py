"""A webhook receiver on loopback, for the demo and the benchmark: it verifies each
request's Standard Webhooks signature with the secret of the path it came to, counts
repeats by `webhook-id` (as a real receiver de-duplicates), and notes when each arrived
and when its notification was decided (the body's `timestamp`)."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError


@dataclass(frozen=True)
class Receipt:
    webhook_id: str
    path: str
    kind: str
    received_at: float  # time.time()
    decided_at: float  # the notification's publication, from the body
    verified: bool


@dataclass
class LocalReceiver:
    secrets: dict[str, str] = field(default_factory=dict)  # path → whsec_… secret
    receipts: list[Receipt] = field(default_factory=list)
    port: int = 0
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self) -> LocalReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                arrived = time.time()
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                headers = {k.lower(): v for k, v in self.headers.items()}
                receiver.take(self.path, headers, body, arrived)
                self.send_response(204)
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def take(self, path: str, headers: dict[str, str], body: bytes, arrived: float) -> None:
        secret = self.secrets.get(path)
        verified = False
        if secret is not None:
            try:
                Webhook(secret).verify(body, headers)
                verified = True
            except WebhookVerificationError:
                verified = False
        payload = json.loads(body or b"{}")
        decided = datetime.fromisoformat(payload.get("timestamp", "1970-01-01T00:00:00+00:00"))
        receipt = Receipt(
            headers.get("webhook-id", ""),
            path,
            str(payload.get("data", {}).get("kind", "")),
            arrived,
            decided.timestamp(),
            verified,
        )
        with self._lock:
            self.receipts.append(receipt)

    def unique(self) -> dict[str, Receipt]:
        """The first receipt of each webhook-id."""
        with self._lock:
            first: dict[str, Receipt] = {}
            for receipt in self.receipts:
                first.setdefault(receipt.webhook_id, receipt)
            return first

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
