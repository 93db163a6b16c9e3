"""The Usage page (R18), server-rendered, on a real stack: usage goes through a real
worker, caps are set through the API, and the daily chart reads an embedded ClickHouse
holding the same events. Checked over HTTP; test_console_browser.py drives the page in
Chromium."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from metering.api.app import create_api
from metering.api.page import NO_STORE_NOTE
from metering.clickhouse.rows import USAGE_COLUMNS, usage_row
from metering.clickhouse.store import Store
from metering.enforcement.records import SourceRecord, month_of, priced_json
from schemas.validation import encode_event, parse_usage_event
from tests.e2e.pipeline import Pipeline
from tests.e2e.scenario import new_org, spend
from tests.helpers import wait_until
from tests.metering.api.conftest import ORG_A, ORG_B, bearer, token
from tests.metering.api.dom import Dom

NANOS = 1_000_000_000
ORG_S = "org_api_page_seats"  # seat-based, self-serve: sol holds a standard seat
ORG_C = "org_api_page_deficit"  # self-serve with $1 of credits, then $3 of usage
SURFACES = "all"  # an enterprise seat's


# -- the scenario -----------------------------------------------------------------------
@dataclass(frozen=True)
class Scenario:
    month: str
    daily: dict[str, str]  # day → "$x.xx", what the chart must show


def moment(now: datetime, days_ago: int) -> datetime:
    """09:00 UTC `days_ago` days back, but within this month and not in the future."""
    start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    wanted = (now - timedelta(days=days_ago)).replace(hour=9, minute=0, second=0, microsecond=0)
    return max(start, min(wanted, now - timedelta(seconds=30)))


def priced_record(event: dict[str, Any], offset: int) -> SourceRecord:
    """The `usage.priced.v1` record the pipeline writes for `event` (Haiku output at
    $5 per million tokens; enterprise seats have no allowance, so billed = cost)."""
    now = datetime.now(UTC)
    parsed = parse_usage_event(event, now=now)
    value = priced_json(
        encode_event(parsed),
        cost_nano_usd=parsed.output_tokens * 5000,
        included_nano_usd=0,
        price_version=date(2025, 1, 1),
        partition=0,
        offset=offset,
    )
    return SourceRecord(
        "usage.priced.v1", 0, offset, parsed.org_id.encode(), value, int(now.timestamp() * 1000)
    )


def usage_json(client: TestClient, org: str, user: str) -> dict[str, Any]:
    response = client.get(f"/v1/orgs/{org}/usage", headers=bearer(token(org, user)))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


@pytest.fixture(scope="module")
def client(client_with_store: TestClient) -> TestClient:
    """Overrides conftest's: this app may read ClickHouse."""
    return client_with_store


@pytest.fixture(scope="module")
def scenario(api_pipeline: Pipeline, client: TestClient, store: Store) -> Scenario:
    """max spends $3 then $2 (capped at $5: blocked), olga $4, on up to three days of this
    month; the org is capped at $40 and had $50 of credits: $9 spent, $41 left."""
    now = datetime.now(UTC)
    spent = [("max", 3, moment(now, 2)), ("olga", 4, moment(now, 1)), ("max", 2, moment(now, 0))]
    events = [spend(ORG_A, user, usd, at=at) for user, usd, at in spent]
    api_pipeline.send_usage(*events)
    store.insert(
        "usage_events",
        [usage_row(priced_record(event, offset)) for offset, event in enumerate(events)],
        USAGE_COLUMNS,
    )
    owner = bearer(token(ORG_A, "olga"))
    for path, limit in (("org", "40.00"), ("users/max", "5.00")):
        response = client.put(
            f"/v1/orgs/{ORG_A}/spend-caps/{path}", json={"limit": limit}, headers=owner
        )
        assert response.status_code == 202, response.text

    def settled() -> bool:
        view = usage_json(client, ORG_A, "olga")
        rows = {m["user_id"]: m for m in view["members"]}
        return (view["spend"], view["cap"], view["credit_balance"]) == (
            "9.00",
            "40.00",
            "41.00",
        ) and (rows["max"]["spend"], rows["max"]["cap"]) == ("5.00", "5.00")

    wait_until(settled, "the usage endpoint to show the scenario")
    daily: dict[str, int] = {}
    for _, usd, at in spent:
        daily[at.date().isoformat()] = daily.get(at.date().isoformat(), 0) + usd
    return Scenario(month_of(now), {day: f"${usd}.00" for day, usd in daily.items()})


