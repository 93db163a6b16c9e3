-- Every delivery attempt of `metering notifier` (webhook or email), from
-- billing.notification_deliveries.v1: what the Usage page shows owners. One row per
-- record; a record the sink stores twice (a batch replayed after a crash) has the same
-- sorting key and collapses under FINAL, which the queries use (the table has no views).
CREATE TABLE IF NOT EXISTS {db}.notification_deliveries
(
    delivery_id        String,
    notification_id    String,
    org_id             String,
    kind               LowCardinality(String),
    subject            String,                       -- the user_id, or '' for the org
    channel            LowCardinality(String),       -- webhook, email
    drive              String,                       -- '' the first time, the dead letter's position when re-driven
    step               UInt32,
    attempt            UInt32,
    status             LowCardinality(String),       -- delivered, retrying, deferred, failed, cancelled
    endpoint           String,                       -- the URL, or the email recipients
    response_status    Nullable(UInt16),             -- HTTP status or SMTP reply code
    latency_ms         Nullable(UInt32),
    error              String,
    attempted_at       DateTime64(3, 'UTC'),
    next_attempt_at    Nullable(DateTime64(3, 'UTC')),
    source_partition   UInt32,
    source_offset      UInt64,
    inserted_at        DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(attempted_at)
ORDER BY (org_id, notification_id, channel, drive, step);
