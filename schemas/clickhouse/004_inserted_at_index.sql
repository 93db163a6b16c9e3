-- The ingestion-lag query filters on inserted_at, which is not in the sort key: a minmax
-- skip index lets it read only the granules of recent inserts instead of the whole table.
ALTER TABLE {db}.usage_events ADD INDEX IF NOT EXISTS inserted_at_minmax inserted_at TYPE minmax GRANULARITY 1;
