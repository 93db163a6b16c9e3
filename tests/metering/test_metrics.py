"""Prometheus metrics of the running processes, scraped over HTTP as Prometheus would:
a real `metering worker` (real Kafka + Redis) on a private pipeline with its own
METERING_METRICS_PORT, its ClickHouse sink child on the next port, and
`metering api --with-sink` whose /metrics carries the sink and the nightly billing batch.
Every count is checked against what was sent, and against the outputs on the topics."""

from __future__ import annotations

import json
import signal
import socket
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from metering import metrics
from metering.settings import Settings
from metering.stack.process import free_port
from metering.worker import sink_metrics_port
from tests.conftest import RunningStack
from tests.e2e.pipeline import Pipeline, cleanup, new_pipeline
from tests.e2e.scenario import account, new_org, spend, usage
from tests.metering.api.conftest import SECRET
from tests.metering.scrape import Scrape, free_port_pair, scrape_until

pytestmark = pytest.mark.stack


@pytest.fixture
def pipeline(stack: RunningStack, tmp_path: Path) -> Iterator[Pipeline]:
    """A private pipeline whose worker serves metrics on a free port (and its sink child,
    if any, on the next one)."""
    created = new_pipeline(stack.settings, tmp_path)
    created.settings = created.settings.model_copy(
        update={"metrics_port": free_port_pair(), "documents_dir": tmp_path / "documents"}
    )
    yield created
    cleanup(created)


def metrics_url(port: int) -> str:
    return f"http://127.0.0.1:{port}/metrics"


def alive(pipeline: Pipeline) -> bool:
    return pipeline.process is not None and pipeline.process.poll() is None


Expected = Mapping[tuple[str, tuple[tuple[str, str], ...]], float]


def projection(found: Scrape, expected: Expected) -> dict[Any, float]:
    """The samples `expected` names, as found (0 for one not there)."""
    return {key: found.value(key[0], **dict(key[1])) for key in expected}


