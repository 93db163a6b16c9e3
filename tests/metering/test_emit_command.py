"""`metering emit FILE.jsonl` against the real broker."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from confluent_kafka import Consumer

from metering.traffic import TrafficGenerator
from tests.conftest import RunningStack
from tests.helpers import body, consume, run_metering


@pytest.mark.stack
def test_emit_file_sends_valid_lines_and_reports_rejected_ones(
    stack: RunningStack,
    topic_factory: Callable[..., str],
    consumer_factory: Callable[..., Consumer],
    tmp_path: Path,
) -> None:
    """A file of 50 good events with two bad lines: the 50 are delivered, the bad lines
    are reported by line number and reason, and the exit code says not everything went."""
    # Given a JSONL file of generated events with two broken lines in it
    start = datetime.now(UTC) - timedelta(days=2)
    events = list(
        TrafficGenerator(seed=3, orgs=4, members_per_org=3, start=start).usage_events(
            50, timedelta(days=1)
        )
    )
    lines = [json.dumps(e) for e in events]
    lines.insert(10, '{"event_id": "broken"')
    lines.insert(20, json.dumps({**events[0], "event_id": "neg", "output_tokens": -3}))
    file = tmp_path / "events.jsonl"
    file.write_text("\n".join(lines) + "\n")
    topic = topic_factory("emitcmd", partitions=4)

    # When the command sends it to a fresh topic
    result = run_metering(
        "emit", str(file), "--usage-topic", topic, METERING_KAFKA_BOOTSTRAP=stack.bootstrap
    )

    # Then the 50 good events are on the topic and the two bad lines are reported
    assert result.returncode == 1, result.stderr
    assert "line 11: malformed_json" in result.stdout
    assert "line 21: negative_tokens" in result.stdout
    assert "rejected malformed_json: 1" in result.stdout
    messages = consume(consumer_factory(topic), 50)
    assert sorted(body(m)["event_id"] for m in messages) == sorted(e["event_id"] for e in events)
