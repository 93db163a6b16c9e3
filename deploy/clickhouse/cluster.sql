-- The metering schema for a replicated, sharded ClickHouse cluster.
--
-- Same tables, columns, keys and views as the single-node migrations in
-- schemas/clickhouse/ (001 to 006), laid out for a cluster (deploy/clickhouse/README.md;
-- tests/deploy/test_cluster_sql.py checks that the two agree):
--   * `<name>_local`: the data, Replicated*MergeTree, one replica set per shard;
--   * `<name>`: a Distributed table over the `_local` tables under the public name, so
--     the app, the dashboards and docs/dashboards.md use the same SQL as on one node;
--   * sharding key cityHash64(org_id): all rows of an org live on one shard, so the
--     ReplacingMergeTree (org_id, event_id) safety net and FINAL de-duplicate per shard;
--   * materialized views on the `_local` tables feed the `_local` rollups on the shard
--     that stores the rows (never a view on a Distributed table).
--
-- Applied by the operator, once, before the app is pointed at the cluster:
--   clickhouse-client --host <any node> --multiquery < deploy/clickhouse/cluster.sql
-- Needs on every node: Keeper/ZooKeeper, <distributed_ddl>, a <remote_servers> entry for
-- the cluster with <internal_replication>true</internal_replication>, and the macros
-- {cluster}, {shard} and {replica}. The database name is `metering` (the default of
-- METERING_CLICKHOUSE_URL); for another name replace `metering` throughout this file.
--
-- Object names match the migrations on purpose: the app runs its migrations at start-up
-- (CREATE ... IF NOT EXISTS) and, finding every object here, changes nothing.

CREATE DATABASE IF NOT EXISTS metering ON CLUSTER '{cluster}';

-- 001_usage_events ----------------------------------------------------------------------

-- One row per accepted (priced) usage event. The sink inserts each (org_id, event_id)
-- once (it checks the stored ids first); ReplacingMergeTree by (org_id, event_id) is the
-- safety net, exact per shard because org_id is the sharding key.
CREATE TABLE IF NOT EXISTS metering.usage_events_local ON CLUSTER '{cluster}'
(
    event_id                    String,
    org_id                      String,
    user_id                     String,
    surface                     LowCardinality(String),
    model                       LowCardinality(String),
    input_tokens                UInt32,
    output_tokens               UInt32,
    cache_creation_input_tokens UInt32,
    cache_read_input_tokens     UInt32,
    cost_nano_usd               Int64,
    included_nano_usd           Int64,
    billed_nano_usd             Int64,
    price_version               Date,
    occurred_at                 DateTime64(6, 'UTC'),
    priced_at                   DateTime64(3, 'UTC'),
    inserted_at                 DateTime64(3, 'UTC') DEFAULT now64(3),
    source_partition            UInt32,
    source_offset               UInt64,
    priced_partition            UInt32,
    priced_offset               UInt64,
    INDEX inserted_at_minmax inserted_at TYPE minmax GRANULARITY 1  -- ingestion-lag query
)
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/usage_events_local', '{replica}')
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (org_id, event_id);

-- 002_usage_rollups ---------------------------------------------------------------------

-- Fed by usage_daily_mv on the shard that stores the events; read with sum() GROUP BY.
CREATE TABLE IF NOT EXISTS metering.usage_daily_local ON CLUSTER '{cluster}'
(
    org_id                      String,
    day                         Date,
    user_id                     String,
    model                       LowCardinality(String),
    surface                     LowCardinality(String),
    events                      UInt64,
    input_tokens                UInt64,
    output_tokens               UInt64,
    cache_creation_input_tokens UInt64,
    cache_read_input_tokens     UInt64,
    cost_nano_usd               Int64,
    included_nano_usd           Int64,
    billed_nano_usd             Int64
)
ENGINE = ReplicatedSummingMergeTree('/clickhouse/tables/{shard}/{database}/usage_daily_local', '{replica}')
PARTITION BY toYYYYMM(day)
ORDER BY (org_id, day, user_id, model, surface);

