"""An API on a private pipeline: a real worker applies the account events the tests and
the API append; the app runs in-process (FastAPI TestClient) against real Redis/Kafka."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient

from metering.api.app import create_api
from metering.api.tokens import issue
from metering.clickhouse.migrations import migrate
from metering.clickhouse.store import Store
from tests.conftest import RunningStack
from tests.e2e.pipeline import Pipeline, cleanup, new_pipeline
from tests.e2e.scenario import account, new_org

SECRET = "test-secret-for-the-api-0123456789abcdef"
# org_a: self-serve, usage-based; ann is the primary owner, olga an owner, max a member.
# org_b: sales-assisted; bob is its primary owner.
ORG_A, ORG_B = "org_api_a", "org_api_b"


def token(
    org: str | None = None,
    user: str | None = None,
    service: str | None = None,
    *,
    secret: str = SECRET,
    issued: datetime | None = None,
    ttl: timedelta = timedelta(hours=1),
) -> str:
    return issue(
        secret,
        now=issued or datetime.now(UTC),
        ttl=ttl,
        org_id=org,
        user_id=user,
        service=service,
    )


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


@pytest.fixture(scope="module")
def api_pipeline(
    stack: RunningStack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Pipeline]:
    pipeline = new_pipeline(stack.settings, tmp_path_factory.mktemp("api"))
    pipeline.settings = pipeline.settings.model_copy(update={"api_secret": SECRET})
    pipeline.start_worker()
    events = new_org(ORG_A, members=("max",), credits="50.00", spare_seats=1)  # olga's
    events.append(
        account(
            ORG_A,
            "member.added",
            {"user_id": "olga", "role": "owner", "seat_type": "enterprise"},
            actor=None,
        )
    )
    events += new_org(ORG_B, mode="sales_assisted", members=("bob_member",), credits=None)
    pipeline.send_accounts(*events)
    pipeline.wait_for_gate(ORG_A, "olga", None)
    pipeline.wait_for_gate(ORG_B, "bob_member", None)
    yield pipeline
    cleanup(pipeline)


@pytest.fixture(scope="module")
def client(api_pipeline: Pipeline) -> Iterator[TestClient]:
    with TestClient(create_api(api_pipeline.settings)) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    """An embedded ClickHouse of the module's own, migrated."""
    with Store(f"chdb://{tmp_path_factory.mktemp('api-store') / 'clickhouse'}") as opened:
        migrate(opened)
        yield opened


@pytest.fixture(scope="module")
def client_with_store(api_pipeline: Pipeline, store: Store) -> Iterator[TestClient]:
    """The API of `client`, allowed to read ClickHouse (the page's chart, the exports)."""
    with TestClient(create_api(api_pipeline.settings, store=store)) as test_client:
        yield test_client
