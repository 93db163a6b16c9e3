"""What every route of the API depends on: the services of the process, the caller, the
org's member list — the lowest layer of `metering.api`, imported by the routes, the Usage
page and the notification endpoints, and importing none of them.

Order of checks for a route: a valid token (401; FastAPI resolves the dependencies before
it validates the path and query parameters) → those parameters (422) → the caller may
act on this org at all (403: a member of another org, or a service outside the gate) →
the org exists (404) → the caller's role, read from the org's member list in Redis
(403) → the body (422).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from fastapi import Depends, Header, HTTPException, Path, Request
from fastapi.responses import Response
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from redis.asyncio import Redis

from billing.accounts import MONEY_ROLES
from billing.pricing import PriceBook
from metering.api.revocations import Revocations
from metering.api.session import Sessions
from metering.api.tokens import Caller, InvalidToken, TokenCache, verify
from metering.clickhouse.store import Store
from metering.emitter import Emitter
from metering.enforcement.keys import OrgKeys
from metering.enforcement.state_codec import decode_member
from metering.gate import Gate
from metering.settings import Settings
from schemas.account import Role
from schemas.common import ID_PATTERN

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
    tokens: TokenCache  # the gate's fast path verifies through it (gate_route.py)
    sessions: Sessions  # the console's sign-in (session.py)

    @property
    def prefix(self) -> str:
        return self.settings.redis_prefix


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


async def bearer_caller(
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
Who = Annotated[Caller, Depends(bearer_caller)]


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
