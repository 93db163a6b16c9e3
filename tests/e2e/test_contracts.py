"""A contract's life end to end: every refused account event is dead-lettered while
`metering run` keeps serving; terms renew by themselves on their anniversary; seat
invoices are in the log of record; notification marks outlive the notifications topic."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from confluent_kafka import TopicPartition

from billing.pricing import default_price_book_text
from metering.clickhouse.store import Store
from metering.documents.store import issued_documents
from metering.stack.process import free_port
from metering.topics import admin_client
from tests.e2e.pipeline import Pipeline
from tests.e2e.scenario import account, new_org, spend
from tests.helpers import run_metering
from tests.metering.api.conftest import SECRET, bearer, token

pytestmark = pytest.mark.stack


def _last_month() -> datetime:
    return datetime.now(UTC).replace(day=1, hour=9, minute=0, second=0, microsecond=0) - timedelta(
        days=20
    )


def _refused_account_events(good: str, sales: str, ok: list[dict[str, Any]]) -> list[Any]:
    """(reason, event or raw bytes) for every way an account event is refused."""
    at = _last_month() + timedelta(days=1)
    created = next(e for e in ok if e["type"] == "org.created" and e["org_id"] == good)
    purchase = next(e for e in ok if e["type"] == "credits.purchased" and e["org_id"] == good)
    term = created["data"]["term_start"]
    member = {"user_id": "u1", "role": "member"}
    return [
        # Decided by the rules (billing.accounts), with the org's state in hand:
        (
            "unknown_org",
            account("org_ghost", "seats.added", {"seat_type": "enterprise", "quantity": 1}),
        ),
        ("org_already_exists", account(good, "org.created", created["data"], actor=None, at=at)),
        (
            "not_permitted",
            account(good, "spend_cap.set", {"user_id": "u1", "limit": "1.00"}, member, at),
        ),
        (
            "unknown_member",
            account(good, "spend_cap.set", {"user_id": "nobody", "limit": None}, at=at),
        ),
        (
            "member_already_exists",
            account(
                good,
                "member.added",
                {"user_id": "u1", "role": "member", "seat_type": "enterprise"},
                None,
                at,
            ),
        ),
        (
            "seat_type_not_in_plan",
            account(good, "seats.added", {"seat_type": "standard", "quantity": 1}, at=at),
        ),
        (
            "no_seat_available",  # the org's one spare seat went to `extra1` just before
            account(
                good,
                "member.added",
                {"user_id": "extra2", "role": "member", "seat_type": "enterprise"},
                None,
                at,
            ),
        ),
        (
            "primary_owner_protected",
            account(
                good,
                "member.removed",
                {"user_id": "owner", "role": "primary_owner", "seat_type": "enterprise"},
                None,
                at,
            ),
        ),
        (
            "seat_removal_refused",
            account(good, "seats.removed", {"seat_type": "enterprise", "quantity": 1}, at=at),
        ),
        (
            "not_self_serve",
            account(sales, "credits.purchased", {"purchase_id": "p-x", "amount": "1.00"}, at=at),
        ),
        ("duplicate_purchase", account(good, "credits.purchased", purchase["data"], at=at)),
        ("renewal_not_later", account(good, "contract.renewed", {"term_start": term}, None, at)),
        ("not_seat_based", account(good, "plan.migration_requested", {}, at=at)),
        (
            "no_price_in_force",  # a legacy contract recorded in 2024, before the price book
            account(
                "org_2024",
                "org.created",
                {**created["data"], "term_start": "2024-06-01"},
                actor=None,
                at=datetime(2024, 7, 1, tzinfo=UTC),
            ),
        ),
        ("event_id_conflict", {**created, "data": {**created["data"], "seats": {"enterprise": 9}}}),
        # Refused by the schema, before any rule:
        ("malformed_json", b'{"type": "org.created", '),
        (
            "date_out_of_range",
            account(
                "org_far", "org.created", {**created["data"], "term_start": "9999-12-31"}, None, at
            ),
        ),
        (
            "invalid_money",
            account(good, "credits.purchased", {"purchase_id": "p-n", "amount": 100}, at=at),
        ),
        ("unknown_event_type", account(good, "org.exploded", {}, at=at)),
        (
            "future_event",
            account(
                good,
                "spend_cap.set",
                {"user_id": None, "limit": "1.00"},
                at=datetime(2099, 1, 1, tzinfo=UTC),
            ),
        ),
        ("payload_too_large", b'{"padding": "' + b"x" * 20_000 + b'"}'),
    ]


def test_every_refused_account_event_is_dead_lettered_while_the_service_keeps_serving(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    """No account event can stop the pipeline: every class of refused account event —
    each rule of the fold, a day the price book does not cover, every schema violation —
    is dead-lettered with its reason while `metering run` (processors, API with gate and
    ClickHouse sink) keeps answering and storing; the ledger records each rule-refused
    event with its reason; `billing run` then bills last month as usual."""
    good, sales = "org_good", "org_sales"
    port = free_port()
    process = pipeline.spawn(
        "run",
        METERING_HTTP_PORT=str(port),
        METERING_API_SECRET=SECRET,
        METERING_BILLING_SCHEDULE="false",
    )
    pipeline.process = process
    base = f"http://127.0.0.1:{port}"
    ok = [
        *new_org(good, members=("u1",), credits="50.00", at=_last_month(), spare_seats=1),
        *new_org(sales, mode="sales_assisted", members=("u1",), credits=None, at=_last_month()),
        account(
            good,
            "member.added",
            {"user_id": "extra1", "role": "member", "seat_type": "enterprise"},
            None,
            _last_month(),
        ),
    ]
    pipeline.send_accounts(*ok)
    pipeline.wait_for_gate(good, "extra1", None, timeout_s=60)

    refused = _refused_account_events(good, sales, ok)
    # As bytes, past the emitter (which would refuse the invalid ones itself), keyed by
    # org like any account event.
    pipeline.send_raw(
        pipeline.topics.account_events,
        [item if isinstance(item, bytes) else json.dumps(item).encode() for _, item in refused],
        key=good.encode(),
    )
    # After the poison, a valid change still applies.
    pipeline.send_accounts(account(good, "spend_cap.set", {"user_id": "u1", "limit": "7.00"}))
    pipeline.wait_for(lambda p: len(p.dead()) >= len(refused), timeout_s=90, what="dead letters")
    assert Counter(d["reason"] for d in pipeline.dead()) == Counter(r for r, _ in refused)
    assert process.poll() is None, "metering run died"

    gate = _when_up(
        lambda: httpx.get(
            f"{base}/v1/orgs/{good}/members/u1/authorization?surface=cowork",
            headers=bearer(token(service="frontend")),
            timeout=5,
        ),
        process,
    )
    assert gate.json() == {"allowed": True, "reason": None}
    deadline = time.monotonic() + 30
    while True:  # the valid change sent after the poison applies
        usage = httpx.get(f"{base}/v1/orgs/{good}/usage", headers=bearer(token(good, "owner")))
        assert usage.status_code == 200, usage.text
        caps = {m["user_id"]: m["cap"] for m in usage.json()["members"]}
        if caps["u1"] == "7.00":
            break
        assert time.monotonic() < deadline, caps
        time.sleep(0.2)
    pipeline.wait_caught_up()
    deadline = time.monotonic() + 60
    while pipeline.sink_lag() > 0:  # the sink in the API child stored all of it
        assert time.monotonic() < deadline, "the sink did not catch up"
        assert process.poll() is None, "metering run died"
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0
    pipeline.process = None
    # No child of `metering run` died on the way (its supervisor would have restarted it).
    assert "restarting it" not in pipeline.log_path.read_text(errors="replace")

    with Store(pipeline.settings.clickhouse_url) as store:
        ledger = Counter(
            reason
            for (reason,) in store.rows(
                "SELECT reason FROM metering.account_events FINAL WHERE status = 'rejected'"
            )
        )
    rule_refusals = Counter(r for r, item in refused[:14])  # the ones with a valid event
    assert ledger == rule_refusals
    month = _last_month().strftime("%Y-%m")
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "billing"),
            "run",
            "--month",
            month,
            "--out",
            str(tmp_path),
        ],
        env={**os.environ, **pipeline.env()},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / f"{good}.credit_statement.{month}.001.json").exists()


def _when_up(request: Any, process: subprocess.Popen[bytes], timeout_s: float = 90) -> Any:
    """`request()` once the API child of `process` answers (it starts after the worker;
    on a loaded machine that can take a while)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return request()
        except httpx.TransportError:
            assert process.poll() is None, "metering run died"
            assert time.monotonic() < deadline, "the API never answered"
            time.sleep(0.5)


