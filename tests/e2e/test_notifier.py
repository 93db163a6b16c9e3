"""Notification delivery end to end (R17, delivery): a real worker decides notifications,
a real `metering notifier` delivers them to a real HTTP receiver and a real SMTP server
on loopback; endpoints are registered through the HTTP API (in-process, real Redis and
Kafka). Retries are made short by the settings, never by mocking time."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import redis as redis_client
from fastapi.testclient import TestClient
from standardwebhooks.webhooks import Webhook

from metering.api.app import create_api
from metering.clickhouse.store import Store
from metering.enforcement.keys import OrgKeys
from metering.enforcement.state_codec import decode_account
from metering.notify.secrets import webhook_secret
from metering.settings import Settings
from schemas.outputs import Notification, NotificationKind
from schemas.validation import encode_event
from tests.e2e.pipeline import Pipeline
from tests.e2e.receivers import SmtpSink, WebhookReceiver
from tests.e2e.scenario import OWNER, account, new_org, spend
from tests.helpers import run_metering
from tests.metering.api.conftest import SECRET, bearer, token

pytestmark = pytest.mark.stack

SIGNING_KEY = "test-webhook-signing-key-0123456789abcdef"


def notifying(pipeline: Pipeline, **extra: Any) -> Pipeline:
    """The pipeline's settings for delivery tests: private addresses allowed (the
    receiver is on loopback), retries after ~0.3 s, at most 1 s apart."""
    tag = pipeline.settings.group_id.rsplit("-", 1)[-1]
    pipeline.settings = pipeline.settings.model_copy(
        update={
            "api_secret": SECRET,
            "webhook_signing_key": SIGNING_KEY,
            "webhook_allow_private": True,
            "webhook_timeout_seconds": 2.0,
            "notify_retry_base_seconds": 0.3,
            "notify_retry_max_seconds": 1.0,
            "notifier_group_id": f"notifier-test-{tag}",
            "console_url": "https://console.example",
            **extra,
        }
    )
    return pipeline


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    started = WebhookReceiver().start()
    yield started
    started.stop()


@pytest.fixture
def notifier(pipeline: Pipeline) -> Iterator[list[subprocess.Popen[bytes]]]:
    """The notifier processes a test starts (killed at the end)."""
    processes: list[subprocess.Popen[bytes]] = []
    yield processes
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


def register(settings: Settings, org: str, url: str) -> str:
    """PUT the endpoint through the API as the org's owner; wait until the worker has
    applied it (GET answers it); return the signing secret the API revealed."""
    with TestClient(create_api(settings)) as client:
        owner = bearer(token(org, OWNER["user_id"]))
        path = f"/v1/orgs/{org}/notification-endpoint"
        answer = client.put(path, json={"url": url}, headers=owner)
        assert answer.status_code == 202, answer.text
        secret: str = answer.json()["secret"]
        assert secret.startswith("whsec_")
        deadline = time.monotonic() + 30
        while client.get(path, headers=owner).status_code != 200:
            assert time.monotonic() < deadline, "the endpoint was never applied"
            time.sleep(0.1)
    return secret


def capped_org(pipeline: Pipeline, org: str, cap: str = "10.00") -> None:
    pipeline.send_accounts(
        *new_org(org), account(org, "spend_cap.set", {"user_id": None, "limit": cap})
    )
    pipeline.wait_for_gate(org, "u1", None)


def delivered(pipeline: Pipeline) -> set[str]:
    return {d["notification_id"] for d in pipeline.deliveries() if d["status"] == "delivered"}


def test_thresholds_arrive_once_each_with_valid_signatures(
    pipeline: Pipeline, receiver: WebhookReceiver, notifier: list[subprocess.Popen[bytes]]
) -> None:
    # Given an org with a 10.00 cap and its endpoint registered through the API
    notifying(pipeline)
    org = "org_hooks"
    pipeline.start_worker()
    notifier.append(pipeline.spawn("notifier"))
    capped_org(pipeline, org)
    secret = register(pipeline.settings, org, receiver.url())

    # When usage reaches 50 %, 80 % and 100 % of the cap
    pipeline.send_usage(spend(org, "u1", 5), spend(org, "u2", 3), spend(org, "u1", 2))
    pipeline.wait_for(lambda p: len(p.notifications()) == 4, what="four notifications")
    ids = {n["notification_id"] for n in pipeline.notifications()}
    receiver.wait(lambda r: set(r.ids()) >= ids)
    pipeline.wait_for(lambda p: delivered(p) >= ids, what="delivered records")

    # Then each arrives once, signed (verified with the standardwebhooks verifier), with
    # the notification's id as webhook-id and the console link
    time.sleep(1)  # anything repeated would arrive by now
    assert Counter(receiver.ids()) == dict.fromkeys(ids, 1)
    bodies = []
    for request in receiver.taken():
        body = Webhook(secret).verify(request.body, request.headers)
        assert body["data"]["notification_id"] == request.webhook_id
        assert body["data"]["console_url"] == f"https://console.example/orgs/{org}/usage"
        bodies.append(body)
    thresholds = Counter(
        (
            b["data"]["org_id"],
            b["data"]["subject"]["type"],
            b["data"]["month"],
            b["data"]["threshold"],
        )
        for b in bodies
        if b["type"] == "billing.threshold_reached"
    )
    month = bodies[0]["data"]["month"]
    assert thresholds == {(org, "org", month, t): 1 for t in ("0.5", "0.8", "1")}
    full = next(b["data"] for b in bodies if b["data"]["threshold"] == "1")
    assert (full["spend"], full["cap"]) == ("10.00", "10.00")  # exact USD strings
    assert any(b["type"] == "billing.stopped" for b in bodies)
    # a tampered body does not verify
    with pytest.raises(Exception, match="signature"):
        Webhook(secret).verify(receiver.taken()[0].body + b" ", receiver.taken()[0].headers)


def test_after_a_rotation_both_secrets_verify(
    pipeline: Pipeline, receiver: WebhookReceiver, notifier: list[subprocess.Popen[bytes]]
) -> None:
    """A receiver that has not switched to the new secret yet still verifies the
    webhooks sent after a rotation (both signatures are sent for 24 h)."""
    notifying(pipeline)
    org = "org_rotated"
    pipeline.start_worker()
    notifier.append(pipeline.spawn("notifier"))
    capped_org(pipeline, org)
    old = register(pipeline.settings, org, receiver.url())
    with TestClient(create_api(pipeline.settings)) as client:
        answer = client.put(
            f"/v1/orgs/{org}/notification-endpoint",
            json={"url": receiver.url(), "rotate_secret": True},
            headers=bearer(token(org, OWNER["user_id"])),
        )
    new = answer.json()["secret"]
    assert new != old
    store = redis_client.Redis.from_url(pipeline.settings.redis_url)
    key = OrgKeys(pipeline.settings.redis_prefix, org).account
    deadline = time.monotonic() + 30
    while b'previous_secret_id":"' not in (store.get(key) or b""):  # applied
        assert time.monotonic() < deadline, "the rotation was never applied"
        time.sleep(0.1)
    store.close()

    pipeline.send_usage(spend(org, "u1", 6))
    receiver.wait(lambda r: len(r.taken()) == 1)
    (request,) = receiver.taken()
    assert len(request.headers["webhook-signature"].split(" ")) == 2
    for secret in (old, new):
        Webhook(secret).verify(request.body, request.headers)


def test_a_receiver_failing_twice_gets_the_same_id_three_times(
    pipeline: Pipeline, notifier: list[subprocess.Popen[bytes]]
) -> None:
    # Given a receiver that answers 500 to the first two requests of each webhook
    notifying(pipeline)
    pipeline.sink = True  # the attempts go to ClickHouse, and so to the Usage page
    receiver = WebhookReceiver(answer=lambda n, _path: 500 if n <= 2 else 200).start()
    try:
        org = "org_flaky"
        pipeline.start_worker()
        notifier.append(pipeline.spawn("notifier"))
        capped_org(pipeline, org)
        register(pipeline.settings, org, receiver.url())

        # When one notification is due (50 %)
        pipeline.send_usage(spend(org, "u1", 6))
        pipeline.wait_for(lambda p: len(p.notifications()) == 1)
        (notification_id,) = [n["notification_id"] for n in pipeline.notifications()]
        pipeline.wait_for(lambda p: notification_id in delivered(p), what="delivered")

        # Then it was sent three times with the same webhook-id; the third was taken
        assert [(r.webhook_id, r.answered) for r in receiver.requests] == [
            (notification_id, 500),
            (notification_id, 500),
            (notification_id, 200),
        ]
        steps = [
            (d["attempt"], d["status"], d["response_status"])
            for d in pipeline.deliveries()
            if d["notification_id"] == notification_id
        ]
        assert steps == [(1, "retrying", 500), (2, "retrying", 500), (3, "delivered", 200)]

        # …and the owners see the three attempts on the Usage page (from ClickHouse)
        pipeline.wait_caught_up()
        pipeline.stop_worker()  # its sink child owns the embedded store: hand it over
        with (
            Store(pipeline.settings.resolved_clickhouse_url) as store,
            TestClient(create_api(pipeline.settings, store=store)) as client,
        ):
            page = client.get(f"/orgs/{org}/usage", headers=bearer(token(org, "owner")))
            member = client.get(f"/orgs/{org}/usage", headers=bearer(token(org, "u1")))
        assert page.status_code == 200, page.text
        rows = re.findall(
            r'data-notification="([^"]+)" data-status="(\w+)".*?<td class="num">(\d+)</td>',
            page.text,
            re.S,
        )
        assert sorted(rows) == [
            (notification_id, "delivered", "3"),
            (notification_id, "retrying", "1"),
            (notification_id, "retrying", "2"),
        ]
        assert 'id="deliveries"' not in member.text  # members do not see them
    finally:
        receiver.stop()


def test_a_receiver_down_for_a_while_gets_everything_once_up(
    pipeline: Pipeline, notifier: list[subprocess.Popen[bytes]]
) -> None:
    # Given an endpoint whose server is not running
    notifying(pipeline)
    receiver = WebhookReceiver()  # not started: connections are refused
    org = "org_down"
    pipeline.start_worker()
    notifier.append(pipeline.spawn("notifier"))
    capped_org(pipeline, org)
    register(pipeline.settings, org, receiver.url())

    # When four notifications are due while it is down
    pipeline.send_usage(spend(org, "u1", 10))
    pipeline.wait_for(lambda p: len(p.notifications()) == 4)
    ids = {n["notification_id"] for n in pipeline.notifications()}
    pipeline.wait_for(
        lambda p: {d["notification_id"] for d in p.deliveries() if d["attempt"] >= 2} >= ids,
        what="each retried at least once",
    )
    # …and it comes up
    receiver.start()
    try:
        # Then it gets every one of them, once
        receiver.wait(lambda r: set(r.ids()) >= ids)
        pipeline.wait_for(lambda p: delivered(p) >= ids)
        time.sleep(1)
        assert Counter(receiver.ids()) == dict.fromkeys(ids, 1)
        errors = {d["error"] for d in pipeline.deliveries() if d["status"] == "retrying"}
        assert all("Connect" in error or "refused" in error for error in errors), errors
    finally:
        receiver.stop()


def test_a_slow_endpoint_does_not_hold_up_another_org(
    pipeline: Pipeline, notifier: list[subprocess.Popen[bytes]]
) -> None:
    """Bounded concurrency per endpoint: one org's endpoint answering slowly (one request
    at a time, 2 s each) does not delay another org's deliveries."""
    # Given two orgs; one's endpoint takes 2 s per answer and gets one request at a time
    notifying(pipeline, notify_endpoint_concurrency=1, webhook_timeout_seconds=10.0)
    slow, fast = WebhookReceiver(delay_s=2.0).start(), WebhookReceiver().start()
    try:
        pipeline.start_worker()
        notifier.append(pipeline.spawn("notifier"))
        for org, receiver in (("org_slow", slow), ("org_fast", fast)):
            capped_org(pipeline, org)
            register(pipeline.settings, org, receiver.url())

        # When the slow org's four notifications are due, the first one is being
        # delivered, and then the other org's four are due
        pipeline.send_usage(spend("org_slow", "u1", 10))
        slow.wait(lambda r: len(r.requests) >= 1)
        pipeline.send_usage(spend("org_fast", "u1", 10))
        pipeline.wait_for(lambda p: len(p.notifications()) == 8, what="eight notifications")
        ids = {
            org: {n["notification_id"] for n in pipeline.notifications() if n["org_id"] == org}
            for org in ("org_slow", "org_fast")
        }

        # Then the other org's arrive while the slow endpoint still works through its
        # own (the fourth of which cannot start before ~6 s), and every one arrives once
        fast.wait(lambda r: set(r.ids()) >= ids["org_fast"], timeout_s=30)
        slow.wait(lambda r: set(r.ids()) >= ids["org_slow"], timeout_s=60)
        fourth_slow_start = sorted(r.at for r in slow.requests)[3]
        assert max(r.at for r in fast.requests) < fourth_slow_start
        time.sleep(1)
        assert Counter(fast.ids()) == dict.fromkeys(ids["org_fast"], 1)
        assert Counter(slow.ids()) == dict.fromkeys(ids["org_slow"], 1)
    finally:
        slow.stop()
        fast.stop()


