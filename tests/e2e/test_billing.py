"""The month-end batch end to end (issue 6): a fixed scenario of every plan × billing
mode through a real worker and ClickHouse sink, then `billing run` as a process.

September 2026 is billed, late events and purchases of September arrive after that,
October is billed in a run that is killed between publishing and storing its documents
and re-run; then ClickHouse is rebuilt from Kafka alone and both months are billed
again. Checked: every document against hand-computed amounts (SPEC rules), the checked
in golden files byte for byte, re-runs issue nothing and change no byte, late usage is an
adjustment on the next document, and the rebuild gives byte-identical files (G3, G5).

Regenerate the golden files (then review every number by hand) with
METERING_UPDATE_GOLDEN=1.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from metering.clickhouse.store import Store
from metering.documents.store import issued_documents
from metering.faults import Point
from tests.e2e import faulty
from tests.e2e.pipeline import Pipeline
from tests.e2e.scenario import account, spend, usage

pytestmark = pytest.mark.stack

GOLDEN = Path(__file__).parent / "golden" / "billing"
OWNER = {"user_id": "owner", "role": "primary_owner"}


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def created(
    org: str, plan: str, mode: str, seats: dict[str, int], when: str, term: str
) -> dict[str, Any]:
    return account(
        org,
        "org.created",
        {
            "plan": plan,
            "billing_mode": mode,
            "term_start": term,
            "seats": seats,
            "extra_usage": plan == "seat_based",
        },
        actor=None,
        at=at(when),
    )


def member(org: str, user: str, role: str, seat: str, when: str) -> dict[str, Any]:
    return account(
        org,
        "member.added",
        {"user_id": user, "role": role, "seat_type": seat},
        actor=None,
        at=at(when),
    )


def purchase(org: str, purchase_id: str, amount: str, when: str) -> dict[str, Any]:
    return account(
        org,
        "credits.purchased",
        {"purchase_id": purchase_id, "amount": amount},
        actor=OWNER,
        at=at(when),
    )


def september_accounts() -> list[dict[str, Any]]:
    return [
        # usage-based, self-serve: 3 seats billed annually, 2 added mid-month, a removal
        # pending until the renewal (R5), two purchases
        created(
            "org_ss",
            "usage_based",
            "self_serve",
            {"enterprise": 3},
            "2026-09-01T08:00",
            "2026-09-01",
        ),
        member("org_ss", "owner", "primary_owner", "enterprise", "2026-09-01T08:01"),
        member("org_ss", "u1", "member", "enterprise", "2026-09-01T08:02"),
        member("org_ss", "u2", "member", "enterprise", "2026-09-01T08:03"),
        purchase("org_ss", "p-ss-1", "100.00", "2026-09-01T09:00"),
        account(
            "org_ss",
            "seats.added",
            {"seat_type": "enterprise", "quantity": 2},
            at=at("2026-09-15T10:00"),
        ),
        account(
            "org_ss",
            "seats.removed",
            {"seat_type": "enterprise", "quantity": 1},
            at=at("2026-09-16T10:00"),
        ),
        purchase("org_ss", "p-ss-2", "50.00", "2026-09-20T09:00"),
        # usage-based, sales-assisted
        created(
            "org_sa",
            "usage_based",
            "sales_assisted",
            {"enterprise": 2},
            "2026-09-01T08:00",
            "2026-09-01",
        ),
        member("org_sa", "owner", "primary_owner", "enterprise", "2026-09-01T08:01"),
        member("org_sa", "u1", "member", "enterprise", "2026-09-01T08:02"),
        # legacy seat-based, self-serve, since August: 2 standard seats ($25 allowance)
        created(
            "org_lss", "seat_based", "self_serve", {"standard": 2}, "2026-08-20T12:00", "2026-08-20"
        ),
        member("org_lss", "owner", "primary_owner", "standard", "2026-08-20T12:01"),
        member("org_lss", "u1", "member", "standard", "2026-08-20T12:02"),
        purchase("org_lss", "p-lss-1", "20.00", "2026-08-20T13:00"),
        # legacy seat-based, sales-assisted, term renews Oct 1 (R7 migration)
        created(
            "org_lsa",
            "seat_based",
            "sales_assisted",
            {"premium": 2},
            "2026-09-01T08:00",
            "2025-10-01",
        ),
        member("org_lsa", "owner", "primary_owner", "premium", "2026-09-01T08:01"),
        member("org_lsa", "u1", "member", "premium", "2026-09-01T08:02"),
    ]


def september_usage() -> list[dict[str, Any]]:
    first = spend("org_ss", "u1", 30, event_id="ss-1", at=at("2026-09-05T10:00"))
    return [
        first,
        first,  # a duplicate: counted once (G1)
        usage("org_ss", "u2", input_tokens=1_000_001, event_id="ss-2", at=at("2026-09-06T10:00")),
        spend("org_ss", "u1", 20, event_id="ss-3", at=at("2026-09-20T10:00")),
        usage(
            "org_sa",
            "u1",
            input_tokens=123_457,
            model="claude-opus-4-5",
            event_id="sa-1",
            at=at("2026-09-03T10:00"),
        ),
        spend("org_sa", "owner", 7, event_id="sa-2", at=at("2026-09-04T10:00")),
        spend("org_lss", "u1", 20, event_id="lss-1", at=at("2026-09-02T10:00")),  # in allowance
        spend("org_lss", "u1", 10, event_id="lss-2", at=at("2026-09-03T10:00")),  # 5 + 5 extra
        spend("org_lss", "owner", 3, event_id="lss-3", at=at("2026-09-04T10:00")),  # in allowance
        usage(
            "org_lsa",
            "u1",
            output_tokens=6_000_000,
            model="claude-opus-4-5",
            event_id="lsa-1",
            at=at("2026-09-10T10:00"),
        ),
    ]


def october_accounts() -> list[dict[str, Any]]:
    return [
        account(
            "org_lsa",
            "contract.renewed",
            {"term_start": "2026-10-01"},
            actor=None,
            at=at("2026-10-01T00:00"),
        ),
        account(
            "org_sa",
            "seats.added",
            {"seat_type": "enterprise", "quantity": 5},
            at=at("2026-10-01T09:00"),
        ),
        purchase("org_ss", "p-ss-late", "5.00", "2026-09-29T09:00"),  # late (G5)
        purchase("org_ss", "p-ss-3", "10.00", "2026-10-02T09:00"),
    ]


def october_usage() -> list[dict[str, Any]]:
    return [
        spend("org_ss", "u2", 1, event_id="ss-late", at=at("2026-09-30T10:00")),  # late (G5)
        spend("org_sa", "owner", 1, event_id="sa-late", at=at("2026-09-30T11:00")),  # late
        spend("org_ss", "u1", 4, event_id="ss-4", at=at("2026-10-03T10:00")),
        spend("org_sa", "u1", 2, event_id="sa-3", at=at("2026-10-03T10:00")),
        spend("org_lss", "u1", 30, event_id="lss-4", at=at("2026-10-03T10:00")),  # 25 + 5 extra
        usage(
            "org_lsa",
            "u1",
            output_tokens=6_000_000,
            model="claude-opus-4-5",
            event_id="lsa-2",
            at=at("2026-10-05T10:00"),
        ),
    ]


# Hand-computed from the SPEC rules (price book §5; seats: enterprise 40, standard 30
# with 25 included, premium 150 with 125 included): document id → total.
SEPTEMBER = {
    # 30 + 20 (Haiku) + 3.000003 (1,000,001 Sonnet input tokens at $3/M)
    "org_ss.credit_statement.2026-09.001": "97.00",  # 0 + 150.00 − 53.00
    "org_ss.seat_invoice.2026-09-01.001": "1440.00",  # 3 × 40 × 12 (R3)
    "org_ss.seat_invoice.2026-09-01.002": "922.67",  # 2 × 40 × (11 + 16/30) (R4)
    # 7 + 0.617285 (123,457 Opus 4.5 input tokens at $5/M)
    "org_sa.usage_invoice.2026-09.001": "7.62",
    "org_sa.seat_invoice.2026-09-01.001": "960.00",  # 2 × 40 × 12
    "org_lss.credit_statement.2026-09.001": "-5.00",  # opening 20.00, usage 5.00 extra
    "org_lss.seat_invoice.2026-09.001": "60.00",  # 2 standard × 30, held on Sep 1
    "org_lsa.usage_invoice.2026-09.001": "25.00",  # 150 − 125 premium allowance (R6)
    "org_lsa.seat_invoice.2026-09.002": "300.00",  # 2 premium × 150 × 30/30 from Sep 1
}
OCTOBER = {
    # opening 97.00 + 15.00 (incl. the late p-ss-late) − (4 + 1 late) = 107.00
    "org_ss.credit_statement.2026-10.001": "10.00",
    "org_sa.usage_invoice.2026-10.001": "3.00",  # 2 + adjustment 1 for September
    "org_sa.seat_invoice.2026-09-01.002": "2200.00",  # 5 × 40 × 11 (added Oct 1, R4)
    "org_lss.credit_statement.2026-10.001": "-5.00",  # 30 − 25 allowance (reset monthly)
    "org_lss.seat_invoice.2026-10.001": "60.00",
    "org_lsa.usage_invoice.2026-10.001": "150.00",  # migrated: all usage billed (R7)
    "org_lsa.seat_invoice.2026-10-01.001": "960.00",  # 2 enterprise × 40 × 12
}


def billing(pipeline: Pipeline, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).parent / "billing"), *args],
        check=False,
        env={**os.environ, **pipeline.env(), **env},
        capture_output=True,
        text=True,
        timeout=600,
    )


def bill(pipeline: Pipeline, month: str, out: Path, **env: str) -> str:
    done = billing(pipeline, "run", "--month", month, "--out", str(out), **env)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def files(out: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(out.iterdir())}


def documents(out: Path) -> dict[str, dict[str, Any]]:
    return {path.stem: json.loads(path.read_text()) for path in sorted(out.glob("*.json"))}


def feed(pipeline: Pipeline, accounts: list[dict[str, Any]], used: list[dict[str, Any]]) -> None:
    pipeline.start_worker()
    pipeline.send_accounts(*accounts)
    for org in ("org_ss", "org_sa", "org_lss", "org_lsa"):
        pipeline.wait_for_gate(org, "stranger", "unknown_member", timeout_s=90)
    # usage is priced against the account state it meets (e.g. before or after a
    # renewal): let every account event apply first
    pipeline.wait_caught_up()
    pipeline.send_usage(*used)
    pipeline.wait_caught_up()
    pipeline.stop_worker()  # the sink child flushes and releases the embedded store


def check_golden(out: Path) -> None:
    if os.environ.get("METERING_UPDATE_GOLDEN"):
        GOLDEN.mkdir(parents=True, exist_ok=True)
        for path in out.glob("*.json"):
            (GOLDEN / path.name).write_bytes(path.read_bytes())
    for path in out.glob("*.json"):
        golden = GOLDEN / path.name
        assert golden.exists(), f"no golden file for {path.name}"
        assert path.read_bytes() == golden.read_bytes(), f"{path.name} differs from golden"


def digest(tree: dict[str, bytes]) -> str:
    return hashlib.sha256(b"".join(k.encode() + v for k, v in sorted(tree.items()))).hexdigest()


def test_a_fixed_scenario_bills_exactly_idempotently_and_survives_crash_and_rebuild(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    pipeline.sink = True
    # The renewal under test is the explicit one of October; the timer, which judges by
    # the wall clock, would append its own for the fixed 2025-10-01 term.
    pipeline.settings = pipeline.settings.model_copy(update={"renewal_check_seconds": 0})
    feed(pipeline, september_accounts(), september_usage())

    # September: every document, hand-checked; files equal the golden ones
    sep = tmp_path / "sep"
    bill(pipeline, "2026-09", sep)
    issued = documents(sep)
    assert {doc_id: d["total"] for doc_id, d in issued.items()} == SEPTEMBER
    statement = issued["org_ss.credit_statement.2026-09.001"]
    assert (statement["opening_balance"], statement["purchases"], statement["usage"]) == (
        "0.00",
        "150.00",
        "53.00",
    )
    assert statement["closing_balance"] == "97.00"
    legacy = issued["org_lss.credit_statement.2026-09.001"]
    # August (issued in the same run: months are issued in order) closed at 20.00
    assert (legacy["opening_balance"], legacy["closing_balance"]) == ("20.00", "15.00")
    assert [(line["user_id"], line["quantity"], line["amount"]) for line in legacy["lines"]] == [
        ("u1", "2000000", "5.00")  # only the event that crossed the allowance is billed
    ]
    assert all((sep / f"{doc_id}.html").exists() for doc_id in SEPTEMBER)
    check_golden(sep)

    # A re-run issues nothing and leaves every byte as it was
    before = files(sep)
    assert "0 documents issued now" in bill(pipeline, "2026-09", sep)
    assert files(sep) == before

    # Late September events and a late purchase arrive with October's traffic
    feed(pipeline, october_accounts(), october_usage())

    # October's run dies between publishing its documents and storing them; the re-run
    # stores what was published and issues nothing twice
    oct_ = tmp_path / "oct"
    crashed = faulty.run(
        Point.DOCUMENTS_PUBLISHED,
        1,
        "billing",
        "run",
        "--month",
        "2026-10",
        "--out",
        str(oct_),
        env=pipeline.env(),
    )
    assert crashed.returncode == faulty.EXIT_FAULT_INJECTED, crashed.stdout + crashed.stderr
    bill(pipeline, "2026-10", oct_)
    issued = documents(oct_)
    assert {doc_id: d["total"] for doc_id, d in issued.items()} == OCTOBER
    adjustments = [
        (doc_id, line["description"], line["amount"])
        for doc_id, d in issued.items()
        for line in d["lines"]
        if "received after" in line["description"]
    ]
    assert adjustments == [
        (
            "org_sa.usage_invoice.2026-10.001",
            "Adjustment: claude-haiku-4-5 usage in 2026-09, received after that month's "
            "document was issued",
            "1.00",
        ),
        (
            "org_ss.credit_statement.2026-10.001",
            "Credit purchase p-ss-late of 2026-09-29, received after that month's statement "
            "was issued",
            "5.00",
        ),
        (
            "org_ss.credit_statement.2026-10.001",
            "Adjustment: claude-haiku-4-5 usage in 2026-09, received after that month's "
            "document was issued",
            "1.00",
        ),
    ]
    assert issued["org_ss.credit_statement.2026-10.001"]["opening_balance"] == "97.00"
    check_golden(oct_)
    # September's documents did not change (immutable once issued, R19)
    assert bill(pipeline, "2026-09", sep) and files(sep) == before

    # G3: a new, empty ClickHouse filled from Kafka alone gives the same files
    rebuilt = pipeline.settings.model_copy(
        update={
            "clickhouse_url": f"chdb://{tmp_path / 'rebuilt'}",
            "sink_group_id": pipeline.settings.sink_group_id + "-rebuild",
        }
    )
    pipeline.settings = rebuilt
    again_sep, again_oct = tmp_path / "sep2", tmp_path / "oct2"
    bill(pipeline, "2026-09", again_sep)
    bill(pipeline, "2026-10", again_oct)
    assert digest(files(again_sep)) == digest(before)
    assert files(again_oct) == files(oct_)


def test_an_open_month_is_refused_and_previewed_instead(pipeline: Pipeline, tmp_path: Path) -> None:
    pipeline.sink = True
    now = datetime.now(UTC)
    feed(
        pipeline,
        [
            created(
                "org_ss",
                "usage_based",
                "sales_assisted",
                {"enterprise": 1},
                now.strftime("%Y-%m-01T00:00"),
                now.strftime("%Y-%m-01"),
            ),
            member(
                "org_ss", "owner", "primary_owner", "enterprise", now.strftime("%Y-%m-01T00:01")
            ),
            created(
                "org_sa",
                "usage_based",
                "sales_assisted",
                {},
                now.strftime("%Y-%m-01T00:00"),
                now.strftime("%Y-%m-01"),
            ),
            created(
                "org_lss",
                "usage_based",
                "sales_assisted",
                {},
                now.strftime("%Y-%m-01T00:00"),
                now.strftime("%Y-%m-01"),
            ),
            created(
                "org_lsa",
                "usage_based",
                "sales_assisted",
                {},
                now.strftime("%Y-%m-01T00:00"),
                now.strftime("%Y-%m-01"),
            ),
        ],
        [spend("org_ss", "owner", 3)],
    )
    out = tmp_path / "open-month"
    refused = billing(pipeline, "run", "--month", now.strftime("%Y-%m"), "--out", str(out))
    assert refused.returncode == 1 and "has not ended yet" in refused.stderr
    assert not out.exists()
    shown = billing(pipeline, "preview", "--org", "org_ss")
    assert shown.returncode == 0, shown.stderr
    drafts = json.loads(shown.stdout)
    assert [(d["document_id"], d["total"]) for d in drafts] == [
        (f"org_ss.usage_invoice.{now:%Y-%m}.001", "3.00")
    ]
    # Nothing was issued, by the refused run or the preview: the store holds only the
    # seat invoice the org's creation issued, and a second preview shows the same draft.
    store = Store(pipeline.settings.resolved_clickhouse_url)
    try:
        stored = [d.document_id for d in issued_documents(store, ["org_ss"])]
    finally:
        store.close()
    assert stored == [f"org_ss.seat_invoice.{now:%Y-%m}-01.001"]
    assert billing(pipeline, "preview", "--org", "org_ss").stdout == shown.stdout
