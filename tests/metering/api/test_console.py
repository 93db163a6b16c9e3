"""The console's sign-in and owner forms over HTTP (issue 16), on a real worker, Redis and
Kafka: login links work once, sessions are HttpOnly/SameSite=Strict cookies, every form
needs its session's CSRF token, and a form's change is the API's account event — applied
once however often the form is sent. The browser tests (test_console_browser.py) drive
the same pages in Chromium."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from metering.api.app import create_api
from metering.api.session import login_token
from tests.e2e.pipeline import Pipeline
from tests.e2e.scenario import account, new_org, spend
from tests.metering.api.conftest import SECRET, bearer, token

ORG = "org_console_http"  # self-serve: owner the primary owner, ola owner, mia member
SALES = "org_console_sales"  # sales-assisted: sam primary owner
OTHER = "org_console_other"  # another org's owner must not reach ORG


@pytest.fixture(scope="module")
def orgs(api_pipeline: Pipeline) -> None:
    events = new_org(ORG, members=("mia",), credits="20.00", spare_seats=1)
    data = {"user_id": "ola", "role": "owner", "seat_type": "enterprise"}
    events.append(account(ORG, "member.added", data, actor=None))
    events += new_org(SALES, mode="sales_assisted", members=("sid",), credits=None)
    events += new_org(OTHER, members=("oz",), credits="5.00")
    api_pipeline.send_accounts(*events)
    for org, user in ((ORG, "ola"), (SALES, "sid"), (OTHER, "oz")):
        api_pipeline.wait_for_gate(org, user, None)


def link(org: str, user: str, *, ttl: timedelta = timedelta(minutes=15), **kw: Any) -> str:
    now = kw.pop("now", datetime.now(UTC))
    return f"/login/{login_token(kw.pop('secret', SECRET), org, user, now=now, ttl=ttl)}"


@pytest.fixture
def browser(api_pipeline: Pipeline, orgs: None) -> Iterator[TestClient]:
    """A fresh client (its own cookie jar) per test: one browser."""
    with TestClient(create_api(api_pipeline.settings), follow_redirects=False) as client:
        yield client


# Another browser, for a second session or none at all (its own app: an app's services
# belong to the event loop of the client that started it).
second = browser


def sign_in(client: TestClient, org: str, user: str) -> str:
    """Open a login link; the page's CSRF token."""
    opened = client.get(link(org, user))
    assert opened.status_code == 200, opened.text
    page = client.get(f"/orgs/{org}/usage")
    assert page.status_code == 200, page.text
    return csrf_of(page.text)


