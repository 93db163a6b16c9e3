"""`metering run` keeps its children running (issue 20): a child that exits is started
again after a back-off that doubles while it keeps dying young, each restart is logged,
and stopping the supervisor stops the child and restarts nothing more."""

from __future__ import annotations

import time

import pytest

from metering.cli.supervisor import Supervisor


def test_a_child_that_exits_is_restarted_with_back_off(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("METERING_API_SECRET", "s" * 40)
    # A child that exits at once (after printing a token): a crash loop in miniature
    supervisor = Supervisor("token", "token", "issue", "--service", "svc", backoff_s=0.2)
    started = time.monotonic()
    supervisor.start()
    deadline = started + 60
    while supervisor.restarts < 3:
        assert time.monotonic() < deadline, "the child was not restarted"
        time.sleep(0.05)
    supervisor.stop()
    restarts = supervisor.restarts
    time.sleep(1.0)
    assert supervisor.restarts == restarts  # stopped for good
    # 0.2 s, then 0.4 s: three restarts take at least 0.6 s of back-off
    assert time.monotonic() - started >= 0.6
    messages = [r.getMessage() for r in caplog.records if r.name == "metering.run"]
    assert any("restarting it in 0.2 s (restart 1)" in m for m in messages), messages
    assert any("restarting it in 0.4 s (restart 2)" in m for m in messages), messages


def test_stop_ends_a_running_child() -> None:
    supervisor = Supervisor("sleeper", "stack", "--help", backoff_s=30).start()
    time.sleep(0.5)
    started = time.monotonic()
    supervisor.stop()  # the child exited (help) and waits 30 s to restart: stop at once
    assert time.monotonic() - started < 5
