-- Issued documents (SPEC §4 Documents), immutable: a document_id is stored once and never
-- changed (the writers check before inserting; ReplacingMergeTree is the safety net).
-- `body` is the document's JSON exactly as written to DIR/<document_id>.json.
-- Monthly documents come from `billing run` through billing.documents.v1 (so a rebuild
-- of ClickHouse from Kafka restores them); seat invoices are derived by the sink from
-- the account ledger as their events are stored (R4: immediate).
-- The watermarks say which part of the log a monthly document covers: per partition of
-- usage.priced.v1 / account.events.v1 (index = partition + 1), the offset below which
-- the org's events were stored when it was issued. An event of an issued month at or
-- beyond them is late and billed on the next document (G5).
CREATE TABLE IF NOT EXISTS {db}.documents
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
ENGINE = ReplacingMergeTree
ORDER BY (org_id, document_id);
