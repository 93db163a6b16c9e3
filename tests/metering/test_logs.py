"""Which Kafka client records a command shows (metering/logs.py)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from metering import logs


def _librdkafka(facility: str, level: int, message: str) -> logging.LogRecord:
    """A record as confluent-kafka logs it for librdkafka."""
    return logging.LogRecord(
        logs.KAFKA, level, "", 0, "%s [%s] %s", (facility, "rdkafka#consumer-1", message), None
    )


@pytest.fixture
def restored() -> Iterator[None]:
    levels = {name: logging.getLogger(name).level for name in logs.CLIENT_LOGGERS}
    yield
    logs.configure(verbose=False)
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


TIMEOUT = _librdkafka("REQTMOUT", logging.WARNING, "GroupCoordinator/1: Timed out 1 in-flight")
REFUSED = _librdkafka("FAIL", logging.ERROR, "Connect to ipv4#127.0.0.1:9 failed")


@pytest.mark.usefixtures("restored")
def test_by_default_clients_show_warnings_but_not_the_time_outs_they_recover_from() -> None:
    # When a command configures its logging without -v
    logs.configure(verbose=False)

    # Then Kafka client records below WARNING are not shown, a refused connection is,
    # and librdkafka's request time-outs are not
    kafka = logs.kafka_logger()
    assert not kafka.isEnabledFor(logging.INFO)
    assert not logging.getLogger(logs.AIOKAFKA).isEnabledFor(logging.INFO)
    assert kafka.filter(REFUSED)
    assert not kafka.filter(TIMEOUT)
    assert not logs.verbose()


@pytest.mark.usefixtures("restored")
def test_verbose_shows_everything() -> None:
    # When a command is run with -v
    logs.configure(verbose=True)

    # Then every client record passes, the time-outs included
    kafka = logs.kafka_logger()
    assert kafka.isEnabledFor(logging.DEBUG)
    assert logging.getLogger(logs.AIOKAFKA).isEnabledFor(logging.DEBUG)
    assert kafka.filter(TIMEOUT) and kafka.filter(REFUSED)
    assert logs.verbose()
