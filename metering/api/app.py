"""The FastAPI application (SPEC §4, HTTP API).

Every request names an org. Order of checks (after FastAPI's own validation of path and
query parameters, which answers 422 first): a valid token (401) → the caller may act
on this org at all (403: a member of another org, or a service outside the gate) → the
org exists (404) → the caller's role, read from the org's member list in Redis (403) →
the body (422, FastAPI's field-level `detail`). Writes append the matching account
event with the caller as `actor` and return once the broker has it (202); a change the
account rules would refuse (e.g. a self-serve seat removal mid-term, R5) is 409 and
appends nothing. A write sent with an `Idempotency-Key` header is applied once however
often it is retried with that key: the first request's event is remembered (Redis, 7
days) and a retry re-sends exactly that event, which the account processor recognises as
a duplicate.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Path, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from redis.asyncio import Redis

from billing.accounts import MONEY_ROLES, Rejected, apply_account_event, is_legacy, renewal_date
from billing.pricing import PriceBook
from metering.api.instrumentation import RequestMetrics, metrics
from metering.api.models import (
    Appended,
    Authorization,
    CapChange,
    CreditPurchase,
    Invalid,
    MemberRow,
    OrgContract,
    Problem,
    SeatChange,
    SeatHolding,
    UsageResponse,
)
from metering.api.tokens import Caller, InvalidToken, load_secret, verify
from metering.api.usage_view import OrgUsage, UnknownOrg, load_usage
from metering.clickhouse.store import Store
from metering.emitter import Emitter
from metering.enforcement.keys import OrgKeys
from metering.enforcement.records import month_of
from metering.enforcement.state_codec import decode_account, decode_member
from metering.gate import Gate, UnknownOrgError
from metering.metrics import GATE_DECISIONS
from metering.settings import Settings
from schemas.account import Role
from schemas.common import ID_PATTERN
from schemas.money import format_usd
from schemas.usage import Surface
from schemas.validation import InvalidEvent, parse_account_event

Clock = Callable[[], datetime]
OrgId = Annotated[str, Path(pattern=ID_PATTERN, max_length=128)]
UserId = Annotated[str, Path(pattern=ID_PATTERN, max_length=128)]
MONTH = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=200,
        pattern=r"^[\x21-\x7e]+$",  # printable ASCII, no spaces
        description="makes a retried write apply once: same key (per org and caller) → "
        "the first request's event is re-sent, never a second change; kept 7 days",
    ),
]
IDEMPOTENCY_TTL_S = 7 * 24 * 3600
ERRORS: dict[int | str, dict[str, Any]] = {
    # 400: a body that is not UTF-8 (FastAPI: "There was an error parsing the body").
    **{code: {"model": Problem} for code in (400, 401, 403, 404, 409)},
    422: {"model": Invalid},
}
router = APIRouter()
bearer = HTTPBearer(auto_error=False, description="a token from `metering token issue`")


@dataclass
class Services:
    settings: Settings
    secret: str
    redis: Redis
    book: PriceBook
    gate: Gate
    emitter: Emitter
    clock: Clock
    store: Store | None

    @property
    def prefix(self) -> str:
        return self.settings.redis_prefix


def _usd(nano: int | None) -> str | None:
    return None if nano is None else format_usd(nano)


def _poll(emitter: Emitter, stop: threading.Event) -> None:
    """Serve the producer's delivery callbacks, which resolve the writes' futures."""
    while not stop.is_set():
        emitter.poll(0.1)


def create_api(
    settings: Settings, clock: Clock | None = None, store: Store | None = None
) -> FastAPI:
    """`store`: ClickHouse for the Usage page's daily chart, when this process may open it
    (always with a server; in embedded mode only the store's owner)."""
    clock = clock or (lambda: datetime.now(UTC))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        secret = load_secret(settings.api_secret, settings.var_dir)  # fails before anything starts
        client = Redis.from_url(settings.redis_url)
        book = settings.load_price_book()
        emitter = Emitter(
            settings.kafka_bootstrap, account_topic=settings.topics.account_events, clock=clock
        )
        app.state.services = Services(
            settings=settings,
            secret=secret,
            redis=client,
            book=book,
            gate=Gate(client, book, clock, settings.redis_prefix),
            emitter=emitter,
            clock=clock,
            store=store,
        )
        stop = threading.Event()
        poller = threading.Thread(target=_poll, args=(emitter, stop), daemon=True)
        poller.start()
        try:
            yield
        finally:
            stop.set()
            poller.join(timeout=5)
            emitter.flush(10)
            await client.aclose()

    app = FastAPI(
        title="Usage metering API",
        version="1",
        description="Gate, usage and owner controls (SPEC §4). Bearer tokens from "
        "`metering token issue`.",
        lifespan=lifespan,
        responses=ERRORS,
    )
    from metering.api import notification_endpoints  # noqa: PLC0415 - imports this module
    from metering.api.page import page_router  # noqa: PLC0415 - page.py imports this module

    app.include_router(router)
    app.include_router(page_router)
    app.include_router(notification_endpoints.router)
    app.add_api_route("/metrics", metrics, methods=["GET"], include_in_schema=False)
    app.add_middleware(RequestMetrics)
    return app


def services(request: Request) -> Services:
    found: Services = request.app.state.services
    return found


def caller(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Caller:
    svc = services(request)
    if credentials is None:
        raise HTTPException(401, "missing bearer token", {"WWW-Authenticate": "Bearer"})
    try:
        return verify(svc.secret, credentials.credentials, now=svc.clock())
    except InvalidToken as exc:
        raise HTTPException(401, str(exc), {"WWW-Authenticate": "Bearer"}) from None


async def _services(request: Request) -> Services:
    return services(request)


async def _caller(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Caller:
    return caller(request, credentials)


# Async on purpose: FastAPI runs a plain `def` dependency in a worker thread, a thread
# hop per request (and two per request here) for work that never blocks.
Svc = Annotated[Services, Depends(_services)]
Who = Annotated[Caller, Depends(_caller)]


def same_org(who: Caller, org_id: str) -> None:
    if who.is_service:
        raise HTTPException(403, "a service token may only call the authorization endpoint")
    if who.org_id != org_id:
        raise HTTPException(403, "this token belongs to another org")


async def role_of(svc: Services, org_id: str, user_id: str) -> Role | None:
    """The member's role from the org's member list; 404 when the org is unknown."""
    keys = OrgKeys(svc.prefix, org_id)
    pipe = svc.redis.pipeline(transaction=False)
    pipe.hget(keys.meta, "plan")
    pipe.hget(keys.members, user_id)
    plan, member = await pipe.execute()
    if plan is None:
        raise HTTPException(404, f"unknown org {org_id}")
    decoded = decode_member(member)
    return decoded.role if decoded else None


async def owner(svc: Services, who: Caller, org_id: str) -> Role:
    """The caller's role, if it may spend money or change limits (R14); else 403."""
    same_org(who, org_id)
    assert who.user_id is not None
    role = await role_of(svc, org_id, who.user_id)
    if role is None or role not in MONEY_ROLES:
        raise HTTPException(403, "only owners and the primary owner may do this (R14)")
    return role


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
        event_id = f"api-{hashlib.sha256(proof).hexdigest()[:32]}"
        remembered = keys.idempotent_request(event_id)
        first = await svc.redis.get(remembered)
        if first is not None:
            return await _resend(svc, json.loads(first), kind, data)
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
        # re-sends what that one stored.
        earlier = await svc.redis.set(
            remembered, json.dumps(raw), nx=True, ex=IDEMPOTENCY_TTL_S, get=True
        )
        if isinstance(earlier, str | bytes):  # SET NX GET: the value already there
            return await _resend(svc, json.loads(earlier), kind, data)
    future = svc.emitter.emit_account(event)
    await asyncio.wrap_future(future)
    return Appended(event_id=event.event_id, type=event.type)


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
    await asyncio.wrap_future(svc.emitter.emit_account(event))
    return Appended(event_id=event.event_id, type=event.type)


@router.get(
    "/v1/orgs/{org_id}/members/{user_id}/authorization",
    response_model=Authorization,
    summary="May this member make a model request now? (Redis only)",
)
async def authorization(
    org_id: OrgId, user_id: UserId, surface: Surface, svc: Svc, who: Who
) -> Authorization:
    if not who.is_service:
        same_org(who, org_id)
        assert who.user_id is not None
        if who.user_id != user_id and await role_of(svc, org_id, who.user_id) not in MONEY_ROLES:
            raise HTTPException(403, "members may ask only about themselves")
    try:
        decision = await svc.gate.check(org_id, user_id, surface)
    except UnknownOrgError:
        raise HTTPException(404, f"unknown org {org_id}") from None
    reason = decision.reason.value if decision.reason else None
    GATE_DECISIONS.labels("true" if decision.allowed else "false", reason or "none").inc()
    return Authorization(allowed=decision.allowed, reason=reason)


@router.get("/v1/orgs/{org_id}", response_model=OrgContract)
async def org_contract(org_id: OrgId, svc: Svc, who: Who) -> OrgContract:
    """Plan, billing mode, the current term and its renewal, seats by type: purchased, in
    use and pending removal (owners and the primary owner)."""
    await owner(svc, who, org_id)
    state = decode_account(await svc.redis.get(OrgKeys(svc.prefix, org_id).account))
    if state is None:
        raise HTTPException(404, f"unknown org {org_id}")
    return OrgContract(
        org_id=org_id,
        plan=state.plan.value,
        billing_mode=state.billing_mode.value,
        term_start=state.term_start,
        renews_on=renewal_date(state).isoformat(),
        seats=[
            SeatHolding(
                seat_type=seat.value,
                purchased=state.seats.get(seat, 0),
                in_use=state.members_holding(seat),
                pending_removal=state.pending_seat_removals.get(seat, 0),
                at_renewal=state.seats_kept(seat),
            )
            for seat in sorted(set(state.seats) | {m.seat for m in state.members.values()})
        ],
        migrates_at_renewal=is_legacy(state),
    )


@router.get("/v1/orgs/{org_id}/usage", response_model=UsageResponse)
async def usage(
    org_id: OrgId,
    svc: Svc,
    who: Who,
    month: Annotated[str | None, Query(pattern=MONTH.pattern)] = None,
) -> UsageResponse:
    """Month-to-date spend, caps and status of the org and its members (R18). Members
    see only their own row; owners see every member."""
    same_org(who, org_id)
    assert who.user_id is not None
    role = await role_of(svc, org_id, who.user_id)
    if role is None:
        raise HTTPException(403, "not a member of this org")
    now = svc.clock()
    try:
        view = await load_usage(
            svc.redis, svc.book, org_id, month or month_of(now), now=now, prefix=svc.prefix
        )
    except UnknownOrg:
        raise HTTPException(404, f"unknown org {org_id}") from None
    if role not in MONEY_ROLES:
        view = view.only(who.user_id)
    return usage_response(view)


@router.post("/v1/orgs/{org_id}/credits", response_model=Appended, status_code=202)
async def buy_credits(
    org_id: OrgId, body: CreditPurchase, svc: Svc, who: Who, *, key: IdempotencyKey = None
) -> Appended:
    role = await owner(svc, who, org_id)
    data = {"purchase_id": body.purchase_id, "amount": format_usd(body.amount)}
    return await append(
        svc, who, role, org_id, kind="credits.purchased", data=data, idempotency_key=key
    )


@router.put("/v1/orgs/{org_id}/spend-caps/org", response_model=Appended, status_code=202)
async def set_org_cap(
    org_id: OrgId, body: CapChange, svc: Svc, who: Who, *, key: IdempotencyKey = None
) -> Appended:
    role = await owner(svc, who, org_id)
    return await append(
        svc, who, role, org_id, kind="spend_cap.set", data=_cap(None, body), idempotency_key=key
    )


@router.put(
    "/v1/orgs/{org_id}/spend-caps/users/{user_id}", response_model=Appended, status_code=202
)
async def set_user_cap(
    org_id: OrgId,
    user_id: UserId,
    body: CapChange,
    svc: Svc,
    who: Who,
    *,
    key: IdempotencyKey = None,
) -> Appended:
    role = await owner(svc, who, org_id)
    return await append(
        svc, who, role, org_id, kind="spend_cap.set", data=_cap(user_id, body), idempotency_key=key
    )


@router.post("/v1/orgs/{org_id}/seats", response_model=Appended, status_code=202)
async def add_seats(
    org_id: OrgId, body: SeatChange, svc: Svc, who: Who, *, key: IdempotencyKey = None
) -> Appended:
    role = await owner(svc, who, org_id)
    data = {"seat_type": body.seat_type.value, "quantity": body.quantity}
    return await append(svc, who, role, org_id, kind="seats.added", data=data, idempotency_key=key)


@router.post("/v1/orgs/{org_id}/seats/removals", response_model=Appended, status_code=202)
async def remove_seats(
    org_id: OrgId, body: SeatChange, svc: Svc, who: Who, *, key: IdempotencyKey = None
) -> Appended:
    """Seats removed take effect at the renewal (R5: no mid-term change or refund), for
    self-serve and sales-assisted orgs; 409 when it would leave fewer seats than the
    members holding them."""
    role = await owner(svc, who, org_id)
    data = {"seat_type": body.seat_type.value, "quantity": body.quantity}
    return await append(
        svc, who, role, org_id, kind="seats.removed", data=data, idempotency_key=key
    )


@router.get(
    "/v1/orgs/{org_id}/documents/preview",
    responses={503: {"model": Problem, "description": "ClickHouse is not readable here"}},
)
async def preview(org_id: OrgId, svc: Svc, who: Who) -> list[dict[str, Any]]:
    """Month-to-date draft of the org's documents (R19), in the SPEC §4 document shape:
    what `billing run` would issue if the month ended now, from what ClickHouse holds.
    Nothing is issued. Owners only; 503 when this process cannot read ClickHouse."""
    await owner(svc, who, org_id)
    if svc.store is None:
        raise HTTPException(503, "previews need ClickHouse, which this process cannot read")
    store = svc.store

    def draft() -> list[dict[str, Any]]:
        # Imported here: the documents package pulls in the batch, which the gate's
        # path never needs.
        from metering.documents.batch import BillingBatch  # noqa: PLC0415
        from metering.documents.watermarks import current_watermarks  # noqa: PLC0415

        batch = BillingBatch(svc.settings, store, clock=svc.clock, book=svc.book)
        drafts = batch.preview(org_id, current_watermarks(svc.settings))
        return [d.model_dump(mode="json") for d in drafts]

    return await asyncio.to_thread(draft)


def _cap(user_id: str | None, body: CapChange) -> dict[str, Any]:
    return {"user_id": user_id, "limit": _usd(body.limit)}


def usage_response(view: OrgUsage) -> UsageResponse:
    return UsageResponse(
        org_id=view.org_id,
        month=view.month,
        plan=view.plan,
        billing_mode=view.billing_mode,
        spend=format_usd(view.spend_nano_usd),
        cap=_usd(view.cap_nano_usd),
        status="cap_reached" if view.cap_reached else "active",
        credit_balance=_usd(view.credit_balance_nano_usd),
        members=[
            MemberRow(
                user_id=m.user_id,
                role=m.role,
                seat_type=m.seat_type,
                spend=format_usd(m.spend_nano_usd),
                cap=_usd(m.cap_nano_usd),
                effective_limit=_usd(m.effective_limit_nano_usd),
                status=None if m.allowed is None else "active" if m.allowed else "blocked",
                reason=m.reason,
            )
            for m in view.members
        ],
    )
