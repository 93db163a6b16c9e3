-- One row per accepted (priced) usage event. ReplacingMergeTree keyed by event_id is the
-- safety net: the sink never inserts an event_id that is already here (it checks first),
-- and should a duplicate ever slip in, queries with FINAL still show it once.
CREATE TABLE IF NOT EXISTS {db}.usage_events
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
    cost_nano_usd               Int64,   -- list price of the event
    included_nano_usd           Int64,   -- part covered by a seat's monthly allowance (R6)
    billed_nano_usd             Int64,   -- cost - included: what the org pays
    price_version               Date,    -- effective_from of the price-book entry used
    occurred_at                 DateTime64(6, 'UTC'),
    priced_at                   DateTime64(3, 'UTC'),  -- append time on usage.priced.v1
    inserted_at                 DateTime64(3, 'UTC') DEFAULT now64(3),
    source_partition            UInt32,  -- the raw event's place in usage.events.v1
    source_offset               UInt64,
    priced_partition            UInt32,  -- and in usage.priced.v1 (the sink's input)
    priced_offset               UInt64
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (org_id, event_id);
