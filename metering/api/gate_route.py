"""The gate's fast path: `GET /v1/orgs/{org_id}/members/{user_id}/authorization` answered
by a plain ASGI middleware before FastAPI sees the request.

Product services call the gate before every model request, and through FastAPI (routing,
dependency injection, pydantic validation and serialization) it cost ~600 µs of CPU per
request — most of what the API process can give. Here the same request costs a split of
the path, a token looked up in a cache (`TokenCache`: verified once, then only its
expiry), one EVALSHA (`Gate.read`) and a response whose bytes were made once.

What it answers is what the route in `routes.py` answers — same checks in the same
order, same status codes, bodies and headers, same metrics (GATE_DECISIONS; the request
metrics middleware, which wraps this one, counts the request under the route's
template) — and `tests/metering/api/test_gate_fast_path.py` compares the two. Anything
the route would refuse as invalid input (422: an id or surface FastAPI's validation
rejects, or anything unusual in the path or query) is not answered here but passed to
FastAPI unchanged, so those answers are FastAPI's own; so is every other request.
"""

from __future__ import annotations

import logging
import re
from time import perf_counter
from urllib.parse import parse_qsl

from fastapi.routing import APIRoute
from fastapi.security.utils import get_authorization_scheme_param
from prometheus_client.metrics import Counter
from pydantic import TypeAdapter
from starlette.datastructures import State
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from billing.accounts import MONEY_ROLES
from metering.api.deps import Services
from metering.api.instrumentation import RequestMetrics
from metering.api.models import Authorization
from metering.api.tokens import Caller, InvalidToken
from metering.metrics import GATE_DECISIONS
from metering.redis_clients import REDIS_UNAVAILABLE, REDIS_UNAVAILABLE_DETAIL
from schemas.common import ID_MAX_LENGTH
from schemas.usage import Surface

log = logging.getLogger("metering.api")

# ID_PATTERN, matched whole: FastAPI's check (pydantic's regex) lets through exactly
# these, so an id that matches here is one the route takes too; any other is the
# route's to refuse (422).
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@+\-]*")
_SURFACES = frozenset(surface.value for surface in Surface)
# The query strings product services send, to their surface without parsing.
_PLAIN_QUERIES = {f"surface={s}".encode(): s for s in _SURFACES}
_AUTHORIZATION = b"authorization"
_UNAUTHORIZED = {"WWW-Authenticate": "Bearer"}
_ADAPTER = TypeAdapter(Authorization)
Answer = tuple[int, list[tuple[bytes, bytes]], bytes]  # status, headers, body


def _id(value: str) -> bool:
    return len(value) <= ID_MAX_LENGTH and _ID.fullmatch(value) is not None


def _surface(query_string: bytes) -> str | None:
    """The surface as FastAPI reads it (the last `surface` of the query, as Starlette
    parses it), if it is one; else None."""
    plain = _PLAIN_QUERIES.get(query_string)
    if plain is not None:
        return plain
    value = None
    for name, found in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
        if name == "surface":
            value = found
    return value if value in _SURFACES else None


def _token(scope: Scope) -> str | None:
    """The bearer token as `HTTPBearer(auto_error=False)` finds it: the first
    Authorization header, scheme `bearer` in any case, a non-empty credential."""
    for name, value in scope["headers"]:
        if name == _AUTHORIZATION:
            authorization = value.decode("latin-1")
            scheme, credentials = get_authorization_scheme_param(authorization)
            if authorization and scheme and credentials and scheme.lower() == "bearer":
                return credentials
            return None
    return None


