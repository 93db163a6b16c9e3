"""The owners' console pages (Organization settings), on a real stack: the month's usage
as CSV and the issued documents from an embedded ClickHouse holding rows written here,
and the Organization page of orgs created through account events applied by a real
worker — compared with what `GET /v1/orgs/{org}` returns."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from metering.api.app import create_api
from metering.clickhouse.queries import member_spend
from metering.clickhouse.rows import USAGE_COLUMNS, usage_row
from metering.clickhouse.store import Store
from metering.documents.files import render_html
from metering.documents.records import IssuedDocument, document_body, parse_body
from metering.documents.store import org_documents, store_new_documents
from metering.enforcement.records import SourceRecord, month_of, priced_json
from schemas.documents import (
    CreditStatement,
    Document,
    DocumentKind,
    DocumentLine,
    DocumentOrigin,
)
from schemas.money import format_usd, parse_usd
from schemas.validation import encode_event, parse_usage_event
from tests.e2e.pipeline import Pipeline
from tests.e2e.scenario import account, new_org
from tests.helpers import wait_until
from tests.metering.api.conftest import ORG_A, ORG_B, bearer, token
from tests.metering.api.dom import Dom

# org_a (conftest): usage-based, self-serve; "owner" is its primary owner, olga an owner,
# max a member. org_b: sales-assisted, "owner" its primary owner.
LEGACY = "org_console_legacy"  # seat-based: standard and premium seats, one removal pending
GHOST = "org_console_ghost"
CSV_HEADER = [
    "month",
    "user_id",
    "model",
    "events",
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
    "billed_usd",
]


# -- usage rows and documents in ClickHouse ---------------------------------------------
@dataclass(frozen=True)
class Used:
    org: str
    user: str
    model: str
    at: datetime
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation: int = 0
    cache_read: int = 0
    cost: int = 0  # nano-USD
    included: int = 0


def priced(used: Used, offset: int) -> SourceRecord:
    """The `usage.priced.v1` record the pipeline would write for this usage."""
    now = datetime.now(UTC)
    event = parse_usage_event(
        {
            "event_id": f"use-console-{offset}",
            "org_id": used.org,
            "user_id": used.user,
            "surface": "chat_web",
            "model": used.model,
            "input_tokens": used.input_tokens,
            "output_tokens": used.output_tokens,
            "cache_creation_input_tokens": used.cache_creation,
            "cache_read_input_tokens": used.cache_read,
            "occurred_at": used.at.isoformat(),
        },
        now=now,
    )
    value = priced_json(
        encode_event(event),
        cost_nano_usd=used.cost,
        included_nano_usd=used.included,
        price_version=date(2025, 1, 1),
        partition=0,
        offset=offset,
    )
    return SourceRecord(
        "usage.priced.v1", 0, offset, used.org.encode(), value, int(now.timestamp() * 1000)
    )


@dataclass(frozen=True)
class Scenario:
    month: str
    previous: str
    used: list[Used]
    documents: dict[str, Document]  # by id: org_a's two, org_b's one


@pytest.fixture(scope="module")
def client(client_with_store: TestClient) -> TestClient:
    """Overrides conftest's: this app may read ClickHouse."""
    return client_with_store


