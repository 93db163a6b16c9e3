"""No single request takes the service down (issue 20, defect 1): amounts beyond the
documented bounds are refused at the API and by the account rules; afterwards the
worker, the API and the gate still answer, and Redis, Kafka and ClickHouse agree on the
org's balance and caps to the nano-dollar. A child of `metering run` that dies is
restarted."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis
from confluent_kafka import Consumer

from billing.accounts import OrgAccount, Rejected, apply_account_event
from billing.pricing import PriceBook, default_price_book_text
from metering.clickhouse.store import Store
from metering.enforcement.keys import OrgKeys
from schemas.validation import InvalidEvent, parse_account_event
from tests.conftest import RunningStack
from tests.e2e.pipeline import cleanup
from tests.e2e.scenario import account, new_org
from tests.security.conftest import (
    Server,
    gate_knows,
    new_private_pipeline,
    owner_of,
    start,
    wait_answering,
    wait_gate,
)

pytestmark = [pytest.mark.stack, pytest.mark.slow]

ORG = "org_big"
BASE = f"/v1/orgs/{ORG}"
OWNER = {"user_id": "owner", "role": "primary_owner"}


@pytest.fixture
def run(stack: RunningStack, tmp_path: Path) -> Iterator[Server]:
    pipeline = new_private_pipeline(stack, tmp_path)
    server = start(pipeline, "run")
    pipeline.process = server.process
    try:
        pipeline.send_accounts(*new_org(ORG, credits=None))
        wait_answering(server)
        wait_gate(server, ORG, "u1")
        yield server
    finally:
        cleanup(pipeline)


def children(pid: int, command: str) -> list[int]:
    """The child processes of `pid` (of any of its threads: a supervising thread
    spawns them) running `metering <command> …`."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            try:
                argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
            except FileNotFoundError:  # ended meanwhile
                continue
            if command.encode() in argv:
                found.append(int(child))
    return found


