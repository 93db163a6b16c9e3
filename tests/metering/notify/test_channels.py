"""One webhook attempt against a real HTTP receiver on loopback: which answers are
delivered, retried (timeouts, connection errors, 408, 429, 5xx — with the receiver's
Retry-After when it gives seconds) or final (other 4xx, redirects), and that the
signature verifies with the `standardwebhooks` verifier."""

from __future__ import annotations

import asyncio
import json

from standardwebhooks.webhooks import Webhook

from metering.notify.channels import Outcome, Verdict, WebhookSender
from metering.stack.process import free_port
from schemas.outputs import DeliveryFailure
from tests.e2e.receivers import WebhookReceiver

SECRET = "whsec_" + "QUJD" * 8  # base64 of 24 bytes


def attempts(receiver: WebhookReceiver, paths: list[str], timeout_s: float = 2.0) -> list[Outcome]:
    async def run() -> list[Outcome]:
        sender = WebhookSender(timeout_s=timeout_s, concurrency=2, allow_private=True)
        try:
            body = json.dumps({"kind": "threshold_reached"})
            return [await sender.send(receiver.url(p), [SECRET], f"id-{p}", body) for p in paths]
        finally:
            await sender.close()

    return asyncio.run(run())


def test_answers_decide_delivered_retry_or_final() -> None:
    statuses = {
        "/ok": 200,
        "/accepted": 202,
        "/busy": 429,
        "/slow": 408,
        "/down": 503,
        "/boom": 500,
        "/gone": 410,
        "/missing": 404,
        "/moved": 302,
    }
    receiver = WebhookReceiver(
        answer=lambda _n, path: statuses[path], refusal_headers={"Retry-After": "7"}
    ).start()
    try:
        found = attempts(receiver, list(statuses))
    finally:
        receiver.stop()
    verdicts = {
        path: (o.verdict, o.response_status) for path, o in zip(statuses, found, strict=True)
    }
    assert verdicts == {
        "/ok": (Verdict.DELIVERED, 200),
        "/accepted": (Verdict.DELIVERED, 202),
        "/busy": (Verdict.RETRY, 429),
        "/slow": (Verdict.RETRY, 408),
        "/down": (Verdict.RETRY, 503),
        "/boom": (Verdict.RETRY, 500),
        "/gone": (Verdict.FINAL, 410),
        "/missing": (Verdict.FINAL, 404),
        "/moved": (Verdict.FINAL, 302),  # a redirect is not followed
    }
    by_path = dict(zip(statuses, found, strict=True))
    assert by_path["/busy"].retry_after_s == 7.0  # the receiver's Retry-After, in seconds
    assert {by_path[p].reason for p in ("/gone", "/missing", "/moved")} == {DeliveryFailure.REFUSED}
    assert by_path["/boom"].error.startswith("HTTP 500")
    assert len(receiver.requests) == len(statuses)  # one request each: no hidden retries


def test_a_retry_after_that_is_a_date_leaves_the_back_off_to_us() -> None:
    receiver = WebhookReceiver(
        answer=lambda _n, _path: 429,
        refusal_headers={"Retry-After": "Wed, 21 Oct 2026 07:28:00 GMT"},
    ).start()
    try:
        (found,) = attempts(receiver, ["/busy"])
    finally:
        receiver.stop()
    assert (found.verdict, found.retry_after_s) == (Verdict.RETRY, None)


def test_no_answer_is_retried() -> None:
    slow = WebhookReceiver(delay_s=1.5).start()
    try:
        (timed_out,) = attempts(slow, ["/hook"], timeout_s=0.3)
    finally:
        slow.stop()
    assert (timed_out.verdict, timed_out.response_status) == (Verdict.RETRY, None)
    assert "Timeout" in timed_out.error
    closed = WebhookReceiver(port=free_port())  # never started: connection refused
    (refused,) = attempts(closed, ["/hook"])
    assert (refused.verdict, refused.response_status) == (Verdict.RETRY, None)


def test_the_signature_verifies_with_the_standard_verifier() -> None:
    receiver = WebhookReceiver().start()
    try:
        attempts(receiver, ["/hook"])
    finally:
        receiver.stop()
    (request,) = receiver.requests
    verified = Webhook(SECRET).verify(request.body, request.headers)
    assert verified == {"kind": "threshold_reached"}
    assert request.headers["webhook-id"] == "id-/hook"