@pytest.fixture(scope="module")
def scenario(store: Store) -> Scenario:
    now = datetime.now(UTC)
    start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    this_month = max(start, now - timedelta(minutes=5))
    last_month = start - timedelta(hours=12)
    used = [
        # this month: max on two models (twice on one), olga on one, one odd amount
        Used(ORG_A, "max", "claude-sonnet-4-5", this_month, 1000, 200, 30, 4, 1_500_000_000),
        Used(ORG_A, "max", "claude-sonnet-4-5", this_month, 10, 20, 0, 400, 250_000_001),
        Used(ORG_A, "max", "claude-haiku-4-5", this_month, 7, 9, 1, 2, 123_456_789, 23_456_789),
        Used(ORG_A, "olga", "claude-opus-4-1", this_month, 5_000, 600, 70, 8, 4_000_000_000),
        Used(ORG_A, "olga", "claude-opus-4-1", this_month, 1, 1, 0, 0, 1, 1),  # all included
        # not this month's, or not org_a's
        Used(ORG_A, "max", "claude-sonnet-4-5", last_month, 100, 100, 0, 0, 9_000_000_000),
        Used(ORG_B, "bob_member", "claude-sonnet-4-5", this_month, 1, 1, 0, 0, 7_000_000_000),
    ]
    store.insert(
        "usage_events", [usage_row(priced(u, i)) for i, u in enumerate(used)], USAGE_COLUMNS
    )

    issued = datetime(2026, 2, 1, tzinfo=UTC)
    line = DocumentLine(
        description="Usage of <claude-sonnet-4-5> & more",
        user_id="max",
        model="claude-sonnet-4-5",
        quantity="1200",
        amount="12.34",
    )
    documents: list[Document] = [
        Document(
            document_id=f"{ORG_A}.usage_invoice.2026-01.001",
            org_id=ORG_A,
            kind=DocumentKind.USAGE_INVOICE,
            period_start=date(2026, 1, 1),
            period_end=date(2026, 2, 1),
            lines=[line],
            total="12.34",
            issued_at=issued,
        ),
        CreditStatement(
            document_id=f"{ORG_A}.credit_statement.2026-02.001",
            org_id=ORG_A,
            kind=DocumentKind.CREDIT_STATEMENT,
            period_start=date(2026, 2, 1),
            period_end=date(2026, 3, 1),
            lines=[line],
            total="-12.34",
            issued_at=datetime(2026, 3, 1, tzinfo=UTC),
            opening_balance="50.00",
            purchases="0.00",
            usage="12.34",
            closing_balance="37.66",
        ),
        Document(
            document_id=f"{ORG_B}.usage_invoice.2026-01.001",
            org_id=ORG_B,
            kind=DocumentKind.USAGE_INVOICE,
            period_start=date(2026, 1, 1),
            period_end=date(2026, 2, 1),
            lines=[line],
            total="12.34",
            issued_at=issued,
        ),
    ]
    stored = store_new_documents(
        store, [IssuedDocument(d, DocumentOrigin.BATCH, (1,), (2,)) for d in documents]
    )
    assert stored == 3
    return Scenario(
        month_of(now),
        month_of(last_month),
        used,
        {d.document_id: d for d in documents},
    )


@pytest.fixture(scope="module")
def legacy(api_pipeline: Pipeline) -> str:
    """A sales-assisted seat-based org: 4 standard seats (owner and sam hold two), 2
    premium (pia holds one), one standard seat removed at the renewal."""
    events = new_org(
        LEGACY,
        plan="seat_based",
        mode="sales_assisted",
        seat="standard",
        members=("sam",),
        credits=None,
        spare_seats=2,
    )
    events += [
        account(LEGACY, "seats.added", {"seat_type": "premium", "quantity": 2}),
        account(
            LEGACY,
            "member.added",
            {"user_id": "pia", "role": "member", "seat_type": "premium"},
            actor=None,
        ),
        account(LEGACY, "seats.removed", {"seat_type": "standard", "quantity": 1}),
    ]
    api_pipeline.send_accounts(*events)
    api_pipeline.wait_for_gate(LEGACY, "pia", None)
    return LEGACY


def contract(client: TestClient, org: str) -> Any:
    response = client.get(f"/v1/orgs/{org}", headers=bearer(token(org, "owner")))
    assert response.status_code == 200, response.text
    return response.json()


def get(client: TestClient, path: str, **kw: Any) -> httpx.Response:
    response: httpx.Response = client.get(path, **kw)
    return response


def owner_of(org: str = ORG_A, user: str = "owner") -> dict[str, str]:
    return bearer(token(org, user))


