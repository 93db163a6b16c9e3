"""Prometheus metrics of every component (README › Metrics lists them).

One module, the default registry: each process exposes whatever its components
recorded — `metering worker` and `metering sink` on `METERING_METRICS_PORT` (`serve`), the
API (and the sink and nightly batch inside `metering api --with-sink` / `metering run`) on
its own `GET /metrics`.

Counters are bumped once per batch (`inc(n)`), never per event, and their label values
are a small, fixed set (processor, reason code, kind, table, route template), so a scrape
stays small and the hot path cheap. Children with fixed labels are bound once here.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from prometheus_client import (
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    start_http_server,
)
from prometheus_client.exposition import choose_encoder

if TYPE_CHECKING:  # only the type: the processors import this module
    from metering.enforcement.batch_result import BatchResult

log = logging.getLogger("metering.metrics")

# Only `_total` (and a histogram's `_bucket`/`_sum`/`_count`): the `_created` series
# double a scrape for nothing a dashboard uses.
disable_created_metrics()  # type: ignore[no-untyped-call]

USAGE, ACCOUNT, NEW_MONTH = "usage", "account", "new_month"
# Latency buckets, 1 ms to 10 s, shared by the batch and HTTP histograms.
SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# -- the enforcement worker -------------------------------------------------------------

WORKER_EVENTS_CONSUMED = Counter(
    "metering_worker_events_consumed_total",
    "Input records taken by a processor (usage: usage.events.v1, account: account.events.v1)",
    ["processor"],
)
WORKER_EVENTS_ACCEPTED = Counter(
    "metering_worker_events_accepted_total",
    "Records accepted and durable: usage priced and published to usage.priced.v1 "
    "(also the replay of one already applied), account events applied",
    ["processor"],
)
WORKER_DUPLICATES = Counter(
    "metering_worker_duplicates_total",
    "Records whose event_id was already applied with the same payload (counted once, G1)",
    ["processor"],
)
WORKER_DEAD_LETTERS = Counter(
    "metering_worker_dead_letters_total",
    "Records sent to usage.deadletter.v1, by reason code",
    ["processor", "reason"],
)
WORKER_NOTIFICATIONS = Counter(
    "metering_worker_notifications_total",
    "Notifications published to billing.notifications.v1, by kind",
    ["kind"],
)
WORKER_BLOCKS = Counter(
    "metering_worker_blocks_total",
    "Stops (notifications of kind stopped): a user or the org was blocked, by reason",
    ["reason"],
)
WORKER_RESUMES = Counter(
    "metering_worker_resumes_total",
    "Resumes (notifications of kind resumed): a block was lifted, by the reason it had",
    ["reason"],
)
WORKER_BATCH_RETRIES = Counter(
    "metering_worker_batch_retries_total",
    "Batches retried after a Redis or Kafka error (stage apply: Redis; publish: outputs "
    "or notification marks)",
    ["processor", "stage"],
)
WORKER_BATCH_SIZE = Histogram(
    "metering_worker_batch_size",
    "Records per applied batch",
    ["processor"],
    buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 4000),
)
WORKER_BATCH_SECONDS = Histogram(
    "metering_worker_batch_seconds",
    "Seconds to apply a batch: validate, price, the Redis round trip(s), decide outputs "
    "(retries included)",
    ["processor"],
    buckets=SECONDS_BUCKETS,
)
WORKER_DELIVERY_SECONDS = Histogram(
    "metering_worker_batch_delivery_seconds",
    "Seconds from handing a batch's outputs to the producer until the broker acknowledged "
    "them all and the notification marks were recorded",
    ["processor"],
    buckets=SECONDS_BUCKETS,
)
WORKER_REDIS_SECONDS = Histogram(
    "metering_worker_redis_seconds",
    "Seconds per Redis round trip of the processors, by operation",
    ["operation"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
REDIS_APPLY_USAGE = WORKER_REDIS_SECONDS.labels("apply_usage")
REDIS_LOAD_ACCOUNTS = WORKER_REDIS_SECONDS.labels("load_accounts")
REDIS_APPLY_ACCOUNTS = WORKER_REDIS_SECONDS.labels("apply_accounts")
REDIS_READ_SPEND = WORKER_REDIS_SECONDS.labels("read_spend")
REDIS_RECORD_MARKS = WORKER_REDIS_SECONDS.labels("record_marks")

# -- consumers (worker and sink) -----------------------------------------------------------

CONSUMER_LAG = Gauge(
    "metering_consumer_lag",
    "Records on the partitions assigned to this process not yet handled: high watermark "
    "minus the worker's position (records not yet taken by a processor) or the sink's "
    "last commit (not yet stored); refreshed every 5 s; sum over the group's processes",
    ["group", "topic"],
)

# -- the ClickHouse sink -----------------------------------------------------------------

SINK_ROWS_INSERTED = Counter(
    "metering_sink_rows_inserted_total",
    "Rows inserted into ClickHouse, by table",
    ["table"],
)
SINK_DUPLICATES_SKIPPED = Counter(
    "metering_sink_duplicates_skipped_total",
    "Priced usage records not inserted because ClickHouse already had their event_id "
    "(replays, re-published outputs)",
)
SINK_DEAD_LETTERS = Counter(
    "metering_sink_dead_letters_total",
    "Records the sink could not store, sent to usage.deadletter.v1, by reason code",
    ["reason"],
)
SINK_BATCHES = Counter("metering_sink_batches_total", "Sink batches stored and committed")
SINK_BATCH_RETRIES = Counter(
    "metering_sink_batch_retries_total",
    "Sink batches retried after a ClickHouse or Kafka error",
)
SINK_INSERT_SECONDS = Histogram(
    "metering_sink_insert_seconds",
    "Seconds to store one sink batch (stored-id check, inserts, dead letters)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)

# -- the HTTP API -----------------------------------------------------------------------

HTTP_REQUESTS = Counter(
    "metering_http_requests_total",
    "HTTP requests answered, by method, route template and status code",
    ["method", "route", "status"],
)
HTTP_REQUEST_SECONDS = Histogram(
    "metering_http_request_seconds",
    "Seconds to answer an HTTP request, by method, route template and status code",
    ["method", "route", "status"],
    buckets=SECONDS_BUCKETS,
)
GATE_DECISIONS = Counter(
    "metering_gate_decisions_total",
    "Gate answers of the authorization endpoint, by allowed and reason (none if allowed)",
    ["allowed", "reason"],
)

# -- the billing batch -------------------------------------------------------------------

BILLING_RUNS = Counter(
    "metering_billing_runs_total",
    "Month-end batch runs, by outcome (success, failure)",
    ["outcome"],
)
BILLING_RUN_SECONDS = Histogram(
    "metering_billing_run_seconds",
    "Seconds per month-end batch run (waiting for the watermarks included)",
    ["outcome"],
    buckets=(1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0),
)
BILLING_DOCUMENTS_ISSUED = Counter(
    "metering_billing_documents_issued_total",
    "Documents issued (published and stored) by the month-end batch, by kind",
    ["kind"],
)
BILLING_LAST_SUCCESS = Gauge(
    "metering_billing_last_success_timestamp_seconds",
    "Unix time at which the last successful month-end batch run ended",
)


def record_worker_batch(processor: str, result: BatchResult) -> None:
    """A batch's outcomes, once its outputs are durable."""
    if result.accepted:
        WORKER_EVENTS_ACCEPTED.labels(processor).inc(result.accepted)
    if result.duplicates:
        WORKER_DUPLICATES.labels(processor).inc(result.duplicates)
    for reason, count in result.dead_letter_reasons.items():
        WORKER_DEAD_LETTERS.labels(processor, reason).inc(count)
    for (kind, reason), count in result.notified.items():
        WORKER_NOTIFICATIONS.labels(kind).inc(count)
        if kind == "stopped":
            WORKER_BLOCKS.labels(reason).inc(count)
        elif kind == "resumed":
            WORKER_RESUMES.labels(reason).inc(count)


def serve(port: int, what: str, host: str = "127.0.0.1") -> bool:
    """Serve this process's metrics on `host`:`port` from a daemon thread; 0 disables.
    Loopback unless told otherwise (METERING_METRICS_HOST): metrics carry no secret, but
    nothing outside the machine should reach a port nobody decided to expose. A port
    already in use is logged and skipped, never fatal: metrics must not stop a worker
    (e.g. several on one machine with the same setting)."""
    if not port:
        return False
    try:
        start_http_server(port, addr=host)
    except OSError as exc:
        log.error(
            "%s: cannot serve metrics on port %d (%s); set METERING_METRICS_PORT to a free "
            "port (0 disables)",
            what,
            port,
            exc,
        )
        return False
    return True


def exposition(accept: str = "") -> tuple[bytes, str]:
    """This process's metrics and their content type: the Prometheus text format, or
    OpenMetrics if the `Accept` header asks for it (as `start_http_server` does)."""
    encode, content_type = choose_encoder(accept)
    return encode(REGISTRY), content_type
