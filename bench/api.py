"""HTTP API benchmark (`make bench`): the gate endpoint, over real HTTP, from another process.

Method (on a private namespace, `bench.harness`: topics, Redis key prefix, consumer group,
an embedded ClickHouse store in a temp dir; and an API secret of its own):
1. seed: a `metering worker` applies org.created, member.added and a credit purchase for
   ORGS orgs of MEMBERS members each; once the gate allows the last member, the worker is
   stopped (the gate endpoint reads Redis only);
2. `metering api --port <free port>` is started as a real server (uvicorn);
3. open loop: a load generator in a second process (`python -m bench.api --load open`,
   asyncio streams, hand-written HTTP/1.1 on a pool of keep-alive connections) sends
   `GET /v1/orgs/{org}/members/{user}/authorization?surface=chat_web` with a service token
   at a fixed RATE, scheduled by the clock; each latency runs from the request's scheduled
   send time to the end of its response, so a stalled server or generator counts against
   it (no coordinated omission). WARMUP seconds first, not counted;
4. closed loop: CONCURRENCY connections, each sending its next request as soon as the
   previous answer is in: the most the server gives on these cores.
Reported: p50/p90/p99/max latency, achieved req/s, errors (non-200 or failed requests),
and the CPU the API process used per request. Section "api" of bench/results.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import secrets
import subprocess
import sys
import time
from datetime import UTC, date, datetime, timedelta
from typing import Any

from redis.asyncio import Redis as AsyncRedis
from rich.console import Console
from rich.table import Table

from bench.harness import Namespace, cpu_seconds, percentile, py_spy, record
from metering.api.tokens import issue
from metering.gate import Gate, UnknownOrgError
from metering.settings import Settings
from metering.stack.process import free_port

RATE = int(os.environ.get("METERING_BENCH_API_RATE", "1000"))
WARMUP_S = float(os.environ.get("METERING_BENCH_API_WARMUP", "3"))
OPEN_S = float(os.environ.get("METERING_BENCH_API_SECONDS", "20"))
CLOSED_S = float(os.environ.get("METERING_BENCH_API_CLOSED_SECONDS", "10"))
CONCURRENCY = int(os.environ.get("METERING_BENCH_API_CONCURRENCY", "16"))
CONNECTIONS = 64  # open loop: the pool is far larger than the requests ever in flight
# A path prefix: the API is sampled by `py-spy record` during the open-loop run into
# <prefix>-api.txt (collapsed stacks, CPU only: threads that wait are left out).
PROFILE = os.environ.get("METERING_BENCH_PROFILE", "")
ORGS, MEMBERS = 20, 5
PARTITIONS = 4
TARGET_P99_MS = 5.0
HOST = "127.0.0.1"


def _pct(values: list[float], fraction: float) -> float:
    return percentile(values, fraction, digits=3)


# -- the load generator (a process of its own) -------------------------------------------


class HttpClient:
    """One keep-alive HTTP/1.1 connection, one request at a time; just enough parsing to
    find the status and the end of the body."""

    LENGTH = re.compile(rb"content-length:\s*(\d+)", re.IGNORECASE)

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        if self.writer is None or self.reader is None:
            self.reader, self.writer = await asyncio.open_connection(HOST, self.port)
        try:
            self.writer.write(raw)
            head = await self.reader.readuntil(b"\r\n\r\n")
            length = self.LENGTH.search(head)
            body = await self.reader.readexactly(int(length.group(1)) if length else 0)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            self.close()
            raise
        return int(head[9:12]), body

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def _requests(port: int, token: str) -> list[bytes]:
    return [
        f"GET /v1/orgs/{org}/members/{user}/authorization?surface=chat_web HTTP/1.1\r\n"
        f"Host: {HOST}:{port}\r\nAuthorization: Bearer {token}\r\n\r\n".encode()
        for org, user in _members()
    ]


def _summary(
    latencies_s: list[float], errors: int, seconds: float, answered: int
) -> dict[str, Any]:
    ms = [value * 1000 for value in latencies_s]
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "requests": len(ms),
        "errors": errors,
        "seconds": round(seconds, 2),
        "achieved_per_s": round(len(ms) / seconds) if seconds else 0,
        "latency_ms_p50": _pct(ms, 0.5),
        "latency_ms_p90": _pct(ms, 0.9),
        "latency_ms_p99": _pct(ms, 0.99),
        "latency_ms_p999": _pct(ms, 0.999),
        "latency_ms_max": round(max(ms), 3) if ms else float("nan"),
        "requests_with_warmup": answered,
        "loadgen_cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
    }


async def _open_loop(
    port: int, token: str, rate: int, warmup_s: float, seconds: float
) -> dict[str, Any]:
    """Request i is due at start + i/rate; CONNECTIONS workers take due requests from a
    queue. Only requests due after the warm-up are counted."""
    requests = _requests(port, token)
    queue: asyncio.Queue[tuple[int, float]] = asyncio.Queue()
    latencies: list[float] = []
    by_second: dict[int, list[float]] = {}  # by the second the request was due
    errors = answered = 0
    start = time.perf_counter() + 0.1
    measured_from = start + warmup_s
    total = int(rate * (warmup_s + seconds))
    worst_lag = 0.0

    async def worker() -> None:
        nonlocal errors, answered
        client = HttpClient(port)
        while True:
            index, due = await queue.get()
            try:
                status, _ = await client.request(requests[index % len(requests)])
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                status = 0
            done = time.perf_counter()
            answered += 1
            if due >= measured_from:
                latencies.append(done - due)
                by_second.setdefault(int(due - measured_from), []).append((done - due) * 1000)
                errors += status != 200
            queue.task_done()

    workers = [asyncio.create_task(worker()) for _ in range(CONNECTIONS)]
    await asyncio.sleep(max(0.0, start - time.perf_counter()))
    sent = 0
    while sent < total:
        now = time.perf_counter()
        due_now = min(total, int((now - start) * rate) + 1)
        if due_now > sent:
            worst_lag = max(worst_lag, now - (start + sent / rate))
        while sent < due_now:
            queue.put_nowait((sent, start + sent / rate))
            sent += 1
        await asyncio.sleep(max(0.0, start + sent / rate - time.perf_counter()))
    try:
        await asyncio.wait_for(queue.join(), timeout=30)
    except TimeoutError:
        errors += queue.qsize()
    finished = time.perf_counter()
    for task in workers:
        task.cancel()
    summary = _summary(latencies, errors, finished - measured_from, answered)
    summary.update(
        rate_per_s=rate,
        worst_schedule_lag_ms=round(worst_lag * 1000, 2),
        # Whether a miss is a stall or the steady state: p99 of each second of the run.
        p99_ms_by_second=[round(_pct(by_second[k], 0.99), 1) for k in sorted(by_second)],
    )
    return summary


async def _closed_loop(
    port: int, token: str, concurrency: int, warmup_s: float, seconds: float
) -> dict[str, Any]:
    requests = _requests(port, token)
    latencies: list[float] = []
    errors = answered = 0
    start = time.perf_counter()
    measured_from, stop = start + warmup_s, start + warmup_s + seconds

    async def worker(offset: int) -> None:
        nonlocal errors, answered
        client = HttpClient(port)
        index = offset
        while (begin := time.perf_counter()) < stop:
            try:
                status, _ = await client.request(requests[index % len(requests)])
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                status = 0
            answered += 1
            if begin >= measured_from:
                latencies.append(time.perf_counter() - begin)
                errors += status != 200
            index += concurrency
        client.close()

    await asyncio.gather(*(worker(n) for n in range(concurrency)))
    summary = _summary(latencies, errors, time.perf_counter() - measured_from, answered)
    summary.update(concurrency=concurrency)
    return summary


def _load_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.api --load")
    parser.add_argument("--load", choices=["open", "closed"], required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--rate", type=int, default=RATE)
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY)
    parser.add_argument("--warmup", type=float, default=WARMUP_S)
    parser.add_argument("--seconds", type=float, default=OPEN_S)
    args = parser.parse_args(argv)
    token = os.environ["METERING_BENCH_API_TOKEN"]
    if args.load == "open":
        run = _open_loop(args.port, token, args.rate, args.warmup, args.seconds)
    else:
        run = _closed_loop(args.port, token, args.concurrency, args.warmup, args.seconds)
    print(json.dumps(asyncio.run(run)))


# -- the harness ---------------------------------------------------------------------------


def _members() -> list[tuple[str, str]]:
    return [(f"org-{o}", f"user-{m}") for m in range(MEMBERS) for o in range(ORGS)]


def _account_events() -> list[dict[str, Any]]:
    at = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    term_start = date.today().replace(day=1).isoformat()
    events: list[dict[str, Any]] = []

    def event(org: str, kind: str, data: dict[str, Any]) -> None:
        events.append(
            {
                "event_id": f"benchapi-{len(events)}",
                "type": kind,
                "org_id": org,
                "occurred_at": at,
                "actor": None,
                "data": data,
            }
        )

    for o in range(ORGS):
        org = f"org-{o}"
        event(
            org,
            "org.created",
            {
                "plan": "usage_based",
                "billing_mode": "self_serve",
                "term_start": term_start,
                "seats": {"enterprise": MEMBERS},
                "extra_usage": False,
            },
        )
        for m in range(MEMBERS):
            role = "primary_owner" if m == 0 else "member"
            event(
                org,
                "member.added",
                {"user_id": f"user-{m}", "role": role, "seat_type": "enterprise"},
            )
        event(org, "credits.purchased", {"purchase_id": f"pay-{org}", "amount": "1000.00"})
    return events


async def _gate_allows(settings: Settings, org: str, user: str) -> bool:
    client = AsyncRedis.from_url(settings.redis_url)
    try:
        gate = Gate(
            client, settings.load_price_book(), lambda: datetime.now(UTC), settings.redis_prefix
        )
        return (await gate.check(org, user, "chat_web")).allowed
    except UnknownOrgError:
        return False
    finally:
        await client.aclose()


def _seed(ns: Namespace) -> float:
    """Returns how long the worker took to make the gate allow every member."""
    # The processors alone (the gate reads Redis): no worker needs to write ClickHouse.
    worker = ns.metering("worker", sink_in_worker=False)
    try:
        started = time.perf_counter()
        with ns.emitter() as emitter:
            for event in _account_events():
                emitter.emit_account(event)
        org, user = _members()[-1]
        while not asyncio.run(_gate_allows(ns.settings, org, user)):
            if worker.poll() is not None:
                raise RuntimeError(f"the worker exited with {worker.returncode}; see {ns.log}")
            if time.perf_counter() - started > 120:
                raise RuntimeError(f"the gate never allowed {org}/{user}; see {ns.log}")
            time.sleep(0.2)
        return time.perf_counter() - started
    finally:
        ns.stop(worker)


def _start_api(ns: Namespace, port: int, token: str) -> subprocess.Popen[bytes]:
    # `metering api` opens the namespace's store (for the Usage page's chart).
    api = ns.metering("api", "--host", HOST, "--port", str(port), sink_in_worker=False)
    org, user = _members()[0]
    deadline = time.monotonic() + 90
    while True:
        try:
            status, body = asyncio.run(_probe(port, token))
        except OSError:
            status, body = 0, b""
        if status == 200:
            if json.loads(body) != {"allowed": True, "reason": None}:
                raise RuntimeError(f"{org}/{user} is not allowed: {body!r}")
            return api
        if api.poll() is not None or time.monotonic() > deadline:
            ns.stop(api)
            raise RuntimeError(f"the API did not come up (status {status}); see {ns.log}")
        time.sleep(0.2)


async def _probe(port: int, token: str) -> tuple[int, bytes]:
    client = HttpClient(port)
    try:
        return await client.request(_requests(port, token)[0])
    finally:
        client.close()


def _load(mode: str, port: int, token: str, api_pid: int) -> dict[str, Any]:
    """Runs the load generator in its own process; adds the API's CPU per request."""
    seconds = OPEN_S if mode == "open" else CLOSED_S
    warmup = WARMUP_S if mode == "open" else 1.0
    command = [sys.executable, "-m", "bench.api", "--load", mode, "--port", str(port)]
    command += ["--seconds", str(seconds), "--warmup", str(warmup)]
    profiler = None
    if PROFILE and mode == "open":
        duration = str(int(warmup + seconds))
        profiler = py_spy(api_pid, f"{PROFILE}-api.txt", "--duration", duration)
    cpu = cpu_seconds([api_pid])
    done = subprocess.run(
        command,
        env={**os.environ, "METERING_BENCH_API_TOKEN": token},
        capture_output=True,
        check=True,
        timeout=warmup + seconds + 120,
    )
    used = cpu_seconds([api_pid]) - cpu
    if profiler is not None:
        profiler.wait(timeout=120)
    result: dict[str, Any] = json.loads(done.stdout)
    answered = result["requests_with_warmup"]
    result["api_cpu_us_per_request"] = round(used / answered * 1e6) if answered else None
    return result


