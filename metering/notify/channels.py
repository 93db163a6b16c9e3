"""One attempt to hand a notification to its receiver: a signed webhook request, or an
email to an SMTP server. Each returns an `Outcome` the notifier turns into a record: the
receiver took it, try again later, or give up (with the reason)."""

from __future__ import annotations

import asyncio
import enum
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from urllib.parse import unquote, urlsplit

import aiohttp
import aiosmtplib
from standardwebhooks.webhooks import Webhook

from metering.notify.addresses import AddressNotAllowed, GuardedResolver, check_literal
from schemas.outputs import DeliveryFailure

USER_AGENT = "metering-notifier/1 (+Standard Webhooks)"
MAX_ERROR = 300  # characters of a receiver's error body kept in the record
RETRYABLE_4XX = frozenset({408, 429})


class Verdict(enum.Enum):
    DELIVERED = "delivered"
    RETRY = "retry"
    FINAL = "final"


@dataclass(frozen=True)
class Outcome:
    verdict: Verdict
    response_status: int | None = None
    latency_ms: int | None = None
    error: str = ""
    reason: DeliveryFailure | None = None  # for FINAL
    retry_after_s: float | None = None  # a 429/503's Retry-After, when given in seconds


def _elapsed_ms(started: float) -> int:
    return round((time.perf_counter() - started) * 1000)


def _retry_after(value: str | None) -> float | None:
    try:
        return max(float(value), 0.0) if value is not None else None
    except ValueError:
        return None  # an HTTP date: not worth parsing, our own back-off applies


class WebhookSender:
    """Signs with the `standardwebhooks` package and posts with aiohttp. Redirects are
    not followed (a 3xx is final: following one could lead anywhere, past the address
    check of the URL the owner registered)."""

    def __init__(self, *, timeout_s: float, concurrency: int, allow_private: bool) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._concurrency = concurrency
        self._allow_private = allow_private
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:  # inside the running loop
            resolver = None if self._allow_private else GuardedResolver()
            connector = aiohttp.TCPConnector(limit=self._concurrency, resolver=resolver)
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=self._timeout, trust_env=False
            )
        return self._session

    async def send(self, url: str, secrets: list[str], msg_id: str, body: str) -> Outcome:
        """`secrets`: the org's current secret, and after a rotation the previous one
        too — one signature each, space-separated (receivers accept any that verifies)."""
        now = datetime.now(UTC)
        headers = {
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": " ".join(Webhook(s).sign(msg_id, now, body) for s in secrets),
        }
        started = time.perf_counter()
        try:
            if not self._allow_private:
                check_literal(url)
            async with self._client().post(
                url, data=body.encode(), headers=headers, allow_redirects=False
            ) as response:
                status = response.status
                latency = _elapsed_ms(started)
                if 200 <= status < 300:
                    return Outcome(Verdict.DELIVERED, status, latency)
                text = (await response.text(errors="replace"))[:MAX_ERROR]
                error = f"HTTP {status}: {text}".strip()
                if status >= 500 or status in RETRYABLE_4XX:
                    retry_after = _retry_after(response.headers.get("retry-after"))
                    return Outcome(Verdict.RETRY, status, latency, error, retry_after_s=retry_after)
                return Outcome(Verdict.FINAL, status, latency, error, DeliveryFailure.REFUSED)
        except AddressNotAllowed as exc:
            return Outcome(
                Verdict.FINAL,
                None,
                _elapsed_ms(started),
                str(exc),
                DeliveryFailure.ADDRESS_NOT_ALLOWED,
            )
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            error = f"{type(exc).__name__}: {exc}".strip()[:MAX_ERROR]
            return Outcome(Verdict.RETRY, None, _elapsed_ms(started), error)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


@dataclass(frozen=True)
class SmtpServer:
    """METERING_SMTP_URL: `smtp://[user:pass@]host[:port]` — STARTTLS when the server
    offers it (aiosmtplib's default) — or `smtps://…`, TLS from the first byte."""

    hostname: str
    port: int
    use_tls: bool
    username: str | None
    password: str | None

    @classmethod
    def from_url(cls, url: str) -> SmtpServer:
        parts = urlsplit(url)
        if parts.scheme not in {"smtp", "smtps"} or not parts.hostname:
            raise ValueError("METERING_SMTP_URL must be smtp://host[:port] or smtps://host[:port]")
        use_tls = parts.scheme == "smtps"
        return cls(
            hostname=parts.hostname,
            port=parts.port or (465 if use_tls else 25),
            use_tls=use_tls,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
        )

    def describe(self) -> str:
        return f"{self.hostname}:{self.port}"


class EmailSender:
    def __init__(self, server: SmtpServer, *, timeout_s: float) -> None:
        self._server = server
        self._timeout_s = timeout_s

    async def send(self, message: EmailMessage, recipients: list[str]) -> Outcome:
        server = self._server
        started = time.perf_counter()
        try:
            refused, _reply = await aiosmtplib.send(
                message,
                recipients=recipients,
                hostname=server.hostname,
                port=server.port,
                username=server.username,
                password=server.password,
                use_tls=server.use_tls,
                timeout=self._timeout_s,
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = [error.code for error in exc.recipients]
            error = "; ".join(f"{e.recipient}: {e.code} {e.message}" for e in exc.recipients)
            return self._reply(min(codes), error[:MAX_ERROR], started)
        except aiosmtplib.SMTPResponseException as exc:
            return self._reply(exc.code, f"{exc.code} {exc.message}"[:MAX_ERROR], started)
        except (aiosmtplib.SMTPException, TimeoutError, OSError) as exc:
            error = f"{type(exc).__name__}: {exc}".strip()[:MAX_ERROR]
            return Outcome(Verdict.RETRY, None, _elapsed_ms(started), error)
        # Some recipients refused, others taken: the message went out; say who was not.
        error = "; ".join(f"{who}: {r.code} {r.message}" for who, r in refused.items())
        return Outcome(Verdict.DELIVERED, 250, _elapsed_ms(started), error[:MAX_ERROR])

    @staticmethod
    def _reply(code: int, error: str, started: float) -> Outcome:
        """SMTP 4xx is transient (retry), 5xx permanent (give up)."""
        if 400 <= code < 500:
            return Outcome(Verdict.RETRY, code, _elapsed_ms(started), error)
        return Outcome(Verdict.FINAL, code, _elapsed_ms(started), error, DeliveryFailure.REFUSED)

    def describe(self) -> str:
        return self._server.describe()


async def close_quietly(sender: WebhookSender) -> None:
    try:
        await asyncio.wait_for(sender.close(), 5)
    except Exception:
        return
