"""Owner controls as account commands: a change is checked against the org's current
account state, appended to `account.events.v1` with the caller as `actor`, and answered
once the broker has it (202); a change the account rules would refuse (e.g. a self-serve
seat removal mid-term, R5) is 409 and appends nothing.

A write sent with an `Idempotency-Key` header is applied once however often it is
retried with that key: the first request's event is remembered (Redis, as long as the
account event ids) and a retry re-sends exactly that event, which the account processor
recognises as a duplicate. A write Kafka does not confirm within
METERING_HTTP_WRITE_TIMEOUT_S answers 503 with Retry-After.

No route here: the routes (`routes.py`, `notification_endpoints.py`) call `append` once
they know the caller's role, so this is testable without HTTP.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from typing import Any

from confluent_kafka import KafkaException
from fastapi import HTTPException

from billing.accounts import Rejected, apply_account_event
from metering.api.deps import Services
from metering.api.models import Appended
from metering.api.tokens import Caller
from metering.enforcement.account_processor import ACCEPTED
from metering.enforcement.keys import OrgKeys
from metering.enforcement.state_codec import decode_account
from schemas.account import AccountEvent, Role
from schemas.validation import InvalidEvent, parse_account_event

RETRY_AFTER_S = 5


async def append(
    svc: Services,
    who: Caller,
    role: Role,
    org_id: str,
    *,
    kind: str,
    data: dict[str, Any],
    idempotency_key: str | None = None,
) -> Appended:
    """Check the change against the org's current account state, then append it with
    the caller (whose `role` `owner` established) as actor, and wait until the broker
    has it. With an idempotency key, a request seen before re-sends its first event."""
    assert who.user_id is not None
    keys = OrgKeys(svc.prefix, org_id)
    remembered = None
    if idempotency_key is not None:
        proof = f"{org_id}\n{who.user_id}\n{idempotency_key}".encode()
        key_id = f"api-{hashlib.sha256(proof).hexdigest()[:32]}"
        # The event id comes from the key *and* the change: the same request is always
        # the same event, another change under the key another event — so even a key
        # Redis no longer remembers can never answer 202 for an event the processor
        # then finds with another payload (event_id_conflict).
        change = json.dumps([kind, data], sort_keys=True).encode()
        digest = hashlib.sha256(b"\n".join((proof, change))).hexdigest()
        event_id = f"api-{digest[:32]}"
        remembered = keys.idempotent_request(key_id)
        pipe = svc.redis.pipeline(transaction=False)
        pipe.get(remembered)
        pipe.hget(keys.account_ids, event_id)
        pipe.hget(keys.account_ids, key_id)  # the key's event id before issue 20
        first, applied, legacy = await pipe.execute()
        if first is not None:
            return await _resend(svc, json.loads(first), kind, data)
        if applied is not None:
            return _applied_before(event_id, kind, applied)
        if legacy is not None:
            raise HTTPException(
                422,
                "idempotency_key_reused: this Idempotency-Key was used for an earlier "
                "request, which is no longer remembered; use a new key",
            )
    else:
        event_id = f"api-{uuid.uuid4().hex}"
    raw = {
        "event_id": event_id,
        "type": kind,
        "org_id": org_id,
        "occurred_at": svc.clock().isoformat(),
        "actor": {"user_id": who.user_id, "role": role.value},
        "data": data,
    }
    try:
        event = parse_account_event(raw, now=svc.clock())
    except InvalidEvent as exc:
        raise HTTPException(422, f"{exc.reason.value}: {exc.detail}") from None
    state = decode_account(await svc.redis.get(keys.account))
    outcome = apply_account_event(state, event, svc.book)
    if isinstance(outcome, Rejected):
        raise HTTPException(409, {"reason": outcome.reason.value, "message": outcome.detail})
    if remembered is not None:
        # Remembered before it is sent, so a retry after a crash right after sending
        # re-sends the same event. Two concurrent first requests: one stores, the other
        # re-sends what that one stored. Kept without expiry, like the account event ids
        # the processor de-duplicates by (a few hundred bytes per keyed write).
        earlier = await svc.redis.set(remembered, json.dumps(raw), nx=True, get=True)
        if isinstance(earlier, str | bytes):  # SET NX GET: the value already there
            return await _resend(svc, json.loads(earlier), kind, data)
    await _send(svc, event)
    return Appended(event_id=event.event_id, type=event.type)


def _applied_before(event_id: str, kind: str, mark: bytes) -> Appended:
    """The processor has this very request's event (Redis lost the key's record, which is
    a cache): answered as the retry it is, with the first outcome, sending nothing."""
    outcome = mark.decode().split("|", 3)[-1]
    if outcome != ACCEPTED:
        reason, _, message = outcome.partition(":")
        raise HTTPException(409, {"reason": reason, "message": message})
    return Appended(event_id=event_id, type=kind)


async def _send(svc: Services, event: AccountEvent) -> None:
    """Until the broker has the event; 503 if it did not confirm it in time."""
    timeout_s = svc.settings.http_write_timeout_s
    try:
        # The producer gives the event up after the same time (message.timeout.ms);
        # the extra second only guards against a delivery report that never comes.
        await asyncio.wait_for(asyncio.wrap_future(svc.emitter.emit_account(event)), timeout_s + 1)
    except (TimeoutError, KafkaException) as exc:
        raise HTTPException(
            503,
            f"the account log (Kafka) did not confirm the change within {timeout_s:g} s "
            f"({exc}); it may still be applied: retry with the same Idempotency-Key to "
            "apply it exactly once",
            {"Retry-After": str(RETRY_AFTER_S)},
        ) from None


async def _resend(
    svc: Services, first: dict[str, Any], kind: str, data: dict[str, Any]
) -> Appended:
    """A retry: the same change again re-sends the first request's event unchanged (the
    account processor counts it once); another change under the same key is refused."""
    if (first["type"], first["data"]) != (kind, data):
        raise HTTPException(
            422,
            "idempotency_key_reused: this Idempotency-Key was used for another request "
            f"({first['type']} {json.dumps(first['data'], sort_keys=True)})",
        )
    event = parse_account_event(first, now=svc.clock())
    await _send(svc, event)
    return Appended(event_id=event.event_id, type=event.type)