def main() -> None:
    secret = secrets.token_urlsafe(48)
    token = issue(secret, now=datetime.now(UTC), ttl=timedelta(hours=1), service="bench")
    results: dict[str, Any] = {"orgs": ORGS, "members_per_org": MEMBERS}
    with Namespace.create(
        "benchapi", partitions=PARTITIONS, log="bench-api.log", api_secret=secret
    ) as ns:
        results["seed_seconds"] = round(_seed(ns), 2)
        port = free_port(HOST)
        api = _start_api(ns, port, token)
        results["open_loop"] = _load("open", port, token, api.pid)
        results["closed_loop"] = _load("closed", port, token, api.pid)

    o, c = results["open_loop"], results["closed_loop"]
    table = Table(
        "benchmark",
        "p50 · p90 · p99 · max (ms)",
        "req/s",
        "errors",
        "API CPU/req",
        title="HTTP API: GET …/authorization (uvicorn, one process; load from another)",
    )
    for name, run in (
        (f"open loop at {o['rate_per_s']:,}/s, {OPEN_S:g} s", o),
        (f"closed loop, {c['concurrency']} connections, {CLOSED_S:g} s", c),
    ):
        table.add_row(
            name,
            f"{run['latency_ms_p50']} · {run['latency_ms_p90']} · {run['latency_ms_p99']} · "
            f"{run['latency_ms_max']}",
            f"{run['achieved_per_s']:,}",
            str(run["errors"]),
            f"{run['api_cpu_us_per_request']} µs",
        )
    Console().print(table)
    met = o["latency_ms_p99"] <= TARGET_P99_MS and o["errors"] == 0
    windows = o["p99_ms_by_second"]
    within = sum(p99 <= TARGET_P99_MS for p99 in windows)
    Console().print(
        f"target p99 ≤ {TARGET_P99_MS:g} ms at {o['rate_per_s']:,} req/s: "
        + ("met" if met else "[bold red]not met[/]")
        + f" ({within} of {len(windows)} one-second windows within it)"
    )
    record("api", results)


if __name__ == "__main__":
    if "--load" in sys.argv[1:]:
        _load_main(sys.argv[1:])
    else:
        main()
