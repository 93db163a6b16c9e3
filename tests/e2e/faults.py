"""Fault injectors for the reliability suite (issue 7): a private Kafka + Redis that can be
restarted and flushed, a supervisor of `metering worker` processes that can be killed,
added and removed, the HTTP API as a process to SIGKILL, and `billing run` killed at a
chosen moment.

The broker and Redis restarted here are a stack of the suite's own (free ports, a data
directory under the test's tmp dir), started and stopped with the same `LocalStack` as
`metering stack up`: restarting the session's shared stack would break whatever else
uses it meanwhile (other sessions on the machine share it), and FLUSHALL on it would
wipe every other test's keys.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import redis
from confluent_kafka import KafkaException

from metering.settings import Settings
from metering.stack.local import LocalStack
from metering.stack.process import stop_child
from tests.e2e.pipeline import Pipeline
from tests.helpers import run_metering

CATCH_UP_TIMEOUT_S = 300.0
STARTUP_S = 30.0  # a worker that exits sooner failed to start
API_START_TIMEOUT_S = 60.0


def _free_port(consecutive: int = 1) -> int:
    """A port such that it and the next `consecutive - 1` ones are free now."""
    for _ in range(100):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if port + consecutive > 65535:
            continue
        try:
            for extra in range(1, consecutive):
                with socket.socket() as other:
                    other.bind(("127.0.0.1", port + extra))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port found")


class PrivateStack:
    """A Kafka broker (KRaft) and a Redis of this suite's own, as local processes."""

    def __init__(self, var_dir: Path) -> None:
        kafka_port = _free_port(consecutive=2)  # the controller listens on port + 1
        self.settings = Settings(
            var_dir=var_dir,
            kafka_bootstrap=f"127.0.0.1:{kafka_port}",
            redis_url=f"redis://127.0.0.1:{_free_port()}/0",
            kafka_heap="512m",
            topic_partitions=1,  # the default topics `up` creates are not used here
        )
        self.local = LocalStack(self.settings)

    def up(self) -> None:
        self.local.up()

    def down(self) -> None:
        self.local.down()

    @contextlib.contextmanager
    def _restarting(self, component: str) -> Iterator[None]:
        try:
            self.local.down(frozenset({component}))
            yield
        finally:
            self.local.up()  # waits until both answer again

    def restart_kafka(self) -> None:
        """Stop the broker (SIGTERM, as an operator or a rolling restart would) and start
        the same process again on the same port and log directory."""
        with self._restarting("kafka"):
            time.sleep(1.0)  # let clients notice the broker is gone

    def restart_redis(self) -> None:
        """Stop Redis (SIGTERM: it writes its append-only file) and start it again."""
        with self._restarting("redis"):
            time.sleep(0.5)

    def flushall(self) -> None:
        client = redis.Redis.from_url(self.settings.redis_url)
        try:
            client.flushall()
        finally:
            client.close()


