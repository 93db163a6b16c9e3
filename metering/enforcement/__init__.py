"""Real-time enforcement: account and usage processors that keep per-org state in Redis,
and the gate that reads it.

Invariants:
- every key of an org lives under one Redis Cluster hash slot (`{org_id}`);
- every write is idempotent: usage is de-duplicated by `event_id` inside the same Lua
  script that applies it, account batches carry the source offset and are skipped when
  already applied; a replay after a crash re-derives the same outputs;
- money in Redis is integer nano-dollars (HINCRBY/INCRBY: exact int64 arithmetic).
"""
