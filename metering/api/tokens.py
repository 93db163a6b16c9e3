"""Bearer tokens: signed (HS256 JWT), expiring, naming either one member of one org or a
product service (SPEC §4). The token says who the caller is; what they may do is decided
per request from the org's own member list (a member's role is never taken from the
token, so demoting an owner takes effect at once)."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import jwt

from metering.settings import MAX_TOKEN_TTL_HOURS
from schemas.common import ID_MAX_LENGTH, ID_PATTERN

ALGORITHM = "HS256"
ISSUER = "metering"
SECRET_FILE = "api-secret"
MIN_SECRET_LENGTH = 32  # HS256 wants a key of at least 256 bits (RFC 7518 §3.2)
# The longest a token may live (exp - iat): a longer one is refused when presented, so a
# token issued before this bound existed (or forged with a leaked secret) cannot last.
MAX_TOKEN_TTL = timedelta(hours=MAX_TOKEN_TTL_HOURS)
# Clocks of the machine that issued a token and of the API differ a little: an `iat` this
# far ahead of the API's clock is still accepted.
IAT_LEEWAY = timedelta(seconds=60)
_ID = re.compile(ID_PATTERN)
MAX_CACHED_TOKEN_CHARS = 1024


class InvalidToken(ValueError):
    """Missing, malformed, tampered with, expired or signed with another secret."""


@dataclass(frozen=True)
class Caller:
    org_id: str | None  # a member's org; None for a service
    user_id: str | None
    service: str | None
    issued_at: int = 0  # the token's `iat` (Unix seconds): revocations compare with it
    expires_at: int = 0  # the token's `exp` (Unix seconds): a cached Caller lives no longer

    @property
    def is_service(self) -> bool:
        return self.service is not None

    @property
    def subject(self) -> str:
        return f"service:{self.service}" if self.service else f"member:{self.org_id}/{self.user_id}"


def check_name(what: str, value: str) -> str:
    """Org ids, user ids and service names: 1–128 characters of `[A-Za-z0-9_.:@+-]`,
    starting alphanumeric (like every id in the pipeline)."""
    if not (0 < len(value) <= ID_MAX_LENGTH and _ID.fullmatch(value)):
        raise ValueError(
            f"{what} must be 1–{ID_MAX_LENGTH} characters of A-Z a-z 0-9 _ . : @ + -, "
            f"starting with a letter or digit; got {value[:40]!r}"
        )
    return value


def issue(
    secret: str,
    *,
    now: datetime,
    ttl: timedelta,
    org_id: str | None = None,
    user_id: str | None = None,
    service: str | None = None,
) -> str:
    if (service is None) == (org_id is None or user_id is None):
        raise ValueError("a token names a member (org and user) or a service, not both")
    if not timedelta(0) < ttl <= MAX_TOKEN_TTL:
        raise ValueError(f"a token lives more than 0 and at most {MAX_TOKEN_TTL_HOURS} hours")
    for what, name in (("the org", org_id), ("the user", user_id), ("the service", service)):
        if name is not None:
            check_name(what, name)
    claims: dict[str, object] = {
        "iss": ISSUER,
        "iat": int(now.timestamp()),
        "exp": int((now + ttl).timestamp()),
    }
    if service is not None:
        claims["svc"] = service
    else:
        claims.update(org=org_id, user=user_id)
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def verify(secret: str, token: str, *, now: datetime) -> Caller:
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            issuer=ISSUER,
            # Times are checked below, against the injected clock (deterministic tests).
            options={"require": ["exp", "iat", "iss"], "verify_exp": False, "verify_iat": False},
        )
    except jwt.PyJWTError as exc:
        raise InvalidToken(f"invalid token: {exc}") from None
    issued, expires, at = claims["iat"], claims["exp"], int(now.timestamp())
    if not (isinstance(issued, int) and isinstance(expires, int)):
        raise InvalidToken("invalid token: iat and exp must be whole seconds")
    if expires <= at:
        raise InvalidToken("token expired")
    if issued > at + IAT_LEEWAY.total_seconds():
        raise InvalidToken("token issued in the future (check the issuing machine's clock)")
    if expires - issued > MAX_TOKEN_TTL.total_seconds():
        raise InvalidToken(f"token lives longer than the maximum of {MAX_TOKEN_TTL.days} days")
    service, org, user = claims.get("svc"), claims.get("org"), claims.get("user")
    if isinstance(service, str) and org is None and user is None:
        return Caller(None, None, service, issued, expires)
    if isinstance(org, str) and isinstance(user, str) and service is None:
        return Caller(org, user, None, issued, expires)
    raise InvalidToken("invalid token: names neither a member nor a service")


class TokenCache:
    """`verify` with a memory: a token verified once is not decoded and its signature not
    checked again while it lives (the HTTP gate's fast path, where that is most of the
    CPU a request costs). Only what `verify` accepted is kept, so the cache answers
    exactly as `verify` would: its checks that depend on the time (expiry, `iat` not
    ahead of the clock) are made again on every use, the rest cannot change for the same
    token and secret. Bounded: beyond `size` tokens the oldest is forgotten (and verified
    again when it comes back). Revocation is not the cache's business: a revoked
    service's token still verifies; the caller checks the deny-list on every request."""

    def __init__(self, secret: str, size: int = 10_000) -> None:
        self._secret = secret
        self._size = size
        self._callers: dict[str, Caller] = {}

    def __len__(self) -> int:
        return len(self._callers)

    def verify(self, token: str, *, now: datetime) -> Caller:
        """As `verify(secret, token, now=now)`; raises InvalidToken the same."""
        found = self._callers.get(token)
        if found is not None:
            at = int(now.timestamp())
            if found.expires_at > at and found.issued_at <= at + IAT_LEEWAY.total_seconds():
                return found
            del self._callers[token]  # expired (or the clock went back): verify says which
        who = verify(self._secret, token, now=now)
        # A token is at most a few hundred bytes; a longer one (headers allow 16 KB) is
        # verified every time rather than let a few fill the memory.
        if len(token) <= MAX_CACHED_TOKEN_CHARS:
            if len(self._callers) >= self._size:
                del self._callers[next(iter(self._callers))]  # the oldest entry
            self._callers[token] = who
        return who


def load_secret(configured: str, var_dir: Path) -> str:
    """METERING_API_SECRET, or for local use a random secret kept in var/api-secret
    (created once, mode 0600) so `metering token issue` and the API agree. Either must
    be at least MIN_SECRET_LENGTH characters: a short one is refused (ValueError), since
    anyone who guesses it can sign tokens for every org."""
    if configured:
        if len(configured) < MIN_SECRET_LENGTH:
            raise ValueError(f"METERING_API_SECRET must be at least {MIN_SECRET_LENGTH} characters")
        return configured
    path = var_dir / SECRET_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(48))
    secret = path.read_text().strip()
    if len(secret) < MIN_SECRET_LENGTH:
        raise ValueError(
            f"the API secret in {path} must be at least {MIN_SECRET_LENGTH} characters "
            f"(it has {len(secret)}); delete the file to have a new one generated, or set "
            "METERING_API_SECRET"
        )
    return secret