def page(client: TestClient, org: str = ORG_A, **kw: Any) -> httpx.Response:
    response: httpx.Response = client.get(f"/orgs/{org}/usage", **kw)
    return response


def assert_owners_view(dom: Dom, scenario: Scenario) -> None:
    assert dom.text["org-id"] == ORG_A
    assert dom.text["month"].startswith(scenario.month)
    assert (dom.text["plan"], dom.text["billing-mode"]) == ("usage based", "self serve")
    assert dom.text["org-spend"] == "$9.00 of $40.00"
    assert dom.text["org-cap"] == "$40.00"
    assert dom.text["credit-balance"] == "$41.00"
    assert "negative" not in dom.classes["credit-balance"]
    assert set(dom.rows) == {"owner", "olga", "max"}
    assert dom.rows["max"] == {
        "member": "max",
        "role": "member",
        "seat": "enterprise",
        "spend": "$5.00",
        "cap": "$5.00",
        "limit": "$5.00",
        "status": "blocked: member cap reached",
        "surfaces": SURFACES,
    }
    assert dom.rows["olga"] == {
        "member": "olga",
        "role": "owner",
        "seat": "enterprise",
        "spend": "$4.00",
        "cap": "unlimited",
        "limit": "$40.00",
        "status": "active",
        "surfaces": SURFACES,
    }
    assert (dom.rows["owner"]["role"], dom.rows["owner"]["spend"]) == ("primary owner", "$0.00")
    assert dom.spend_by_day() == scenario.daily
    assert all(float(str(bar["height"])) > 0 for bar in dom.bars)
    assert dom.text["chart-total"] == "$9.00"


# -- over HTTP --------------------------------------------------------------------------
def test_an_owner_sees_every_member_and_the_numbers(client: TestClient, scenario: Scenario) -> None:
    response = page(client, headers=bearer(token(ORG_A, "olga")))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["cache-control"] == "no-store"
    assert "set-cookie" not in response.headers  # only a login link opens a session
    dom = Dom(response.text)
    assert_owners_view(dom, scenario)
    assert dom.text["viewer"] == "olga (owner)"
    assert "own-row-only" not in dom.text


def test_a_member_sees_only_their_own_row(client: TestClient, scenario: Scenario) -> None:
    """Their row and cap status; not the org's spend, balance, chart or deliveries."""
    dom = Dom(page(client, headers=bearer(token(ORG_A, "max"))).text)
    assert set(dom.rows) == {"max"}
    assert dom.rows["max"]["status"] == "blocked: member cap reached"
    assert dom.rows["max"]["cap"] == "$5.00"
    hidden = {"org-spend", "org-cap", "credit-balance", "daily-chart", "daily-chart-note"}
    assert not hidden & set(dom.text), hidden & set(dom.text)
    assert not dom.bars
    assert "own-row-only" in dom.text


def test_without_a_valid_session_or_token_the_page_is_401(
    client: TestClient, scenario: Scenario
) -> None:
    cases: list[dict[str, Any]] = [
        {},
        {"headers": {"Authorization": "Basic YWxhZGRpbjpvcGVu"}},
        {"headers": bearer(token(ORG_A, "olga", secret="someone-elses-secret-0123456789abcd"))},
        {"headers": {"Cookie": "metering_session=stale"}},
        {"headers": {"Cookie": f"metering_token={token(ORG_A, 'olga')}"}},  # the old cookie
    ]
    for kw in cases:
        response = page(client, **kw)
        assert response.status_code == 401, (kw, response.text)
        assert response.headers["content-type"].startswith("text/html")
        assert "Sign-in required" in Dom(response.text).text["error"]
        assert "metering login-link" in response.text
        assert "org-spend" not in response.text
        assert "set-cookie" not in response.headers
    client.cookies.clear()


def test_other_orgs_services_and_unknown_orgs_are_refused(client: TestClient) -> None:
    refused = {
        "a member of another org": (ORG_A, token(ORG_B, "bob_member"), 403),
        "a service token": (ORG_A, token(service="chat-frontend"), 403),
        "an unknown org": ("org_api_ghost", token("org_api_ghost", "nobody"), 404),
        "not a member": (ORG_A, token(ORG_A, "stranger"), 403),
    }
    for who, (org, value, status) in refused.items():
        response = page(client, org, headers=bearer(value))
        assert response.status_code == status, (who, response.text)
        assert response.headers["content-type"].startswith("text/html"), who
        assert Dom(response.text).text["error-detail"], who
        assert "members" not in Dom(response.text).text, who


