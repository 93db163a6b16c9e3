"""A body over METERING_HTTP_MAX_BODY_BYTES inside the app (behind a proxy, or the test
client: no server in front to refuse it first) gets the documented 413, in JSON, whether
its length is declared or it comes in chunks — Starlette's own answer to a declared one
is plain text (schemathesis found it: an undocumented content type)."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.metering.api.conftest import ORG_A, bearer, token


def test_a_body_over_the_limit_is_a_json_413(client: TestClient) -> None:
    path, owner = f"/v1/orgs/{ORG_A}/credits", bearer(token(ORG_A, "olga"))
    json_type = {"Content-Type": "application/json"}
    declared = client.post(path, content=b"{" + b" " * 8192 + b"}", headers={**owner, **json_type})
    chunked = client.post(path, content=iter([b" " * 3000] * 4), headers={**owner, **json_type})
    for answer in (declared, chunked):
        assert answer.status_code == 413, answer.text
        assert answer.headers["content-type"] == "application/json"
        assert answer.json()["detail"]
    form = client.post(f"/orgs/{ORG_A}/usage/org-cap", content=b"limit=" + b"9" * 8192)
    assert (form.status_code, form.headers["content-type"]) == (413, "application/json")
