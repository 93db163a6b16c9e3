"""The FastAPI application (SPEC §4, HTTP API).

Every request names an org. Order of checks (after FastAPI's own validation of path and
query parameters, which answers 422 first): a valid token (401) → the caller may act
on this org at all (403: a member of another org, or a service outside the gate) → the
org exists (404) → the caller's role, read from the org's member list in Redis (403) →
the body (422, FastAPI's field-level `detail`). Writes append the matching account
event with the caller as `actor` and return once the broker has it (202); a change the
account rules would refuse (e.g. a self-serve seat removal mid-term, R5) is 409 and
appends nothing. A write sent with an `Idempotency-Key` header is applied once however
often it is retried with that key: the first request's event is remembered (Redis, as
long as the account event ids) and a retry re-sends exactly that event, which the account
processor recognises as a duplicate. A write Kafka does not confirm within
METERING_HTTP_WRITE_TIMEOUT_S answers 503 with Retry-After.
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

from confluent_kafka import KafkaException
from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Path, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
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
from metering.api.revocations import Revocations
from metering.api.tokens import Caller, InvalidToken, load_secret, verify
from metering.api.usage_view import OrgUsage, UnknownOrg, load_usage
from metering.clickhouse.store import Store
from metering.emitter import Emitter
from metering.enforcement.account_processor import ACCEPTED
from metering.enforcement.keys import OrgKeys
from metering.enforcement.records import month_of
from metering.enforcement.state_codec import decode_account, decode_member
from metering.gate import Gate, UnknownOrgError
from metering.metrics import GATE_DECISIONS
from metering.settings import Settings
from schemas.account import AccountEvent, Role
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
        "the first request's event is re-sent, never a second change; kept as long as "
        "the account events themselves",
    ),
]
ERRORS: dict[int | str, dict[str, Any]] = {
    # 400: a body that is not UTF-8 (FastAPI: "There was an error parsing the body").
    # 413: a body over METERING_HTTP_MAX_BODY_BYTES. 503: Kafka did not confirm a write
    # in time (with Retry-After), or a preview without ClickHouse.
    **{code: {"model": Problem} for code in (400, 401, 403, 404, 409, 413, 503)},
    422: {"model": Invalid},
}
RETRY_AFTER_S = 5
# An invalid input is echoed in a 422 only this far (a 16 MB field must not come back).
ECHO_CHARS = 64


class _JSONDecodeError(json.JSONDecodeError):
    pass


def _refuse_constant(name: str) -> Any:
    # json.loads takes NaN, Infinity and -Infinity, which JSON does not have: a response
    # echoing them cannot even be encoded (it was a plain-text 500).
    raise _JSONDecodeError(f"{name} is not valid JSON", name, 0)


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):  # 1e400
        raise _JSONDecodeError("number out of range", text[:ECHO_CHARS], 0)
    return value


class _StrictJSONRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            try:
                self._json = json.loads(
                    body, parse_constant=_refuse_constant, parse_float=_finite_float
                )
            except ValueError as exc:
                if isinstance(exc, json.JSONDecodeError):
                    raise
                # e.g. an integer of more than 4,300 digits: invalid JSON too, not a 400
                raise _JSONDecodeError(str(exc), "", 0) from None
        return self._json


class StrictJSONRoute(APIRoute):
    """Request bodies parsed as strict JSON: NaN, Infinity and overflowing numbers are
    invalid JSON (FastAPI's 422 `json_invalid`)."""

    def get_route_handler(self) -> Callable[[Request], Any]:
        handler = super().get_route_handler()

        async def strict(request: Request) -> Response:
            response: Response = await handler(_StrictJSONRequest(request.scope, request.receive))
            return response

        return strict


router = APIRouter(route_class=StrictJSONRoute)
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
    revocations: Revocations

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
            settings.kafka_bootstrap,
            account_topic=settings.topics.account_events,
            clock=clock,
            # A write waits this long for the broker and then answers 503; the producer
            # gives the event up by then too, rather than delivering it minutes later.
            producer_overrides={"message.timeout.ms": int(settings.http_write_timeout_s * 1000)},
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
            revocations=Revocations(client, settings.redis_prefix),
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

    docs = settings.api_docs
    app = FastAPI(
        title="Usage metering API",
        version="1",
        description="Gate, usage and owner controls (SPEC §4). Bearer tokens from "
        "`metering token issue`.",
        lifespan=lifespan,
        responses=ERRORS,
        # 413 for a body over the limit as it is read (one without Content-Length; the
        # server refuses a Content-Length over it before the app runs: api/server.py).
        max_body_size=settings.http_max_body_bytes,
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
    )
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(Exception, _internal_error)
    from metering.api import notification_endpoints  # noqa: PLC0415 - imports this module
    from metering.api.page import page_router  # noqa: PLC0415 - page.py imports this module

    app.include_router(router)
    app.include_router(page_router)
    app.include_router(notification_endpoints.router)
    app.add_api_route("/metrics", metrics, methods=["GET"], include_in_schema=False)
    app.add_middleware(RequestMetrics)
    return app


def _short(value: Any) -> Any:
    """An input as echoed in a 422: scalars as they are, anything longer than
    ECHO_CHARS characters (as JSON) cut to a prefix."""
    if isinstance(value, bool | int | float) or value is None:
        text = json.dumps(value)
        return value if len(text) <= ECHO_CHARS else text[:ECHO_CHARS] + "…"
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if len(text) <= ECHO_CHARS:
        return value
    return text[:ECHO_CHARS] + "…"


async def _invalid_request(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's field-level 422, with every echoed input and context value cut short."""
    assert isinstance(exc, RequestValidationError)
    errors = []
    for error in jsonable_encoder(exc.errors()):
        if "input" in error:
            error["input"] = _short(error["input"])
        if isinstance(error.get("ctx"), dict):
            error["ctx"] = {name: _short(value) for name, value in error["ctx"].items()}
        errors.append(error)
    return JSONResponse(status_code=422, content={"detail": errors})


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    """Whatever went wrong, the answer is JSON like every other (the exception is
    logged by the server)."""
    return JSONResponse(status_code=500, content={"detail": "internal error"})


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
    who = caller(request, credentials)
    if who.service is not None and await services(request).revocations.is_revoked(
        who.service, who.issued_at
    ):
        raise HTTPException(401, "token revoked", {"WWW-Authenticate": "Bearer"})
    return who


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


async def _owner(org_id: OrgId, svc: Svc, who: Who) -> Role:
    return await owner(svc, who, org_id)


# A dependency, not a call in the handler: FastAPI reports an invalid body only after
# the dependencies ran, so a caller of another org, or a member, gets 403 whatever the
# body — and learns nothing about its field rules.
OwnerRole = Annotated[Role, Depends(_owner)]


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
async def org_contract(org_id: OrgId, svc: Svc, _role: OwnerRole) -> OrgContract:
    """Plan, billing mode, the current term and its renewal, seats by type: purchased, in
    use and pending removal (owners and the primary owner)."""
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
    org_id: OrgId,
    body: CreditPurchase,
    svc: Svc,
    who: Who,
    role: OwnerRole,
    *,
    key: IdempotencyKey = None,
) -> Appended:
    data = {"purchase_id": body.purchase_id, "amount": format_usd(body.amount)}
    return await append(
        svc, who, role, org_id, kind="credits.purchased", data=data, idempotency_key=key
    )


@router.put("/v1/orgs/{org_id}/spend-caps/org", response_model=Appended, status_code=202)
async def set_org_cap(
    org_id: OrgId,
    body: CapChange,
    svc: Svc,
    who: Who,
    role: OwnerRole,
    *,
    key: IdempotencyKey = None,
) -> Appended:
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
    *,
    who: Who,
    role: OwnerRole,
    key: IdempotencyKey = None,
) -> Appended:
    return await append(
        svc, who, role, org_id, kind="spend_cap.set", data=_cap(user_id, body), idempotency_key=key
    )


@router.post("/v1/orgs/{org_id}/seats", response_model=Appended, status_code=202)
async def add_seats(
    org_id: OrgId,
    body: SeatChange,
    svc: Svc,
    who: Who,
    role: OwnerRole,
    *,
    key: IdempotencyKey = None,
) -> Appended:
    data = {"seat_type": body.seat_type.value, "quantity": body.quantity}
    return await append(svc, who, role, org_id, kind="seats.added", data=data, idempotency_key=key)


@router.post("/v1/orgs/{org_id}/seats/removals", response_model=Appended, status_code=202)
async def remove_seats(
    org_id: OrgId,
    body: SeatChange,
    svc: Svc,
    who: Who,
    role: OwnerRole,
    *,
    key: IdempotencyKey = None,
) -> Appended:
    """Seats removed take effect at the renewal (R5: no mid-term change or refund), for
    self-serve and sales-assisted orgs; 409 when it would leave fewer seats than the
    members holding them."""
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