class GateFastPath:
    """ASGI, in front of the whole app: answers the gate's GET requests with valid input
    itself and passes everything else to `app` (module docstring)."""

    def __init__(self, app: ASGIApp, route: APIRoute, state: State) -> None:
        self.app = app  # the FastAPI application, as it would be called without this
        # Put in the scope as the router would, so the request metrics (and anything
        # else reading it) see the gate's route.
        self.route = route
        self.state = state  # the app's: `services` once its lifespan has started
        # The app's request metrics never see what is answered here: counted by a
        # recorder of the same kind, into the same series.
        self.metrics = RequestMetrics(app)
        # Each decision's response, made once by FastAPI's own serializer; and its
        # GATE_DECISIONS child, bound once (no registry lock per request).
        self._answers: dict[tuple[bool, str | None], Answer] = {}
        self._decisions: dict[tuple[bool, str | None], Counter] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "GET" or scope.get("root_path"):
            await self.app(scope, receive, send)
            return
        parts = scope["path"].split("/")
        if (
            len(parts) != 7
            or parts[6] != "authorization"
            or parts[4] != "members"
            or parts[2] != "orgs"
            or parts[1] != "v1"
            or parts[0]
        ):
            await self.app(scope, receive, send)
            return
        org_id, user_id = parts[3], parts[5]
        surface = _surface(scope["query_string"])
        if surface is None or not _id(org_id) or not _id(user_id):
            await self.app(scope, receive, send)  # FastAPI's 422
            return
        started = perf_counter()
        scope["route"] = self.route
        status = 500  # unless a response starts (as RequestMetrics counts)
        started_response = False
        try:
            answer = await self._answer(scope, org_id, user_id, Surface(surface))
            started_response = True
            await send({"type": "http.response.start", "status": answer[0], "headers": answer[1]})
            status = answer[0]
            await send({"type": "http.response.body", "body": answer[2]})
        except REDIS_UNAVAILABLE as exc:  # as the app's handler (app._redis_unavailable)
            log.warning("Redis unavailable for the gate: %s", exc)
            if started_response:
                raise
            status, headers, body = _problem(503, REDIS_UNAVAILABLE_DETAIL, {"Retry-After": "1"})
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
        except Exception:
            # As the app's ServerErrorMiddleware with its handler (app._internal_error): a
            # JSON 500 if nothing was sent yet, and the exception on to the server's log.
            if not started_response:
                _, headers, body = _problem(500, "internal error")
                await send({"type": "http.response.start", "status": 500, "headers": headers})
                await send({"type": "http.response.body", "body": body})
            raise
        finally:
            self.metrics.record(scope, status, perf_counter() - started)

    async def _answer(self, scope: Scope, org_id: str, user_id: str, surface: Surface) -> Answer:
        """The route's checks, in its order (routes.authorization, deps.bearer_caller)."""
        svc: Services = self.state.services
        who = await _caller(scope, svc)
        if not isinstance(who, Caller):
            return who  # 401
        asker = None
        if not who.is_service:
            if who.org_id != org_id:
                return _problem(403, "this token belongs to another org")
            if who.user_id != user_id:
                asker = who.user_id  # their role decides: read with the gate's state
        reading = await svc.gate.read(org_id, user_id, asker=asker)
        if reading.state is None:
            return _problem(404, f"unknown org {org_id}")
        if asker is not None and (reading.asker is None or reading.asker.role not in MONEY_ROLES):
            return _problem(403, "members may ask only about themselves")
        decision = reading.decide(surface)
        key = (decision.allowed, decision.reason.value if decision.reason else None)
        counter = self._decisions.get(key)
        if counter is None:
            counter = GATE_DECISIONS.labels("true" if key[0] else "false", key[1] or "none")
            self._decisions[key] = counter
        counter.inc()
        answer = self._answers.get(key)
        if answer is None:
            # As FastAPI makes it: the model dumped by pydantic into a plain Response.
            body = _ADAPTER.dump_json(Authorization(allowed=key[0], reason=key[1]), by_alias=True)
            made = Response(content=body, media_type="application/json")
            answer = self._answers[key] = (200, made.raw_headers, bytes(made.body))
        return answer


async def _caller(scope: Scope, svc: Services) -> Caller | Answer:
    """The caller, as `deps.bearer_caller` finds it, or its 401."""
    token = _token(scope)
    if token is None:
        return _problem(401, "missing bearer token", _UNAUTHORIZED)
    try:
        who = svc.tokens.verify(token, now=svc.clock())
    except InvalidToken as exc:
        return _problem(401, str(exc), _UNAUTHORIZED)
    # Every request, as the route: the deny-list is in memory, re-read once a second.
    if who.service is not None and await svc.revocations.is_revoked(who.service, who.issued_at):
        return _problem(401, "token revoked", _UNAUTHORIZED)
    return who


def _problem(status: int, detail: str, headers: dict[str, str] | None = None) -> Answer:
    """An error as FastAPI's HTTPException handler answers it."""
    response = JSONResponse({"detail": detail}, status_code=status, headers=headers)
    return status, response.raw_headers, bytes(response.body)