def account_log(server: Server) -> list[Any]:
    topics = server.pipeline.topics
    consumer = Consumer(
        {
            "bootstrap.servers": server.pipeline.settings.kafka_bootstrap,
            "group.id": f"overflow-check-{os.getpid()}-{time.monotonic_ns()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topics.account_events])
    records: list[Any] = []
    try:
        while messages := consumer.consume(num_messages=1000, timeout=3.0):
            records += [(m.value(), m.timestamp()[1]) for m in messages if not m.error()]
    finally:
        consumer.close()
    return records


BOOK = PriceBook.from_json(default_price_book_text())


def fold(records: list[Any]) -> OrgAccount:
    """The org's account folded from Kafka with the pure rules, as the processor does."""
    state = None
    for value, timestamp_ms in records:
        try:
            event = parse_account_event(value, now=datetime.fromtimestamp(timestamp_ms / 1000, UTC))
        except InvalidEvent:
            continue
        if event.org_id != ORG:
            continue
        outcome = apply_account_event(state, event, BOOK)
        if not isinstance(outcome, Rejected):
            state = outcome.state
    assert state is not None
    return state


def test_absurd_amounts_are_refused_and_everything_stays_up(run: Server) -> None:
    with run.client() as client:
        refused = [
            client.post(
                f"{BASE}/credits",
                json={"purchase_id": "p-huge", "amount": amount},
                headers=owner_of(ORG),
            )
            for amount in ("999999999999.00", "5000000000.00", "1000000000.01")
        ]
        assert [r.status_code for r in refused] == [422, 422, 422], [r.text for r in refused]
        cap = client.put(
            f"{BASE}/spend-caps/org", json={"limit": "999999999999.00"}, headers=owner_of(ORG)
        )
        assert cap.status_code == 422, cap.text
        assert "1000000000" in cap.text  # the bound is named

        # The largest amounts allowed are accepted...
        largest = client.post(
            f"{BASE}/credits",
            json={"purchase_id": "p-max", "amount": "1000000000.00"},
            headers=owner_of(ORG),
        )
        assert largest.status_code == 202, largest.text
        top_cap = client.put(
            f"{BASE}/spend-caps/org", json={"limit": "1000000000.00"}, headers=owner_of(ORG)
        )
        assert top_cap.status_code == 202, top_cap.text
        user_cap = client.put(
            f"{BASE}/spend-caps/users/u1", json={"limit": "123.456789012"}, headers=owner_of(ORG)
        )
        assert user_cap.status_code == 202, user_cap.text
        run.pipeline.wait_caught_up(timeout_s=60)
        # ...but no more credits than the documented total may ever be bought
        more = client.post(
            f"{BASE}/credits",
            json={"purchase_id": "p-more", "amount": "0.01"},
            headers=owner_of(ORG),
        )
        assert more.status_code == 409, more.text
        assert more.json()["detail"]["reason"] == "balance_limit_exceeded"

    # The same, straight onto the log (no API to refuse it): dead-lettered, not a crash
    run.pipeline.send_accounts(
        account(ORG, "credits.purchased", {"purchase_id": "p-log", "amount": "5.00"}, OWNER),
    )
    run.pipeline.send_raw(
        run.pipeline.topics.account_events,
        [
            json.dumps(
                account(ORG, "spend_cap.set", {"user_id": None, "limit": "999999999999.00"}, OWNER)
            ).encode(),
            json.dumps(
                account(
                    ORG,
                    "credits.purchased",
                    {"purchase_id": "p-log2", "amount": "5000000000.00"},
                    OWNER,
                )
            ).encode(),
        ],
        key=ORG.encode(),
    )
    run.pipeline.wait_for(lambda p: len(p.dead()) >= 3, what="three dead letters")
    assert sorted(d["reason"] for d in run.pipeline.dead()) == [
        "balance_limit_exceeded",
        "invalid_money",
        "invalid_money",
    ]
    run.pipeline.wait_caught_up(timeout_s=60)

    # Worker, API and gate still answer
    assert run.alive(), f"metering run exited; see {run.pipeline.log_path}"
    assert gate_knows(run, ORG, "u1")
    with run.client() as client:
        usage = client.get(f"{BASE}/usage", headers=owner_of(ORG))
    assert usage.status_code == 200, usage.text
    assert usage.json()["credit_balance"] == "1000000000.00"

    # A child that dies is restarted (the API, with the sink)
    [api_child] = children(run.process.pid, "api")
    os.kill(api_child, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while not gate_knows(run, ORG, "u1"):
        assert run.alive(), f"metering run exited; see {run.pipeline.log_path}"
        assert time.monotonic() < deadline, "the API child was not restarted"
        time.sleep(0.2)
    assert children(run.process.pid, "api") != [api_child]
    assert "restart" in run.pipeline.log_path.read_text()

    # Redis, Kafka and ClickHouse agree to the nano-dollar
    deadline = time.monotonic() + 60
    while run.pipeline.sink_lag() > 0:
        assert time.monotonic() < deadline, "the sink did not catch up"
        time.sleep(0.2)
    assert run.stop() == 0
    expected = fold(account_log(run))
    keys = OrgKeys(run.pipeline.settings.redis_prefix, ORG)
    with redis.Redis.from_url(run.pipeline.settings.redis_url) as client:
        redis_balance = int(client.get(keys.balance) or 0)
        redis_org_cap = client.hget(keys.meta, "org_cap")
        redis_caps = {k.decode(): int(v) for k, v in client.hgetall(keys.caps).items()}
    assert redis_balance == sum(expected.purchases.values()) == 10**18
    assert int(redis_org_cap or -1) == expected.org_cap_nano_usd == 10**18
    assert redis_caps == expected.user_caps_nano_usd == {"u1": 123_456_789_012}
    with Store(run.pipeline.settings.clickhouse_url) as store:
        [(purchased,)] = store.rows(
            "SELECT sum(amount_nano_usd) FROM metering.account_events FINAL "
            "WHERE org_id = %(org)s AND type = 'credits.purchased' AND status = 'accepted'",
            {"org": ORG},
        )
        caps = store.rows(
            "SELECT user_id, cap_nano_usd FROM metering.account_events FINAL "
            "WHERE org_id = %(org)s AND type = 'spend_cap.set' AND status = 'accepted' "
            "ORDER BY source_offset",
            {"org": ORG},
        )
        refused_rows = store.rows(
            "SELECT reason FROM metering.account_events FINAL "
            "WHERE org_id = %(org)s AND status = 'rejected'",
            {"org": ORG},
        )
    assert purchased == redis_balance
    assert dict(caps) == {None: 10**18, "u1": 123_456_789_012}
    assert refused_rows == [("balance_limit_exceeded",)]
