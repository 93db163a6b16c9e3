"""The notification endpoint and settings API: owners register, read, rotate and remove
the org's webhook endpoint and route kinds; the secret is derived, never stored; URLs
that point at internal addresses are refused (SSRF) unless the override is set."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from metering.api.app import create_api
from tests.e2e.pipeline import Pipeline
from tests.metering.api.conftest import ORG_A, ORG_B, bearer, token

pytestmark = pytest.mark.stack

ENDPOINT = f"/v1/orgs/{ORG_A}/notification-endpoint"
SETTINGS = f"/v1/orgs/{ORG_A}/notification-settings"


@pytest.fixture(scope="module")
def local(api_pipeline: Pipeline) -> Iterator[TestClient]:
    """An API that allows loopback endpoints (as the test suite and the demo run it)."""
    settings = api_pipeline.settings.model_copy(update={"webhook_allow_private": True})
    with TestClient(create_api(settings)) as test_client:
        yield test_client


def until(client: TestClient, path: str, status: int) -> dict[str, Any]:
    """GET `path` as an owner until it answers `status` (the worker applied the change)."""
    deadline = time.monotonic() + 30
    while (answer := client.get(path, headers=bearer(token(ORG_A, "olga")))).status_code != status:
        assert time.monotonic() < deadline, answer.text
        time.sleep(0.05)
    body: dict[str, Any] = answer.json()
    return body


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/hook",  # plain http
        "https://127.0.0.1/hook",  # loopback
        "https://localhost/hook",  # a name that resolves to loopback
        "https://10.0.0.8/hook",  # private
        "https://169.254.169.254/latest/meta-data",  # link-local: cloud metadata
        "https://[::1]/hook",
        "https://[::ffff:127.0.0.1]/hook",  # loopback inside IPv6
        "https://100.100.100.200/hook",  # carrier-grade NAT (a metadata service)
    ],
)
def test_an_internal_endpoint_is_refused_without_the_override(client: TestClient, url: str) -> None:
    answer = client.put(ENDPOINT, json={"url": url}, headers=bearer(token(ORG_A, "olga")))
    assert answer.status_code == 422, answer.text


def test_an_invalid_url_is_refused(local: TestClient) -> None:
    owner = bearer(token(ORG_A, "olga"))
    for url in ("ftp://x.example/", "https://user:pw@x.example/", "/relative", "https://x/#f"):
        assert local.put(ENDPOINT, json={"url": url}, headers=owner).status_code == 422, url


def test_owners_register_read_rotate_and_remove_the_endpoint(local: TestClient) -> None:
    owner = bearer(token(ORG_A, "olga"))
    # Given a registered endpoint: its secret is revealed by the PUT, never by the GET
    first = local.put(ENDPOINT, json={"url": "http://127.0.0.1:9/a"}, headers=owner)
    assert first.status_code == 202, first.text
    assert first.json()["secret"].startswith("whsec_") and first.json()["secret_rotated"]
    shown = until(local, ENDPOINT, 200)
    assert shown["url"] == "http://127.0.0.1:9/a"
    assert "secret" not in shown and "secret_id" not in shown

    # When the URL changes, the secret stays; rotating issues a new one
    moved = local.put(ENDPOINT, json={"url": "http://127.0.0.1:9/b"}, headers=owner)
    assert moved.status_code == 202
    assert (moved.json()["secret"], moved.json()["secret_rotated"]) == (
        first.json()["secret"],
        False,
    )
    until_url(local, "http://127.0.0.1:9/b")
    rotated = local.put(
        ENDPOINT, json={"url": "http://127.0.0.1:9/b", "rotate_secret": True}, headers=owner
    )
    assert rotated.json()["secret"] != first.json()["secret"]

    # When it is removed, it is gone; removing again is 404
    assert local.delete(ENDPOINT, headers=owner).status_code == 202
    until(local, ENDPOINT, 404)
    assert local.delete(ENDPOINT, headers=owner).status_code == 404


def until_url(client: TestClient, url: str) -> None:
    deadline = time.monotonic() + 30
    while until(client, ENDPOINT, 200)["url"] != url:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_a_retried_registration_reveals_the_same_secret(local: TestClient) -> None:
    headers = {**bearer(token(ORG_A, "olga")), "Idempotency-Key": "register-1"}
    body = {"url": "http://127.0.0.1:9/idem", "rotate_secret": True}
    first = local.put(ENDPOINT, json=body, headers=headers)
    again = local.put(ENDPOINT, json=body, headers=headers)
    assert first.status_code == again.status_code == 202
    assert first.json() == again.json()


def test_only_owners_of_the_org_may(local: TestClient) -> None:
    body = {"url": "http://127.0.0.1:9/x"}
    for who in (token(ORG_A, "max"), token(ORG_B, "owner")):
        assert local.put(ENDPOINT, json=body, headers=bearer(who)).status_code == 403
        assert local.get(ENDPOINT, headers=bearer(who)).status_code == 403
        assert local.get(SETTINGS, headers=bearer(who)).status_code == 403
    assert local.get(ENDPOINT).status_code == 401


def test_owners_route_kinds_to_webhook_and_email(local: TestClient) -> None:
    owner = bearer(token(ORG_A, "olga"))
    everything = ["balance_low", "resumed", "stopped", "threshold_reached"]
    assert sorted(until(local, SETTINGS, 200)["webhook_kinds"]) == everything
    change = {"webhook_kinds": ["stopped", "threshold_reached"], "email_kinds": []}
    assert local.put(SETTINGS, json=change, headers=owner).status_code == 202
    deadline = time.monotonic() + 30
    while until(local, SETTINGS, 200) != change:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    bad = {"webhook_kinds": ["sometimes"], "email_kinds": []}
    assert local.put(SETTINGS, json=bad, headers=owner).status_code == 422
    restore = {"webhook_kinds": everything, "email_kinds": everything}
    assert local.put(SETTINGS, json=restore, headers=owner).status_code == 202