CREATE MATERIALIZED VIEW IF NOT EXISTS metering.usage_daily_mv ON CLUSTER '{cluster}'
TO metering.usage_daily_local AS
SELECT
    org_id,
    toDate(occurred_at) AS day,
    user_id,
    model,
    surface,
    count() AS events,
    sum(input_tokens) AS input_tokens,
    sum(output_tokens) AS output_tokens,
    sum(cache_creation_input_tokens) AS cache_creation_input_tokens,
    sum(cache_read_input_tokens) AS cache_read_input_tokens,
    sum(cost_nano_usd) AS cost_nano_usd,
    sum(included_nano_usd) AS included_nano_usd,
    sum(billed_nano_usd) AS billed_nano_usd
FROM metering.usage_events_local
GROUP BY org_id, day, user_id, model, surface;

CREATE TABLE IF NOT EXISTS metering.usage_monthly_local ON CLUSTER '{cluster}'
(
    org_id            String,
    month             Date,  -- first day of the UTC month
    events            UInt64,
    cost_nano_usd     Int64,
    included_nano_usd Int64,
    billed_nano_usd   Int64
)
ENGINE = ReplicatedSummingMergeTree('/clickhouse/tables/{shard}/{database}/usage_monthly_local', '{replica}')
ORDER BY (month, org_id);

CREATE MATERIALIZED VIEW IF NOT EXISTS metering.usage_monthly_mv ON CLUSTER '{cluster}'
TO metering.usage_monthly_local AS
SELECT
    org_id,
    toStartOfMonth(occurred_at) AS month,
    count() AS events,
    sum(cost_nano_usd) AS cost_nano_usd,
    sum(included_nano_usd) AS included_nano_usd,
    sum(billed_nano_usd) AS billed_nano_usd
FROM metering.usage_events_local
GROUP BY org_id, month;

-- 003_account_events --------------------------------------------------------------------

-- The account ledger (first occurrence of each event_id, with its outcome).
CREATE TABLE IF NOT EXISTS metering.account_events_local ON CLUSTER '{cluster}'
(
    event_id           String,
    org_id             String,
    type               LowCardinality(String),
    occurred_at        DateTime64(6, 'UTC'),
    actor_user_id      Nullable(String),
    actor_role         LowCardinality(Nullable(String)),
    data               String,
    status             Enum8('accepted' = 1, 'rejected' = 2),
    reason             LowCardinality(String),
    user_id            Nullable(String),
    seat_type          LowCardinality(Nullable(String)),
    quantity           Nullable(Int64),
    amount_nano_usd    Nullable(Int64),
    cap_nano_usd       Nullable(Int64),
    plan               LowCardinality(Nullable(String)),
    billing_mode       LowCardinality(Nullable(String)),
    received_at        DateTime64(3, 'UTC'),
    inserted_at        DateTime64(3, 'UTC') DEFAULT now64(3),
    source_partition   UInt32,
    source_offset      UInt64
)
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/account_events_local', '{replica}')
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (org_id, event_id);

-- 005_documents -------------------------------------------------------------------------

