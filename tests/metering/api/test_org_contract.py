"""`GET /v1/orgs/{org_id}`: the contract an owner manages — plan, term, renewal, seats
purchased, in use and pending removal — and seat removals through the API for a
self-serve org (R5 as amended: pending until the renewal, never below the members)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from fastapi.testclient import TestClient

from tests.e2e.pipeline import Pipeline
from tests.metering.api.conftest import ORG_A, bearer, token


def contract(client: TestClient, user: str = "olga") -> Any:
    response = client.get(f"/v1/orgs/{ORG_A}", headers=bearer(token(ORG_A, user)))
    assert response.status_code == 200, response.text
    return response.json()


def until(client: TestClient, check: Any) -> Any:
    deadline = time.monotonic() + 10
    while not check(found := contract(client)):
        assert time.monotonic() < deadline, found
        time.sleep(0.05)
    return found


def test_owners_see_the_contract_and_self_serve_removals_wait_for_the_renewal(
    client: TestClient, api_pipeline: Pipeline
) -> None:
    owner = bearer(token(ORG_A, "olga"))
    first = datetime.now(UTC).date().replace(day=1)
    # Given org_a: 3 enterprise seats held by ann, max and olga
    assert contract(client) == {
        "org_id": ORG_A,
        "plan": "usage_based",
        "billing_mode": "self_serve",
        "term_start": first.isoformat(),
        "renews_on": first.replace(year=first.year + 1).isoformat(),
        "seats": [
            {
                "seat_type": "enterprise",
                "purchased": 3,
                "in_use": 3,
                "pending_removal": 0,
                "at_renewal": 3,
            }
        ],
        "migrates_at_renewal": False,
    }
    # A removal that would leave a member without a seat is refused, nothing appended
    removal = client.post(
        f"/v1/orgs/{ORG_A}/seats/removals",
        json={"seat_type": "enterprise", "quantity": 1},
        headers=owner,
    )
    assert removal.status_code == 409
    assert removal.json()["detail"]["reason"] == "seat_removal_refused"
    # Two more seats; then one of them removed: pending, and the next term starts with 4
    added = client.post(
        f"/v1/orgs/{ORG_A}/seats", json={"seat_type": "enterprise", "quantity": 2}, headers=owner
    )
    assert added.status_code == 202, added.text
    until(client, lambda c: c["seats"][0]["purchased"] == 5)
    removal = client.post(
        f"/v1/orgs/{ORG_A}/seats/removals",
        json={"seat_type": "enterprise", "quantity": 1},
        headers=owner,
    )
    assert removal.status_code == 202, removal.text
    seats = until(client, lambda c: c["seats"][0]["pending_removal"] == 1)["seats"]
    assert seats == [
        {
            "seat_type": "enterprise",
            "purchased": 5,
            "in_use": 3,
            "pending_removal": 1,
            "at_renewal": 4,
        }
    ]
    # Members may not see the contract
    response = client.get(f"/v1/orgs/{ORG_A}", headers=bearer(token(ORG_A, "max")))
    assert response.status_code == 403


def test_money_in_the_usage_view_is_a_decimal_string_only(client: TestClient) -> None:
    """Money on every external surface is a decimal string: no JSON number that a
    JavaScript client would round above 2^53."""
    view = client.get(f"/v1/orgs/{ORG_A}/usage", headers=bearer(token(ORG_A, "olga"))).json()

    def numbers(value: Any) -> list[Any]:
        if isinstance(value, dict):
            return [n for v in value.values() for n in numbers(v)]
        if isinstance(value, list):
            return [n for v in value for n in numbers(v)]
        return [value] if isinstance(value, int | float) and not isinstance(value, bool) else []

    assert numbers(view) == []
    assert isinstance(view["spend"], str) and isinstance(view["credit_balance"], str)
    assert all(isinstance(m["spend"], str) for m in view["members"])
