"""The back-off schedule of every retried Redis, Kafka or ClickHouse step: the worker's
processors, the ClickHouse sink and the notifier."""

from __future__ import annotations

RETRY_BACKOFF_S = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


def backoff_s(attempt: int) -> float:
    """How long to wait before retry number `attempt` (0-based); then every 5 s."""
    return RETRY_BACKOFF_S[min(attempt, len(RETRY_BACKOFF_S) - 1)]
