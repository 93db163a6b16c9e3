"""The questions ops dashboards ask, one function each, SQL kept readable.

Month-to-date figures come from the rollups (`usage_daily`, `usage_monthly`), ordered
by org and day, so a query reads one org's month, not the whole table (the daily rollup
holds one row per org/day/user/model/surface: with sparse usage nearly one per event);
only `ingestion_lag` reads `usage_events`. Amounts
are integer nano-USD. `docs/dashboards.md` shows each query, and the Grafana dashboard
under `deploy/grafana/` runs the same SQL.

`spend` means what the org pays (`billed`: list price minus the part a seat's monthly
allowance covers, R6); `cost` is the list price.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta

from metering.clickhouse.store import Store


def month_bounds(month: str) -> tuple[date, date]:
    """'2026-11' → (2026-11-01, 2026-12-01)."""
    start = date.fromisoformat(f"{month}-01")
    end = (start.replace(day=28) + timedelta(days=4)).replace(day=1)
    return start, end


@dataclass(frozen=True)
class Spend:
    """One group's month-to-date usage: `key` is a user, model, surface, org or day."""

    key: str
    events: int
    cost_nano_usd: int
    billed_nano_usd: int


@dataclass(frozen=True)
class IngestionLag:
    events: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    newest_inserted_at: datetime | None


MEMBER_SPEND_SQL = """
SELECT user_id, sum(events), sum(cost_nano_usd), sum(billed_nano_usd)
FROM {db}.usage_daily
WHERE org_id = %(org)s AND day >= %(start)s AND day < %(end)s
GROUP BY user_id
ORDER BY sum(billed_nano_usd) DESC, user_id
"""

MODEL_SPEND_SQL = """
SELECT model, sum(events), sum(cost_nano_usd), sum(billed_nano_usd)
FROM {db}.usage_daily
WHERE org_id = %(org)s AND day >= %(start)s AND day < %(end)s
GROUP BY model
ORDER BY sum(billed_nano_usd) DESC, model
"""

SURFACE_SPEND_SQL = """
SELECT surface, sum(events), sum(cost_nano_usd), sum(billed_nano_usd)
FROM {db}.usage_daily
WHERE org_id = %(org)s AND day >= %(start)s AND day < %(end)s
GROUP BY surface
ORDER BY sum(billed_nano_usd) DESC, surface
"""

DAILY_SPEND_SQL = """
SELECT toString(day), sum(events), sum(cost_nano_usd), sum(billed_nano_usd)
FROM {db}.usage_daily
WHERE org_id = %(org)s AND day >= %(start)s AND day < %(end)s
GROUP BY day
ORDER BY day
"""

TOP_SPENDERS_SQL = """
SELECT org_id, sum(events), sum(cost_nano_usd), sum(billed_nano_usd)
FROM {db}.usage_monthly
WHERE month = %(start)s
GROUP BY org_id
ORDER BY sum(billed_nano_usd) DESC, org_id
LIMIT %(limit)s
"""

# Time from the event happening to its row being queryable, over recently stored rows.
INGESTION_LAG_SQL = """
SELECT
    count(),
    quantile(0.5)(dateDiff('millisecond', occurred_at, inserted_at)),
    quantile(0.99)(dateDiff('millisecond', occurred_at, inserted_at)),
    max(dateDiff('millisecond', occurred_at, inserted_at)),
    max(inserted_at)
FROM {db}.usage_events
WHERE inserted_at >= %(since)s
"""


def _spend(store: Store, sql: str, **parameters: object) -> list[Spend]:
    return [
        Spend(str(key), int(events), int(cost), int(billed))
        for key, events, cost, billed in store.rows(sql.format(db=store.database), parameters)
    ]


def _org_month(org_id: str, month: str) -> dict[str, object]:
    start, end = month_bounds(month)
    return {"org": org_id, "start": start, "end": end}


def member_spend(store: Store, org_id: str, month: str) -> list[Spend]:
    """Month-to-date spend per member (key = user_id), biggest first."""
    return _spend(store, MEMBER_SPEND_SQL, **_org_month(org_id, month))


def model_spend(store: Store, org_id: str, month: str) -> list[Spend]:
    return _spend(store, MODEL_SPEND_SQL, **_org_month(org_id, month))


def surface_spend(store: Store, org_id: str, month: str) -> list[Spend]:
    return _spend(store, SURFACE_SPEND_SQL, **_org_month(org_id, month))


def daily_spend(store: Store, org_id: str, month: str) -> list[Spend]:
    """One entry per day with usage (key = 'YYYY-MM-DD'), in date order."""
    return _spend(store, DAILY_SPEND_SQL, **_org_month(org_id, month))


def top_spenders(store: Store, month: str, limit: int = 10) -> list[Spend]:
    """Orgs by month-to-date spend (key = org_id), across all orgs."""
    return _spend(store, TOP_SPENDERS_SQL, start=month_bounds(month)[0], limit=limit)


def ingestion_lag(store: Store, since: datetime) -> IngestionLag:
    """occurred_at → queryable, for rows stored since `since`."""
    ((events, p50, p99, worst, newest),) = store.rows(
        INGESTION_LAG_SQL.format(db=store.database), {"since": since}
    )
    if not events:
        return IngestionLag(0, 0.0, 0.0, 0.0, None)
    return IngestionLag(int(events), float(p50), float(p99), float(worst), newest)


@dataclass(frozen=True)
class MemberModelUsage:
    """One member's month of one model (the console's CSV export): events, tokens and
    the billed amount, summed from `usage_daily` like `member_spend`, so they add up to it."""

    user_id: str
    model: str
    events: int
    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int
    cache_read_input_tokens: int
    billed_nano_usd: int


MEMBER_MODEL_USAGE_SQL = """
SELECT user_id, model, sum(events), sum(input_tokens), sum(output_tokens),
       sum(cache_creation_input_tokens), sum(cache_read_input_tokens), sum(billed_nano_usd)
FROM {db}.usage_daily
WHERE org_id = %(org)s AND day >= %(start)s AND day < %(end)s
GROUP BY user_id, model
ORDER BY user_id, model
"""


def member_model_usage(store: Store, org_id: str, month: str) -> list[MemberModelUsage]:
    """The month's usage per member × model (ordered by user_id, model)."""
    sql = MEMBER_MODEL_USAGE_SQL.format(db=store.database)
    return [
        MemberModelUsage(
            user_id=str(user),
            model=str(model),
            events=int(events),
            input_tokens=int(tokens_in),
            output_tokens=int(tokens_out),
            cache_creation_input_tokens=int(cache_creation),
            cache_read_input_tokens=int(cache_read),
            billed_nano_usd=int(billed),
        )
        for user, model, events, tokens_in, tokens_out, cache_creation, cache_read, billed in (
            store.rows(sql, _org_month(org_id, month))
        )
    ]
