"""Idempotency keys (issue 20, defect 6) live as long as account event ids are
de-duplicated: a key is never silently forgotten, so reusing it can never answer 202 for
an event the processor then dead-letters as `event_id_conflict`; a purchase id credited
before answers 409."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import redis

from metering.enforcement.keys import OrgKeys
from tests.security.conftest import ORG, Server, owner_of

pytestmark = pytest.mark.stack

CREDITS = f"/v1/orgs/{ORG}/credits"


def _redis(server: Server) -> redis.Redis:
    return redis.Redis.from_url(server.pipeline.settings.redis_url)


def idempotency_keys(server: Server) -> list[bytes]:
    keys = OrgKeys(server.pipeline.settings.redis_prefix, ORG)
    with _redis(server) as client:
        return list(client.scan_iter(match=f"{keys.base}:idempotency:*", count=1000))


def balance(server: Server) -> int:
    with _redis(server) as client:
        raw = client.get(OrgKeys(server.pipeline.settings.redis_prefix, ORG).balance)
    return int(raw or 0)


def wait_balance(server: Server, expected: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while (seen := balance(server)) != expected:
        assert time.monotonic() < deadline, f"balance {seen}, expected {expected}"
        time.sleep(0.1)


def purchase(server: Server, purchase_id: str, amount: str, key: str | None) -> Any:
    headers = owner_of(ORG) | ({"Idempotency-Key": key} if key else {})
    with server.client() as client:
        return client.post(
            CREDITS, json={"purchase_id": purchase_id, "amount": amount}, headers=headers
        )


def conflicts(server: Server) -> list[Any]:
    server.pipeline.wait_caught_up(timeout_s=60)
    server.pipeline.wait_for(lambda p: True)  # read what is there
    time.sleep(1.0)
    server.pipeline.wait_for(lambda p: True)
    return [d for d in server.pipeline.dead() if d["reason"] == "event_id_conflict"]


def test_keys_never_expire_and_survive_being_forgotten(service: Server) -> None:
    start = balance(service)
    first = purchase(service, "p-idem-1", "1.00", key="order-1")
    assert first.status_code == 202, first.text
    wait_balance(service, start + 10**9)

    # The key is kept as long as the account event ids (no TTL)
    with _redis(service) as client:
        ttls = {client.ttl(k) for k in idempotency_keys(service)}
    assert ttls == {-1}, ttls

    # A retry is the same event, counted once
    again = purchase(service, "p-idem-1", "1.00", key="order-1")
    assert (again.status_code, again.json()) == (202, first.json())

    # Even if Redis forgot the key (lost and rebuilt, or the old 7-day expiry): the same
    # request answers the same event and changes nothing; another change under the
    # same key is a new change, never a 202 for an event the processor refuses
    with _redis(service) as client:
        client.delete(*idempotency_keys(service))
    retried = purchase(service, "p-idem-1", "1.00", key="order-1")
    assert retried.status_code in (202, 409), retried.text
    if retried.status_code == 202:
        assert retried.json()["event_id"] == first.json()["event_id"]
    other = purchase(service, "p-idem-2", "2.00", key="order-1")
    assert other.status_code == 202, other.text
    assert other.json()["event_id"] != first.json()["event_id"]
    wait_balance(service, start + 3 * 10**9)
    assert conflicts(service) == []


def test_a_purchase_id_credited_before_answers_409(service: Server) -> None:
    first = purchase(service, "p-dup", "1.00", key=None)
    assert first.status_code == 202, first.text
    service.pipeline.wait_caught_up(timeout_s=60)
    for key in (None, "another-key"):
        again = purchase(service, "p-dup", "1.00", key=key)
        assert again.status_code == 409, again.text
        assert again.json()["detail"]["reason"] == "duplicate_purchase"
    assert json.dumps(first.json())
