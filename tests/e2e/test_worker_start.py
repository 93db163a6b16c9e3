"""A `metering worker` started before Kafka, or before its topics exist, waits for them
and says what for: it neither exits (aiokafka cannot bootstrap) nor runs on without its
input (faust ignores a missing topic and never subscribes to it later)."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from metering.stack.process import free_port, wait_until
from tests.conftest import RunningStack
from tests.e2e.pipeline import Pipeline, cleanup, new_pipeline
from tests.e2e.scenario import new_org, spend

pytestmark = pytest.mark.stack


def _wait_for_log(pipeline: Pipeline, process: subprocess.Popen[bytes], text: str) -> None:
    """Until the worker's log shows `text`; fails if the worker exits first or 60 s pass."""
    wait_until(
        lambda: text in pipeline.log_path.read_text(errors="replace"),
        60,
        f"the worker logging {text!r} ({pipeline.log_path})",
        alive=lambda: process.poll() is None,
    )


def test_worker_waits_for_an_unreachable_broker_and_stops_on_sigterm(
    stack: RunningStack, tmp_path: Path
) -> None:
    # Given a broker address nothing listens on
    nowhere = stack.settings.model_copy(update={"kafka_bootstrap": f"127.0.0.1:{free_port()}"})
    pipeline = new_pipeline(nowhere, tmp_path, create_topics=False)
    pipeline.log_path.touch()
    worker = pipeline.start_worker()
    try:
        # Then the worker says it is waiting, and is still waiting a while later
        _wait_for_log(pipeline, worker, f"waiting for Kafka at {nowhere.kafka_bootstrap}")
        time.sleep(5)
        assert worker.poll() is None, pipeline.log_path.read_text()
        # When it is stopped, it exits cleanly
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=15) == 0
    finally:
        pipeline.stop_worker(signal.SIGKILL)


def test_worker_started_before_its_topics_processes_once_they_exist(
    stack: RunningStack, tmp_path: Path
) -> None:
    # Given a namespace whose topics do not exist yet, and a worker started on it
    pipeline = new_pipeline(stack.settings, tmp_path, create_topics=False)
    pipeline.log_path.touch()
    try:
        worker = pipeline.start_worker()
        _wait_for_log(pipeline, worker, f"{pipeline.topics.account_events},")
        assert "to be created" in pipeline.log_path.read_text()

        # When the topics are created and events sent
        pipeline.create_topics()
        org = "org_late_topics"
        pipeline.send_accounts(*new_org(org))
        pipeline.wait_for_gate(org, "u1", None)  # the account processor has the org
        pipeline.send_usage(spend(org, "u1", 2))

        # Then the worker has subscribed to them and processes the events
        pipeline.wait_for(lambda p: len(p.priced()) == 1, what="the usage event priced")
        assert pipeline.priced()[0]["event"]["org_id"] == org
        assert "Kafka and its topics are there now; starting" in pipeline.log_path.read_text()
    finally:
        cleanup(pipeline)
