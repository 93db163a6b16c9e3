"""`GET /metrics` of the API (in-process, on the module's private pipeline): requests by
method, route template and status, their latency, and the gate's decisions. The
registry is the process's, shared with earlier tests: the asserts are on differences."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.metering.api.conftest import ORG_A, bearer, token
from tests.metering.scrape import Scrape

GATE = "/v1/orgs/{org_id}/members/{user_id}/authorization"


def scrape(client: TestClient) -> Scrape:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    return Scrape.parse(response.text)


def test_metrics_count_requests_by_route_and_status_and_gate_decisions(
    client: TestClient,
) -> None:
    service = bearer(token(service="chat-frontend"))
    before = scrape(client)

    for _ in range(3):  # max is a member with credits: allowed
        answer = client.get(
            f"/v1/orgs/{ORG_A}/members/max/authorization?surface=chat_web", headers=service
        )
        assert answer.json() == {"allowed": True, "reason": None}
    refused = client.get(
        f"/v1/orgs/{ORG_A}/members/nobody/authorization?surface=chat_web", headers=service
    )
    assert refused.json() == {"allowed": False, "reason": "unknown_member"}
    assert (
        client.get(f"/v1/orgs/{ORG_A}/members/max/authorization?surface=chat_web").status_code
        == 401
    )
    assert (
        client.get(f"/v1/orgs/{ORG_A}/usage", headers=bearer(token(ORG_A, "olga"))).status_code
        == 200
    )
    assert client.get("/no/such/path/123").status_code == 404

    changed = scrape(client).minus(before)
    requests = "metering_http_requests_total"
    assert changed.value(requests, method="GET", route=GATE, status="200") == 4
    assert changed.value(requests, method="GET", route=GATE, status="401") == 1
    assert changed.value(requests, method="GET", route="/v1/orgs/{org_id}/usage", status="200") == 1
    assert changed.value(requests, method="GET", route="unmatched", status="404") == 1
    assert changed.value(requests, method="GET", route="/metrics", status="200") == 1  # `before`
    # ids never become label values
    assert not any("max" in dict(labels).get("route", "") for _, labels in changed.samples)
    latency = "metering_http_request_seconds_count"
    assert changed.value(latency, method="GET", route=GATE, status="200") == 4
    decisions = changed.by("metering_gate_decisions_total", "reason")
    assert {reason: count for reason, count in decisions.items() if count} == {
        "none": 3,
        "unknown_member": 1,
    }
    assert changed.value("metering_gate_decisions_total", allowed="true", reason="none") == 3
    assert (
        changed.value("metering_gate_decisions_total", allowed="false", reason="unknown_member")
        == 1
    )


def test_metrics_need_no_token_and_are_not_in_the_openapi_document(client: TestClient) -> None:
    found = scrape(client)  # no Authorization header
    assert any(name == "python_info" for name, _ in found.samples)
    assert "/metrics" not in client.get("/openapi.json").json()["paths"]
    # OpenMetrics for a scraper that asks for it
    open_metrics = client.get("/metrics", headers={"Accept": "application/openmetrics-text"})
    assert open_metrics.headers["content-type"].startswith("application/openmetrics-text")
    assert open_metrics.text.rstrip().endswith("# EOF")
