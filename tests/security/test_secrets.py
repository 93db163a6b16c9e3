"""Secrets and tokens (issue 20, defect 5): a short `var/api-secret` is refused at start,
token lifetimes are bounded, names are validated, service tokens can be revoked, and a
token issued a few seconds "in the future" by a skewed clock is accepted."""

from __future__ import annotations

import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jwt
import pytest

from metering.api.tokens import ALGORITHM, ISSUER
from tests.helpers import run_metering
from tests.metering.api.conftest import SECRET, bearer, token
from tests.security.conftest import ORG, Server, start

pytestmark = pytest.mark.stack

GATE = f"/v1/orgs/{ORG}/members/u1/authorization?surface=chat_web"


@pytest.mark.parametrize("command", ["api", "run"])
def test_a_short_secret_file_is_refused_at_start(
    service: Server, tmp_path: Path, command: str
) -> None:
    (tmp_path / "api-secret").write_text("x")
    server = start(
        service.pipeline, command, METERING_API_SECRET="", METERING_VAR_DIR=str(tmp_path)
    )
    try:
        code = server.process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        server.stop()
        raise AssertionError(f"metering {command} started on a 1-character secret") from None
    assert code != 0
    assert "at least 32 characters" in service.pipeline.log_path.read_text()
    # ... and no token is issued with it either
    issued = run_metering(
        "token", "issue", "--service", "svc", METERING_API_SECRET="", METERING_VAR_DIR=str(tmp_path)
    )
    assert issued.returncode != 0 and "at least 32 characters" in issued.stderr


def _secret_dir(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "api-secret").write_text(SECRET)
    return {"METERING_API_SECRET": "", "METERING_VAR_DIR": str(tmp_path)}


@pytest.mark.parametrize(
    "arguments",
    [
        ("--service", ""),
        ("--service", "a b"),
        ("--service", "x" * 200),
        ("--org", "", "--user", "u1"),
        ("--org", "org{1}", "--user", "u1"),
        ("--service", "svc", "--ttl-hours", "1e12"),
        ("--service", "svc", "--ttl-hours", "876000"),  # 100 years
        ("--service", "svc", "--ttl-hours", "nan"),
        ("--service", "svc", "--ttl-hours", "0"),
    ],
)
def test_token_issue_refuses_bad_input(tmp_path: Path, arguments: tuple[str, ...]) -> None:
    result = run_metering("token", "issue", *arguments, **_secret_dir(tmp_path))
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr


def test_token_issue_within_bounds(tmp_path: Path) -> None:
    result = run_metering(
        "token", "issue", "--service", "svc", "--ttl-hours", "48", **_secret_dir(tmp_path)
    )
    assert result.returncode == 0, result.stderr
    claims = jwt.decode(result.stdout.strip(), SECRET, algorithms=[ALGORITHM], issuer=ISSUER)
    assert claims["exp"] - claims["iat"] == 48 * 3600


def test_a_token_longer_lived_than_the_maximum_is_refused(service: Server) -> None:
    # As `metering token issue` made them before the bound (it no longer will)
    now = int(time.time())
    century = jwt.encode(
        {"iss": ISSUER, "iat": now, "exp": now + 36500 * 86400, "svc": "svc-century"},
        SECRET,
        algorithm=ALGORITHM,
    )
    with service.client() as client:
        assert client.get(GATE, headers=bearer(century)).status_code == 401


def test_a_small_clock_skew_on_iat_is_allowed(service: Server) -> None:
    now = datetime.now(UTC)
    skewed = token(service="svc-skewed", issued=now + timedelta(seconds=30))
    future = token(service="svc-future", issued=now + timedelta(minutes=10))
    with service.client() as client:
        assert client.get(GATE, headers=bearer(skewed)).status_code == 200
        assert client.get(GATE, headers=bearer(future)).status_code == 401


def test_a_revoked_service_token_is_refused(service: Server) -> None:
    before = token(service="svc-revoked", issued=datetime.now(UTC) - timedelta(seconds=5))
    other = token(service="svc-kept")
    with service.client() as client:
        assert client.get(GATE, headers=bearer(before)).status_code == 200
        result = run_metering(
            "token", "revoke", "--service", "svc-revoked", **service.pipeline.env()
        )
        assert result.returncode == 0, result.stderr
        deadline = time.monotonic() + 5
        while (answer := client.get(GATE, headers=bearer(before))).status_code != 401:
            assert time.monotonic() < deadline, answer.text
            time.sleep(0.1)
        assert "revoked" in answer.json()["detail"]
        assert client.get(GATE, headers=bearer(other)).status_code == 200
        # A token issued after the revocation works: that is how a service is re-keyed
        time.sleep(1.1)
        fresh = token(service="svc-revoked")
        assert client.get(GATE, headers=bearer(fresh)).status_code == 200
    listed = run_metering("token", "revoked", **service.pipeline.env())
    assert "svc-revoked" in listed.stdout
