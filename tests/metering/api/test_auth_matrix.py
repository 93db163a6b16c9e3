"""Who may call what: 401 / 403 / 404 / 422 for every endpoint and kind of caller
(SPEC §4, R14), and what each one sees."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.metering.api.conftest import ORG_A, ORG_B, bearer, token

GHOST = "org_api_ghost"


def endpoints(org: str) -> list[tuple[str, str, dict[str, Any] | None]]:
    return [
        ("GET", f"/v1/orgs/{org}/members/max/authorization?surface=chat_web", None),
        ("GET", f"/v1/orgs/{org}/usage", None),
        ("POST", f"/v1/orgs/{org}/credits", {"purchase_id": "p-matrix", "amount": "5.00"}),
        ("PUT", f"/v1/orgs/{org}/spend-caps/org", {"limit": None}),
        ("PUT", f"/v1/orgs/{org}/spend-caps/users/max", {"limit": None}),
        ("POST", f"/v1/orgs/{org}/seats", {"seat_type": "enterprise", "quantity": 1}),
        # more seats than the org has: refused by the rules (409) once the role allows it
        ("POST", f"/v1/orgs/{org}/seats/removals", {"seat_type": "enterprise", "quantity": 900}),
        ("GET", f"/v1/orgs/{org}/documents/preview", None),
    ]


NAMES = ["authorization", "usage", "credits", "org_cap", "user_cap", "seats", "removal", "preview"]


def call(client: TestClient, method: str, path: str, body: Any, headers: dict[str, str]) -> Any:
    return client.request(method, path, json=body, headers=headers)


def tampered() -> str:
    head, claims, signature = token(ORG_A, "ann").split(".")
    return ".".join((head, claims, ("A" if signature[0] != "A" else "B") + signature[1:]))


UNAUTHENTICATED = {
    "no token": {},
    "not a bearer": {"Authorization": "Basic YWxhZGRpbjpvcGVu"},
    "garbage": bearer("not-a-token"),
    "tampered": bearer(tampered()),
    "expired": bearer(token(ORG_A, "owner", issued=datetime.now(UTC) - timedelta(hours=2))),
    "other secret": bearer(token(ORG_A, "owner", secret="someone-elses-secret-0123456789abcdef")),
}


@pytest.mark.parametrize("who", list(UNAUTHENTICATED))
def test_without_a_valid_token_every_endpoint_is_401(client: TestClient, who: str) -> None:
    for method, path, body in endpoints(ORG_A):
        response = call(client, method, path, body, UNAUTHENTICATED[who])
        assert response.status_code == 401, (who, path, response.text)
        assert response.json()["detail"]
        assert response.headers["www-authenticate"] == "Bearer"


# caller → expected status per endpoint (NAMES order), all on org A
MATRIX = {
    # a product service may ask the gate about any org, and nothing else
    "service": (bearer(token(service="chat-frontend")), [200, 403, 403, 403, 403, 403, 403, 403]),
    # the primary owner of org B is nobody in org A
    "owner of another org": (bearer(token(ORG_B, "owner")), [403] * 8),
    # a member: their own gate answer and their own usage row; no money, no limits
    "member": (bearer(token(ORG_A, "max")), [200, 200, 403, 403, 403, 403, 403, 403]),
    # an owner (not primary) may do everything; removing more seats than the org holds is
    # refused by the rules (R5: never below the members holding them)
    "owner": (bearer(token(ORG_A, "olga")), [200, 200, 202, 202, 202, 202, 409, 503]),
    # a token for someone the org does not list: not a member
    "stranger": (bearer(token(ORG_A, "mallory")), [403, 403, 403, 403, 403, 403, 403, 403]),
}


@pytest.mark.parametrize("who", list(MATRIX))
def test_roles_and_tenants(client: TestClient, who: str) -> None:
    headers, expected = MATRIX[who]
    got = [call(client, m, p, b, headers).status_code for m, p, b in endpoints(ORG_A)]
    assert dict(zip(NAMES, got, strict=True)) == dict(zip(NAMES, expected, strict=True))


def test_an_unknown_org_is_404(client: TestClient) -> None:
    headers = bearer(token(GHOST, "ann"))
    for method, path, body in endpoints(GHOST):
        response = call(client, method, path, body, headers)
        assert response.status_code == 404, (path, response.text)
        assert GHOST in response.json()["detail"]
    service = bearer(token(service="chat-frontend"))
    response = client.get(
        f"/v1/orgs/{GHOST}/members/x/authorization?surface=cowork", headers=service
    )
    assert response.status_code == 404


BAD_BODIES: list[tuple[str, str, Any, str]] = [
    ("POST", "credits", {"purchase_id": "p1", "amount": 5}, "amount"),
    ("POST", "credits", {"purchase_id": "p1", "amount": "-1.00"}, "amount"),
    ("POST", "credits", {"purchase_id": "p1", "amount": "1.5e3"}, "amount"),
    ("POST", "credits", {"amount": "5.00"}, "purchase_id"),
    ("POST", "credits", {"purchase_id": "p 1", "amount": "5.00"}, "purchase_id"),
    ("POST", "credits", {"purchase_id": "p1", "amount": "5.00", "coupon": "x"}, "coupon"),
    ("PUT", "spend-caps/org", {}, "limit"),
    ("PUT", "spend-caps/org", {"limit": "lots"}, "limit"),
    ("PUT", "spend-caps/users/max", {"limit": 10}, "limit"),
    ("POST", "seats", {"seat_type": "gold", "quantity": 1}, "seat_type"),
    ("POST", "seats", {"seat_type": "enterprise", "quantity": 0}, "quantity"),
    ("POST", "seats", {"seat_type": "enterprise", "quantity": "2"}, "quantity"),
    ("POST", "seats/removals", [], "body"),
]


@pytest.mark.parametrize(("method", "tail", "body", "field"), BAD_BODIES)
def test_a_bad_body_is_422_naming_the_field(
    client: TestClient, method: str, tail: str, body: Any, field: str
) -> None:
    response = client.request(
        method, f"/v1/orgs/{ORG_A}/{tail}", json=body, headers=bearer(token(ORG_A, "olga"))
    )
    assert response.status_code == 422, response.text
    assert any(field in error["loc"] for error in response.json()["detail"]), response.text


def test_bad_query_parameters_are_422(client: TestClient) -> None:
    owner = bearer(token(ORG_A, "olga"))
    fax = client.get(f"/v1/orgs/{ORG_A}/members/max/authorization?surface=fax", headers=owner)
    assert fax.status_code == 422
    assert fax.json()["detail"][0]["loc"] == ["query", "surface"]
    month = client.get(f"/v1/orgs/{ORG_A}/usage?month=2026-13", headers=owner)
    assert month.status_code == 422
    assert month.json()["detail"][0]["loc"] == ["query", "month"]


def test_members_see_their_own_row_and_owners_everyone(client: TestClient) -> None:
    mine = client.get(f"/v1/orgs/{ORG_A}/usage", headers=bearer(token(ORG_A, "max"))).json()
    assert [m["user_id"] for m in mine["members"]] == ["max"]
    everyone = client.get(f"/v1/orgs/{ORG_A}/usage", headers=bearer(token(ORG_A, "olga"))).json()
    assert {m["user_id"] for m in everyone["members"]} == {"owner", "max", "olga"}
    assert everyone["billing_mode"] == "self_serve"
    assert everyone["credit_balance"] is not None


def test_a_member_may_not_ask_the_gate_about_someone_else(client: TestClient) -> None:
    other = client.get(
        f"/v1/orgs/{ORG_A}/members/olga/authorization?surface=chat_web",
        headers=bearer(token(ORG_A, "max")),
    )
    assert other.status_code == 403
