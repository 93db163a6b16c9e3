-- The account ledger: every account event (first occurrence of each event_id) with the
-- outcome of folding it into the org's history (accepted, or rejected and why), so
-- documents can be rebuilt from ClickHouse alone. The typed columns make the common
-- questions (purchases, seat changes, caps, plan changes) plain SQL; `data` keeps the
-- event's payload as sent.
CREATE TABLE IF NOT EXISTS {db}.account_events
(
    event_id           String,
    org_id             String,
    type               LowCardinality(String),
    occurred_at        DateTime64(6, 'UTC'),
    actor_user_id      Nullable(String),
    actor_role         LowCardinality(Nullable(String)),
    data               String,  -- the event's `data` object, JSON
    status             Enum8('accepted' = 1, 'rejected' = 2),
    reason             LowCardinality(String),  -- '' when accepted
    user_id            Nullable(String),        -- member events and user caps
    seat_type          LowCardinality(Nullable(String)),
    quantity           Nullable(Int64),         -- seats.added / seats.removed
    amount_nano_usd    Nullable(Int64),         -- credits.purchased
    cap_nano_usd       Nullable(Int64),         -- spend_cap.set (NULL limit: unlimited)
    plan               LowCardinality(Nullable(String)),  -- plan after the event
    billing_mode       LowCardinality(Nullable(String)),
    received_at        DateTime64(3, 'UTC'),    -- append time on account.events.v1
    inserted_at        DateTime64(3, 'UTC') DEFAULT now64(3),
    source_partition   UInt32,
    source_offset      UInt64
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (org_id, event_id);

-- Credit movements of prepaid orgs, for statements and balance dashboards: accepted
-- purchases (+) and daily usage drawdown (-). Usage of orgs that are not prepaid is
-- filtered out by the reader (billing mode comes from the org's history).
CREATE VIEW IF NOT EXISTS {db}.credit_movements AS
SELECT org_id, toDate(occurred_at) AS day, 'purchase' AS kind, assumeNotNull(amount_nano_usd) AS amount_nano_usd
FROM {db}.account_events FINAL
WHERE type = 'credits.purchased' AND status = 'accepted'
UNION ALL
SELECT org_id, day, 'usage' AS kind, -sum(billed_nano_usd) AS amount_nano_usd
FROM {db}.usage_daily
GROUP BY org_id, day;