def test_a_token_in_the_url_is_refused_and_sets_no_cookie(
    client: TestClient, scenario: Scenario
) -> None:
    """It would stay in browser history, proxies and access logs: 400, whoever it names."""
    for value in (token(ORG_A, "olga"), "not-a-token"):
        response = page(client, params={"token": value})
        assert response.status_code == 400, response.text
        assert "metering login-link" in Dom(response.text).text["error-detail"]
        assert "set-cookie" not in response.headers
        assert "org-spend" not in response.text


def test_other_months_bad_months_and_no_clickhouse(
    client: TestClient, api_pipeline: Pipeline, scenario: Scenario
) -> None:
    owner = bearer(token(ORG_A, "olga"))
    year, month = int(scenario.month[:4]), int(scenario.month[5:])
    earlier = f"{year - (month == 1):04d}-{(month - 2) % 12 + 1:02d}"
    dom = Dom(page(client, headers=owner, params={"month": earlier}).text)
    assert dom.text["month"] == earlier
    assert dom.text["org-spend"] == "$0.00 of $40.00"
    assert {row["status"] for row in dom.rows.values()} == {"—"}  # a closed month
    assert dom.text["daily-chart-note"] == f"No usage recorded in ClickHouse for {earlier} yet."
    assert dom.text["next-month"].startswith(scenario.month)

    bad = page(client, headers=owner, params={"month": "2026-13"})
    assert bad.status_code == 422
    assert "YYYY-MM" in Dom(bad.text).text["error-detail"]

    with TestClient(create_api(api_pipeline.settings)) as without_store:
        response = page(without_store, headers=owner)
    assert response.status_code == 200, response.text
    dom = Dom(response.text)
    assert dom.text["daily-chart-note"] == NO_STORE_NOTE
    assert not dom.bars
    assert dom.text["org-spend"] == "$9.00 of $40.00"


def test_a_negative_credit_balance_is_shown_in_red(
    client: TestClient, api_pipeline: Pipeline
) -> None:
    api_pipeline.send_accounts(*new_org(ORG_C, members=("zoe",), credits="1.00"))
    api_pipeline.wait_for_gate(ORG_C, "zoe", None)
    api_pipeline.send_usage(spend(ORG_C, "zoe", 3))  # in flight: may overdraw (R11)
    wait_until(
        lambda: usage_json(client, ORG_C, "owner")["credit_balance"] == "-2.00",
        "the overdrawn balance",
    )
    dom = Dom(page(client, ORG_C, headers=bearer(token(ORG_C, "owner"))).text)
    assert dom.text["credit-balance"] == "-$2.00"
    assert "negative" in dom.classes["credit-balance"]
    assert dom.text["org-spend"] == "$3.00 · no cap (unlimited)"
    assert dom.rows["zoe"]["status"] == "blocked: credits used up"
    assert dom.rows["zoe"]["cap"] == dom.rows["zoe"]["limit"] == "unlimited"


def test_a_seat_based_org_shows_the_included_usage_used(
    client: TestClient, api_pipeline: Pipeline
) -> None:
    """A standard seat includes $25 a month (R6): $3 of use is $3.00 of $25.00 included
    and $0.00 extra; the seat's surfaces are the chat ones."""
    api_pipeline.send_accounts(
        *new_org(ORG_S, plan="seat_based", seat="standard", members=("sol",), credits="10.00")
    )
    api_pipeline.wait_for_gate(ORG_S, "sol", None)
    api_pipeline.send_usage(spend(ORG_S, "sol", 3))
    wait_until(
        lambda: (
            {m["user_id"]: m for m in usage_json(client, ORG_S, "owner")["members"]}["sol"][
                "allowance_used"
            ]
            == "3.00"
        ),
        "sol's $3 of included usage",
    )
    rows = {m["user_id"]: m for m in usage_json(client, ORG_S, "owner")["members"]}
    assert (rows["sol"]["allowance"], rows["sol"]["spend"]) == ("25.00", "0.00")
    dom = Dom(page(client, ORG_S, headers=bearer(token(ORG_S, "owner"))).text)
    assert dom.rows["sol"]["allowance"] == "$3.00 of $25.00"
    assert dom.rows["sol"]["spend"] == "$0.00"
    assert dom.rows["sol"]["surfaces"] == "chat web, desktop, mobile"
    # a usage-based org has no allowance column, and the API says null
    assert usage_json(client, ORG_A, "olga")["members"][0]["allowance"] is None
    assert (
        "allowance" not in Dom(page(client, headers=bearer(token(ORG_A, "olga"))).text).rows["olga"]
    )
