"""Screenshots of the console for `metering demo`: an owner's and a member's view of one
org, signed in with login links in headless Chromium (Selenium + chromium-driver, both
installed by `make`). Without them the demo says so and goes on: they are pictures, not
part of what the demo proves."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from metering.api.session import login_link, login_token

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
PAGE_TIMEOUT_S = 30.0


def save_console_screenshots(
    secret: str, base_url: str, org_id: str, views: dict[str, str], out: Path
) -> list[Path] | str:
    """`views`: file name → the user whose view it shows. The paths written, or why none."""
    try:
        from selenium import webdriver  # noqa: PLC0415 (a dev dependency: only here)
        from selenium.common.exceptions import WebDriverException  # noqa: PLC0415
        from selenium.webdriver.chrome.service import Service  # noqa: PLC0415
        from selenium.webdriver.common.by import By  # noqa: PLC0415
    except ImportError:
        return "no screenshots: selenium is not installed (pip install -e '.[dev]')"
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        return "no screenshots: chromium and chromium-driver are missing (make system-deps)"
    saved = []
    for name, user in views.items():
        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
            options.add_argument(argument)
        options.add_argument("--window-size=1280,1400")
        try:
            driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
        except WebDriverException as exc:
            return f"no screenshots: chromium did not start ({exc.msg})"
        try:
            token = login_token(
                secret, org_id, user, now=datetime.now(UTC), ttl=timedelta(minutes=5)
            )
            driver.get(login_link(base_url, token))
            deadline = time.monotonic() + PAGE_TIMEOUT_S
            while not driver.find_elements(By.ID, "members"):
                if time.monotonic() > deadline:
                    return f"no screenshots: the console did not open for {user}"
                time.sleep(0.1)
            path = out / name
            driver.save_screenshot(str(path))
            saved.append(path)
        finally:
            driver.quit()
    return saved
