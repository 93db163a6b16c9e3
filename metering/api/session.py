"""Signing in to the console without a token in any URL a browser keeps.

`metering login-link` prints `<console_url>/login/<link>`: the link is a signed token
(HS256, with a key derived from the API secret, so a link is never a bearer token and a
bearer token never a link) naming one member of one org, a random id and an expiry (15
minutes by default). Opening it works once: the id is marked used in Redis (SET NX, kept
until the link would have expired anyway), and the member must still be in the org's
member list. It opens a session: 32 random bytes in an HttpOnly, SameSite=Strict cookie
(Secure over https); Redis keeps only their SHA-256 → org, user, a CSRF token and a
one-shot message for the next page, for METERING_CONSOLE_SESSION_HOURS. The role is
never kept: each request reads it from the member list, as the API does, so a demoted
owner loses the forms at once. Signing out deletes the session.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

import jwt
from fastapi import HTTPException, Request
from fastapi.responses import Response
from redis.asyncio import Redis

from metering.api.tokens import ALGORITHM, ISSUER, Caller, check_name

COOKIE = "metering_session"
LINK_AUDIENCE = "metering-console-login"
MAX_LINK_TTL = timedelta(hours=24)
DEFAULT_LINK_TTL = timedelta(minutes=15)
LEEWAY = timedelta(seconds=60)


class LoginRefused(ValueError):
    """A login link that does not open a session; `status` is the page's HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _link_key(secret: str) -> bytes:
    # Derived, not the API secret itself: a link verified as a bearer token (or the other
    # way round) fails its signature, whatever claims it carries.
    return hmac.new(secret.encode(), b"metering console login link", hashlib.sha256).digest()


def login_token(secret: str, org_id: str, user_id: str, *, now: datetime, ttl: timedelta) -> str:
    check_name("the org", org_id)
    check_name("the user", user_id)
    if not timedelta(0) < ttl <= MAX_LINK_TTL:
        raise ValueError("a login link lives more than 0 and at most 24 hours")
    claims = {
        "iss": ISSUER,
        "aud": LINK_AUDIENCE,
        "org": org_id,
        "sub": user_id,
        "jti": secrets.token_urlsafe(16),
        "iat": int(now.timestamp()),
        "exp": int((now + ttl).timestamp()),
    }
    return jwt.encode(claims, _link_key(secret), algorithm=ALGORITHM)


def login_link(console_url: str, token: str) -> str:
    return f"{console_url.rstrip('/')}/login/{token}"


@dataclass(frozen=True)
class LinkClaims:
    org_id: str
    user_id: str
    link_id: str
    expires_at: int


def read_link(secret: str, token: str, *, now: datetime) -> LinkClaims:
    try:
        claims = jwt.decode(
            token,
            _link_key(secret),
            algorithms=[ALGORITHM],
            audience=LINK_AUDIENCE,
            issuer=ISSUER,
            options={"require": ["exp", "iat", "jti", "sub", "org"], "verify_exp": False},
        )
    except jwt.InvalidTokenError:
        raise LoginRefused(401, "this sign-in link is not valid") from None
    expires_at, issued_at = int(claims["exp"]), int(claims["iat"])
    if expires_at <= now.timestamp() or expires_at - issued_at > MAX_LINK_TTL.total_seconds():
        raise LoginRefused(401, "this sign-in link has expired: ask for a new one")
    if issued_at > (now + LEEWAY).timestamp():
        raise LoginRefused(401, "this sign-in link is not valid yet")
    return LinkClaims(str(claims["org"]), str(claims["sub"]), str(claims["jti"]), expires_at)


@dataclass(frozen=True)
class Session:
    org_id: str
    user_id: str
    csrf: str
    key: str  # the Redis key of this session

    @property
    def caller(self) -> Caller:
        return Caller(org_id=self.org_id, user_id=self.user_id, service=None)


class Sessions:
    """Console sessions and used login links in Redis, under the pipeline's prefix."""

    def __init__(self, redis: Redis, prefix: str, lifetime: timedelta) -> None:
        self.redis = redis
        self.prefix = prefix
        self.lifetime = lifetime

    def _key(self, session_id: str) -> str:
        digest = hashlib.sha256(session_id.encode()).hexdigest()
        return f"{self.prefix}console:session:{digest}"

    async def redeem(self, claims: LinkClaims) -> str:
        """Mark the link used (once, atomically) and open a session; its id for the cookie."""
        used = f"{self.prefix}console:link:{claims.link_id}"
        if not await self.redis.set(used, b"1", nx=True, exat=claims.expires_at):
            raise LoginRefused(410, "this sign-in link was already used: ask for a new one")
        session_id = secrets.token_urlsafe(32)
        key = self._key(session_id)
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(
            key,
            mapping={
                "org": claims.org_id,
                "user": claims.user_id,
                "csrf": secrets.token_urlsafe(32),
            },
        )
        pipe.expire(key, int(self.lifetime.total_seconds()))
        await pipe.execute()
        return session_id

    async def find(self, session_id: str | None) -> Session | None:
        if not session_id or len(session_id) > 128:
            return None
        key = self._key(session_id)
        found = await self.redis.hmget(key, ["org", "user", "csrf"])
        org, user, csrf = (v.decode() if isinstance(v, bytes) else v for v in found)
        if org is None or user is None or csrf is None:
            return None
        return Session(org, user, csrf, key)

    async def end(self, session: Session) -> None:
        await self.redis.delete(session.key)

    async def say(self, session: Session, kind: str, text: str) -> None:
        """A message for the next page the session opens (after a POST's redirect)."""
        await self.redis.hset(session.key, "flash", json.dumps([kind, text]))

    async def said(self, session: Session) -> tuple[str, str] | None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.hget(session.key, "flash")
        pipe.hdel(session.key, "flash")
        raw, _ = await pipe.execute()
        if raw is None:
            return None
        kind, text = json.loads(raw)
        return str(kind), str(text)


def check_csrf(session: Session, given: str | None) -> None:
    """A form's CSRF token must be its session's: else 403, and nothing changes."""
    if not given or not hmac.compare_digest(given.encode(), session.csrf.encode()):
        raise HTTPException(403, "the form's CSRF token does not belong to this session")


def set_session_cookie(response: Response, request: Request, session_id: str, max_age: int) -> None:
    response.set_cookie(
        COOKIE,
        session_id,
        max_age=max_age,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )
