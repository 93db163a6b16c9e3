"""What every benchmark needs around what it measures, done one way.

A `Namespace` is a private slice of the local stack for one benchmark run: its own
topics (`METERING_TOPIC_NAMESPACE`), Redis key prefix, consumer groups and a scratch
directory (embedded ClickHouse stores, faust's data folders, files), the environment
that puts a `metering` process on exactly those settings, the processes started in it,
and the cleanup of all of it — on success or failure. Also the shared bits of measuring
and reporting: percentiles, CPU time from /proc, py-spy, and bench/results.json.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any

import redis
from confluent_kafka import KafkaError, KafkaException

from metering.emitter import Emitter
from metering.settings import Settings
from metering.stack.process import stop_child
from metering.topics import TopicNames, TopicSpec, admin_client, ensure_topics, groups_lag
from metering.traffic import TrafficGenerator

RESULTS = Path(__file__).parent / "results.json"
BIN = Path(sys.executable).parent
METERING = str(BIN / "metering")
LOGS = Path("var")  # benchmark logs (bench-*.log) stay after the run, for a look
STOP_TIMEOUT_S = 60.0


@dataclass
class Namespace:
    """Settings, topics, Redis prefix, consumer groups, a scratch directory and the
    processes of one benchmark run. Use it as a context manager: leaving the block stops
    the processes still running, deletes the topics, the Redis keys and the consumer
    groups, and removes the directory."""

    base: Settings  # the stack's own settings (e.g. where its pid files are)
    settings: Settings  # the benchmark's: `base` on private names
    directory: Path
    log: Path
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    groups: set[str] = field(default_factory=set)  # consumer groups to delete at the end

    @classmethod
    def create(cls, name: str, *, partitions: int, log: str, **changes: Any) -> Namespace:
        """A fresh namespace `<name><tag>` with its topics created (`partitions` each).
        Processes log to `var/<log>`; `changes` are further settings (e.g. an API secret),
        on top of the private names."""
        tag = uuid.uuid4().hex[:8]
        directory = Path(tempfile.mkdtemp(prefix=f"{name}-"))
        base = Settings()
        settings = base.model_copy(
            update={
                "topic_namespace": f"{name}{tag}.",
                "redis_prefix": f"{name}{tag}:",
                "group_id": f"metering-{name}-{tag}",
                "sink_group_id": f"metering-{name}-sink-{tag}",
                "clickhouse_url": f"chdb://{directory / 'clickhouse'}",
                # Processes keep their local data (faust's folders) in the scratch directory.
                "var_dir": directory / "var",
                **changes,
            }
        )
        LOGS.mkdir(parents=True, exist_ok=True)
        namespace = cls(base, settings, directory, LOGS / log)
        namespace.groups |= {settings.group_id, settings.sink_group_id}
        try:
            ensure_topics(admin_client(settings.kafka_bootstrap), partitions, namespace.specs())
        except BaseException:
            namespace.close()
            raise
        return namespace

    def __enter__(self) -> Namespace:
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def topics(self) -> TopicNames:
        return self.settings.topics

    def specs(self) -> tuple[TopicSpec, ...]:
        return self.topics.specs()

    def variant(self, **changes: Any) -> Settings:
        """This namespace's settings with `changes` (e.g. a consumer group of its own for
        a second run over the same topics); its consumer groups are deleted at the end
        too."""
        settings = self.settings.model_copy(update=changes)
        self.groups |= {settings.group_id, settings.sink_group_id}
        return settings

    def store_url(self, name: str) -> str:
        """An embedded ClickHouse store of its own in the scratch directory."""
        return f"chdb://{self.directory / name}"

    # -- processes ------------------------------------------------------------------

    def env(self, settings: Settings | None = None, **changes: Any) -> dict[str, str]:
        """The environment of a process on this namespace's settings (or `settings`),
        with `changes` to them."""
        own = (settings or self.settings).model_copy(update=changes)
        return {**os.environ, **own.environment()}

    def spawn(
        self,
        command: Sequence[str],
        *,
        settings: Settings | None = None,
        count: int = 1,
        **changes: Any,
    ) -> list[subprocess.Popen[bytes]]:
        """`count` processes of `command` on this namespace, output appended to its log;
        stopped when the namespace closes, unless stopped before."""
        env = self.env(settings, **changes)
        with self.log.open("ab") as out:
            started = [
                subprocess.Popen(list(command), env=env, stdout=out, stderr=subprocess.STDOUT)
                for _ in range(count)
            ]
        self.processes += started
        return started

    def metering(
        self, *arguments: str, settings: Settings | None = None, **changes: Any
    ) -> subprocess.Popen[bytes]:
        """`metering <arguments>` on this namespace (e.g. `worker`, with
        `sink_in_worker=False` for the processors alone)."""
        return self.spawn([METERING, *arguments], settings=settings, **changes)[0]

    def stop(self, process: subprocess.Popen[bytes], timeout_s: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM (a worker commits, a sink flushes), SIGKILL if it hangs."""
        stop_child(process, timeout_s=timeout_s)

    # -- input ----------------------------------------------------------------------

    def emitter(self) -> Emitter:
        return Emitter(
            self.settings.kafka_bootstrap,
            usage_topic=self.topics.usage_events,
            account_topic=self.topics.account_events,
        )

    def emit_backlog(
        self, traffic: TrafficGenerator, events: int, *, orgs_applied: bool = False
    ) -> list[dict[str, Any]]:
        """The traffic's orgs, funded so nobody stops, then `events` usage events over
        50 minutes, all on the broker before the function returns. Returns the account
        events. `orgs_applied`: a worker folds the account events first and stops, so the
        measured worker starts with every org known — as in production, where an org
        exists long before its usage; started together, the usage path may reach an org's
        first events before the account agent created it (`unknown_org` dead letters, an
        artifact of the benchmark that costs far more per event than accepted usage)."""
        accounts = funded_accounts(traffic)
        with self.emitter() as emitter:  # flushes on leaving
            for event in accounts:
                emitter.emit_account(event)
        if orgs_applied:
            self.apply_accounts()
        with self.emitter() as emitter:
            for event in traffic.usage_events(events, timedelta(minutes=50)):
                emitter.emit_usage(event)
        return accounts

    def apply_accounts(self, timeout_s: float = 120.0) -> None:
        """A worker runs until every account event is folded, then stops."""
        inputs = [(self.settings.group_id, self.settings.topics.account_events)]
        (worker,) = self.spawn([METERING, "worker"], sink_in_worker=False)
        try:
            deadline = time.monotonic() + timeout_s
            while groups_lag(self.settings.kafka_bootstrap, inputs) > 0:
                if time.monotonic() > deadline:
                    raise TimeoutError("the account events were not folded in time")
                time.sleep(0.5)
        finally:
            self.stop(worker)

    # -- cleanup --------------------------------------------------------------------

    def close(self) -> None:
        """Each step runs even if another failed (e.g. Redis is down): what is left over
        is said, never hidden behind the first error."""
        try:
            for process in self.processes:
                self.stop(process)
            for step in (self._delete_redis_keys, self._delete_topics_and_groups):
                try:
                    step()
                except Exception as exc:
                    print(f"note: cleanup step {step.__name__} failed: {exc}", file=sys.stderr)
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)

    def _delete_topics_and_groups(self) -> None:
        admin = admin_client(self.settings.kafka_bootstrap)  # alive until the futures resolve
        deletions = [
            (admin.delete_topics([s.name for s in self.specs()]), KafkaError.UNKNOWN_TOPIC_OR_PART),
            # A group that never committed has nothing to delete.
            (admin.delete_consumer_groups(sorted(self.groups)), KafkaError.GROUP_ID_NOT_FOUND),
        ]
        for futures, nothing_there in deletions:
            for name, future in futures.items():
                try:
                    future.result(timeout=30)
                except KafkaException as exc:
                    if exc.args[0].code() != nothing_there:
                        print(f"note: {name} not deleted: {exc}", file=sys.stderr)

    def _delete_redis_keys(self) -> None:
        client = redis.Redis.from_url(self.settings.redis_url)
        try:
            keys = list(client.scan_iter(match=f"{self.settings.redis_prefix}*", count=5000))
            for start in range(0, len(keys), 5000):
                client.delete(*keys[start : start + 5000])
        finally:
            client.close()