def test_sigkill_mid_batch_loses_nothing_and_repeats_only_with_the_same_id(
    pipeline: Pipeline, notifier: list[subprocess.Popen[bytes]]
) -> None:
    # Given four orgs with endpoints (registered as account events) and a slow receiver
    notifying(pipeline)
    # (each answer takes 0.25 s: with 4 requests per endpoint in flight the 240 take ~4 s,
    # so the notifier has committed offsets — several times a second — when it is killed)
    receiver = WebhookReceiver(delay_s=0.25).start()
    orgs = [f"org_kill{i}" for i in range(4)]
    pipeline.start_worker()
    for org in orgs:
        pipeline.send_accounts(
            *new_org(org),
            account(
                org,
                "notification_endpoint.set",
                {"url": receiver.url(f"/{org}"), "secret_id": f"s{org}"},
            ),
        )
    for org in orgs:
        pipeline.wait_for_gate(org, "u1", None)
    # …and 240 notifications on the topic (as the worker publishes them)
    expected = [
        Notification(
            notification_id=f"{org}:2026-01:threshold:u{i}|0.5",
            kind=NotificationKind.THRESHOLD_REACHED,
            org_id=org,
            user_id=f"u{i}",
            month="2026-01",
            threshold="0.5",
            spend=5_000_000_000,
            cap=10_000_000_000,
        )
        for org in orgs
        for i in range(60)
    ]
    for org in orgs:
        values = [encode_event(n) for n in expected if n.org_id == org]
        pipeline.send_raw(pipeline.topics.notifications, values, key=org.encode())

    # When the notifier is SIGKILLed once half have arrived, and started again
    first = pipeline.spawn("notifier")
    notifier.append(first)
    receiver.wait(lambda r: len(r.taken()) >= 120, timeout_s=90)
    first.send_signal(signal.SIGKILL)
    first.wait()
    before_restart = len(receiver.taken())
    assert before_restart < len(expected), "the kill came too late to test anything"
    notifier.append(pipeline.spawn("notifier"))

    # Then every notification arrives; repeats carry the same id and the same body
    ids = {n.notification_id for n in expected}
    try:
        receiver.wait(lambda r: set(r.ids()) >= ids, timeout_s=120)
        time.sleep(1)
        bodies: dict[str, set[bytes]] = {}
        for request in receiver.taken():
            bodies.setdefault(request.webhook_id, set()).add(request.body)
            key = webhook_secret(
                SIGNING_KEY.encode(), request.path.strip("/"), f"s{request.path.strip('/')}"
            )
            Webhook(key).verify(request.body, request.headers)
        assert set(bodies) == ids
        assert all(len(b) == 1 for b in bodies.values())
        repeats = sum(Counter(receiver.ids()).values()) - len(ids)
        print(f"{before_restart} delivered before the kill; {repeats} repeated after it")
    finally:
        receiver.stop()