def test_a_contract_renews_by_itself_on_its_anniversary(pipeline: Pipeline) -> None:
    """R3, R5, R7: a legacy seat-based org whose contract began 13 months ago, with a
    seat removal pending, renews by itself: the worker's renewal timer appends the
    system's `contract.renewed`, the pending removal applies, every member moves to an
    enterprise seat (so cowork is allowed at once) and the new term's annual invoice
    for the seats kept is published to `billing.documents.v1`."""
    created = datetime.now(UTC) - timedelta(days=400)
    term = created.date().replace(day=1)
    anniversary = term.replace(year=term.year + 1)
    org = "org_renews"
    pipeline.settings = pipeline.settings.model_copy(update={"renewal_check_seconds": 1})
    pipeline.start_worker()
    pipeline.send_accounts(
        *new_org(
            org,
            plan="seat_based",
            mode="sales_assisted",
            seat="standard",
            at=created,
            credits=None,
            spare_seats=2,
        ),
        account(org, "seats.removed", {"seat_type": "standard", "quantity": 1}, at=created),
    )
    pipeline.wait_for_gate(org, "u1", None, surface="cowork", timeout_s=90)  # migrated (R7)
    renewal_id = f"{org}.seat_invoice.{anniversary.isoformat()}.001"
    pipeline.wait_for(lambda p: renewal_id in p.documents(), what="the renewal's invoice")
    renewal = pipeline.documents()[renewal_id]
    assert [(line["quantity"], line["amount"]) for line in renewal["lines"]] == [
        ("4", "1920.00")  # 5 standard seats − 1 removed → 4 enterprise × 40 × 12
    ]
    assert renewal["issued_at"].startswith(anniversary.isoformat())
    client = redis.Redis.from_url(pipeline.settings.redis_url)
    state = json.loads(client.get(f"{pipeline.settings.redis_prefix}{{{org}}}:account") or b"")
    assert (state["term_start"], state["plan"]) == (anniversary.isoformat(), "usage_based")
    assert state["pending_seat_removals"] == {}


