"""The owner console in a real browser (issue 16): Debian's Chromium driven by Selenium
through chromium-driver, against the API served by uvicorn on a real worker, Redis,
Kafka and an embedded ClickHouse. Screenshots of the owner's and a member's views land
in var/test-artifacts/."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from metering.api.app import create_api
from metering.api.session import login_token
from metering.clickhouse.migrations import migrate
from metering.clickhouse.store import Store
from tests.e2e.pipeline import Pipeline
from tests.e2e.scenario import new_org, spend
from tests.helpers import wait_until
from tests.metering.api.conftest import SECRET, bearer, token

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = Path(__file__).resolve().parents[3] / "var" / "test-artifacts"
ORG = "org_console_web"  # self-serve, $50 of credits: owner, mia (member)
DRY = "org_console_dry"  # self-serve, $1 of credits: zoe spends $2, so credits run out
# How long the gate may take to follow a form: the worker applies account events within
# ~0.1 s here; the bound leaves room for a loaded CI machine. The measured time is printed.
GATE_FOLLOWS_S = 3.0


@pytest.fixture(scope="module")
def served(api_pipeline: Pipeline, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The orgs, and the app behind uvicorn (in a thread) on a free local port."""
    events = new_org(ORG, members=("mia",), credits="50.00")
    events += new_org(DRY, members=("zoe",), credits="1.00")
    api_pipeline.send_accounts(*events)
    api_pipeline.wait_for_gate(ORG, "mia", None)
    api_pipeline.wait_for_gate(DRY, "zoe", None)
    with Store(f"chdb://{tmp_path_factory.mktemp('console') / 'clickhouse'}") as store:
        migrate(store)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        app = create_api(api_pipeline.settings, store=store)
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        base = f"http://127.0.0.1:{sock.getsockname()[1]}"

        def answers() -> bool:
            try:
                return httpx.get(f"{base}/orgs/{ORG}/usage", timeout=1).status_code == 401
            except httpx.TransportError:
                return False

        wait_until(lambda: server.started and answers(), "uvicorn to answer")
        yield base
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture
def browsers() -> Iterator[Callable[[], WebDriver]]:
    """Start a browser (each its own profile: its own cookies); all closed afterwards."""
    for needed, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not needed.exists():
            pytest.fail(f"{needed} is missing: `make system-deps` installs Debian's {package}")
    started: list[WebDriver] = []

    def start() -> WebDriver:
        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for argument in (
            "--headless=new",
            "--no-sandbox",
            "--disable-dev-shm-usage",
            "--disable-gpu",
            "--window-size=1280,1100",
        ):
            options.add_argument(argument)
        driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
        driver.set_page_load_timeout(30)
        started.append(driver)
        return driver

    yield start
    for driver in started:
        with contextlib.suppress(WebDriverException):
            driver.quit()


def login_url(base: str, org: str, user: str) -> str:
    link = login_token(SECRET, org, user, now=datetime.now(UTC), ttl=timedelta(minutes=5))
    return f"{base}/login/{link}"


def sign_in(driver: WebDriver, base: str, org: str, user: str) -> str:
    """Open a login link; it moves on to the Usage page by itself. The link's URL."""
    url = login_url(base, org, user)
    driver.get(url)
    wait_until(lambda: driver.current_url.endswith(f"/orgs/{org}/usage"), "the Usage page")
    wait_until(lambda: driver.find_elements(By.ID, "members"), "the members table")
    return url


def text(driver: WebDriver, element_id: str) -> str:
    found = driver.find_elements(By.ID, element_id)
    return found[0].text if found else ""


def row(driver: WebDriver, user: str) -> dict[str, str]:
    cells = driver.find_elements(By.CSS_SELECTOR, f'tr[data-user="{user}"] td')
    return {(cell.get_attribute("class") or "").split()[-1]: cell.text for cell in cells}


def gate(base: str, org: str, user: str) -> str | None:
    """The gate's answer over HTTP, as a product service asks it."""
    answer = httpx.get(
        f"{base}/v1/orgs/{org}/members/{user}/authorization",
        params={"surface": "chat_web"},
        headers=bearer(token(service="chat-frontend")),
        timeout=5,
    )
    assert answer.status_code == 200, answer.text
    reason: str | None = answer.json()["reason"]
    return reason


def gate_follows(base: str, org: str, user: str, expected: str | None, since: float) -> float:
    """Seconds from `since` until the gate answers `expected`."""
    deadline = since + GATE_FOLLOWS_S
    while (answer := gate(base, org, user)) != expected:
        assert time.monotonic() < deadline, (
            f"the gate still says {answer!r} after {GATE_FOLLOWS_S} s"
        )
        time.sleep(0.02)
    return time.monotonic() - since


def shows(driver: WebDriver, check: Callable[[], bool]) -> bool:
    """The page shows it now; else reload it for the next look."""
    if check():
        return True
    driver.refresh()
    return False


def until_row(driver: WebDriver, user: str, status: str) -> dict[str, str]:
    def shown() -> dict[str, str] | None:
        driver.refresh()
        found = row(driver, user)
        return found if found.get("status") == status else None

    found: dict[str, str] = wait_until(shown, f"{user}'s row to say {status!r}")
    return found


def member_form(driver: WebDriver, user: str) -> Any:
    return driver.find_element(By.CSS_SELECTOR, f'tr[data-user="{user}"] form.cap-form')


