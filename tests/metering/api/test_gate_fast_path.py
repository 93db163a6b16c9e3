"""The gate's fast path (`metering/api/gate_route.py`) answers exactly as the FastAPI route:
the same requests, against the same Redis, to an app with the fast path and one without,
give the same status, headers and body bytes and move the same metrics — for an allowed
request, each block reason, every refusal (401, 403, 404) and invalid input (422, which
the fast path leaves to FastAPI). And its token cache forgets nothing it must not: an
expired token, a revoked service or a demoted owner is refused at once.

The orgs' gate state is written straight into Redis (a private key prefix): what is under
test is how both paths read and answer it, not how the processors build it."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from metering.api import revocations
from metering.api.app import create_api
from metering.api.gate_route import GateFastPath
from metering.api.revocations import revoke
from metering.api.tokens import InvalidToken, TokenCache, issue
from metering.enforcement.keys import OrgKeys
from metering.enforcement.records import month_of
from metering.settings import Settings
from tests.conftest import RunningStack

SECRET = "test-secret-for-the-gate-fast-path-0123456789"
GATE = "/v1/orgs/{org_id}/members/{user_id}/authorization"
NOW = datetime.now(UTC).replace(microsecond=0)
# fp_main: usage-based, self-serve, credits; ann primary owner, olga owner, adam admin,
# max and mia members (enterprise seats), chad on a chat seat, cora at her cap.
MAIN, BROKE, CAPPED, SEATS, GHOST = "fp_main", "fp_broke", "fp_capped", "fp_seats", "fp_ghost"
USD = 10**9
Hash = dict[Any, Any]  # field → value of a Redis hash (redis-py's own types, loosely)


class Clock:
    """The apps' clock: tests move it (a token's expiry)."""

    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


CLOCK = Clock()


def token(
    org: str | None = None,
    user: str | None = None,
    service: str | None = None,
    *,
    secret: str = SECRET,
    issued: datetime = NOW,
    ttl: timedelta = timedelta(hours=1),
) -> str:
    return issue(secret, now=issued, ttl=ttl, org_id=org, user_id=user, service=service)


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


def _write_org(
    client: redis.Redis,
    prefix: str,
    org: str,
    *,
    plan: str = "usage_based",
    mode: str = "self_serve",
    members: Hash,
    balance: int = 50 * USD,
    org_cap: int | None = None,
    caps: Hash | None = None,
    spend: Hash | None = None,
) -> None:
    keys = OrgKeys(prefix, org)
    meta: Hash = {"plan": plan, "billing_mode": mode, "extra_usage": "0"}
    if org_cap is not None:
        meta["org_cap"] = org_cap
    client.hset(keys.meta, mapping=meta)
    client.hset(keys.members, mapping=members)
    client.set(keys.balance, balance)
    if caps:
        client.hset(keys.caps, mapping=caps)
    if spend:
        client.hset(keys.spend(month_of(NOW)), mapping=spend)


@dataclass
class Apps:
    slow: TestClient  # the FastAPI route alone
    fast: TestClient  # the fast path first
    fast_path: GateFastPath
    passed_on: list[str]  # paths the fast path left to FastAPI
    redis: redis.Redis
    prefix: str


def _fast_path_of(app: FastAPI) -> GateFastPath:
    found = getattr(app, "gate_fast_path", None)
    assert isinstance(found, GateFastPath)
    return found


@pytest.fixture(scope="module")
def apps(stack: RunningStack) -> Iterator[Apps]:
    client = redis.Redis.from_url(stack.settings.redis_url)
    prefix = f"fastpath.{uuid.uuid4().hex[:12]}:"
    try:
        enterprise = "enterprise|"
        _write_org(
            client,
            prefix,
            MAIN,
            members={
                "ann": enterprise + "primary_owner",
                "olga": enterprise + "owner",
                "adam": enterprise + "admin",
                "max": enterprise + "member",
                "mia": enterprise + "member",
                "chad": "chat|member",
                "cora": enterprise + "member",
            },
            caps={"cora": 2 * USD, "max": 100 * USD},
            spend={"org": 5 * USD, "u:cora": 2 * USD, "u:max": 1 * USD},
        )
        _write_org(client, prefix, BROKE, members={"bo": enterprise + "primary_owner"}, balance=0)
        _write_org(
            client,
            prefix,
            CAPPED,
            mode="sales_assisted",
            members={"cy": enterprise + "primary_owner"},
            org_cap=10 * USD,
            spend={"org": 10 * USD},
        )
        _write_org(
            client,
            prefix,
            SEATS,
            plan="seat_based",
            mode="sales_assisted",
            members={"sam": "standard|primary_owner", "sue": "standard|member"},
            spend={"a:sue": 10**6 * USD},  # far beyond any seat's allowance
        )
        revoke(client, prefix, "revoked-svc", int(NOW.timestamp()))
        settings: Settings = stack.settings.model_copy(
            update={"api_secret": SECRET, "redis_prefix": prefix}
        )
        with (
            TestClient(create_api(settings, clock=CLOCK, gate_fast_path=False)) as slow,
            TestClient(create_api(settings, clock=CLOCK)) as fast,
        ):
            fast_path = _fast_path_of(fast.app)  # type: ignore[arg-type]
            passed_on: list[str] = []
            inner = fast_path.app

            async def counting(scope: Any, receive: Any, send: Any) -> None:
                passed_on.append(scope["path"])
                await inner(scope, receive, send)

            fast_path.app = counting
            yield Apps(slow, fast, fast_path, passed_on, client, prefix)
    finally:  # also when the setup fails half-way
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()


SERVICE = bearer(token(service="chat-frontend"))


def member(org: str, user: str) -> dict[str, str]:
    return bearer(token(org, user))


def gate(org: str, user: str, query: str = "surface=chat_web") -> str:
    return f"/v1/orgs/{org}/members/{user}/authorization" + (f"?{query}" if query else "")


# name → (path, headers, answered by the fast path)
CASES: dict[str, tuple[str, dict[str, str], bool]] = {
    "allowed": (gate(MAIN, "max"), SERVICE, True),
    "allowed, every surface": (gate(MAIN, "max", "surface=cowork"), SERVICE, True),
    "unknown member": (gate(MAIN, "nobody"), SERVICE, True),
    "surface not in seat": (gate(MAIN, "chad", "surface=claude_code"), SERVICE, True),
    "credits exhausted": (gate(BROKE, "bo"), SERVICE, True),
    "org cap reached": (gate(CAPPED, "cy"), SERVICE, True),
    "user cap reached": (gate(MAIN, "cora"), SERVICE, True),
    "seat allowance exhausted": (gate(SEATS, "sue"), SERVICE, True),
    "seat allowance left": (gate(SEATS, "sam"), SERVICE, True),
    "unknown org": (gate(GHOST, "max"), SERVICE, True),
    "unknown org, member token": (gate(GHOST, "max"), member(GHOST, "max"), True),
    "unknown org, member about another": (gate(GHOST, "max"), member(GHOST, "ann"), True),
    "member about themselves": (gate(MAIN, "max"), member(MAIN, "max"), True),
    "member about another": (gate(MAIN, "mia"), member(MAIN, "max"), True),
    "admin about a member": (gate(MAIN, "max"), member(MAIN, "adam"), True),
    "owner about a member": (gate(MAIN, "cora"), member(MAIN, "olga"), True),
    "primary owner about a member": (
        gate(MAIN, "chad", "surface=claude_code"),
        member(MAIN, "ann"),
        True,
    ),
    "non-member about another": (gate(MAIN, "max"), member(MAIN, "ghost"), True),
    "non-member about themselves": (gate(MAIN, "ghost"), member(MAIN, "ghost"), True),
    "other org": (gate(MAIN, "max"), member(BROKE, "bo"), True),
    "no token": (gate(MAIN, "max"), {}, True),
    "not a bearer": (gate(MAIN, "max"), {"Authorization": "Basic YWxhZGRpbjpvcGVu"}, True),
    "bearer without a token": (gate(MAIN, "max"), {"Authorization": "Bearer "}, True),
    "lower-case scheme": (
        gate(MAIN, "max"),
        {"Authorization": "bearer " + token(service="s")},
        True,
    ),
    "garbage token": (gate(MAIN, "max"), bearer("not-a-token"), True),
    "other secret": (gate(MAIN, "max"), bearer(token(service="s", secret="x" * 40)), True),
    "expired token": (
        gate(MAIN, "max"),
        bearer(token(service="s", issued=NOW - timedelta(hours=2))),
        True,
    ),
    "token from the future": (
        gate(MAIN, "max"),
        bearer(token(service="s", issued=NOW + timedelta(hours=2))),
        True,
    ),
    "revoked service": (
        gate(MAIN, "max"),
        bearer(token(service="revoked-svc", issued=NOW - timedelta(seconds=5))),
        True,
    ),
    "service issued after its revocation": (
        gate(MAIN, "max"),
        bearer(token(service="revoked-svc", issued=NOW + timedelta(seconds=1))),
        True,
    ),
    "repeated surface, last valid": (
        gate(MAIN, "max", "surface=fax&surface=chat_web"),
        SERVICE,
        True,
    ),
    "encoded surface": (gate(MAIN, "max", "surface=chat%5Fweb&x=1"), SERVICE, True),
    # invalid input: FastAPI's 422 (or its own answer), whatever the token
    "bad surface": (gate(MAIN, "max", "surface=fax"), SERVICE, False),
    "repeated surface, last invalid": (
        gate(MAIN, "max", "surface=chat_web&surface=fax"),
        SERVICE,
        False,
    ),
    "no surface": (gate(MAIN, "max", ""), SERVICE, False),
    "empty surface": (gate(MAIN, "max", "surface="), SERVICE, False),
    "bad surface, bad token": (gate(MAIN, "max", "surface=fax"), bearer("nope"), False),
    "bad org id": (gate("bad!org", "max"), SERVICE, False),
    "bad user id": (gate(MAIN, "-max"), SERVICE, False),
    "user id too long": (gate(MAIN, "m" * 129), SERVICE, False),
    "longest user id": (gate(MAIN, "m" * 128), SERVICE, True),
    "bad ids and surface": (gate("bad!org", "~", "surface=fax"), SERVICE, False),
    "encoded slash in an id": (gate(MAIN, "a%2Fb"), SERVICE, False),
    "encoded newline in an id": (gate(MAIN, "max%0A"), SERVICE, False),
    "trailing slash": (gate(MAIN, "max").replace("?", "/?"), SERVICE, False),
}


def _samples() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    wanted = ("metering_gate_decisions_total", "metering_http_requests_total")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for metric in REGISTRY.collect()
        for s in metric.samples
        if s.name in wanted
    }


def _delta(call: Callable[[], Any]) -> tuple[Any, dict[Any, float]]:
    before = _samples()
    result = call()
    after = _samples()
    moved = {key: value - before.get(key, 0.0) for key, value in after.items()}
    return result, {key: value for key, value in moved.items() if value}


@pytest.mark.parametrize("case", list(CASES))
def test_the_fast_path_answers_as_the_route(apps: Apps, case: str) -> None:
    path, headers, answered_fast = CASES[case]
    slow, slow_metrics = _delta(lambda: apps.slow.get(path, headers=headers))
    apps.passed_on.clear()
    fast, fast_metrics = _delta(lambda: apps.fast.get(path, headers=headers))
    assert (fast.status_code, fast.content) == (slow.status_code, slow.content), case
    assert fast.headers.multi_items() == slow.headers.multi_items(), case
    assert fast_metrics == slow_metrics, case
    assert bool(apps.passed_on) is not answered_fast, case
    if slow.status_code == 200:
        assert any(key[0] == "metering_gate_decisions_total" for key in fast_metrics)


def test_the_cases_cover_every_answer(apps: Apps) -> None:
    """The table above reaches every status and every block reason (no vacuous match)."""
    seen = set()
    for path, headers, _ in CASES.values():
        answer = apps.slow.get(path, headers=headers)
        seen.add(answer.status_code)
        if answer.status_code == 200:
            seen.add(answer.json()["reason"])
    assert seen >= {200, 401, 403, 404, 422, None}
    reasons = {"unknown_member", "surface_not_in_seat", "credits_exhausted"}
    reasons |= {"org_cap_reached", "user_cap_reached", "seat_allowance_exhausted"}
    assert seen >= reasons


def test_other_requests_pass_through_untouched(apps: Apps) -> None:
    for method, path in (
        ("HEAD", gate(MAIN, "max")),
        ("POST", gate(MAIN, "max")),
        ("GET", f"/v1/orgs/{MAIN}/usage"),
        ("GET", f"/v1/orgs/{MAIN}/members/max"),
        ("GET", "/v2/orgs/x/members/y/authorization?surface=chat_web"),
    ):
        apps.passed_on.clear()
        fast = apps.fast.request(method, path, headers=member(MAIN, "ann"))
        slow = apps.slow.request(method, path, headers=member(MAIN, "ann"))
        assert (fast.status_code, fast.content) == (slow.status_code, slow.content), path
        assert apps.passed_on, (method, path)


def test_a_cached_token_is_refused_once_it_expires(apps: Apps) -> None:
    short = bearer(token(service="brief", ttl=timedelta(minutes=1)))
    assert apps.fast.get(gate(MAIN, "max"), headers=short).status_code == 200  # cached now
    assert apps.fast.get(gate(MAIN, "max"), headers=short).status_code == 200
    CLOCK.now = NOW + timedelta(minutes=1)
    try:
        fast = apps.fast.get(gate(MAIN, "max"), headers=short)
        slow = apps.slow.get(gate(MAIN, "max"), headers=short)
    finally:
        CLOCK.now = NOW
    assert fast.status_code == 401
    assert fast.json() == slow.json() == {"detail": "token expired"}


def test_a_cached_service_token_is_refused_once_revoked(
    apps: Apps, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(revocations, "REFRESH_S", 0.0)  # re-read the deny-list every time
    service = bearer(token(service="to-revoke", issued=NOW - timedelta(seconds=10)))
    assert apps.fast.get(gate(MAIN, "max"), headers=service).status_code == 200
    revoke(apps.redis, apps.prefix, "to-revoke", int(NOW.timestamp()))
    fast = apps.fast.get(gate(MAIN, "max"), headers=service)
    assert fast.status_code == 401
    assert fast.json() == {"detail": "token revoked"}
    assert fast.headers["www-authenticate"] == "Bearer"


def test_a_demoted_owner_is_refused_at_once(apps: Apps) -> None:
    """The role comes from the member list on every request, never from the token or a
    cache: olga's token, cached as an owner's, no longer reads about others."""
    olga = member(MAIN, "olga")
    assert apps.fast.get(gate(MAIN, "max"), headers=olga).status_code == 200
    members = OrgKeys(apps.prefix, MAIN).members
    apps.redis.hset(members, "olga", "enterprise|member")
    try:
        fast = apps.fast.get(gate(MAIN, "max"), headers=olga)
        slow = apps.slow.get(gate(MAIN, "max"), headers=olga)
    finally:
        apps.redis.hset(members, "olga", "enterprise|owner")
    assert fast.status_code == 403
    assert fast.content == slow.content


def test_the_token_cache_is_bounded_and_keeps_only_valid_tokens() -> None:
    cache = TokenCache(SECRET, size=2)
    tokens = [token(service=f"s{n}") for n in range(3)]
    for value in tokens:
        assert cache.verify(value, now=NOW).service is not None
    assert len(cache) == 2
    with pytest.raises(InvalidToken):
        cache.verify("garbage", now=NOW)
    assert len(cache) == 2
    # expired while cached: the same error verify gives, and forgotten
    with pytest.raises(InvalidToken, match="token expired"):
        cache.verify(tokens[-1], now=NOW + timedelta(hours=1))
    assert len(cache) == 1


def test_a_failure_answers_500_as_the_route(stack: RunningStack, apps: Apps) -> None:
    """Whatever goes wrong inside (here: reading Redis), the answer is the app's JSON 500
    and the request is counted as a 500 of the route, with or without the fast path."""
    settings = stack.settings.model_copy(update={"api_secret": SECRET, "redis_prefix": apps.prefix})
    answers = []
    for fast_path in (False, True):
        app = create_api(settings, clock=CLOCK, gate_fast_path=fast_path)
        with TestClient(app, raise_server_exceptions=False) as client:
            gate_of = app.state.services.gate

            async def broken(*_: Any, **__: Any) -> Any:
                raise RuntimeError("Redis is gone")

            gate_of.read = gate_of.check = broken
            answer, moved = _delta(lambda: client.get(gate(MAIN, "max"), headers=SERVICE))
        answers.append((answer.status_code, answer.content, answer.headers.multi_items(), moved))
    assert answers[0] == answers[1]
    status, body, _, moved = answers[0]
    assert (status, body) == (500, b'{"detail":"internal error"}')
    route = (("method", "GET"), ("route", GATE), ("status", "500"))
    assert moved == {("metering_http_requests_total", route): 1.0}
