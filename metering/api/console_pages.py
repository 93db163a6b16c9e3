"""Organization settings pages for owners (and the primary owner), rendered on the server:

- `GET /orgs/{org}/organization`: the org's contract — what `GET /v1/orgs/{org}` returns
  (this calls that endpoint's function), as a page;
- `GET /orgs/{org}/usage.csv?month=YYYY-MM`: a month's usage per member × model from
  ClickHouse, for a finance team's chargeback; its totals are `member_spend`'s;
- `GET /orgs/{org}/documents/{id}.json` and `.html`: one issued document of the org, the
  stored body byte for byte and its rendering (the same as `billing run` writes).

The viewer is the session's member or a bearer token's (`viewer.py`); a member, another
org's member or a service gets 403, an unknown org 404 — every refusal as an HTML page.
ClickHouse may not be readable from this process: then the export and the documents
answer 503.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable
from typing import Annotated, TypeVar

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, Response
from fastapi.security import HTTPAuthorizationCredentials

from metering.api.deps import MONTH, OrgId, Services, Svc, bearer, owner
from metering.api.page import HEADERS, error_page, from_store, templates
from metering.api.routes import org_contract
from metering.api.viewer import Viewer, viewer
from metering.clickhouse.queries import member_model_usage
from metering.clickhouse.store import Store
from metering.documents.files import render_html
from metering.documents.records import parse_body
from metering.documents.store import StoredDocument, org_document
from metering.enforcement.records import month_of
from schemas.account import Role
from schemas.common import ID_MAX_LENGTH, ID_PATTERN
from schemas.money import format_usd

CSV_COLUMNS = (
    "month",
    "user_id",
    "model",
    "events",
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
    "billed_usd",
)
_DOCUMENT_ID = re.compile(ID_PATTERN)

router = APIRouter(include_in_schema=False)
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
T = TypeVar("T")


async def _owner(
    request: Request, svc: Services, credentials: HTTPAuthorizationCredentials | None, org_id: str
) -> tuple[Viewer, Role]:
    """The viewer, if an owner of this org: else 400/401 (viewer), 403 or 404 (owner)."""
    who = await viewer(request, svc, credentials)
    return who, await owner(svc, who.caller, org_id)


async def _query(svc: Services, what: str, read: Callable[[Store], T]) -> T:
    """`read(store)` in a worker thread; 503 without ClickHouse or when the query fails."""
    found = await from_store(svc, what, read)
    if isinstance(found, str):
        raise HTTPException(503, found)
    return found


# -- the month's usage as CSV ----------------------------------------------------------
@router.get("/orgs/{org_id}/usage.csv")
async def usage_csv(
    *,
    request: Request,
    org_id: OrgId,
    svc: Svc,
    credentials: Credentials,
    month: Annotated[str | None, Query()] = None,
) -> Response:
    """The month's usage per member × model (default: the current month), ordered by
    user_id, model; billed_usd is exact (format_usd of the nano-dollars)."""
    try:
        who = await viewer(request, svc, credentials)
        if month is not None and not MONTH.fullmatch(month):
            raise HTTPException(422, "month must be YYYY-MM")
        await owner(svc, who.caller, org_id)
        chosen = month or month_of(svc.clock())
        rows = await _query(
            svc, "The usage export", lambda store: member_model_usage(store, org_id, chosen)
        )
    except HTTPException as exc:
        return error_page(exc)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        writer.writerow(
            (
                chosen,
                row.user_id,
                row.model,
                row.events,
                row.input_tokens,
                row.output_tokens,
                row.cache_creation_input_tokens,
                row.cache_read_input_tokens,
                format_usd(row.billed_nano_usd),
            )
        )
    return Response(
        out.getvalue(),
        media_type="text/csv; charset=utf-8",
        headers={
            **HEADERS,
            "Content-Disposition": f'attachment; filename="usage-{org_id}-{chosen}.csv"',
        },
    )


# -- one issued document ---------------------------------------------------------------
async def _document(
    request: Request,
    svc: Services,
    credentials: HTTPAuthorizationCredentials | None,
    org_id: str,
    document_id: str,
) -> StoredDocument:
    await _owner(request, svc, credentials, org_id)
    missing = HTTPException(404, f"no document {document_id} in org {org_id}")
    if len(document_id) > ID_MAX_LENGTH or not _DOCUMENT_ID.fullmatch(document_id):
        raise missing
    found = await _query(svc, "Documents", lambda store: org_document(store, org_id, document_id))
    if found is None:
        raise missing
    return found


@router.get("/orgs/{org_id}/documents/{document_id}.json")
async def document_json(
    *, request: Request, org_id: OrgId, document_id: str, svc: Svc, credentials: Credentials
) -> Response:
    """The document's JSON exactly as stored (and as `billing run` writes it)."""
    try:
        stored = await _document(request, svc, credentials, org_id, document_id)
    except HTTPException as exc:
        return error_page(exc)
    return Response(stored.body, media_type="application/json", headers=HEADERS)


@router.get("/orgs/{org_id}/documents/{document_id}.html", response_class=HTMLResponse)
async def document_html(
    *, request: Request, org_id: OrgId, document_id: str, svc: Svc, credentials: Credentials
) -> HTMLResponse:
    """The document for people: the rendering `billing run` writes next to the JSON."""
    try:
        stored = await _document(request, svc, credentials, org_id, document_id)
    except HTTPException as exc:
        return error_page(exc)
    return HTMLResponse(render_html(parse_body(stored.body)), headers=HEADERS)


# -- Organization settings › Organization ----------------------------------------------
@router.get("/orgs/{org_id}/organization", response_class=HTMLResponse)
async def organization_page(
    *, request: Request, org_id: OrgId, svc: Svc, credentials: Credentials
) -> HTMLResponse:
    """Plan, billing mode, term and renewal, seats by type, pending removals and, for a
    legacy plan, the migration at the renewal (R7)."""
    try:
        who, role = await _owner(request, svc, credentials, org_id)
        contract = await org_contract(org_id, svc, role)
    except HTTPException as exc:
        return error_page(exc)
    body = templates.get_template("organization.html").render(
        contract=contract,
        who=who.user_id,
        role=role.value.replace("_", " "),
        pending=[s for s in contract.seats if s.pending_removal],
        month=month_of(svc.clock()),
    )
    return HTMLResponse(body, headers=HEADERS)