def screenshot(driver: WebDriver, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    driver.save_screenshot(str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 5 * 1024, "the screenshot looks blank"
    return path


def test_an_owner_caps_a_member_below_their_spend_then_lifts_it(
    served: str,
    api_pipeline: Pipeline,
    browsers: Callable[[], WebDriver],
    capsys: pytest.CaptureFixture[str],
) -> None:
    api_pipeline.send_usage(spend(ORG, "mia", 2))
    driver = browsers()
    sign_in(driver, served, ORG, "owner")
    assert text(driver, "viewer") == "owner (primary owner)"
    wait_until(lambda: shows(driver, lambda: row(driver, "mia").get("spend") == "$2.00"), "$2")

    form = member_form(driver, "mia")
    form.find_element(By.NAME, "limit").send_keys("1.00")
    clicked = time.monotonic()
    form.find_element(By.CSS_SELECTOR, 'button[name="set"]').click()
    wait_until(lambda: "Cap of mia set to $1.00" in text(driver, "message"), "the message")
    blocked_after = gate_follows(served, ORG, "mia", "user_cap_reached", clicked)
    shown = until_row(driver, "mia", "blocked: member cap reached")
    assert (shown["cap"], shown["spend"]) == ("$1.00", "$2.00")
    owner_view = screenshot(driver, "console-owner.png")

    form = member_form(driver, "mia")
    clicked = time.monotonic()
    form.find_element(By.CSS_SELECTOR, 'button[name="unlimited"]').click()
    wait_until(lambda: "Cap of mia set to unlimited" in text(driver, "message"), "the message")
    allowed_after = gate_follows(served, ORG, "mia", None, clicked)
    assert until_row(driver, "mia", "active")["cap"] == "unlimited"
    with capsys.disabled():
        print(
            f"\nform → gate: blocked after {blocked_after * 1000:.0f} ms, allowed again after "
            f"{allowed_after * 1000:.0f} ms; owner view: {owner_view}"
        )


def test_an_owner_buys_credits_and_usage_resumes(
    served: str, api_pipeline: Pipeline, browsers: Callable[[], WebDriver]
) -> None:
    api_pipeline.send_usage(spend(DRY, "zoe", 2))
    api_pipeline.wait_for_gate(DRY, "zoe", "credits_exhausted")
    driver = browsers()
    sign_in(driver, served, DRY, "owner")
    wait_until(lambda: shows(driver, lambda: text(driver, "credit-balance") == "-$1.00"), "-$1")
    assert row(driver, "zoe")["status"] == "blocked: credits used up"

    driver.find_element(By.ID, "credits-amount").send_keys("10.00")
    clicked = time.monotonic()
    driver.find_element(By.ID, "credits-buy").click()
    wait_until(lambda: "$10.00 of credits bought" in text(driver, "message"), "the message")
    gate_follows(served, DRY, "zoe", None, clicked)
    until_row(driver, "zoe", "active")
    assert text(driver, "credit-balance") == "$9.00"


def test_a_member_sees_no_forms_and_only_their_row(
    served: str, browsers: Callable[[], WebDriver]
) -> None:
    driver = browsers()
    sign_in(driver, served, ORG, "mia")
    assert text(driver, "viewer") == "mia (member)"
    users = [r.get_attribute("data-user") for r in driver.find_elements(By.CSS_SELECTOR, "tr")]
    assert [u for u in users if u] == ["mia"]
    forms = [f.get_attribute("action") for f in driver.find_elements(By.TAG_NAME, "form")]
    assert forms == [f"{served}/logout"]  # signing out is all a member may post
    for hidden in ("org-spend", "credit-balance", "daily", "breakdown", "documents"):
        assert not driver.find_elements(By.ID, hidden), hidden
    screenshot(driver, "console-member.png")
    driver.get(f"{served}/orgs/{DRY}/usage")  # another org's page
    assert "403" in driver.title


def test_a_replayed_login_link_is_refused(served: str, browsers: Callable[[], WebDriver]) -> None:
    first = browsers()
    url = sign_in(first, served, ORG, "owner")
    second = browsers()
    second.get(url)
    assert "410" in second.title
    assert "already used" in text(second, "error-detail")
    second.get(f"{served}/orgs/{ORG}/usage")
    assert "401" in second.title  # no session came of it


def test_a_form_with_a_missing_or_foreign_csrf_token_is_403_and_changes_nothing(
    served: str, browsers: Callable[[], WebDriver]
) -> None:
    other = browsers()
    sign_in(other, served, ORG, "owner")
    foreign = other.find_element(By.CSS_SELECTOR, "#org-cap-form input[name=csrf]")
    foreign_token = foreign.get_attribute("value")
    driver = browsers()
    sign_in(driver, served, ORG, "owner")
    owner = bearer(token(ORG, "owner"))
    before = httpx.get(f"{served}/v1/orgs/{ORG}/usage", headers=owner).json()["cap"]
    for forged in ("", foreign_token):
        driver.get(f"{served}/orgs/{ORG}/usage")
        field = driver.find_element(By.CSS_SELECTOR, "#org-cap-form input[name=csrf]")
        driver.execute_script("arguments[0].value = arguments[1];", field, forged)
        driver.find_element(By.ID, "org-cap-limit").send_keys("0.01")
        driver.find_element(By.ID, "org-cap-set").click()
        wait_until(lambda: "403" in driver.title, "the 403 page")
        assert "CSRF" in text(driver, "error-detail")
    time.sleep(1.0)  # a change appended by mistake would have been applied by now
    after = httpx.get(f"{served}/v1/orgs/{ORG}/usage", headers=owner).json()["cap"]
    assert after == before