-- Issued documents, immutable: the writers (`billing run`, the sink) store a document_id
-- once (they check first); ReplacingMergeTree by (org_id, document_id) is the safety net,
-- exact per shard because org_id is the sharding key.
CREATE TABLE IF NOT EXISTS metering.documents_local ON CLUSTER '{cluster}'
(
    document_id        String,
    org_id             String,
    kind               LowCardinality(String),
    period_start       Date,
    period_end         Date,
    issued_at          DateTime64(6, 'UTC'),
    total_cents        Int64,
    body               String,
    origin             Enum8('batch' = 1, 'account_event' = 2),
    usage_watermarks   Array(UInt64),
    account_watermarks Array(UInt64),
    inserted_at        DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/documents_local', '{replica}')
ORDER BY (org_id, document_id);

-- 006_notification_deliveries -----------------------------------------------------------

-- Every delivery attempt of `metering notifier`. A record the sink stores twice collapses
-- under FINAL, which the queries use: per shard, so exact as an org's rows are on one.
CREATE TABLE IF NOT EXISTS metering.notification_deliveries_local ON CLUSTER '{cluster}'
(
    delivery_id        String,
    notification_id    String,
    org_id             String,
    kind               LowCardinality(String),
    subject            String,
    channel            LowCardinality(String),
    drive              String,
    step               UInt32,
    attempt            UInt32,
    status             LowCardinality(String),
    endpoint           String,
    response_status    Nullable(UInt16),
    latency_ms         Nullable(UInt32),
    error              String,
    attempted_at       DateTime64(3, 'UTC'),
    next_attempt_at    Nullable(DateTime64(3, 'UTC')),
    source_partition   UInt32,
    source_offset      UInt64,
    inserted_at        DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/notification_deliveries_local', '{replica}')
PARTITION BY toYYYYMM(attempted_at)
ORDER BY (org_id, notification_id, channel, drive, step);

-- The public names: Distributed tables, one shard per cityHash64(org_id) ----------------
-- The sink inserts into usage_events, account_events, documents and
-- notification_deliveries, `billing run` into documents (insert_distributed_sync = 1, see
-- the README); the rollups are only read through these (their rows are written by the
-- views above, on the events' shard, so the sharding key matches).

CREATE TABLE IF NOT EXISTS metering.usage_events ON CLUSTER '{cluster}'
AS metering.usage_events_local
ENGINE = Distributed('{cluster}', 'metering', 'usage_events_local', cityHash64(org_id));

CREATE TABLE IF NOT EXISTS metering.usage_daily ON CLUSTER '{cluster}'
AS metering.usage_daily_local
ENGINE = Distributed('{cluster}', 'metering', 'usage_daily_local', cityHash64(org_id));

CREATE TABLE IF NOT EXISTS metering.usage_monthly ON CLUSTER '{cluster}'
AS metering.usage_monthly_local
ENGINE = Distributed('{cluster}', 'metering', 'usage_monthly_local', cityHash64(org_id));

CREATE TABLE IF NOT EXISTS metering.account_events ON CLUSTER '{cluster}'
AS metering.account_events_local
ENGINE = Distributed('{cluster}', 'metering', 'account_events_local', cityHash64(org_id));

CREATE TABLE IF NOT EXISTS metering.documents ON CLUSTER '{cluster}'
AS metering.documents_local
ENGINE = Distributed('{cluster}', 'metering', 'documents_local', cityHash64(org_id));

CREATE TABLE IF NOT EXISTS metering.notification_deliveries ON CLUSTER '{cluster}'
AS metering.notification_deliveries_local
ENGINE = Distributed('{cluster}', 'metering', 'notification_deliveries_local', cityHash64(org_id));

-- Credit movements of prepaid orgs, over the Distributed tables. FINAL is applied on each
-- shard, which is exact because an org's account events all live on one shard.
CREATE VIEW IF NOT EXISTS metering.credit_movements ON CLUSTER '{cluster}' AS
SELECT org_id, toDate(occurred_at) AS day, 'purchase' AS kind, assumeNotNull(amount_nano_usd) AS amount_nano_usd
FROM metering.account_events FINAL
WHERE type = 'credits.purchased' AND status = 'accepted'
UNION ALL
SELECT org_id, day, 'usage' AS kind, -sum(billed_nano_usd) AS amount_nano_usd
FROM metering.usage_daily
GROUP BY org_id, day;

-- The app's migration record (metering/clickhouse/migrations.py). Replicated within each
-- shard; whichever node the app reaches, its migrations find every object above and are
-- no-ops, and it records them here.
CREATE TABLE IF NOT EXISTS metering.schema_migrations ON CLUSTER '{cluster}'
(
    version    UInt32,
    name       String,
    checksum   String,
    applied_at DateTime DEFAULT now()
)
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/schema_migrations', '{replica}')
ORDER BY version;
