"""Redis memory of the usage de-duplication marks over four simulated months.

Method: a private namespace (`bench.harness`) on the stack's Redis; ORGS usage-based,
sales-assisted orgs (no balance to run out) of MEMBERS members each, created by the real
account processor. Then SIMULATED_DAYS days of usage, EVENTS_PER_DAY a day spread over
the orgs, go through the real usage processor (`UsageProcessor.process`, the hot path's
code and Lua script, in batches of BATCH records) with the records' broker append times
and the worker's clock set to the simulated day: most events occur within the two hours
before they are appended, LATE_SHARE up to LATE_DAYS days before. The months are in the
future of the real clock, so Redis's own expiry (`EXPIREAT`) never fires and every drop
seen is the usage script's (what keeps an active org bounded).

Every SAMPLE_DAYS simulated days: Redis `used_memory` minus its value before the run,
and the marks held (the `HLEN` of every `{org}:ids:<month>` hash of the namespace).
Printed: that series, the bytes per mark (memory ÷ marks held, at the largest sample),
and the plateau (the largest memory after the window, against the memory the events
would take at that size had nothing been dropped). Kafka and the broker play no part:
the marks are Redis's alone.
"""

from __future__ import annotations

import asyncio
import json
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from redis.asyncio import Redis as AsyncRedis
from rich.console import Console
from rich.table import Table

from bench.harness import Namespace, record
from metering.enforcement.account_processor import AccountProcessor
from metering.enforcement.records import SourceRecord
from metering.enforcement.usage_marks import DEFAULT_MAX_EVENT_AGE_DAYS
from metering.enforcement.usage_processor import UsageProcessor

ORGS = 20
MEMBERS = 5
EVENTS_PER_DAY = 10_000
SIMULATED_DAYS = 120  # four months
SAMPLE_DAYS = 5
BATCH = 5_000
LATE_SHARE = 0.02
LATE_DAYS = 30
SEED = 15


def org_events(org: str, day: datetime) -> list[dict[str, Any]]:
    created = {
        "event_id": f"{org}-created",
        "type": "org.created",
        "org_id": org,
        "occurred_at": day.isoformat(),
        "actor": None,
        "data": {
            "plan": "usage_based",
            "billing_mode": "sales_assisted",
            "term_start": day.date().replace(day=1).isoformat(),
            "seats": {"enterprise": MEMBERS},
        },
    }
    members = [
        {
            "event_id": f"{org}-member-{n}",
            "type": "member.added",
            "org_id": org,
            "occurred_at": day.isoformat(),
            "actor": None,
            "data": {
                "user_id": f"u{n}",
                "role": "primary_owner" if n == 0 else "member",
                "seat_type": "enterprise",
            },
        }
        for n in range(MEMBERS)
    ]
    return [created, *members]


def _records(
    topic: str, values: list[bytes], keys: list[str], at: datetime, first_offset: int = 0
) -> list[SourceRecord]:
    stamp = int(at.timestamp() * 1000)
    return [
        SourceRecord(topic, 0, first_offset + n, key.encode(), value, stamp)
        for n, (key, value) in enumerate(zip(keys, values, strict=True))
    ]


def _create_orgs(ns: Namespace, orgs: list[str], now: datetime) -> None:
    events = [e for org in orgs for e in org_events(org, now)]
    batch = _records(
        ns.topics.account_events,
        [json.dumps(e).encode() for e in events],
        [e["org_id"] for e in events],
        now,
    )

    async def apply() -> None:
        client = AsyncRedis.from_url(ns.settings.redis_url)
        try:
            processor = AccountProcessor(
                client, ns.settings.load_price_book(), ns.settings.redis_prefix, ns.topics
            )
            result = await processor.process(batch)
            if result.accepted != len(events):
                raise RuntimeError(f"orgs not created: {result.dead_letter_reasons}")
        finally:
            await client.aclose()

    asyncio.run(apply())


def _marks_held(client: redis.Redis, prefix: str) -> tuple[int, int]:
    """(marks, month hashes) of the namespace."""
    marks = hashes = 0
    for key in client.scan_iter(match=f"{prefix}*:ids:*", count=1000):
        marks += int(client.hlen(key))
        hashes += 1
    return marks, hashes


