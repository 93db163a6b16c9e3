"""The FastAPI application (SPEC §4, HTTP API): its setup, error handlers and routers.

The API's modules import only downwards, so none of them imports this one:
`deps.py` (services, caller, tenancy and roles) ← `commands.py` (idempotent account
writes) ← `routes.py` (gate, usage, owner controls) ← `page.py` (the Usage page),
`notification_endpoints.py` and `gate_route.py` (the gate's fast path, in front of
FastAPI) ← `app.py` (this module: builds the app from all of them). Order of checks,
idempotency and write timeouts: `deps.py` and `commands.py`.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.types import Receive, Scope, Send

from metering.api import console_pages, notification_endpoints
from metering.api.console import router as console_router
from metering.api.deps import ECHO_CHARS, Clock, Services
from metering.api.gate_route import GateFastPath
from metering.api.gate_script import ScriptConnection
from metering.api.instrumentation import RequestMetrics, metrics
from metering.api.models import Invalid, Problem
from metering.api.page import page_router
from metering.api.revocations import Revocations
from metering.api.routes import GATE_PATH, router
from metering.api.session import Sessions
from metering.api.tokens import TokenCache, load_secret
from metering.clickhouse.store import Store
from metering.emitter import Emitter
from metering.gate import READ_SCRIPT, Gate
from metering.redis_clients import REDIS_UNAVAILABLE, REDIS_UNAVAILABLE_DETAIL, async_client
from metering.settings import Settings

log = logging.getLogger("metering.api")

ERRORS: dict[int | str, dict[str, Any]] = {
    # 400: a body that is not UTF-8 (FastAPI: "There was an error parsing the body").
    # 413: a body over METERING_HTTP_MAX_BODY_BYTES. 503: Kafka did not confirm a write
    # in time (with Retry-After), or a preview without ClickHouse.
    **{code: {"model": Problem} for code in (400, 401, 403, 404, 409, 413, 503)},
    422: {"model": Invalid},
}


class _API(FastAPI):
    """FastAPI, with the gate's fast path (gate_route.py) in front of it when set."""

    gate_fast_path: GateFastPath | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.gate_fast_path is None:
            await self.without_fast_path(scope, receive, send)
        else:
            await self.gate_fast_path(scope, receive, send)

    async def without_fast_path(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = self.max_body_size
        if scope["type"] == "http" and limit is not None and _declared_length(scope) > limit:
            # Starlette answers a declared length over `max_body_size` with plain text,
            # replacing even the route's JSON; the documented 413 is JSON (`Problem`).
            # (A body without Content-Length is cut as it is read, and FastAPI answers
            # that one in JSON already.)
            detail = {"detail": f"the request body is over {limit} bytes"}
            await JSONResponse(detail, status_code=413)(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def _declared_length(scope: Scope) -> int:
    """The request's Content-Length, or -1 (none, or not a number)."""
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            return int(value) if value.isdigit() else -1
    return -1


def _poll(emitter: Emitter, stop: threading.Event) -> None:
    """Serve the producer's delivery callbacks, which resolve the writes' futures."""
    while not stop.is_set():
        emitter.poll(0.1)


def create_api(
    settings: Settings,
    clock: Clock | None = None,
    store: Store | None = None,
    *,
    gate_fast_path: bool = True,
) -> FastAPI:
    """`store`: ClickHouse for the Usage page's daily chart, when this process may open it
    (always with a server; in embedded mode only the store's owner). `gate_fast_path`:
    the gate's requests answered before FastAPI (`gate_route.py`), with the same answers;
    off, the route answers them (the tests compare the two)."""
    clock = clock or (lambda: datetime.now(UTC))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        secret = load_secret(settings.api_secret, settings.var_dir)  # fails before anything starts
        client = async_client(settings)
        # The gate's script over a connection of its own, when the URL is a plain one and
        # names a single server (a cluster's gate calls go through redis-py's routing).
        gate_script = (
            None
            if settings.redis_cluster
            else ScriptConnection.for_url(settings.redis_url, READ_SCRIPT)
        )
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
            gate=Gate(client, book, clock, settings.redis_prefix, run_script=gate_script),
            emitter=emitter,
            clock=clock,
            store=store,
            revocations=Revocations(client, settings.redis_prefix),
            tokens=TokenCache(secret),
            sessions=Sessions(
                client, settings.redis_prefix, timedelta(hours=settings.console_session_hours)
            ),
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
            if gate_script is not None:
                await gate_script.aclose()

    docs = settings.api_docs
    app = _API(
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
    for error in REDIS_UNAVAILABLE:
        app.add_exception_handler(error, _redis_unavailable)
    app.add_exception_handler(Exception, _internal_error)
    app.include_router(router)
    app.include_router(console_router)
    app.include_router(page_router)
    app.include_router(console_pages.router)
    app.include_router(notification_endpoints.router)
    app.add_api_route("/metrics", metrics, methods=["GET"], include_in_schema=False)
    app.add_middleware(RequestMetrics)
    if gate_fast_path:
        # In front of all of FastAPI's layers (error handling, body limits, telemetry,
        # routing), whose cost per request is what the fast path is for. The route as
        # the router puts it in the scope (the request metrics read its template).
        [gate] = [r for r in router.routes if isinstance(r, APIRoute) and r.path == GATE_PATH]
        app.gate_fast_path = GateFastPath(app.without_fast_path, gate, app.state)
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


async def _redis_unavailable(request: Request, exc: Exception) -> JSONResponse:
    """Redis did not answer, or a Redis Cluster is moving a slot or failing over: the
    same request succeeds shortly (a 503 with Retry-After, not a 500)."""
    log.warning("Redis unavailable for %s: %s", request.url.path, exc)
    return JSONResponse(
        status_code=503, content={"detail": REDIS_UNAVAILABLE_DETAIL}, headers={"Retry-After": "1"}
    )


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    """Whatever went wrong, the answer is JSON like every other (the exception is
    logged by the server)."""
    return JSONResponse(status_code=500, content={"detail": "internal error"})