def read_csv(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


# -- the usage CSV ------------------------------------------------------------------------
def test_the_csv_is_the_months_usage_per_member_and_model(
    client: TestClient, store: Store, scenario: Scenario
) -> None:
    response = get(client, f"/orgs/{ORG_A}/usage.csv", headers=owner_of(user="olga"))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    assert response.headers["content-disposition"] == (
        f'attachment; filename="usage-{ORG_A}-{scenario.month}.csv"'
    )
    assert response.headers["cache-control"] == "no-store"
    rows = read_csv(response.text)
    assert rows[0] == CSV_HEADER
    # what was inserted: this month's org_a usage, by member × model, sorted
    expected: dict[tuple[str, str], list[int]] = {}
    for u in scenario.used:
        if u.org == ORG_A and month_of(u.at) == scenario.month:
            sums = expected.setdefault((u.user, u.model), [0] * 6)
            for i, n in enumerate(
                (
                    1,
                    u.input_tokens,
                    u.output_tokens,
                    u.cache_creation,
                    u.cache_read,
                    u.cost - u.included,
                )
            ):
                sums[i] += n
    assert rows[1:] == [
        [scenario.month, user, model, *map(str, sums[:5]), format_usd(sums[5])]
        for (user, model), sums in sorted(expected.items())
    ]
    assert rows[1:] == [
        [scenario.month, "max", "claude-haiku-4-5", "1", "7", "9", "1", "2", "0.10"],
        [
            scenario.month,
            "max",
            "claude-sonnet-4-5",
            "2",
            "1010",
            "220",
            "30",
            "404",
            "1.750000001",
        ],
        [scenario.month, "olga", "claude-opus-4-1", "2", "5001", "601", "70", "8", "4.00"],
    ]
    # the totals are member_spend's
    per_member: dict[str, tuple[int, int]] = {}
    for row in rows[1:]:
        events, billed = per_member.get(row[1], (0, 0))
        per_member[row[1]] = (events + int(row[3]), billed + parse_usd(row[8]))
    spend = member_spend(store, ORG_A, scenario.month)
    assert per_member == {s.key: (s.events, s.billed_nano_usd) for s in spend}


def test_the_csv_of_another_month_and_of_a_month_without_usage(
    client: TestClient, store: Store, scenario: Scenario
) -> None:
    response = get(
        client,
        f"/orgs/{ORG_A}/usage.csv",
        params={"month": scenario.previous},
        headers=owner_of(),
    )
    assert response.status_code == 200, response.text
    assert (
        f'filename="usage-{ORG_A}-{scenario.previous}.csv"'
        in response.headers["content-disposition"]
    )
    assert read_csv(response.text) == [
        CSV_HEADER,
        [scenario.previous, "max", "claude-sonnet-4-5", "1", "100", "100", "0", "0", "9.00"],
    ]
    empty = get(client, f"/orgs/{ORG_A}/usage.csv", params={"month": "2001-01"}, headers=owner_of())
    assert empty.status_code == 200
    assert read_csv(empty.text) == [CSV_HEADER]
    # org_b's owner gets org_b's rows only
    theirs = get(client, f"/orgs/{ORG_B}/usage.csv", headers=owner_of(ORG_B))
    assert [row[1:4] for row in read_csv(theirs.text)[1:]] == [
        ["bob_member", "claude-sonnet-4-5", "1"]
    ]


def test_a_bad_month_is_422(client: TestClient, scenario: Scenario) -> None:
    for month in ("2026-13", "2026-1", "next", ""):
        response = get(
            client, f"/orgs/{ORG_A}/usage.csv", params={"month": month}, headers=owner_of()
        )
        assert response.status_code == 422, (month, response.text)
        assert response.headers["content-type"].startswith("text/html")
        assert "YYYY-MM" in Dom(response.text).text["error-detail"]


# -- documents ------------------------------------------------------------------------------
def test_an_issued_document_as_json_and_html(
    client: TestClient, store: Store, scenario: Scenario
) -> None:
    for document in (d for d in scenario.documents.values() if d.org_id == ORG_A):
        path = f"/orgs/{ORG_A}/documents/{document.document_id}"
        as_json = get(client, f"{path}.json", headers=owner_of(user="olga"))
        assert as_json.status_code == 200, as_json.text
        assert as_json.headers["content-type"] == "application/json"
        assert as_json.headers["cache-control"] == "no-store"
        assert as_json.content == document_body(document).encode()  # byte for byte
        as_html = get(client, f"{path}.html", headers=owner_of())
        assert as_html.status_code == 200, as_html.text
        assert as_html.headers["content-type"].startswith("text/html")
        assert as_html.headers["x-content-type-options"] == "nosniff"
        assert as_html.text == render_html(parse_body(document_body(document)))
        assert document.document_id in as_html.text
        assert "Usage of &lt;claude-sonnet-4-5&gt; &amp; more" in as_html.text
    assert (
        "Closing balance"
        in get(
            client,
            f"/orgs/{ORG_A}/documents/{ORG_A}.credit_statement.2026-02.001.html",
            headers=owner_of(),
        ).text
    )


def test_another_orgs_or_an_unknown_document_is_404(client: TestClient, scenario: Scenario) -> None:
    theirs = f"{ORG_B}.usage_invoice.2026-01.001"
    assert theirs in scenario.documents
    for document_id in (theirs, f"{ORG_A}.usage_invoice.1999-01.001", "no such id", "x" * 300):
        for suffix in ("json", "html"):
            response = get(
                client, f"/orgs/{ORG_A}/documents/{document_id}.{suffix}", headers=owner_of()
            )
            assert response.status_code == 404, (document_id, suffix, response.text)
            assert response.headers["content-type"].startswith("text/html")
            assert "12.34" not in response.text
    # its own owner gets it
    response = get(client, f"/orgs/{ORG_B}/documents/{theirs}.json", headers=owner_of(ORG_B))
    assert response.status_code == 200
    assert response.content == document_body(scenario.documents[theirs]).encode()


def test_the_orgs_document_list(store: Store, scenario: Scenario) -> None:
    listed = org_documents(store, ORG_A)
    assert [
        (d.document_id, d.kind, d.period_start, d.issued_at, d.total_cents) for d in listed
    ] == [
        (
            f"{ORG_A}.credit_statement.2026-02.001",
            "credit_statement",
            date(2026, 2, 1),
            datetime(2026, 3, 1, tzinfo=UTC),
            -1234,
        ),
        (
            f"{ORG_A}.usage_invoice.2026-01.001",
            "usage_invoice",
            date(2026, 1, 1),
            datetime(2026, 2, 1, tzinfo=UTC),
            1234,
        ),
    ]
    assert org_documents(store, GHOST) == []


# -- the Organization page --------------------------------------------------------------------
def assert_seats_match(dom: Dom, found: Any) -> None:
    assert dom.seats == {
        s["seat_type"]: {
            "seat": s["seat_type"].replace("_", " "),
            "purchased": str(s["purchased"]),
            "in-use": str(s["in_use"]),
            "pending-removal": str(s["pending_removal"]),
            "at-renewal": str(s["at_renewal"]),
        }
        for s in found["seats"]
    }


def test_a_legacy_orgs_page_says_it_migrates_at_the_renewal(
    client: TestClient, api_pipeline: Pipeline, legacy: str
) -> None:
    wait_until(
        lambda: any(s["pending_removal"] for s in contract(client, legacy)["seats"]),
        "the seat removal to be applied",
    )
    found = contract(client, legacy)
    assert found["migrates_at_renewal"] is True
    response = get(client, f"/orgs/{legacy}/organization", headers=owner_of(legacy))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["cache-control"] == "no-store"
    assert "script" not in response.text.lower()
    dom = Dom(response.text)
    assert dom.text["org-id"] == legacy
    assert (dom.text["plan"], dom.text["billing-mode"]) == ("seat based", "sales assisted")
    assert dom.text["term-start"] == found["term_start"]
    assert dom.text["renews-on"] == found["renews_on"]
    assert_seats_match(dom, found)
    assert dom.seats["standard"] == {
        "seat": "standard",
        "purchased": "4",
        "in-use": "2",
        "pending-removal": "1",
        "at-renewal": "3",
    }
    assert dom.seats["premium"]["purchased"] == "2"
    assert dom.seats["premium"]["in-use"] == "1"
    assert dom.pending == {
        "standard": f"1 standard seat removed at the renewal on {found['renews_on']}"
    }
    assert dom.text["migration"] == (
        f"At the renewal on {found['renews_on']} every member moves to the single "
        "Enterprise seat and the plan becomes usage-based."
    )
    assert dom.links["usage-link"] == f"/orgs/{legacy}/usage"


def test_a_usage_based_orgs_page_has_no_migration(client: TestClient) -> None:
    found = contract(client, ORG_A)
    assert found["migrates_at_renewal"] is False
    response = get(client, f"/orgs/{ORG_A}/organization", headers=owner_of(user="olga"))
    assert response.status_code == 200, response.text
    dom = Dom(response.text)
    assert (dom.text["plan"], dom.text["billing-mode"]) == ("usage based", "self serve")
    assert dom.text["renews-on"] == found["renews_on"]
    assert dom.text["viewer"] == "olga (owner)"
    assert_seats_match(dom, found)
    assert set(dom.seats) == {"enterprise"}
    assert "migration" not in dom.text
    assert "single Enterprise seat" not in response.text
    assert dom.text["no-pending-removals"] == "No seat removals pending."
    assert dom.links["usage-link"] == f"/orgs/{ORG_A}/usage"


# -- who may see them -------------------------------------------------------------------------
def pages(org: str) -> list[str]:
    return [
        f"/orgs/{org}/organization",
        f"/orgs/{org}/usage.csv",
        f"/orgs/{org}/documents/{org}.usage_invoice.2026-01.001.json",
        f"/orgs/{org}/documents/{org}.usage_invoice.2026-01.001.html",
    ]


def test_only_the_orgs_owners_may_see_them(client: TestClient, scenario: Scenario) -> None:
    refused: dict[str, tuple[str, dict[str, str], int]] = {
        "a member": (ORG_A, owner_of(user="max"), 403),
        "another org's primary owner": (ORG_A, owner_of(ORG_B), 403),
        "not a member": (ORG_A, owner_of(user="stranger"), 403),
        "a service": (ORG_A, bearer(token(service="chat-frontend")), 403),
        "an unknown org": (GHOST, owner_of(GHOST), 404),
        "no token": (ORG_A, {}, 401),
        "a forged token": (
            ORG_A,
            bearer(token(ORG_A, "owner", secret="someone-elses-secret-0123456789abcd")),
            401,
        ),
    }
    for who, (org, headers, status) in refused.items():
        for path in pages(org):
            response = get(client, path, headers=headers)
            assert response.status_code == status, (who, path, response.text)
            assert response.headers["content-type"].startswith("text/html"), (who, path)
            assert response.headers["cache-control"] == "no-store"
            assert Dom(response.text).text["error-detail"], (who, path)
            assert "claude" not in response.text and "12.34" not in response.text, (who, path)
    # a token in the URL is refused outright (it would stay in browser history and logs)
    for path in pages(ORG_A):
        response = get(client, path, params={"token": token(ORG_A, "owner")})
        assert response.status_code == 400, (path, response.text)
    # and the primary owner and an owner may
    for user in ("owner", "olga"):
        for path in pages(ORG_A):
            assert get(client, path, headers=owner_of(user=user)).status_code == 200, (user, path)


def test_without_clickhouse_the_export_and_documents_are_503(
    api_pipeline: Pipeline, scenario: Scenario
) -> None:
    with TestClient(create_api(api_pipeline.settings)) as without_store:
        for path in pages(ORG_A)[1:]:
            response = get(without_store, path, headers=owner_of())
            assert response.status_code == 503, (path, response.text)
            assert response.headers["content-type"].startswith("text/html")
            assert "ClickHouse is not readable" in Dom(response.text).text["error-detail"]
        # the Organization page needs only Redis
        assert get(without_store, pages(ORG_A)[0], headers=owner_of()).status_code == 200
        # refusals come first
        response = get(without_store, pages(ORG_A)[1], headers=owner_of(user="max"))
        assert response.status_code == 403


# -- what the Usage page shows from ClickHouse ----------------------------------------------
def test_the_usage_page_lists_the_orgs_documents_and_the_breakdown(
    client: TestClient, scenario: Scenario
) -> None:
    """An owner's Usage page links each issued document of the org (not another org's),
    and shows this month's spend by model and by surface in dollars and cents."""
    page = get(client, f"/orgs/{ORG_A}/usage", headers=owner_of())
    assert page.status_code == 200, page.text
    ours = [i for i in scenario.documents if i.startswith(ORG_A)]
    for document_id in ours:
        for suffix in ("html", "json"):
            href = f"/orgs/{ORG_A}/documents/{document_id}.{suffix}"
            assert f'href="{href}"' in page.text, href
            assert get(client, href, headers=owner_of()).status_code == 200, href
    assert f"{ORG_B}.usage_invoice" not in page.text
    assert '<td class="num">-$12.34</td>' in page.text  # the statement's total

    by_model: dict[str, int] = {}
    for used in scenario.used:
        if used.org == ORG_A and month_of(used.at) == scenario.month:
            key = used.model.replace("_", " ")
            by_model[key] = by_model.get(key, 0) + used.cost - used.included
    for model, billed in by_model.items():
        cents = (billed + 5_000_000) // 10_000_000
        shown = f"${cents // 100}.{cents % 100:02d}"
        assert f'<tr data-key="{model}">' in page.text, model
        row = page.text.split(f'<tr data-key="{model}">', 1)[1].split("</tr>", 1)[0]
        assert shown in row, (model, shown, row)
        assert f'title="${format_usd(billed)} exactly"' in row, row
    members = get(client, f"/orgs/{ORG_A}/usage", headers=owner_of(user="max"))
    assert 'id="documents"' not in members.text and 'id="breakdown"' not in members.text
