"""What a command logs, decided in one place.

Kafka clients log through Python logging: librdkafka (under confluent-kafka) through the
`metering.kafka` logger that every client gets from `metering.kafka_clients`, aiokafka
(under faust) through its own. `configure` is called once per command (`metering`,
`billing`): by default a command shows records of WARNING and above — its own and the
clients' — so a normal, successful run prints only its own output; `-v` shows
everything.

One exception by default: librdkafka's request time-outs (facility `REQTMOUT`). The
client retries such a request itself or, for a best-effort one, gives it up; what a
command cannot do without is reported by the command (an exception, a failed delivery,
"waiting for Kafka …"). The common case is harmless: a consumer that leaves its group
while its join is held back by a member that died without leaving (until that member's
session expires) — e.g. `billing run` just after a worker was killed.
"""

from __future__ import annotations

import logging

KAFKA = "metering.kafka"  # librdkafka, through every client of metering.kafka_clients
AIOKAFKA = "aiokafka"  # the faust worker's client
CLIENT_LOGGERS = (KAFKA, AIOKAFKA)
FORMAT = "%(levelname)s %(name)s: %(message)s"

# librdkafka facilities of conditions the client recovers from by itself.
_SELF_RECOVERING = frozenset({"REQTMOUT"})

_verbose = False


def kafka_logger() -> logging.Logger:
    return logging.getLogger(KAFKA)


class _SelfRecovering(logging.Filter):
    """Drops librdkafka records of facilities in `_SELF_RECOVERING`. confluent-kafka logs
    `"%s [%s] %s" % (facility, client name, message)`."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        facility = args[0] if isinstance(args, tuple) and args else None
        return facility not in _SELF_RECOVERING


_FILTER = _SelfRecovering()
# In place from the start, so a program that uses the clients without `configure` (a
# script, the test suite) is spared them too.
logging.getLogger(KAFKA).addFilter(_FILTER)


def configure(verbose: bool = False) -> None:
    """The logging of this process's command: WARNING and above on stderr (librdkafka's
    self-recovering time-outs left out), or with `verbose` everything, the Kafka
    clients' debug records included."""
    global _verbose  # noqa: PLW0603 - one switch per process, read by `verbose()`
    _verbose = verbose
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format=FORMAT)
    for name in CLIENT_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.WARNING)
    if verbose:
        kafka_logger().removeFilter(_FILTER)
    else:
        kafka_logger().addFilter(_FILTER)


def verbose() -> bool:
    """Whether this command was asked for everything (`metering -v`): processes it
    starts (a worker's sink) are given `-v` too, and faust logs at INFO."""
    return _verbose
