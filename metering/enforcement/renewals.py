"""Contracts renew by themselves on their anniversary (R3, R7): the worker's renewal
timer appends the system's `contract.renewed` for every term that has ended, and the
account processor folds it like any other account event — so the renewal, its annual
seat invoice, the pending seat removals and a legacy org's migration are in the log of
record, and every projection (Redis, the ClickHouse ledger, the billing batch) sees the
same renewal at the same place.

Which orgs to look at comes from an index (org → day its term ends) that the account
processor keeps beside each stored state. The renewal's id is derived from its term, so
every worker may run the timer, and a renewal appended twice (two workers, or again
before the first was applied) is one event: the second is a duplicate.
"""

from __future__ import annotations

from datetime import date

from redis.asyncio import Redis

from billing.accounts import renewals_due
from metering.enforcement.keys import OrgKeys, term_ends_key
from metering.enforcement.records import OutputMessage
from metering.enforcement.state_codec import decode_account
from metering.topics import TopicNames
from schemas.validation import encode_event


async def due_renewals(
    client: Redis, prefix: str, topics: TopicNames, today: date
) -> list[OutputMessage]:
    """The `contract.renewed` events due by `today`, ready for `account.events.v1`."""
    members = await client.zrangebyscore(term_ends_key(prefix), "-inf", today.toordinal())
    orgs = sorted(m.decode() if isinstance(m, bytes) else str(m) for m in members)
    if not orgs:
        return []
    pipe = client.pipeline(transaction=False)
    for org_id in orgs:
        pipe.get(OrgKeys(prefix, org_id).account)
    messages = []
    for org_id, raw in zip(orgs, await pipe.execute(), strict=True):
        state = decode_account(raw)
        if state is None:  # indexed, but its state is gone (a flush): nothing to renew
            continue
        messages += [
            OutputMessage(topics.account_events, org_id, encode_event(renewal))
            for renewal in renewals_due(state, today)
        ]
    return messages