def test_worker_counts_consumed_accepted_dead_letters_blocks_and_resumes(
    pipeline: Pipeline,
) -> None:
    port = pipeline.settings.metrics_port
    pipeline.start_worker()
    org = "org_metrics"
    accounts = new_org(org, members=("u1", "u2"), credits="100.00")  # 5 events
    accounts.append(account(org, "spend_cap.set", {"user_id": "u1", "limit": "5.00"}))
    # refused: a member may not set caps (R14)
    accounts.append(
        account(
            org,
            "spend_cap.set",
            {"user_id": None, "limit": "1.00"},
            actor={"user_id": "u2", "role": "member"},
        )
    )
    pipeline.send_accounts(*accounts)
    pipeline.wait_for_gate(org, "u1", None)

    first = spend(org, "u1", 3)
    pipeline.send_usage(first, spend(org, "u2", 1))
    pipeline.send_usage(first)  # the same event again: a duplicate, counted once
    pipeline.send_usage(spend(org, "u1", 3))  # u1 at $6 of a $5 cap: stopped
    pipeline.send_raw(
        pipeline.topics.usage_events,
        [
            b"{not json",
            json.dumps(usage(org, "u2", input_tokens=-1)).encode(),
            json.dumps(usage(org, "u2", model="no-such-model", output_tokens=10)).encode(),
            json.dumps(spend("org_nobody", "u1", 1)).encode(),
        ],
        key=org.encode(),
    )
    pipeline.wait_for_gate(org, "u1", "user_cap_reached")
    # The block is counted once its notification is published and its mark recorded;
    # only then may the cap be raised, or there would be no recorded stop to lift.
    scrape_until(
        metrics_url(port),
        lambda s: s.value("metering_worker_blocks_total", reason="user_cap_reached") == 1,
        alive=lambda: alive(pipeline),
    )
    # raising the cap lifts the block at once (R16): resumed
    pipeline.send_accounts(account(org, "spend_cap.set", {"user_id": "u1", "limit": "20.00"}))
    pipeline.wait_for_gate(org, "u1", None)
    pipeline.wait_for(
        lambda p: len(p.priced()) == 3 and len(p.dead()) == 5 and len(p.notifications()) == 5,
        what="3 priced, 5 dead letters, 5 notifications",
    )
    # what the topics hold, to compare the counters with
    dead = Counter(d["reason"] for d in pipeline.dead())
    assert dead == {
        "malformed_json": 1,
        "negative_tokens": 1,
        "unknown_model": 1,
        "unknown_org": 1,
        "not_permitted": 1,
    }
    kinds = Counter((n["kind"], n["reason"]) for n in pipeline.notifications())
    assert kinds == {
        ("threshold_reached", None): 3,  # 50 %, 80 %, 100 % of u1's cap
        ("stopped", "user_cap_reached"): 1,
        ("resumed", "user_cap_reached"): 1,
    }

    expected = {
        ("metering_worker_events_consumed_total", (("processor", "usage"),)): 8,
        ("metering_worker_events_accepted_total", (("processor", "usage"),)): 3,
        ("metering_worker_duplicates_total", (("processor", "usage"),)): 1,
        ("metering_worker_events_consumed_total", (("processor", "account"),)): 8,
        ("metering_worker_events_accepted_total", (("processor", "account"),)): 7,
        ("metering_worker_batch_size_sum", (("processor", "usage"),)): 8,
        ("metering_worker_batch_size_sum", (("processor", "account"),)): 8,
        ("metering_worker_notifications_total", (("kind", "threshold_reached"),)): 3,
        ("metering_worker_notifications_total", (("kind", "stopped"),)): 1,
        ("metering_worker_notifications_total", (("kind", "resumed"),)): 1,
        ("metering_worker_blocks_total", (("reason", "user_cap_reached"),)): 1,
        ("metering_worker_resumes_total", (("reason", "user_cap_reached"),)): 1,
        (
            "metering_consumer_lag",
            (("group", pipeline.settings.usage_group_id), ("topic", pipeline.topics.usage_events)),
        ): 0,
        (
            "metering_consumer_lag",
            (("group", pipeline.settings.group_id), ("topic", pipeline.topics.account_events)),
        ): 0,
    }
    for reason in ("malformed_json", "negative_tokens", "unknown_model", "unknown_org"):
        expected[
            ("metering_worker_dead_letters_total", (("processor", "usage"), ("reason", reason)))
        ] = 1
    expected[
        (
            "metering_worker_dead_letters_total",
            (("processor", "account"), ("reason", "not_permitted")),
        )
    ] = 1

    def settled(found: Scrape) -> bool:
        lag_known = all(
            found.has(name, **dict(labels))
            for name, labels in expected
            if name == "metering_consumer_lag"
        )
        return lag_known and projection(found, expected) == expected

    found = scrape_until(metrics_url(port), settled, alive=lambda: alive(pipeline))
    assert projection(found, expected) == expected
    # nothing else was dead-lettered, blocked or notified
    assert found.by("metering_worker_dead_letters_total", "reason") == dead
    assert found.by("metering_worker_blocks_total", "reason") == {"user_cap_reached": 1}
    # one observation per batch; the Redis round trips were timed
    batches = found.value("metering_worker_batch_seconds_count", processor="usage")
    assert batches == found.value("metering_worker_batch_size_count", processor="usage") >= 1
    assert found.value("metering_worker_redis_seconds_count", operation="apply_usage") >= 1
    assert found.value("metering_worker_redis_seconds_count", operation="load_accounts") >= 1
    assert found.value("metering_worker_redis_seconds_count", operation="record_marks") >= 1
    assert found.value("metering_worker_batch_retries_total", processor="usage", stage="apply") == 0


def test_the_sink_child_serves_its_own_metrics_on_the_next_port(pipeline: Pipeline) -> None:
    """`metering worker` and its sink child: two processes, two ports, no clash."""
    port = pipeline.settings.metrics_port
    pipeline.sink = True
    pipeline.start_worker()
    org = "org_sink_metrics"
    pipeline.send_accounts(*new_org(org, members=("u1",), credits="50.00"))  # 4 events
    pipeline.wait_for_gate(org, "u1", None)
    pipeline.send_usage(*(spend(org, "u1", 1) for _ in range(5)))
    pipeline.wait_for(lambda p: len(p.priced()) == 5, what="5 priced")
    # a priced record seen twice (as after a worker's replay), and a foreign record
    again = json.dumps(pipeline.priced()[0]).encode()
    pipeline.send_raw(pipeline.topics.usage_priced, [again, b"not a priced record"], org.encode())
    pipeline.wait_caught_up()

    group = pipeline.settings.sink_group_id
    expected = {
        ("metering_sink_rows_inserted_total", (("table", "usage_events"),)): 5,
        ("metering_sink_rows_inserted_total", (("table", "account_events"),)): 4,
        # the annual seat invoice of a usage-based org.created (R3)
        ("metering_sink_rows_inserted_total", (("table", "documents"),)): 1,
        ("metering_sink_duplicates_skipped_total", ()): 1,
        ("metering_sink_dead_letters_total", (("reason", "invalid_priced_record"),)): 1,
    }
    for topic in (
        pipeline.topics.usage_priced,
        pipeline.topics.account_outcomes,
        pipeline.topics.documents,
    ):
        expected[("metering_consumer_lag", (("group", group), ("topic", topic)))] = 0

    def settled(found: Scrape) -> bool:
        lag_known = found.has(
            "metering_consumer_lag", group=group, topic=pipeline.topics.usage_priced
        )
        return lag_known and projection(found, expected) == expected

    sink = scrape_until(metrics_url(port + 1), settled, alive=lambda: alive(pipeline))
    assert projection(sink, expected) == expected
    assert sink.value("metering_sink_batches_total") >= 1
    assert sink.value("metering_sink_insert_seconds_count") == sink.value(
        "metering_sink_batches_total"
    )
    assert not sink.has("metering_worker_events_consumed_total", processor="usage")
    # the worker itself, on its own port, at the same time
    worker = scrape_until(
        metrics_url(port),
        lambda s: s.value("metering_worker_events_accepted_total", processor="usage") == 5,
        alive=lambda: alive(pipeline),
    )
    assert worker.value("metering_worker_events_consumed_total", processor="usage") == 5
    assert worker.value("metering_worker_events_accepted_total", processor="usage") == 5
    assert worker.value("metering_sink_batches_total") == 0  # not the sink's process


