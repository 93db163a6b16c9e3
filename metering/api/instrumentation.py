"""The API's metrics: a request counter and latency histogram per method, route template
and status (pure ASGI middleware: no per-request task or body copy), and `GET /metrics`.

The route is the template (`/v1/orgs/{org_id}/usage`), never the raw path, so ids never
become label values; paths that match no route count as `unmatched`, unusual methods
as `other`."""

from __future__ import annotations

from time import perf_counter

from fastapi import Request, Response
from prometheus_client.metrics import Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from metering.metrics import HTTP_REQUEST_SECONDS, HTTP_REQUESTS, exposition

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"


class RequestMetrics:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        # (method, route, status) → the bound metrics: no registry lock per request
        self._children: dict[tuple[str, str, str], tuple[Counter, Histogram]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = perf_counter()
        status = 500  # unless a response starts: an exception is answered 500 outside

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            self.record(scope, status, perf_counter() - started)

    def record(self, scope: Scope, status: int, seconds: float) -> None:
        """Counts one request answered (also for the gate's fast path, gate_route.py)."""
        route = getattr(scope.get("route"), "path", None) or UNMATCHED
        method = scope["method"] if scope["method"] in METHODS else "other"
        key = (method, route, str(status))
        children = self._children.get(key)
        if children is None:
            children = (HTTP_REQUESTS.labels(*key), HTTP_REQUEST_SECONDS.labels(*key))
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)


async def metrics(request: Request) -> Response:
    """`GET /metrics`: the process's metrics (Prometheus text format). Unauthenticated,
    like a health check; kept out of the OpenAPI document."""
    body, content_type = exposition(request.headers.get("accept", ""))
    return Response(body, media_type=content_type)
