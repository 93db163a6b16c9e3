"""Owner controls take effect through the gate: a cap set through the API blocks the
member within a second; a credit purchase through the API unblocks (R16)."""

from __future__ import annotations

import time

from fastapi.testclient import TestClient

from tests.e2e.pipeline import Pipeline
from tests.e2e.scenario import spend
from tests.metering.api.conftest import ORG_A, bearer, token

WITHIN_S = 1.0


def gate_answer(client: TestClient, user: str) -> str | None:
    response = client.get(
        f"/v1/orgs/{ORG_A}/members/{user}/authorization?surface=chat_web",
        headers=bearer(token(service="chat-frontend")),
    )
    assert response.status_code == 200, response.text
    reason: str | None = response.json()["reason"]
    return reason


def seconds_until(client: TestClient, user: str, expected: str | None) -> float:
    started = time.monotonic()
    while (answer := gate_answer(client, user)) != expected:
        assert time.monotonic() - started < 10, f"gate still says {answer!r}"
        time.sleep(0.01)
    return time.monotonic() - started


def test_a_cap_set_through_the_api_blocks_and_a_purchase_unblocks(
    client: TestClient, api_pipeline: Pipeline
) -> None:
    owner = bearer(token(ORG_A, "olga"))
    # Given max has spent $3 of the org's $50 credits
    api_pipeline.send_usage(spend(ORG_A, "max", 3))
    api_pipeline.wait_for(lambda p: len(p.priced()) >= 1, what="max's usage priced")

    # When an owner caps max at $2, the gate refuses him within a second
    response = client.put(
        f"/v1/orgs/{ORG_A}/spend-caps/users/max", json={"limit": "2.00"}, headers=owner
    )
    assert response.status_code == 202, response.text
    assert seconds_until(client, "max", "user_cap_reached") < WITHIN_S
    rows = client.get(f"/v1/orgs/{ORG_A}/usage", headers=owner).json()["members"]
    max_row = {m["user_id"]: m for m in rows}["max"]
    assert (max_row["spend"], max_row["cap"], max_row["status"]) == ("3.00", "2.00", "blocked")
    assert max_row["reason"] == "user_cap_reached"

    # ... and raising it to unlimited lets him through at once
    response = client.put(
        f"/v1/orgs/{ORG_A}/spend-caps/users/max", json={"limit": None}, headers=owner
    )
    assert response.status_code == 202
    assert seconds_until(client, "max", None) < WITHIN_S

    # When the org's credits run out, everyone is stopped; a purchase lifts it at once
    api_pipeline.send_usage(spend(ORG_A, "olga", 50))
    seconds_until(client, "olga", "credits_exhausted")
    response = client.post(
        f"/v1/orgs/{ORG_A}/credits",
        json={"purchase_id": "pay-api-topup", "amount": "100.00"},
        headers=owner,
    )
    assert response.status_code == 202, response.text
    assert seconds_until(client, "olga", None) < WITHIN_S
    balance = client.get(f"/v1/orgs/{ORG_A}/usage", headers=owner).json()["credit_balance"]
    assert balance == "97.00"  # 50 + 100 − 3 − 50

    # The same purchase id again is refused by the rules: nothing appended
    again = client.post(
        f"/v1/orgs/{ORG_A}/credits",
        json={"purchase_id": "pay-api-topup", "amount": "100.00"},
        headers=owner,
    )
    assert again.status_code == 409
    assert again.json()["detail"]["reason"] == "duplicate_purchase"
