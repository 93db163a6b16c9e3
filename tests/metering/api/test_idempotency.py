"""Owner writes with an `Idempotency-Key`: a retried request is applied once (the first
request's event is re-sent and counted once by the account processor); the key reused
for another change is refused; without a key each request is a new change."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import redis
from confluent_kafka import Consumer
from fastapi.testclient import TestClient

from billing.accounts import OrgAccount
from metering.enforcement.keys import OrgKeys
from metering.enforcement.state_codec import decode_account
from schemas.account import SeatType
from tests.e2e.pipeline import Pipeline
from tests.metering.api.conftest import ORG_A, bearer, token

SEATS = f"/v1/orgs/{ORG_A}/seats"


def account_state(pipeline: Pipeline) -> OrgAccount:
    client = redis.Redis.from_url(pipeline.settings.redis_url)
    try:
        state = decode_account(client.get(OrgKeys(pipeline.settings.redis_prefix, ORG_A).account))
    finally:
        client.close()
    assert state is not None
    return state


def enterprise_seats(pipeline: Pipeline) -> int:
    return account_state(pipeline).seats.get(SeatType.ENTERPRISE, 0)


def read_all(consumer: Consumer) -> list[tuple[str, Any]]:
    """Every record of the consumer's topics, until none arrives for 2 s."""
    records: list[tuple[str, Any]] = []
    while messages := consumer.consume(num_messages=1000, timeout=2.0):
        records += [(m.topic() or "", json.loads(m.value() or b"null")) for m in messages]
    return records


def test_a_retried_seat_purchase_is_applied_once(
    client: TestClient, api_pipeline: Pipeline, consumer_factory: Callable[..., Consumer]
) -> None:
    owner = bearer(token(ORG_A, "olga"))
    api_pipeline.wait_caught_up()
    before = enterprise_seats(api_pipeline)
    retry = {**owner, "Idempotency-Key": "order-4711"}

    answers = [client.post(SEATS, json={"seat_type": "enterprise", "quantity": 5}, headers=retry)]
    answers += [client.post(SEATS, json={"seat_type": "enterprise", "quantity": 5}, headers=retry)]
    assert [a.status_code for a in answers] == [202, 202], [a.text for a in answers]
    assert answers[0].json() == answers[1].json()  # the same event, sent again
    event_id = answers[0].json()["event_id"]

    # The key reused for another change is refused, and nothing is sent
    other = client.post(SEATS, json={"seat_type": "enterprise", "quantity": 6}, headers=retry)
    assert other.status_code == 422, other.text
    assert "idempotency_key_reused" in other.text

    # Without a key, the same request twice is two changes
    plain = [
        client.post(SEATS, json={"seat_type": "enterprise", "quantity": 1}, headers=owner)
        for _ in range(2)
    ]
    assert [p.status_code for p in plain] == [202, 202]
    assert plain[0].json()["event_id"] != plain[1].json()["event_id"]

    api_pipeline.wait_caught_up()
    assert enterprise_seats(api_pipeline) == before + 5 + 1 + 1
    topics = api_pipeline.topics
    log = read_all(consumer_factory(topics.account_events, topics.usage_deadletter))
    # On the log twice, identical; the processor counted it once and dead-lettered nothing
    copies = [m for t, m in log if t == topics.account_events and m["event_id"] == event_id]
    assert len(copies) == 2 and copies[0] == copies[1]
    assert not [m for t, m in log if t == topics.usage_deadletter and event_id in json.dumps(m)]


def test_the_key_is_per_caller(client: TestClient, api_pipeline: Pipeline) -> None:
    """Another owner's request with the same key is their own change."""
    api_pipeline.wait_caught_up()
    before = enterprise_seats(api_pipeline)
    body = {"seat_type": "enterprise", "quantity": 2}
    first = client.post(
        SEATS, json=body, headers={**bearer(token(ORG_A, "olga")), "Idempotency-Key": "k-1"}
    )
    second = client.post(
        SEATS, json=body, headers={**bearer(token(ORG_A, "owner")), "Idempotency-Key": "k-1"}
    )
    assert (first.status_code, second.status_code) == (202, 202)
    assert first.json()["event_id"] != second.json()["event_id"]
    api_pipeline.wait_caught_up()
    assert enterprise_seats(api_pipeline) == before + 4


def test_a_refused_change_is_not_remembered(client: TestClient, api_pipeline: Pipeline) -> None:
    """R5 refuses a removal that would leave members without a seat (409): the key
    stays free for a valid request."""
    headers = {**bearer(token(ORG_A, "olga")), "Idempotency-Key": "k-refused"}
    refused = client.post(
        f"{SEATS}/removals", json={"seat_type": "enterprise", "quantity": 100}, headers=headers
    )
    assert refused.status_code == 409, refused.text
    assert refused.json()["detail"]["reason"] == "seat_removal_refused"
    accepted = client.post(SEATS, json={"seat_type": "enterprise", "quantity": 1}, headers=headers)
    assert accepted.status_code == 202, accepted.text
