-- Rollups fed by materialized views on every insert into usage_events. They stay exact
-- because the sink inserts each event_id once (a view sees inserted blocks, not FINAL).
-- Read them with sum(...) GROUP BY: SummingMergeTree folds rows only at merge time.
CREATE TABLE IF NOT EXISTS {db}.usage_daily
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
ENGINE = SummingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (org_id, day, user_id, model, surface);

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.usage_daily_mv TO {db}.usage_daily AS
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
FROM {db}.usage_events
GROUP BY org_id, day, user_id, model, surface;

CREATE TABLE IF NOT EXISTS {db}.usage_monthly
(
    org_id            String,
    month             Date,  -- first day of the UTC month
    events            UInt64,
    cost_nano_usd     Int64,
    included_nano_usd Int64,
    billed_nano_usd   Int64
)
ENGINE = SummingMergeTree
ORDER BY (month, org_id);

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.usage_monthly_mv TO {db}.usage_monthly AS
SELECT
    org_id,
    toStartOfMonth(occurred_at) AS month,
    count() AS events,
    sum(cost_nano_usd) AS cost_nano_usd,
    sum(included_nano_usd) AS included_nano_usd,
    sum(billed_nano_usd) AS billed_nano_usd
FROM {db}.usage_events
GROUP BY org_id, month;