def main() -> None:
    console = Console()
    rng = random.Random(SEED)
    real_now = datetime.now(UTC)
    # The first day of the second month from now: every simulated month is ahead of the
    # real clock (see the module docstring)
    ahead = (real_now.replace(day=1) + timedelta(days=62)).replace(day=1)
    start = ahead.replace(hour=0, minute=0, second=0, microsecond=0)
    orgs = [f"org{n:02d}" for n in range(ORGS)]
    with Namespace.create("bench-marks", partitions=1, log="bench-marks.log") as ns:
        client = redis.Redis.from_url(ns.settings.redis_url)
        baseline = int(client.info("memory")["used_memory"])
        _create_orgs(ns, orgs, start)
        offset = 0
        series: list[dict[str, Any]] = []
        sent = 0
        with console.status("simulating…") as status:
            for day in range(SIMULATED_DAYS):
                day_start = start + timedelta(days=day)
                worker_clock = day_start + timedelta(hours=23)  # after every append of the day
                processor = UsageProcessor(
                    client,
                    ns.settings.load_price_book(),
                    ns.settings.redis_prefix,
                    ns.topics,
                    max_event_age_days=DEFAULT_MAX_EVENT_AGE_DAYS,
                    clock=lambda moment=worker_clock: moment,  # type: ignore[misc]
                )
                for first in range(0, EVENTS_PER_DAY, BATCH):
                    at = day_start + timedelta(seconds=first * 86_400 // EVENTS_PER_DAY)
                    values, keys = [], []
                    for n in range(first, min(first + BATCH, EVENTS_PER_DAY)):
                        org = orgs[rng.randrange(ORGS)]
                        late = rng.random() < LATE_SHARE
                        back = timedelta(
                            seconds=rng.uniform(0, LATE_DAYS * 86_400 if late else 7_200)
                        )
                        occurred = max(at - back, start)
                        event = {
                            "event_id": f"bench-{day}-{n}",
                            "org_id": org,
                            "user_id": f"u{rng.randrange(MEMBERS)}",
                            "surface": "chat_web",
                            "model": "claude-haiku-4-5",
                            "input_tokens": 100,
                            "output_tokens": 200,
                            "occurred_at": occurred.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                        }
                        values.append(json.dumps(event, separators=(",", ":")).encode())
                        keys.append(org)
                    batch = _records(ns.topics.usage_events, values, keys, at, offset)
                    offset += len(batch)
                    result = processor.process(batch)
                    if result.accepted != len(batch):
                        raise RuntimeError(f"refused: {dict(result.dead_letter_reasons)}")
                    sent += len(batch)
                if (day + 1) % SAMPLE_DAYS == 0:
                    marks, hashes = _marks_held(client, ns.settings.redis_prefix)
                    used = int(client.info("memory")["used_memory"]) - baseline
                    series.append(
                        {
                            "day": day + 1,
                            "date": day_start.date().isoformat(),
                            "events": sent,
                            "marks": marks,
                            "month_hashes": hashes,
                            "used_memory_bytes": used,
                        }
                    )
                    status.update(f"day {day + 1}: {marks:,} marks, {used / 2**20:.1f} MiB")
        client.close()

    table = Table("day", "date", "events sent", "marks held", "Redis memory")
    for s in series:
        table.add_row(
            str(s["day"]),
            s["date"],
            f"{s['events']:,}",
            f"{s['marks']:,}",
            f"{s['used_memory_bytes'] / 2**20:.1f} MiB",
        )
    console.print(table)
    peak = max(series, key=lambda s: s["used_memory_bytes"])
    bytes_per_mark = round(peak["used_memory_bytes"] / peak["marks"], 1)
    window_day = DEFAULT_MAX_EVENT_AGE_DAYS + 31
    after_window = [s for s in series if s["day"] >= window_day]
    plateau = max(s["used_memory_bytes"] for s in after_window)
    unbounded = round(bytes_per_mark * series[-1]["events"])
    console.print(
        f"bytes per mark (memory ÷ marks held at the peak): {bytes_per_mark}; plateau after "
        f"day {window_day}: {plateau / 2**20:.1f} MiB with {series[-1]['events']:,} events "
        f"sent (all kept: ~{unbounded / 2**20:.1f} MiB)"
    )
    record(
        "marks",
        {
            "orgs": ORGS,
            "events_per_day": EVENTS_PER_DAY,
            "simulated_days": SIMULATED_DAYS,
            "max_event_age_days": DEFAULT_MAX_EVENT_AGE_DAYS,
            "bytes_per_mark": bytes_per_mark,
            "plateau_bytes": plateau,
            "all_kept_bytes": unbounded,
            "events": series[-1]["events"],
            "series": series,
        },
    )


if __name__ == "__main__":
    main()