def _last_month_day() -> datetime:
    first = datetime.now(UTC).date().replace(day=1)
    day = first - timedelta(days=10)
    return datetime(day.year, day.month, day.day, 12, tzinfo=UTC)


def test_the_api_process_serves_the_nightly_batch_and_its_sink(pipeline: Pipeline) -> None:
    """`metering api --with-sink` bills the last month that ended at start-up (the nightly
    schedule catching up): its /metrics shows the run, the documents by kind, the last
    success time, and the sink running in the same process."""
    when = _last_month_day()
    pipeline.start_worker()
    pipeline.send_accounts(
        *new_org("org_bill_ss", mode="self_serve", members=("u1",), credits="40.00", at=when),
        *new_org("org_bill_sa", mode="sales_assisted", members=("u1",), at=when),
    )
    pipeline.wait_for_gate("org_bill_sa", "u1", None)
    pipeline.send_usage(
        spend("org_bill_ss", "u1", 2, at=when), spend("org_bill_sa", "u1", 3, at=when)
    )
    pipeline.wait_for(lambda p: len(p.priced()) == 2, what="2 priced")
    pipeline.wait_caught_up()

    http_port = free_port()
    started = time.time()
    api = pipeline.spawn(
        "api", "--with-sink", METERING_HTTP_PORT=str(http_port), METERING_API_SECRET=SECRET
    )
    try:
        found = scrape_until(
            metrics_url(http_port),
            lambda s: s.value("metering_billing_runs_total", outcome="success") >= 1,
            timeout_s=240,
            alive=lambda: api.poll() is None,
        )
        assert found.value("metering_billing_runs_total", outcome="success") == 1
        assert found.value("metering_billing_runs_total", outcome="failure") == 0
        assert found.by("metering_billing_documents_issued_total", "kind") == {
            "credit_statement": 1,
            "usage_invoice": 1,
        }
        assert found.value("metering_billing_run_seconds_count", outcome="success") == 1
        last_success = found.value("metering_billing_last_success_timestamp_seconds")
        assert started <= last_success <= time.time()
        # the sink thread of the same process stored what the batch billed
        assert found.value("metering_sink_rows_inserted_total", table="usage_events") == 2
        assert found.value("metering_sink_rows_inserted_total", table="account_events") == 7
        # and the scrape itself is counted, by route template
        again = scrape_until(
            metrics_url(http_port),
            lambda s: (
                s.value(
                    "metering_http_requests_total", method="GET", route="/metrics", status="200"
                )
                >= 1
            ),
            alive=lambda: api.poll() is None,
        )
        assert again.value("metering_billing_runs_total", outcome="success") == 1
    finally:
        api.send_signal(signal.SIGTERM)
        api.wait(timeout=60)


def test_metrics_port_in_use_or_zero_is_not_fatal() -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        assert metrics.serve(taken.getsockname()[1], "test") is False
    assert metrics.serve(0, "test") is False


def test_the_worker_gives_its_sink_child_the_next_port() -> None:
    assert sink_metrics_port(Settings(metrics_port=9400)) == 9401
    assert sink_metrics_port(Settings(metrics_port=0)) == 0
