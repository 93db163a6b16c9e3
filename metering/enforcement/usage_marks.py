"""How long a usage event's de-duplication mark is kept, and what it is made of.

A mark (`{org}:ids:<month>`, field: the event id's digest, value:
`digest|partition|offset|included`) is what recognises a re-sent event (G1) and a
replayed record (G2). Keeping one per event forever grows Redis with the number of
events, so marks live per org and month of `occurred_at`, and a month's marks are
dropped once no event of that month can be accepted any more:

- an event is accepted only if its `occurred_at` is at most `max_event_age_days` before
  the broker's append time of its record (`event_too_old` otherwise): the record's own
  time, so a replay decides the same;
- month M's marks are therefore needed until `start of M+1 + max age`; they are kept a
  day longer (`DROP_MARGIN`: clock skew between broker and workers, a lagging
  partition), through Redis `EXPIREAT` (an org that went quiet) and by the usage script
  itself once a batch's records were appended after that (an active org);
- a record processed after its month's marks may have been dropped (a months-old record
  replayed by a consumer group reset) is refused `event_too_old` too, judged by the
  worker's clock: it could no longer be recognised as a duplicate, and counting it
  twice is worse than refusing it once (it can be re-driven).
"""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime, timedelta

from metering.enforcement.records import month_of

DEFAULT_MAX_EVENT_AGE_DAYS = 35
DROP_MARGIN = timedelta(days=1)


def mark_field(event_id: str) -> str:
    """The mark's field: 12 characters whatever the id's length (72 bits of BLAKE2b: two
    of 10 million ids of one org and month collide with a chance of about 10^-8)."""
    return base64.b64encode(hashlib.blake2b(event_id.encode(), digest_size=9).digest()).decode()


def payload_digest(canonical: bytes) -> str:
    """The mark's fingerprint of the event's canonical form (48 bits: it is only ever
    compared between two payloads sent under one id): another payload is a conflict, the
    same payload a duplicate."""
    return hashlib.sha256(canonical).hexdigest()[:12]


def month_start(month: str) -> datetime:
    return datetime(int(month[:4]), int(month[5:7]), 1, tzinfo=UTC)


def next_month(month: str) -> str:
    year, number = int(month[:4]), int(month[5:7])
    return f"{year + number // 12:04d}-{number % 12 + 1:02d}"


def needed_until(month: str, max_age: timedelta) -> datetime:
    """Until when an event of `month` can still be accepted (its marks are needed)."""
    return month_start(next_month(month)) + max_age


def expire_at(month: str, max_age: timedelta) -> int:
    """When Redis drops `month`'s marks (Unix seconds)."""
    return int((needed_until(month, max_age) + DROP_MARGIN).timestamp())


def months_between(first: datetime, last: datetime) -> list[str]:
    """The months from `first`'s to `last`'s, in order."""
    months, month, end = [], month_of(first), month_of(last)
    while month <= end:
        months.append(month)
        month = next_month(month)
    return months


def live_months(
    oldest_append: datetime, newest_append: datetime, max_age: timedelta, skew: timedelta
) -> list[str]:
    """The months an event appended in [oldest_append, newest_append] may belong to:
    where its id's marks are looked up (an id re-sent with an `occurred_at` in another
    month is still a conflict)."""
    return months_between(oldest_append - max_age, newest_append + skew)


def droppable_months(oldest_append: datetime, max_age: timedelta) -> list[str]:
    """The last two months whose marks a batch appended from `oldest_append` on may drop
    (earlier ones were dropped by earlier batches or by their expiry)."""
    first_kept = month_of(oldest_append - max_age - DROP_MARGIN)
    start = month_start(first_kept)
    before = month_of(start - timedelta(days=1))
    return [month_of(month_start(before) - timedelta(days=1)), before]