def test_email_goes_to_the_owners_and_the_member_concerned(
    pipeline: Pipeline, notifier: list[subprocess.Popen[bytes]]
) -> None:
    # Given an SMTP server, two owners and a member with addresses, and caps
    smtp = SmtpSink().start()
    try:
        notifying(pipeline, smtp_url=smtp.url, smtp_from="Billing <billing@example.com>")
        org = "org_mail"
        pipeline.start_worker()
        notifier.append(pipeline.spawn("notifier"))
        owner_email = {"user_id": "owner", "role": "primary_owner", "seat_type": "enterprise"}
        pipeline.send_accounts(
            *new_org(org, spare_seats=1),
            account(org, "member.updated", {**owner_email, "email": "ann@example.com"}),
            account(
                org,
                "member.added",
                {
                    "user_id": "olga",
                    "role": "owner",
                    "seat_type": "enterprise",
                    "email": "olga@example.com",
                },
            ),
            account(
                org,
                "member.updated",
                {
                    "user_id": "u1",
                    "role": "member",
                    "seat_type": "enterprise",
                    "email": "u1@example.com",
                },
            ),
            account(org, "spend_cap.set", {"user_id": None, "limit": "8.00"}),
            account(org, "spend_cap.set", {"user_id": "u1", "limit": "5.00"}),
        )
        pipeline.wait_for_gate(org, "olga", None)

        # When u1 reaches their cap (3 thresholds + stopped) and the org 50 % of its own
        pipeline.send_usage(spend(org, "u1", 5))
        pipeline.wait_for(lambda p: len(p.notifications()) == 5)
        smtp.wait(5)
        time.sleep(1)

        # Then u1's notifications went to the owners and u1, the org's to the owners
        owners = ["ann@example.com", "olga@example.com"]
        by_id = {m["X-Notification-Id"]: (sorted(to), m) for to, m in smtp.messages}
        assert len(smtp.messages) == 5 and len(by_id) == 5
        for notification in pipeline.notifications():
            to, message = by_id[notification["notification_id"]]
            if notification["user_id"] == "u1":
                assert to == sorted([*owners, "u1@example.com"])
            else:
                assert to == owners
            assert message["From"] == "Billing <billing@example.com>"
            assert message.is_multipart()
            text, html = (
                part.get_content()
                for part in message.iter_parts()  # type: ignore[attr-defined]
            )
            assert notification["notification_id"] in text and "<table>" in html
            assert f"/orgs/{org}/usage" in text
        assert {d["channel"] for d in pipeline.deliveries()} == {"email"}  # no endpoint
    finally:
        smtp.stop()


