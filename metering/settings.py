"""Typed settings from `METERING_*` environment variables (SPEC §4 plus local-stack knobs)."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from billing.pricing import PriceBook, default_price_book_text
from metering.topics import TopicNames
from schemas.money import parse_usd

MAX_TOKEN_TTL_HOURS = 90 * 24  # 90 days (docs/decisions.md › HTTP API)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="METERING_", frozen=True)

    kafka_bootstrap: str = "localhost:9092"
    redis_url: str = "redis://localhost:6379/0"
    # Default: an embedded chDB store under ./var/clickhouse (used from the ClickHouse issue on).
    clickhouse_url: str = ""
    http_port: int = 8080
    # HTTP API tokens: the HS256 signing secret (default: a random one kept in
    # var/api-secret, for local use) and how long `metering token issue` tokens last
    # (at most MAX_TOKEN_TTL_HOURS: longer-lived tokens are refused when presented).
    api_secret: str = ""
    token_ttl_hours: float = Field(default=24.0, gt=0, le=MAX_TOKEN_TTL_HOURS)
    # Limits of the HTTP API's server (docs/operations.md › Limits). The largest request
    # body is ~250 bytes (a purchase with a 128-character id), the largest headers a
    # bearer token (~300 bytes) and an Idempotency-Key (200).
    http_max_body_bytes: int = Field(default=4096, ge=256)
    http_max_header_bytes: int = Field(default=16384, ge=1024)  # request line + headers
    http_max_headers: int = Field(default=64, ge=8)
    http_header_timeout_s: float = Field(default=10.0, gt=0)  # connection → headers complete
    http_body_timeout_s: float = Field(default=10.0, gt=0)  # headers → body complete
    # Connections and requests at once, per API process; beyond it a request gets 503.
    http_max_concurrency: int = Field(default=1000, ge=1)
    # How long a write waits for Kafka to confirm its account event before answering 503.
    http_write_timeout_s: float = Field(default=5.0, gt=0, le=60)
    # The interactive documentation (/docs, /redoc) and /openapi.json; off in production
    # if the API should not describe itself to the internet.
    api_docs: bool = True
    price_book: Path | None = Field(
        default=None, description="a price-book JSON file; default: the one shipped"
    )
    # Local stack and topics (not part of the SPEC contract; documented in the README).
    var_dir: Path = Path("var")
    topic_partitions: int = Field(default=12, ge=1, le=1000)
    kafka_heap: str = "768m"
    # Self-serve balance alerts (R17): notify when the balance falls below each level (USD).
    balance_alert_levels: str = "10.00,1.00"
    # Isolation: a topic-name prefix, a Redis key prefix and the processors' consumer group.
    topic_namespace: str = ""
    redis_prefix: str = ""
    group_id: str = "metering-enforcement"
    # The ClickHouse sink (README › ClickHouse): its consumer group, batch bounds, and
    # whether `metering worker` runs it (as a child process).
    sink_group_id: str = "metering-clickhouse-sink"
    sink_batch_rows: int = Field(default=5000, ge=1)
    sink_batch_seconds: float = Field(default=1.0, gt=0)
    sink_in_worker: bool = True
    # The nightly batch inside `metering run` (README › Billing): whether it runs, at what
    # time of day (UTC, HH:MM) and where it writes the files (default var/documents).
    billing_schedule: bool = True
    billing_at: str = Field(default="00:30", pattern=r"^([01]\d|2[0-3]):[0-5]\d$")
    documents_dir: Path | None = None
    # Prometheus metrics of `metering worker` / `metering sink` on this port (0: off); the
    # sink child of a worker uses the next one. The API serves them on its own /metrics.
    metrics_port: int = Field(default=9400, ge=0, le=65534)
    # The address they are served on: loopback unless set (e.g. 0.0.0.0 in a container,
    # for a Prometheus on its network). The API's /metrics follows the API's --host.
    metrics_host: str = "127.0.0.1"
    # `metering run` restarts a child that died after this many seconds, doubling up to
    # 60 s while it keeps dying within a minute of its start.
    child_restart_backoff_s: float = Field(default=1.0, gt=0, le=60)
    # Fault injection for the crash tests only: exit after this many stored batches,
    # between the insert and the offset commit (0: never).
    sink_exit_after_batches: int = 0
    # The same for `billing run`: exit after publishing a month's documents, before
    # storing them in ClickHouse.
    billing_exit_after_publish: bool = False

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

    @cached_property
    def resolved_clickhouse_url(self) -> str:
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
