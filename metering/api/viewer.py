"""Who is looking at a console page: the member of the session cookie (a browser signed
in with a login link), or of a bearer token in the Authorization header (programs and
scripts). Never a token in the URL: it would stay in browser history, proxies and logs.
What they may see or do is then decided from the org's member list, like every route."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials

from metering.api.deps import Services, bearer_caller
from metering.api.session import COOKIE, Session
from metering.api.tokens import Caller

SIGN_IN = "sign in with a link from `metering login-link`"


@dataclass(frozen=True)
class Viewer:
    caller: Caller
    session: Session | None  # None: a bearer token (no forms: they need a session)

    @property
    def user_id(self) -> str:
        assert self.caller.user_id is not None
        return self.caller.user_id


async def viewer(
    request: Request, svc: Services, credentials: HTTPAuthorizationCredentials | None
) -> Viewer:
    """The page's viewer, or 400 (a token in the URL) / 401 (no valid session or token)."""
    if "token" in request.query_params:
        raise HTTPException(400, f"tokens in URLs are not accepted: {SIGN_IN}")
    if credentials is not None:
        return Viewer(await bearer_caller(request, credentials), None)
    session = await svc.sessions.find(request.cookies.get(COOKIE))
    if session is None:
        raise HTTPException(401, f"not signed in, or the session ended: {SIGN_IN}")
    return Viewer(session.caller, session)
