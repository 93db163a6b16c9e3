"""A real `metering run` on loopback for the security suite: the processors, the HTTP API
and the ClickHouse sink on a private pipeline (topics namespace, Redis prefix, consumer
groups, embedded store), with short HTTP timeouts so the slow-client tests stay fast.

Every request goes to 127.0.0.1 only, and each test bounds how many it sends and for how
long. The shared broker is never stopped: the Kafka-outage tests point an API process at
an unreachable bootstrap address instead."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from metering.stack.process import free_port
from tests.conftest import RunningStack
from tests.e2e.pipeline import Pipeline, cleanup, new_pipeline
from tests.e2e.scenario import new_org
from tests.metering.api.conftest import SECRET, bearer, token

ORG, OTHER_ORG = "org_sec_a", "org_sec_b"
# Tight limits so that slow clients are cut off within a second or two of the test.
HEADER_TIMEOUT_S = 1.0
BODY_TIMEOUT_S = 1.0
MAX_CONCURRENCY = 40
LIMITS = {
    "METERING_HTTP_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
    "METERING_HTTP_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S),
    "METERING_HTTP_MAX_CONCURRENCY": str(MAX_CONCURRENCY),
    "METERING_HTTP_WRITE_TIMEOUT_S": "3",
    # The nightly batch has nothing to do here and would only compete for the CPU.
    "METERING_BILLING_SCHEDULE": "false",
    "METERING_CHILD_RESTART_BACKOFF_S": "0.5",
}


@dataclass
class Server:
    """A `metering run` (or `metering api`) process answering on 127.0.0.1:`port`."""

    pipeline: Pipeline
    process: subprocess.Popen[bytes]
    port: int

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, timeout_s: float = 10.0) -> httpx.Client:
        return httpx.Client(base_url=self.base, timeout=timeout_s)

    def raw(self, data: bytes, *, timeout_s: float = 5.0) -> bytes:
        """Send `data` on a fresh connection and read until the server closes it (or
        `timeout_s` passes: then whatever arrived). A server that answers and closes
        before taking all of `data` resets the connection: then RESET is returned, or
        the answer if it could still be read."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout_s) as sock:
            try:
                sock.sendall(data)
            except (BrokenPipeError, ConnectionResetError):
                return read_until_closed(sock, 1.0) or RESET
            return read_until_closed(sock, timeout_s)

    def alive(self) -> bool:
        return self.process.poll() is None

    def exited(self) -> str:
        return f"exited with {self.process.returncode}; see {self.pipeline.log_path}"

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


RESET = b"(reset by the server)"


def read_until_closed(sock: socket.socket, timeout_s: float) -> bytes:
    sock.settimeout(timeout_s)
    received = b""
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
    except (TimeoutError, ConnectionResetError, OSError):
        pass
    return received


def status_of(response: bytes) -> int | None:
    """The status code of a raw HTTP/1.1 response, or None if nothing came back."""
    if not response.startswith(b"HTTP/1.1 "):
        return None
    return int(response[9:12])


def wait_answering(server: Server, timeout_s: float = 90.0) -> None:
    """Until the server answers HTTP at all (any status)."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        assert server.alive(), (
            f"exited with {server.process.returncode}; see {server.pipeline.log_path}"
        )
        try:
            httpx.get(f"{server.base}/metrics", timeout=2)
            return
        except httpx.TransportError as exc:
            last = exc
        time.sleep(0.2)
    raise AssertionError(f"{server.base} never answered: {last!r}")


def start(pipeline: Pipeline, *command: str, **env: str) -> Server:
    port = free_port()
    settings = {**LIMITS, "METERING_HTTP_PORT": str(port), "METERING_API_SECRET": SECRET}
    process = pipeline.spawn(*command, **{**settings, **env})
    return Server(pipeline, process, port)


def gate_answer(server: Server, org: str, user: str) -> dict[str, Any] | None:
    """The gate's answer for `user` (None: no answer, or not a 200)."""
    try:
        answer = httpx.get(
            f"{server.base}/v1/orgs/{org}/members/{user}/authorization",
            params={"surface": "chat_web"},
            headers=bearer(token(service="security-suite")),
            timeout=2,
        )
    except httpx.TransportError:
        return None
    return answer.json() if answer.status_code == 200 else None


def gate_allows(server: Server, org: str, user: str) -> bool:
    answer = gate_answer(server, org, user)
    return answer is not None and answer["allowed"] is True


def gate_knows(server: Server, org: str, user: str) -> bool:
    """The gate answers about `user` as a member (allowed or not)."""
    answer = gate_answer(server, org, user)
    return answer is not None and answer["reason"] != "unknown_member"


def wait_gate(server: Server, org: str, user: str, timeout_s: float = 60.0) -> None:
    """Until the gate knows `user` as a member of `org`."""
    deadline = time.monotonic() + timeout_s
    while not gate_knows(server, org, user):
        assert server.alive(), (
            f"exited with {server.process.returncode}; see {server.pipeline.log_path}"
        )
        assert time.monotonic() < deadline, f"the gate never allowed {org}/{user}"
        time.sleep(0.2)


def new_private_pipeline(stack: RunningStack, log_dir: Path) -> Pipeline:
    pipeline = new_pipeline(stack.settings, log_dir)
    pipeline.settings = pipeline.settings.model_copy(update={"api_secret": SECRET})
    return pipeline


@pytest.fixture(scope="session")
def service(stack: RunningStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`metering run` with two self-serve orgs: ORG (owner, members u1, u2; $100 of
    credits) and OTHER_ORG (its own owner). One for the suite: the tests use their own
    purchase ids, keys and service names, and the limits tests change nothing."""
    pipeline = new_private_pipeline(stack, tmp_path_factory.mktemp("security"))
    server = start(pipeline, "run")
    pipeline.process = server.process  # stopped by cleanup() whatever happens
    try:
        pipeline.send_accounts(*new_org(ORG), *new_org(OTHER_ORG))
        wait_answering(server)
        wait_gate(server, ORG, "u1")
        wait_gate(server, OTHER_ORG, "u1")
        yield server
    finally:
        cleanup(pipeline)


def owner_of(org: str) -> dict[str, str]:
    return bearer(token(org, "owner"))