@contextlib.contextmanager
def scratch(name: str) -> Iterator[Path]:
    """A temporary directory (e.g. for an embedded store), removed afterwards."""
    directory = Path(tempfile.mkdtemp(prefix=f"{name}-"))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def funded_accounts(traffic: TrafficGenerator) -> list[dict[str, Any]]:
    """The traffic's account events, plus a purchase per org large enough that nobody
    stops during a backlog."""
    events = list(traffic.account_events())
    for org in traffic.orgs:
        events.append(
            {
                "event_id": f"bench-credit-{org.org_id}",
                "type": "credits.purchased",
                "org_id": org.org_id,
                "occurred_at": traffic.start.isoformat(),
                "actor": None,
                "data": {"purchase_id": f"bench-{org.org_id}", "amount": "1000000.00"},
            }
        )
    return events


# -- measuring ----------------------------------------------------------------------------


def percentile(values: Sequence[float], fraction: float, digits: int = 2) -> float:
    """The value at `fraction` of the sorted values (nearest rank), rounded; NaN if none."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(fraction * len(ordered)))], digits)


def cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU the processes have used so far (Linux /proc)."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def py_spy(pid: int, output: str, *options: str) -> subprocess.Popen[bytes]:
    """`py-spy record` (installed separately) sampling `pid` into `output`, collapsed
    stacks; it ends when the process does (or after `--duration`)."""
    command = [str(BIN / "py-spy"), "record", "--format", "raw", "--nonblocking", *options]
    return subprocess.Popen(
        [*command, "--output", output, "--pid", str(pid)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


# -- bench/results.json -------------------------------------------------------------------


def read_results() -> dict[str, Any]:
    results: dict[str, Any] = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    return results


def write_section(section: str, content: dict[str, Any]) -> None:
    """Replace one section of bench/results.json, keeping the others."""
    results = read_results()
    results[section] = content
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")


def record(section: str, results: dict[str, Any]) -> None:
    """A benchmark's results, stamped with when they were measured (the summary refuses
    a section older than its run)."""
    write_section(section, {**results, "measured_at": datetime.now(UTC).isoformat()})
