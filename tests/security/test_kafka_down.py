"""Writes while Kafka is unreachable (issue 20, defect 3): a write fails within a few
seconds with 503, a JSON `detail` and `Retry-After`, while the gate keeps answering from
Redis. The shared broker is never stopped: this API process is given a bootstrap address
nothing listens on, and the service's Redis prefix (so the gate knows the orgs)."""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Iterator

import httpx
import pytest

from metering.stack.process import free_port
from tests.metering.api.conftest import bearer, token
from tests.security.conftest import ORG, Server, owner_of, start, wait_answering

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def cut_off(service: Server) -> Iterator[Server]:
    server = start(
        service.pipeline,
        "api",
        METERING_KAFKA_BOOTSTRAP=f"127.0.0.1:{free_port()}",
        METERING_HTTP_WRITE_TIMEOUT_S="2",
    )
    try:
        wait_answering(server, timeout_s=60)
        yield server
    finally:
        server.stop()


def test_a_write_fails_fast_with_503_while_the_gate_answers(cut_off: Server) -> None:
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        started = time.monotonic()
        writes = [
            pool.submit(
                httpx.post,
                f"{cut_off.base}/v1/orgs/{ORG}/credits",
                json={"purchase_id": f"p-down-{i}", "amount": "1.00"},
                headers=owner_of(ORG),
                timeout=20,
            )
            for i in range(2)
        ]
        # Meanwhile the gate answers at once, from Redis
        time.sleep(0.3)
        for _ in range(5):
            gate = httpx.get(
                f"{cut_off.base}/v1/orgs/{ORG}/members/u1/authorization",
                params={"surface": "chat_web"},
                headers=bearer(token(service="frontend")),
                timeout=2,
            )
            assert gate.status_code == 200, gate.text
            assert gate.json() == {"allowed": True, "reason": None}
        answers = [w.result() for w in writes]
    elapsed = time.monotonic() - started
    for answer in answers:
        assert answer.status_code == 503, answer.text
        assert answer.headers["content-type"] == "application/json"
        assert "detail" in answer.json()
        assert int(answer.headers["retry-after"]) > 0
    assert elapsed < 8, f"writes took {elapsed:.1f} s"
