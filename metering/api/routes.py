"""The API's own routes: the gate (authorization), the org's contract, month-to-date
usage, and the owner controls (credits, caps, seats), plus document previews. The
checks each route makes, and in which order, are in `deps.py`; writes go through
`commands.append`."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query

from billing.accounts import MONEY_ROLES, is_legacy, renewal_date
from metering.api.commands import append
from metering.api.deps import (
    MONTH,
    IdempotencyKey,
    OrgId,
    OwnerRole,
    StrictJSONRoute,
    Svc,
    UserId,
    Who,
    owner,
    role_of,
    same_org,
)
from metering.api.models import (
    Appended,
    Authorization,
    CapChange,
    CreditPurchase,
    MemberRow,
    OrgContract,
    Problem,
    SeatChange,
    SeatHolding,
    UsageResponse,
)
from metering.api.usage_view import OrgUsage, UnknownOrg, load_usage
from metering.enforcement.keys import OrgKeys
from metering.enforcement.records import month_of
from metering.enforcement.state_codec import decode_account
from metering.gate import UnknownOrgError
from metering.metrics import GATE_DECISIONS
from schemas.money import format_usd
from schemas.usage import Surface

router = APIRouter(route_class=StrictJSONRoute)
# The gate's path: answered by `gate_route.GateFastPath` first, by the route below when
# that is off or leaves a request to FastAPI (the route is also what the OpenAPI shows).
GATE_PATH = "/v1/orgs/{org_id}/members/{user_id}/authorization"


def _usd(nano: int | None) -> str | None:
    return None if nano is None else format_usd(nano)


@router.get(
    GATE_PATH,
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
                allowance_used=_usd(m.allowance_used_nano_usd),
                allowance=_usd(m.allowance_nano_usd),
            )
            for m in view.members
        ],
    )