class Workers:
    """The `metering worker` processes of one consumer group, supervised: a worker that
    dies without being told to is noted and replaced, as a process supervisor would.

    A worker started while the broker is down cannot bootstrap and exits with 1 at once
    (faust gives up); that is a start-up failure for the supervisor to retry, noted
    apart. Any other exit is unexpected (e.g. 70: an error in a batch)."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.running: list[subprocess.Popen[bytes]] = []
        self.started: dict[int, float] = {}
        self.unexpected_exits: list[str] = []
        self.startup_failures: list[str] = []

    def start(self, count: int = 1) -> None:
        for _ in range(count):
            process = self.pipeline.spawn_worker()
            self.started[process.pid] = time.monotonic()
            self.running.append(process)

    def kill(self, pick: Callable[[int], int]) -> None:
        """SIGKILL the worker `pick(len)` chooses, and start another in its place."""
        victim = self.running.pop(pick(len(self.running)))
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=60)
        self.start()

    def add(self) -> None:
        """One more worker in the group: the partitions are rebalanced over them."""
        self.start()

    def remove(self) -> None:
        """The newest worker leaves the group gracefully (SIGTERM); the others take over
        its partitions. The last worker is never removed."""
        if len(self.running) < 2:
            return
        stop_child(self.running.pop(), timeout_s=60)

    def stop_all(self, sig: int = signal.SIGTERM) -> int:
        """Stop every worker; returns how many ran."""
        count = len(self.running)
        for process in self.running:
            process.send_signal(sig)
        for process in self.running:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.running = []
        return count

    def supervise(self) -> None:
        for process in list(self.running):
            if process.poll() is None:
                continue
            lived = time.monotonic() - self.started[process.pid]
            note = f"pid {process.pid} exited with {process.returncode} after {lived:.1f} s"
            if process.returncode == 1 and lived < STARTUP_S:
                self.startup_failures.append(note)
            else:
                self.unexpected_exits.append(note)
            self.running.remove(process)
            self.start()


def group_lag(pipeline: Pipeline) -> int | None:
    """Input records the workers have not committed; None while the broker is away."""
    try:
        return pipeline.lag()
    except (KafkaException, KeyError):
        return None


def wait_caught_up(pipeline: Pipeline, workers: Workers, what: str) -> None:
    """Until the workers' group has committed every input record (outputs are published
    before offsets are committed, so every output exists then)."""
    deadline = time.monotonic() + CATCH_UP_TIMEOUT_S
    while (lag := group_lag(pipeline)) != 0:
        workers.supervise()
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{what}: workers still {lag} records behind after {CATCH_UP_TIMEOUT_S:.0f} s; "
                f"see {pipeline.log_path}"
            )
        time.sleep(0.3)


def flush_and_rebuild(stack: PrivateStack, pipeline: Pipeline, workers: Workers) -> None:
    """Redis lost: the workers are killed, Redis is flushed (FLUSHALL), `metering
    rebuild` restores the projection from Kafka, and the workers start again."""
    count = workers.stop_all(signal.SIGKILL)
    stack.flushall()
    result = run_metering("rebuild", **pipeline.env())
    assert result.returncode == 0, f"metering rebuild failed:\n{result.stdout}{result.stderr}"
    workers.start(count)


class Api:
    """`metering api` as a process on a port of its own."""

    def __init__(self, pipeline: Pipeline, clickhouse_dir: Path) -> None:
        self.pipeline = pipeline
        self.port = _free_port()
        # Not the pipeline's embedded store: one process at a time may open it, and the
        # billing batch needs it; the API only uses ClickHouse for the Usage page's chart.
        self.env = {"METERING_CLICKHOUSE_URL": f"chdb://{clickhouse_dir}"}
        self.process: subprocess.Popen[bytes] | None = None
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.process = self.pipeline.spawn("api", "--port", str(self.port), **self.env)
        deadline = time.monotonic() + API_START_TIMEOUT_S
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.url}/v1/orgs/x/usage", timeout=2).status_code == 401:
                    return
            if self.process.poll() is not None:
                raise AssertionError(f"metering api exited with {self.process.returncode}")
            if time.monotonic() > deadline:
                raise AssertionError(f"metering api did not answer in {API_START_TIMEOUT_S} s")
            time.sleep(0.2)

    def kill(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)
            self.process = None

    def stop(self) -> None:
        if self.process is not None:
            stop_child(self.process)
        self.process = None

    def call(self, method: str, path: str, token: str, body: Any) -> httpx.Response:
        return httpx.request(
            method,
            f"{self.url}{path}",
            json=body,
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )


def kill_billing_run(pipeline: Pipeline, month: str, out: Path, after_s: float) -> int | None:
    """Start `billing run` and SIGKILL it `after_s` seconds later; returns its exit code
    if it ended before that (then it was not killed)."""
    command = [str(Path(sys.executable).parent / "billing"), "run", "--month", month]
    with pipeline.log_path.open("ab") as log:
        victim = subprocess.Popen(
            [*command, "--out", str(out)],
            env={**os.environ, **pipeline.env()},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        return victim.wait(timeout=after_s)
    except subprocess.TimeoutExpired:
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        return None