def csrf_of(markup: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', markup)
    assert found, "no CSRF token on the page"
    return found.group(1)


def usage(client: TestClient, org: str, user: str) -> dict[str, Any]:
    response = client.get(f"/v1/orgs/{org}/usage", headers=bearer(token(org, user)))
    assert response.status_code == 200, response.text
    found: dict[str, Any] = response.json()
    return found


def member(client: TestClient, org: str, user: str) -> dict[str, Any]:
    rows: dict[str, dict[str, Any]] = {
        row["user_id"]: row for row in usage(client, org, "owner")["members"]
    }
    return rows[user]


def until(check: Any, what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def post(client: TestClient, path: str, **form: str) -> httpx.Response:
    response: httpx.Response = client.post(path, data=form)
    return response


def test_a_login_link_opens_a_strict_http_only_session_once(
    browser: TestClient, second: TestClient
) -> None:
    url = link(ORG, "ola")
    opened = browser.get(url)
    assert opened.status_code == 200, opened.text
    cookie = opened.headers["set-cookie"]
    assert cookie.startswith("metering_session=")
    attributes = {part.strip().lower() for part in cookie.split(";")[1:]}
    assert {"httponly", "samesite=strict", "path=/"} <= attributes
    assert "secure" not in attributes  # plain http here; Secure over https
    assert opened.headers["refresh"] == f"0; url=/orgs/{ORG}/usage"
    assert opened.headers["referrer-policy"] == "no-referrer"

    page = browser.get(f"/orgs/{ORG}/usage")
    assert page.status_code == 200, page.text
    assert "ola (owner)" in page.text
    assert 'id="org-cap-form"' in page.text and 'id="credits-form"' in page.text
    assert '<form class="inline cap-form"' in page.text

    replayed = second.get(url)
    assert replayed.status_code == 410, replayed.text
    assert "already used" in replayed.text
    assert "set-cookie" not in replayed.headers


def test_links_that_do_not_open_a_session(browser: TestClient, api_pipeline: Pipeline) -> None:
    long_ago = datetime.now(UTC) - timedelta(hours=2)
    refused = {
        "expired": (link(ORG, "ola", now=long_ago), 401),
        "another secret": (link(ORG, "ola", secret="another-secret-0123456789abcdefghij"), 401),
        "a bearer token": (f"/login/{token(ORG, 'ola')}", 401),
        "garbage": ("/login/not.a.link", 401),
        "not a member": (link(ORG, "nobody"), 403),
        "an unknown org": (link("org_console_ghost", "owner"), 403),
    }
    for what, (url, status) in refused.items():
        response = browser.get(url)
        assert response.status_code == status, (what, response.text)
        assert "set-cookie" not in response.headers, what
    # and a link is no bearer token either
    answer = browser.get(f"/v1/orgs/{ORG}/usage", headers=bearer(link(ORG, "ola")[7:]))
    assert answer.status_code == 401


def test_an_owner_sets_caps_with_a_message_and_the_gate_follows(
    browser: TestClient, api_pipeline: Pipeline
) -> None:
    csrf = sign_in(browser, ORG, "owner")
    api_pipeline.send_usage(spend(ORG, "mia", 2))
    until(lambda: member(browser, ORG, "mia")["spend"] == "2.00", "mia's $2")

    done = post(
        browser,
        f"/orgs/{ORG}/usage/members/mia/cap",
        csrf=csrf,
        request_id="req-cap-1",
        limit="1.00",
    )
    assert done.status_code == 303, done.text
    assert done.headers["location"] == f"/orgs/{ORG}/usage"
    page = browser.get(f"/orgs/{ORG}/usage").text
    assert "Cap of mia set to $1.00 — takes effect within a second." in page
    assert "takes effect" not in browser.get(f"/orgs/{ORG}/usage").text  # said once
    api_pipeline.wait_for_gate(ORG, "mia", "user_cap_reached", timeout_s=10)

    unlimited = post(
        browser,
        f"/orgs/{ORG}/usage/members/mia/cap",
        csrf=csrf,
        request_id="req-cap-2",
        unlimited="1",
    )
    assert unlimited.status_code == 303
    api_pipeline.wait_for_gate(ORG, "mia", None, timeout_s=10)
    assert member(browser, ORG, "mia")["cap"] is None

    org_cap = post(
        browser, f"/orgs/{ORG}/usage/org-cap", csrf=csrf, request_id="req-org-1", limit="$1,000.50"
    )
    assert org_cap.status_code == 303
    assert "Organization cap set to $1000.50" in browser.get(f"/orgs/{ORG}/usage").text
    until(lambda: usage(browser, ORG, "owner")["cap"] == "1000.50", "the org cap")


def test_a_refused_value_is_a_message_and_changes_nothing(browser: TestClient) -> None:
    csrf = sign_in(browser, ORG, "owner")
    before = usage(browser, ORG, "owner")
    for form, words in (
        ({"limit": "lots"}, "Not changed:"),
        ({"limit": ""}, "enter an amount in dollars"),
        ({"limit": "-5"}, "Not changed:"),
    ):
        answer = post(
            browser, f"/orgs/{ORG}/usage/org-cap", csrf=csrf, request_id="req-bad-1", **form
        )
        assert answer.status_code == 303, answer.text
        assert words in browser.get(f"/orgs/{ORG}/usage").text, form
    answer = post(
        browser, f"/orgs/{ORG}/usage/credits", csrf=csrf, request_id="req-bad-2", amount="0"
    )
    assert answer.status_code == 303
    assert "Not changed:" in browser.get(f"/orgs/{ORG}/usage").text
    time.sleep(1.0)  # an event appended by mistake would show by now
    assert usage(browser, ORG, "owner") == before


def test_a_form_sent_twice_buys_once(browser: TestClient) -> None:
    csrf = sign_in(browser, ORG, "owner")
    start = float(usage(browser, ORG, "owner")["credit_balance"])
    for _ in range(2):  # a double click, or a retry after a lost answer
        answer = post(
            browser,
            f"/orgs/{ORG}/usage/credits",
            csrf=csrf,
            request_id="req-buy-twice",
            amount="7.25",
        )
        assert answer.status_code == 303
    page = browser.get(f"/orgs/{ORG}/usage").text
    assert "$7.25 of credits bought" in page
    until(
        lambda: float(usage(browser, ORG, "owner")["credit_balance"]) == start + 7.25,
        "the purchase",
    )
    time.sleep(1.0)
    assert float(usage(browser, ORG, "owner")["credit_balance"]) == start + 7.25


def test_forms_without_the_sessions_csrf_token_are_403_and_change_nothing(
    browser: TestClient, second: TestClient
) -> None:
    others = sign_in(second, ORG, "ola")  # another session of the same org
    sign_in(browser, ORG, "owner")
    before = usage(browser, ORG, "owner")
    path = f"/orgs/{ORG}/usage/org-cap"
    for csrf in (None, "", others, "forged"):
        form = {"request_id": "req-csrf-1", "limit": "3.00"}
        if csrf is not None:
            form["csrf"] = csrf
        answer = post(browser, path, **form)
        assert answer.status_code == 403, (csrf, answer.text)
        assert "CSRF" in answer.text
    # no session at all: 401 (a bearer token does not make a form valid)
    second.cookies.clear()
    answer = second.post(
        path,
        data={"request_id": "req-csrf-2", "limit": "3.00"},
        headers=bearer(token(ORG, "owner")),
    )
    assert answer.status_code == 401
    time.sleep(1.0)
    assert usage(browser, ORG, "owner") == before


def test_members_see_their_row_and_no_forms_and_may_not_post(browser: TestClient) -> None:
    opened = browser.get(link(ORG, "mia"))
    assert opened.status_code == 200
    page = browser.get(f"/orgs/{ORG}/usage")
    assert page.status_code == 200
    assert 'data-user="mia"' in page.text and 'data-user="ola"' not in page.text
    assert "<form" in page.text  # sign out
    assert '<form class="inline cap-form"' not in page.text
    assert 'id="credits-form"' not in page.text and 'id="org-cap-form"' not in page.text
    assert 'id="org-spend"' not in page.text and 'id="credit-balance"' not in page.text
    csrf = csrf_of(page.text)
    for path, form in (
        (f"/orgs/{ORG}/usage/members/mia/cap", {"unlimited": "1"}),
        (f"/orgs/{ORG}/usage/credits", {"amount": "100.00"}),
    ):
        answer = post(browser, path, csrf=csrf, request_id="req-member-1", **form)
        assert answer.status_code == 403, answer.text
    assert browser.get(f"/orgs/{OTHER}/usage").status_code == 403  # another org's page


def test_another_orgs_owner_is_refused(browser: TestClient) -> None:
    csrf = sign_in(browser, OTHER, "owner")
    answer = post(
        browser, f"/orgs/{ORG}/usage/org-cap", csrf=csrf, request_id="req-other-1", limit="1.00"
    )
    assert answer.status_code == 403
    assert browser.get(f"/orgs/{ORG}/usage").status_code == 403


def test_sales_assisted_orgs_are_told_whom_to_contact(browser: TestClient) -> None:
    sign_in(browser, SALES, "owner")
    page = browser.get(f"/orgs/{SALES}/usage").text
    assert 'id="credits-form"' not in page
    assert "contact your account team" in page
    assert 'id="org-cap-form"' in page


def test_signing_out_ends_the_session(browser: TestClient, second: TestClient) -> None:
    csrf = sign_in(browser, ORG, "owner")
    kept = browser.cookies.get("metering_session")
    assert post(browser, "/logout", csrf="forged").status_code == 403
    out = post(browser, "/logout", csrf=csrf)
    assert out.status_code == 200
    assert "max-age=0" in out.headers["set-cookie"].lower()
    second.cookies.set("metering_session", str(kept))
    again = second.get(f"/orgs/{ORG}/usage")
    assert again.status_code == 401


@pytest.fixture
def private_ok(api_pipeline: Pipeline, orgs: None) -> Iterator[TestClient]:
    """A browser on an API that lets webhooks go to loopback (local use, these tests)."""
    settings = api_pipeline.settings.model_copy(update={"webhook_allow_private": True})
    with TestClient(create_api(settings), follow_redirects=False) as client:
        yield client


def endpoint_of(client: TestClient) -> str | None:
    answer = client.get(
        f"/v1/orgs/{ORG}/notification-endpoint", headers=bearer(token(ORG, "owner"))
    )
    if answer.status_code == 404:
        return None
    assert answer.status_code == 200, answer.text
    url: str = answer.json()["url"]
    return url


def message_of(client: TestClient) -> str:
    found = re.search(r'id="message"[^>]*>([^<]*)<', client.get(f"/orgs/{ORG}/usage").text)
    assert found, "no message on the page"
    return found.group(1)


def test_owners_register_and_remove_the_webhook_endpoint_on_the_page(
    private_ok: TestClient, browser: TestClient
) -> None:
    """The API's endpoint calls behind a form: the secret is shown once in the message
    (the same again for a form sent twice), a refused URL changes nothing, removal
    stops webhooks; without the session's CSRF token nothing happens."""
    csrf = sign_in(private_ok, ORG, "owner")
    path = f"/orgs/{ORG}/usage/notification-endpoint"
    assert (
        post(private_ok, path, request_id="req-hook-0", url="http://127.0.0.1:9/x").status_code
        == 403
    )

    url = "http://127.0.0.1:9/hook"
    secrets_shown = []
    for _ in range(2):  # a double submit: one event, one secret
        answer = post(private_ok, path, csrf=csrf, request_id="req-hook-1", url=url)
        assert answer.status_code == 303, answer.text
        shown = message_of(private_ok)
        assert f"Webhooks go to {url}" in shown, shown
        secrets_shown.append(re.findall(r"whsec_[A-Za-z0-9+/=]+", shown))
    assert secrets_shown[0] and secrets_shown[0] == secrets_shown[1]
    until(lambda: endpoint_of(private_ok) == url, "the endpoint registered")
    assert f"<code>{url}</code>" in private_ok.get(f"/orgs/{ORG}/usage").text

    # the default settings refuse loopback: a message, and the endpoint stays
    refused_csrf = sign_in(browser, ORG, "owner")
    answer = post(
        browser, path, csrf=refused_csrf, request_id="req-hook-2", url="http://127.0.0.1:9/other"
    )
    assert answer.status_code == 303
    assert "Not changed:" in message_of(browser)
    time.sleep(1.0)
    assert endpoint_of(private_ok) == url

    removal = f"{path}/remove"
    assert post(private_ok, removal, csrf=csrf, request_id="req-unhook-1").status_code == 303
    assert message_of(private_ok) == "Webhooks are no longer sent."
    until(lambda: endpoint_of(private_ok) is None, "the endpoint removed")
    assert post(private_ok, removal, csrf=csrf, request_id="req-unhook-2").status_code == 303
    assert "no notification endpoint is registered" in message_of(private_ok)
