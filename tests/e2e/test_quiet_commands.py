"""A normal, successful run of a command prints only its own output: Kafka client logs
(librdkafka, aiokafka) go through Python logging and are shown at WARNING and above
only when they are worth a user's attention (everything with `metering -v`)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.conftest import RunningStack
from tests.e2e.pipeline import Pipeline, cleanup, new_pipeline
from tests.e2e.scenario import new_org, spend
from tests.helpers import run_metering

pytestmark = pytest.mark.stack

BIN = Path(sys.executable).parent


def _kafka_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "rdkafka" in line or "aiokafka" in line]


# A member of the sink's consumer group that dies without leaving it (SIGKILL, as an
# out-of-memory kill would), moments before `billing run` starts its own sink: that
# sink's join is held until the dead member's session expires, and leaving the group
# at the end of the run times out behind it — librdkafka logs REQTMOUT, and recovers.
_DEAD_MEMBER = textwrap.dedent(
    """
    import os, signal, sys
    from confluent_kafka import Consumer
    bootstrap, group, *topics = sys.argv[1:]
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                         "session.timeout.ms": 30000})
    consumer.subscribe(topics, on_assign=lambda *_: print("assigned", flush=True))
    while True:
        consumer.poll(0.1)
    """
)


def _dead_member(pipeline: Pipeline) -> None:
    """A process joins the sink's consumer group, gets partitions, and is SIGKILLed."""
    topics = pipeline.topics
    member = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _DEAD_MEMBER,
            pipeline.settings.kafka_bootstrap,
            pipeline.settings.sink_group_id,
            topics.usage_priced,
            topics.account_outcomes,
            topics.documents,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert member.stdout is not None
        assert member.stdout.readline().strip() == "assigned"
    finally:
        member.send_signal(signal.SIGKILL)
        member.wait()


def test_billing_run_and_stack_status_print_no_kafka_client_logs(
    stack: RunningStack, tmp_path: Path
) -> None:
    # Given a private pipeline whose worker and sink have stored an org and its usage of
    # a month that has ended
    pipeline = new_pipeline(stack.settings, tmp_path)
    pipeline.sink = True
    at = datetime(2026, 1, 10, 12, tzinfo=UTC)
    try:
        pipeline.send_accounts(*new_org("org_quiet", at=at))
        pipeline.start_worker()
        pipeline.wait_for_gate("org_quiet", "u1", None)  # the org is applied
        pipeline.send_usage(spend("org_quiet", "u1", 3, event_id="quiet-1", at=at))
        pipeline.wait_caught_up()
        pipeline.stop_worker()
        # and a sink that died without leaving its group just before the batch starts
        _dead_member(pipeline)

        # When the month is billed
        done = subprocess.run(
            [str(BIN / "billing"), "run", "--month", "2026-01", "--out", str(tmp_path / "out")],
            env={**os.environ, **pipeline.env()},
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

        # Then it succeeds, prints its table, and no Kafka client line
        assert done.returncode == 0, done.stdout + done.stderr
        assert "org_quiet.credit_statement.2026-01.001" in done.stdout
        assert _kafka_lines(done.stderr) == [], done.stderr
    finally:
        cleanup(pipeline)

    # And `metering stack status` prints its table and nothing from the clients either
    status = run_metering("stack", "status")
    assert status.returncode == 0, status.stdout + status.stderr
    assert "kafka" in status.stdout
    assert _kafka_lines(status.stderr) == [], status.stderr


def test_billing_run_before_anything_was_stored_issues_nothing_quietly(
    stack: RunningStack, tmp_path: Path
) -> None:
    # Given a fresh namespace and a ClickHouse store nothing has written to yet (no worker
    # or sink has run: a new clone, a new deployment)
    pipeline = new_pipeline(stack.settings, tmp_path)
    try:
        # When a month is billed
        done = subprocess.run(
            [str(BIN / "billing"), "run", "--month", "2026-01", "--out", str(tmp_path / "out")],
            env={**os.environ, **pipeline.env()},
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

        # Then it issues nothing and says so, with nothing on stderr
        assert done.returncode == 0, done.stdout + done.stderr
        assert "0 orgs · 0 documents issued now" in done.stdout
        assert done.stderr == ""
    finally:
        cleanup(pipeline)