def test_given_up_deliveries_are_dead_lettered_and_can_be_redriven(
    pipeline: Pipeline, notifier: list[subprocess.Popen[bytes]]
) -> None:
    # Given one endpoint that refuses (410) and one that keeps failing (503), with
    # retries given up after ~4 s
    notifying(pipeline, notify_retry_hours=4 / 3600)
    phase = {"refuse": True}
    receiver = WebhookReceiver(
        answer=lambda _n, path: 503 if path == "/busy" else 410 if phase["refuse"] else 200
    ).start()
    try:
        pipeline.start_worker()
        notifier.append(pipeline.spawn("notifier"))
        capped_org(pipeline, "org_gone")
        capped_org(pipeline, "org_busy")
        register(pipeline.settings, "org_gone", receiver.url("/gone"))
        register(pipeline.settings, "org_busy", receiver.url("/busy"))

        # When each has one notification
        pipeline.send_usage(spend("org_gone", "u1", 6), spend("org_busy", "u1", 6))
        pipeline.wait_for(lambda p: len(p.delivery_dead_letters()) == 2, timeout_s=60)

        # Then: refused at once (no retry), the other after retrying for the window
        letters = {d["delivery"]["org_id"]: d for d in pipeline.delivery_dead_letters()}
        assert letters["org_gone"]["reason"] == "refused"
        assert letters["org_gone"]["delivery"]["attempt"] == 1
        assert letters["org_busy"]["reason"] == "retries_exhausted"
        assert letters["org_busy"]["delivery"]["attempt"] >= 3

        # When the receiver is fixed and the refused ones are re-driven
        phase["refuse"] = False
        env = pipeline.env()
        result = run_metering("notifier", "redrive", "--reason", "refused", **env)
        assert result.returncode == 0, result.stderr
        assert "re-drove 1" in result.stdout
        gone = letters["org_gone"]["delivery"]["notification_id"]
        receiver.wait(lambda r: gone in r.ids())
        # …and re-driven again: the chain was carried out, nothing is sent twice
        assert run_metering("notifier", "redrive", "--reason", "refused", **env).returncode == 0
        time.sleep(2)
        assert receiver.ids().count(gone) == 1
        sent = [r.answered for r in receiver.requests if r.webhook_id == gone]
        assert sent == [410, 200]
    finally:
        receiver.stop()


