"""`metering run`: the processors, the HTTP API and the ClickHouse sink from one command
(the API child owns the embedded store and runs the sink)."""

from __future__ import annotations

import signal
import time

import httpx
import pytest

from metering.clickhouse.store import Store
from metering.stack.process import free_port
from tests.e2e.pipeline import Pipeline
from tests.e2e.scenario import new_org, spend
from tests.metering.api.conftest import SECRET, bearer, token

pytestmark = pytest.mark.stack


def test_one_command_runs_processors_api_and_sink(pipeline: Pipeline) -> None:
    port = free_port()
    process = pipeline.spawn("run", METERING_HTTP_PORT=str(port), METERING_API_SECRET=SECRET)
    pipeline.process = process  # stopped by the fixture's cleanup if the test fails
    base = f"http://127.0.0.1:{port}"
    owner = bearer(token("org_run", "owner"))

    pipeline.send_accounts(*new_org("org_run", members=("u1",), credits="20.00"))
    pipeline.wait_for_gate("org_run", "u1", None, timeout_s=60)  # usage before its org: unknown_org
    pipeline.send_usage(spend("org_run", "u1", 2))
    deadline = time.monotonic() + 60
    seen = "nothing"
    while True:
        try:
            response = httpx.get(f"{base}/v1/orgs/org_run/usage", headers=owner, timeout=2)
            seen = f"{response.status_code} {response.text}"
            if response.status_code == 200 and response.json()["spend"] == "2.00":
                break
        except httpx.TransportError as exc:
            seen = repr(exc)
        assert time.monotonic() < deadline, f"the API never showed the usage; last: {seen}"
        assert process.poll() is None, f"metering run exited with {process.returncode}"
        time.sleep(0.2)
    gate = httpx.get(
        f"{base}/v1/orgs/org_run/members/u1/authorization?surface=claude_code",
        headers=bearer(token(service="frontend")),
    )
    assert gate.json() == {"allowed": True, "reason": None}

    pipeline.wait_caught_up()  # the processors; the sink is checked through its rows
    deadline = time.monotonic() + 30
    while pipeline.sink_lag() > 0:
        assert time.monotonic() < deadline, "the sink in the API process did not catch up"
        time.sleep(0.2)
    # The month-to-date draft (R19) from the API process, which owns ClickHouse
    drafts = httpx.get(f"{base}/v1/orgs/org_run/documents/preview", headers=owner, timeout=30)
    assert drafts.status_code == 200, drafts.text
    [statement] = drafts.json()
    assert statement["kind"] == "credit_statement"
    assert (statement["purchases"], statement["usage"]) == ("20.00", "2.00")
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0
    pipeline.process = None
    with Store(pipeline.settings.clickhouse_url) as store:
        assert store.rows("SELECT user_id, billed_nano_usd FROM metering.usage_events") == [
            ("u1", 2 * 10**9)
        ]
