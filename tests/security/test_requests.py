"""Bad input never costs more than a short 4xx (issue 20, defects 2, 4 and 7): NaN and
Infinity are invalid JSON, an invalid field is echoed only as a short prefix, another
org's token learns nothing about field rules, and unexpected errors answer JSON."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.metering.api.conftest import bearer, token
from tests.security.conftest import ORG, OTHER_ORG, Server, owner_of, start

pytestmark = pytest.mark.stack

CAP = f"/v1/orgs/{ORG}/spend-caps/org"
CREDITS = f"/v1/orgs/{ORG}/credits"
JSON = {"Content-Type": "application/json"}


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity", "1e400", "-1e400"])
def test_nan_and_infinity_are_invalid_json(service: Server, constant: str) -> None:
    with service.client() as client:
        answer = client.put(
            CAP, content=f'{{"limit": {constant}}}', headers={**owner_of(ORG), **JSON}
        )
    assert answer.status_code == 422, answer.text
    assert answer.headers["content-type"] == "application/json"
    assert "detail" in answer.json()


def test_an_invalid_field_is_echoed_only_as_a_short_prefix(service: Server) -> None:
    amount = "1" * 3000  # under the body limit, far over any money
    with service.client() as client:
        answer = client.post(
            CREDITS, json={"purchase_id": "p-long", "amount": amount}, headers=owner_of(ORG)
        )
        wrong_type = client.post(
            CREDITS, json={"purchase_id": ["x" * 1000] * 2, "amount": "1.00"}, headers=owner_of(ORG)
        )
    assert answer.status_code == 422, answer.text
    assert "1" * 100 not in answer.text
    assert len(answer.content) < 1000
    assert wrong_type.status_code == 422, wrong_type.text
    assert len(wrong_type.content) < 1000
    with service.client() as client:
        digits = client.post(
            f"/v1/orgs/{ORG}/seats",
            content='{"seat_type": "enterprise", "quantity": ' + "9" * 4000 + "}",
            headers={**owner_of(ORG), **JSON},
        )
    assert digits.status_code == 422, digits.text
    assert len(digits.content) < 1000


def test_another_orgs_token_gets_403_before_any_field_rule(service: Server) -> None:
    with service.client() as client:
        for body in ({"limit": 5}, {"limit": "nope"}, {}, {"unknown": 1}):
            answer = client.put(CAP, json=body, headers=owner_of(OTHER_ORG))
            assert answer.status_code == 403, (body, answer.text)
        member = client.put(CAP, json={"limit": 5}, headers=bearer(token(ORG, "u1")))
        assert member.status_code == 403, member.text  # a member may not set caps at all
        owner = client.put(CAP, json={"limit": 5}, headers=owner_of(ORG))
        assert owner.status_code == 422  # the org's own owner learns the field rules


def test_docs_can_be_turned_off(service: Server) -> None:
    server = start(service.pipeline, "api", METERING_API_DOCS="false")
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                answers = [
                    httpx.get(f"{server.base}{path}", timeout=2).status_code
                    for path in ("/docs", "/openapi.json", "/redoc")
                ]
                break
            except httpx.TransportError:
                assert server.alive() and time.monotonic() < deadline
                time.sleep(0.2)
        assert answers == [404, 404, 404]
        assert (
            httpx.get(
                f"{server.base}/v1/orgs/{ORG}/members/u1/authorization?surface=chat_web",
                headers=bearer(token(service="s")),
                timeout=2,
            ).status_code
            == 200
        )
    finally:
        server.stop()
    with service.client() as client:  # on by default
        assert client.get("/openapi.json").status_code == 200