def test_the_notifier_checks_the_address_again_when_it_connects() -> None:
    """A name that resolves to loopback is refused at connect time without the
    override (the API refuses it at registration: tests/metering/api)."""
    import asyncio

    from metering.notify.channels import Verdict, WebhookSender
    from schemas.outputs import DeliveryFailure

    receiver = WebhookReceiver().start()
    try:

        async def send(allow: bool) -> Any:
            sender = WebhookSender(timeout_s=2, concurrency=1, allow_private=allow)
            try:
                return [
                    await sender.send(url, ["whsec_" + "A" * 43 + "="], "id1", json.dumps({}))
                    for url in (
                        f"http://localhost:{receiver.port}/",
                        f"http://127.0.0.1:{receiver.port}/",
                    )
                ]
            finally:
                await sender.close()

        refused = asyncio.run(send(False))
        assert [(o.verdict, o.reason) for o in refused] == [
            (Verdict.FINAL, DeliveryFailure.ADDRESS_NOT_ALLOWED)
        ] * 2
        assert receiver.requests == []
        allowed = asyncio.run(send(True))
        assert [o.verdict for o in allowed] == [Verdict.DELIVERED] * 2
    finally:
        receiver.stop()


def test_endpoints_and_addresses_survive_a_redis_rebuild(pipeline: Pipeline) -> None:
    """Where notifications go is account state: `metering rebuild --flush` restores the
    endpoint, the routing and the members' addresses from the log."""
    org = "org_rebuilt"
    pipeline.start_worker()
    pipeline.send_accounts(
        *new_org(org),
        account(
            org,
            "notification_endpoint.set",
            {"url": "https://hooks.example.com/x", "secret_id": "s1"},
        ),
        account(org, "notification_routing.set", {"webhook": ["stopped"], "email": ["resumed"]}),
        account(
            org,
            "member.updated",
            {
                "user_id": "u1",
                "role": "member",
                "seat_type": "enterprise",
                "email": "u1@example.com",
            },
        ),
    )
    client = redis_client.Redis.from_url(pipeline.settings.redis_url)
    key = OrgKeys(pipeline.settings.redis_prefix, org).account

    def state() -> Any:
        return decode_account(client.get(key))

    deadline = time.monotonic() + 30
    while (found := state()) is None or found.members["u1"].email is None:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    before = client.get(key)
    pipeline.stop_worker()

    result = run_metering("rebuild", "--flush", **pipeline.env())
    assert result.returncode == 0, result.stderr
    assert client.get(key) == before
    rebuilt = state()
    assert rebuilt.webhook is not None and rebuilt.webhook.url == "https://hooks.example.com/x"
    assert (rebuilt.webhook_kinds, rebuilt.email_kinds) == (
        (NotificationKind.STOPPED,),
        (NotificationKind.RESUMED,),
    )
    assert rebuilt.members["u1"].email == "u1@example.com"
    client.close()
