"""Typed settings from `METERING_*` environment variables (docs/contract.md › Settings)."""

from __future__ import annotations

from pathlib import Path
from typing import Self
from urllib.parse import parse_qs, urlsplit

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from billing.pricing import PriceBook, default_price_book_text
from metering.enforcement.usage_marks import DEFAULT_MAX_EVENT_AGE_DAYS
from metering.topics import TopicNames
from schemas.money import parse_usd

MAX_TOKEN_TTL_HOURS = 90 * 24  # 90 days (docs/decisions.md › HTTP API)


def redis_url_db(url: str) -> int | None:
    """The database a Redis URL selects, as redis-py reads it (`?db=`, else the path;
    0 when neither names one); None if it is not a number."""
    parts = urlsplit(url)
    text = parse_qs(parts.query).get("db", [parts.path.strip("/") or "0"])[0]
    return int(text) if text.isdigit() else None


class Settings(BaseSettings):
    """Every setting, with the description and default the documentation shows: README ›
    Settings and docs/contract.md › Settings are generated from these fields
    (`make contract`), so a new setting needs a description. `shown` is the default in
    words, where the field's own default is a placeholder."""

    model_config = SettingsConfigDict(env_prefix="METERING_", frozen=True)

    kafka_bootstrap: str = Field(
        default="localhost:9092",
        description="Kafka bootstrap servers. A local address is started by `stack up` (its "
        "KRaft controller takes the next port, 9093); a remote one is only used",
    )
    redis_url: str = Field(
        default="redis://localhost:6379/0", description="Redis; started by `stack up` when local"
    )
    redis_cluster: bool = Field(
        default=False,
        description="Redis Cluster: METERING_REDIS_URL names any one node; `stack up` starts "
        "six local nodes at its port and the five above",
    )
    clickhouse_url: str = Field(
        default="",
        description="`chdb:///abs/path` (embedded, in-process) or "
        "`http(s)://user:pass@host:8123/db` (a server; database default `metering`)",
        json_schema_extra={"shown": "embedded chDB under `./var/clickhouse`"},
    )
    http_port: int = Field(default=8080, description="HTTP API port")
    # HTTP API tokens: the HS256 signing secret (default: a random one kept in
    # var/api-secret, for local use) and how long `metering token issue` tokens last
    # (at most MAX_TOKEN_TTL_HOURS: longer-lived tokens are refused when presented).
    api_secret: str = Field(
        default="",
        description="HS256 secret of API tokens (≥ 32 characters); set it in production, "
        "the same on every API process",
        json_schema_extra={"shown": "a random secret in `var/api-secret`"},
    )
    token_ttl_hours: float = Field(
        default=24.0,
        gt=0,
        le=MAX_TOKEN_TTL_HOURS,
        description="lifetime of tokens from `metering token issue` (at most 2160: 90 days)",
    )
    # Limits of the HTTP API's server (docs/operations.md › Limits). The largest request
    # body is ~250 bytes (a purchase with a 128-character id), the largest headers a
    # bearer token (~300 bytes) and an Idempotency-Key (200).
    http_max_body_bytes: int = Field(
        default=4096, ge=256, description="largest request body the API reads (413 beyond)"
    )
    http_max_header_bytes: int = Field(
        default=16384, ge=1024, description="largest request line + headers (431 beyond)"
    )
    http_max_headers: int = Field(
        default=64, ge=8, description="most headers in one request (431 beyond)"
    )
    http_header_timeout_s: float = Field(
        default=10.0, gt=0, description="from connection to complete headers (408 beyond)"
    )
    http_body_timeout_s: float = Field(
        default=10.0, gt=0, description="from headers to complete body (408 beyond)"
    )
    http_max_concurrency: int = Field(
        default=1000,
        ge=1,
        description="connections and requests at once per API process (503 beyond)",
    )
    http_write_timeout_s: float = Field(
        default=5.0,
        gt=0,
        le=60,
        description="how long a write waits for Kafka to confirm its account event before "
        "answering 503",
    )
    api_docs: bool = Field(
        default=True,
        description="serve `/docs`, `/redoc` and `/openapi.json` (off in production if the API "
        "should not describe itself to the internet)",
    )
    price_book: Path | None = Field(
        default=None,
        description="a price-book JSON file",
        json_schema_extra={"shown": "the shipped `billing/data/price_book.json`"},
    )
    # Local stack and topics (not part of the original contract; documented in the README).
    var_dir: Path = Field(
        default=Path("var"),
        description="where the local stack keeps data, pid files and logs, and workers "
        "their faust folders (`faust/<group>-data/`)",
        json_schema_extra={"shown": "`./var`"},
    )
    topic_partitions: int = Field(
        default=12, ge=1, le=1000, description="partitions of each topic when `stack up` creates it"
    )
    kafka_heap: str = Field(default="768m", description="JVM heap of the local broker")
    renewal_check_seconds: float = Field(
        default=60.0,
        ge=0,
        description="how often each worker appends the renewals of contracts whose term has "
        "ended (a term renews by itself on its anniversary); `0` turns the timer off "
        "(renewals then come only from `contract.renewed` events sent from outside)",
    )
    # How late a usage event may arrive (metering/enforcement/usage_marks.py): bounds
    # the de-duplication marks Redis keeps (one month's are dropped this long after it).
    max_event_age_days: int = Field(
        default=DEFAULT_MAX_EVENT_AGE_DAYS,
        ge=1,
        le=3650,
        description="a usage event whose `occurred_at` is more than this many days before "
        "its record reached the broker is dead-lettered `event_too_old`; each month's "
        "de-duplication marks are kept this long (plus a day) after the month ends",
    )
    # Self-serve balance alerts (R17): notify when the balance falls below each level (USD).
    balance_alert_levels: str = Field(
        default="10.00,1.00",
        description="self-serve balance alert levels, USD: one `balance_low` notification per "
        "level per purchase cycle when usage takes the balance below it (R17)",
    )
    # Isolation: a topic-name prefix, a Redis key prefix and the processors' consumer group.
    topic_namespace: str = Field(
        default="",
        description="prefix of every topic name (tests and side-by-side deployments)",
        json_schema_extra={"shown": "empty"},
    )
    redis_prefix: str = Field(
        default="",
        description="prefix of every Redis key",
        json_schema_extra={"shown": "empty"},
    )
    group_id: str = Field(
        default="metering-enforcement",
        description="consumer group (faust app id) of the workers' account processor; their "
        "usage hot path's group is this name followed by `.usage`",
    )

    @model_validator(mode="after")
    def _cluster_has_only_db_0(self) -> Self:
        # Redis Cluster serves database 0 only (SELECT is refused), so a URL naming
        # another one would fail on the first command rather than here.
        db = redis_url_db(self.redis_url)
        if self.redis_cluster and db != 0:
            raise ValueError(
                f"METERING_REDIS_URL {self.redis_url!r} selects database {db}, but a Redis "
                "Cluster (METERING_REDIS_CLUSTER=true) has only database 0: end the URL with /0"
            )
        return self

    @property
    def usage_group_id(self) -> str:
        """The consumer group of the workers' usage hot path (confluent-kafka): a group of
        its own, as faust's assignor cannot share one with a plain consumer."""
        return f"{self.group_id}.usage"

    def worker_inputs(self) -> tuple[tuple[str, str], ...]:
        """(consumer group, input topic) of each processor of `metering worker`."""
        return (
            (self.group_id, self.topics.account_events),
            (self.usage_group_id, self.topics.usage_events),
        )

    def sink_inputs(self) -> tuple[str, ...]:
        """The topics the ClickHouse sink stores (its consumer group: `sink_group_id`)."""
        topics = self.topics
        return (
            topics.usage_priced,
            topics.account_outcomes,
            topics.documents,
            topics.notification_deliveries,
        )

    # The ClickHouse sink (README › ClickHouse): its consumer group, batch bounds, and
    # whether `metering worker` runs it (as a child process).
    sink_group_id: str = Field(
        default="metering-clickhouse-sink", description="consumer group of the ClickHouse sink"
    )
    sink_batch_rows: int = Field(
        default=5000, ge=1, description="a sink batch closes at this many records…"
    )
    sink_batch_seconds: float = Field(default=1.0, gt=0, description="…or at this age (seconds)")
    sink_in_worker: bool = Field(
        default=True, description="whether `metering worker` starts the sink as a child process"
    )
    # The nightly batch inside `metering run` (README › Billing): whether it runs, at what
    # time of day (UTC, HH:MM) and where it writes the files (default var/documents).
    billing_schedule: bool = Field(
        default=True,
        description="whether `metering run` runs the nightly billing batch (in its API process)",
    )
    billing_at: str = Field(
        default="00:30",
        pattern=r"^([01]\d|2[0-3]):[0-5]\d$",
        description="time of day (UTC, HH:MM) of the nightly batch",
    )
    documents_dir: Path | None = Field(
        default=None,
        description="where the nightly batch and `billing run` without `--out` write "
        "`YYYY-MM/<document_id>.json` + `.html`",
        json_schema_extra={"shown": "`./var/documents`"},
    )
    # Prometheus metrics of `metering worker` / `metering sink` on this port (0: off); the
    # sink child of a worker uses the next one. The API serves them on its own /metrics.
    metrics_port: int = Field(
        default=9400,
        ge=0,
        le=65534,
        description="port on which `metering worker` and `metering sink` serve Prometheus "
        "metrics (`http://HOST:PORT/metrics`, on METERING_METRICS_HOST); the sink child of "
        "`metering worker` uses the next port (9401); `0` disables. A port in use is logged, "
        "not fatal. The API serves its metrics on its own `/metrics` (README › Metrics)",
    )
    metrics_host: str = Field(
        default="127.0.0.1",
        description="address the worker's and the sink's metrics are served on: loopback "
        "unless set (e.g. `0.0.0.0` in a container, for a Prometheus on its network); the "
        "API's `/metrics` follows the API's `--host`",
    )
    child_restart_backoff_s: float = Field(
        default=1.0,
        gt=0,
        le=60,
        description="`metering run` restarts a child that died after this many seconds, "
        "doubling up to 60 s while it keeps dying within a minute of its start",
    )
    # Notification delivery (`metering notifier`, README › Notification delivery).
    notifier_group_id: str = Field(
        default="metering-notifier", description="consumer group (faust app id) of the notifier"
    )
    console_url: str = Field(
        default="http://localhost:8080",
        description="public base URL of the console: notifications link to "
        "`<console_url>/orgs/<org>/usage`, `metering login-link` prints "
        "`<console_url>/login/…`",
    )
    console_session_hours: float = Field(
        default=8.0,
        gt=0,
        le=24 * 7,
        description="how long a console session (opened by a login link) lasts; signing "
        "out ends it sooner",
    )
    console_sales_contact: str = Field(
        default="your account team",
        max_length=200,
        description="who a sales-assisted org's owners are told to contact about credits "
        "and contract changes (shown on the console)",
    )
    webhook_signing_key: str = Field(
        default="",
        description="key (≥ 32 characters) every webhook signing secret is derived from; the "
        "same on every API and notifier process; changing it changes every org's secret",
        json_schema_extra={"shown": "a random key in `var/webhook-signing-key`"},
    )
    webhook_allow_private: bool = Field(
        default=False,
        description="allow webhook endpoints on loopback, private, link-local and other "
        "non-public addresses, and plain `http://` (local use, tests, the demo); off, they "
        "are refused at registration (422) and again when connecting, after DNS",
    )
    webhook_timeout_seconds: float = Field(
        default=10.0, gt=0, description="how long one webhook request may take"
    )
    notify_retry_hours: float = Field(
        default=24.0,
        gt=0,
        description="a delivery that keeps failing (timeouts, connection errors, 408, 429, "
        "5xx, SMTP 4xx) is retried for this long after its first attempt, then dead-lettered",
    )
    notify_retry_base_seconds: float = Field(
        default=5.0,
        gt=0,
        description="the first retry's delay; each next one doubles, ±20 % jitter…",
    )
    notify_retry_max_seconds: float = Field(
        default=3600.0, gt=0, description="…up to this delay between two attempts"
    )
    notify_concurrency: int = Field(
        default=32, ge=1, description="deliveries the notifier has in flight at once, overall"
    )
    notify_endpoint_concurrency: int = Field(
        default=4,
        ge=1,
        description="requests in flight to one webhook endpoint (or the SMTP server) at once; "
        "more waiting than 25 × this are deferred (retried later, not counted as attempts)",
    )
    smtp_url: str = Field(
        default="",
        description="`smtp://[user:pass@]host[:port]` (STARTTLS when the server offers it) or "
        "`smtps://…` (TLS from the start); empty: no email",
        json_schema_extra={"shown": "empty (email off)"},
    )
    smtp_from: str = Field(
        default="Usage metering <notifications@localhost>",
        description="the From address of notification emails",
    )

    def environment(self) -> dict[str, str]:
        """These settings as `METERING_*` variables, for a child process that must run
        on exactly the same ones (a worker, a sink, an API started by a test or a
        benchmark)."""
        return {
            f"METERING_{name.upper()}": str(value).lower()
            if isinstance(value, bool)
            else str(value)
            for name, value in self.model_dump().items()
            if value is not None
        }

    @property
    def resolved_documents_dir(self) -> Path:
        return self.documents_dir or self.var_dir / "documents"

    @property
    def topics(self) -> TopicNames:
        return TopicNames(self.topic_namespace)

    @property
    def resolved_clickhouse_url(self) -> str:
        # A plain property: a cached one would be copied by `model_copy(update=…)` and
        # name the old store in a copy that changed `clickhouse_url` or `var_dir`.
        return self.clickhouse_url or f"chdb://{(self.var_dir / 'clickhouse').resolve()}"

    @property
    def balance_levels_nano_usd(self) -> tuple[int, ...]:
        return tuple(
            parse_usd(level.strip())
            for level in self.balance_alert_levels.split(",")
            if level.strip()
        )

    def load_price_book(self) -> PriceBook:
        text = self.price_book.read_text() if self.price_book else default_price_book_text()
        return PriceBook.from_json(text)
