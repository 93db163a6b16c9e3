"""Helpers shared by tests that talk to the real stack."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaException, Message


def consume(consumer: Consumer, count: int, timeout_s: float = 60.0) -> list[Message]:
    """Read exactly `count` messages (fails if fewer arrive in time), then make sure no
    extra message follows within a short grace period."""
    messages: list[Message] = []
    deadline = time.monotonic() + timeout_s
    while len(messages) < count and time.monotonic() < deadline:
        for message in consumer.consume(num_messages=5000, timeout=1.0):
            if message.error():
                raise KafkaException(message.error())
            messages.append(message)
    assert len(messages) >= count, f"only {len(messages)} of {count} messages arrived"
    extra = consumer.consume(num_messages=100, timeout=2.0)
    messages.extend(m for m in extra if not m.error())
    return messages


def body(message: Message) -> Any:
    """The message's JSON value (fails on a tombstone)."""
    value = message.value()
    assert value is not None, "message without a value"
    return json.loads(value)


def key(message: Message) -> str:
    raw = message.key()
    assert raw is not None, "message without a key"
    return raw.decode()


def run_metering(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run the installed `metering` command with extra environment variables."""
    return subprocess.run(
        [str(Path(sys.executable).parent / "metering"), *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=False,
    )


def wait_until(check: Callable[[], Any], what: str, timeout_s: float = 30.0) -> Any:
    """Poll `check` until it returns something true (returned); fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not (found := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return found