def test_seat_invoices_are_in_the_log_and_a_rebuild_keeps_them_whatever_the_prices(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    """Issued seat invoices are records of `billing.documents.v1`: a ClickHouse rebuilt
    from the log by a sink running with another price book (enterprise seats at 50.00)
    holds byte-identical seat invoices — an issued document never changes."""
    org = "org_prices"
    pipeline.sink = True
    pipeline.start_worker()
    pipeline.send_accounts(
        *new_org(org, members=("u1",), credits="10.00"),
        account(org, "seats.added", {"seat_type": "enterprise", "quantity": 3}),
    )
    pipeline.wait_for_gate(org, "u1", None)
    pipeline.wait_caught_up()
    pipeline.stop_worker()
    with Store(pipeline.settings.resolved_clickhouse_url) as store:
        before = {d.document_id: d.body for d in issued_documents(store, [org])}
    assert len(before) == 2 and all(".seat_invoice." in doc_id for doc_id in before)

    book = json.loads(default_price_book_text())
    book["versions"][0]["seats"]["enterprise"]["monthly_fee"] = "50.00"
    dearer = tmp_path / "dearer.json"
    dearer.write_text(json.dumps(book))
    rebuilt = pipeline.settings.model_copy(
        update={
            "clickhouse_url": f"chdb://{tmp_path / 'rebuilt'}",
            "sink_group_id": pipeline.settings.sink_group_id + "-rebuild",
            "price_book": dearer,
        }
    )
    done = run_metering("sink", "--once", **rebuilt.environment())
    assert done.returncode == 0, done.stderr
    with Store(rebuilt.clickhouse_url) as store:  # the new, rebuilt store
        after = {d.document_id: d.body for d in issued_documents(store, [org])}
    assert after == before


def test_a_rebuild_after_the_notifications_expired_restores_every_mark(
    pipeline: Pipeline,
) -> None:
    """R17 for good: `billing.notifications.v1` keeps 90 days, but credit stops and
    balance alerts are not monthly. With the notifications topic emptied (as retention
    would), a flushed Redis rebuilt from the log still knows what was sent — from the
    compacted marks topic — so nothing is notified twice. Money in notifications is a
    decimal string."""
    org = "org_marks"
    pipeline.start_worker()
    pipeline.send_accounts(*new_org(org, credits="10.00"))
    pipeline.wait_for_gate(org, "u1", None)
    pipeline.send_usage(spend(org, "u1", 6), spend(org, "u2", 6))
    pipeline.wait_for_gate(org, "u1", "credits_exhausted")
    pipeline.wait_for(
        lambda p: {n["kind"] for n in p.notifications()} >= {"stopped", "balance_low"},
        what="a stop and balance alerts",
    )
    low = next(n for n in pipeline.notifications() if n["kind"] == "balance_low")
    assert isinstance(low["balance"], str) and Decimal(low["balance"]) < 10
    pipeline.wait_caught_up()
    pipeline.stop_worker()  # drains: the marks of what it published are recorded
    client = redis.Redis.from_url(pipeline.settings.redis_url)
    prefix = pipeline.settings.redis_prefix
    sets = [f"{prefix}{{{org}}}:stopped", f"{prefix}{{{org}}}:notified:-"]
    marks = {key: client.smembers(key) for key in sets}
    assert all(marks.values()), marks

    admin = admin_client(pipeline.settings.kafka_bootstrap)
    topic = pipeline.topics.notifications
    ends = []
    for partition in admin.list_topics(topic, timeout=10).topics[topic].partitions:
        _low, high = pipeline._reader().get_watermark_offsets(
            TopicPartition(topic, partition), timeout=10
        )
        ends.append(TopicPartition(topic, partition, high))
    for future in admin.delete_records(ends).values():
        future.result(timeout=30)
    for key in client.scan_iter(match=f"{prefix}*"):
        client.delete(key)
    done = run_metering("rebuild", **pipeline.env())
    assert done.returncode == 0, done.stderr
    assert {key: client.smembers(key) for key in sets} == marks
