"""`make bench`: every benchmark, one after the other, then one summary table.

Each benchmark module runs in its own process (as `python -m bench.<name>`: its own
stack clients and private namespace, `bench.harness`) and writes its section of
bench/results.json. This
driver then reads the sections back, refuses any that was not measured in this run
(a benchmark that failed must not leave last week's numbers in the summary), prints the
table the issue asks for and writes it to the "summary" section.

`METERING_BENCH_ONLY=emitter,pipeline` runs a subset (the summary then shows only what
was measured); the method of each benchmark is in its module docstring and in
docs/benchmarks.md.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.harness import read_results, write_section

# module → the results.json section it writes
BENCHMARKS = {
    "emitter": "emitter",
    "pipeline": "enforcement",
    "clickhouse": "clickhouse",
    "api": "api",
    "billing": "billing",
    "notifier": "notifier",
    "marks": "marks",
    "redis_cluster": "redis_cluster",
}

Row = tuple[str, str, str]  # what, result, target


def _ms(section: dict[str, Any], prefix: str = "latency_ms_") -> str:
    return f"p50 {section[prefix + 'p50']} ms · p99 {section[prefix + 'p99']} ms"


def _emitter(r: dict[str, Any]) -> list[Row]:
    t = r["throughput"]
    return [("emitter", f"{t['events_per_s']:,} events/s ({t['events']:,} events)", "")]


def _enforcement(r: dict[str, Any]) -> list[Row]:
    p, raw, block, gate = r["pipeline"], r["raw_consumer"], r["event_to_block"], r["gate"]
    floor = r["faust_floor"]
    return [
        (
            f"pipeline sustained ({p['workers']} worker)",
            f"{p['events_per_s']:,} events/s ({p['steady_events_per_s']:,}/s after the "
            "first commit)",
            "≥ 30,000/s",
        ),
        *(
            [
                (
                    "pipeline sustained (2 workers, one group)",
                    f"{two['events_per_s']:,} events/s ({two['steady_events_per_s']:,}/s "
                    "after the first commit)",
                    "≥ 50,000/s",
                )
            ]
            if (two := r.get("pipeline_two_workers"))
            else []
        ),
        (
            "CPU per event: worker · broker · Redis",
            f"{p['worker_cpu_us_per_event']} · {p['broker_cpu_us_per_event']} · "
            f"{p['redis_cpu_us_per_event']} µs → at most {p['cpu_bound_events_per_s']:,}/s "
            f"on {p['cores']} cores, with any number of workers",
            "worker ≤ 20 · Redis ≤ 6 µs",
        ),
        (
            "faust alone: same app, a processor that does nothing",
            f"{floor['steady_events_per_s']:,}/s; {floor['worker_cpu_us_per_event']} µs "
            f"CPU per event → at most {floor['cpu_bound_events_per_s']:,}/s on "
            f"{floor['cores']} cores",
            "",
        ),
        (
            "raw ceiling: plain confluent-kafka consumer, same topic",
            f"{raw['messages_per_s']:,} msg/s; pipeline = {raw['pipeline_ratio']:.1%} of it",
            "",
        ),
        (
            f"event → block at {block['background_rate_per_s']:,} events/s",
            f"{_ms(block)} ({block['trials']} trials)",
            "p99 ≤ 50 ms at 5,000/s",
        ),
        ("gate, Python API (one Redis round trip)", _ms(gate), ""),
    ]


def _clickhouse(r: dict[str, Any]) -> list[Row]:
    queries = r["queries"]
    names = ("member_spend", "model_spend", "daily_spend")
    worst = max(names, key=lambda name: queries[name]["p99_ms"])
    rows = queries["load"]["rows"]
    return [
        (
            f"month-to-date query p99 (worst of 3, {rows:,} stored events)",
            f"{queries[worst]['p99_ms']} ms ({worst})",
            f"≤ {queries['mtd_target_p99_ms']:g} ms",
        )
    ]


def _api(r: dict[str, Any]) -> list[Row]:
    o, c = r["open_loop"], r["closed_loop"]
    return [
        (
            f"gate over HTTP at {o['rate_per_s']:,} req/s",
            f"{_ms(o)}; API CPU {o['api_cpu_us_per_request']} µs per request",
            "p99 ≤ 5 ms",
        ),
        (
            f"gate over HTTP, closed loop ({c['concurrency']} connections)",
            f"{c['achieved_per_s']:,} req/s; API CPU {c['api_cpu_us_per_request']} µs per request",
            "",
        ),
    ]


def _billing(r: dict[str, Any]) -> list[Row]:
    f, run = r["fixture"], r["run"]
    return [
        (
            f"billing batch: {f['orgs']:,} orgs / {f['usage_events']:,} events",
            f"{run['seconds']} s, {run['documents_per_s']:,} documents/s "
            f"({run['documents']:,} documents)",
            f"≤ {run['target_s']:g} s",
        )
    ]


def _notifier(r: dict[str, Any]) -> list[Row]:
    t, p = r["throughput"], r["latency"]
    return [
        (
            f"notifications delivered (webhooks, {t['orgs']} endpoints)",
            f"{t['delivered_per_s']:,}/s ({t['notifications']:,} notifications)",
            "",
        ),
        (f"decision → webhook receipt at {p['rate_per_s']}/s", _ms(p), ""),
    ]


def _marks(r: dict[str, Any]) -> list[Row]:
    mib = 2**20
    return [
        (
            f"Redis de-duplication marks, {r['simulated_days']} simulated days",
            f"{r['bytes_per_mark']} bytes per mark; plateau {r['plateau_bytes'] / mib:.1f} MiB "
            f"after {r['events']:,} events (all kept: ~{r['all_kept_bytes'] / mib:.1f} MiB)",
            "levels off after the window",
        )
    ]


def _redis_cluster(r: dict[str, Any]) -> list[Row]:
    rows = []
    for name in ("single", "cluster"):
        runs = r["runs"][name]
        rates = [run["events_per_s"] for run in runs]
        redis_us = [run["redis_us_per_event"] for run in runs]
        worker_us = [run["worker_us_per_event"] for run in runs]
        rows.append(
            (
                f"usage processor in-process, Redis {name}",
                f"{min(rates):,}–{max(rates):,} events/s; worker {min(worker_us)}–"
                f"{max(worker_us)} µs, Redis {min(redis_us)}–{max(redis_us)} µs per event",
                "",
            )
        )
    return rows


SUMMARIES: dict[str, Callable[[dict[str, Any]], list[Row]]] = {
    "emitter": _emitter,
    "enforcement": _enforcement,
    "clickhouse": _clickhouse,
    "api": _api,
    "billing": _billing,
    "notifier": _notifier,
    "marks": _marks,
    "redis_cluster": _redis_cluster,
}


def _selected() -> list[str]:
    only = os.environ.get("METERING_BENCH_ONLY", "")
    names = [n.strip() for n in only.split(",") if n.strip()] or list(BENCHMARKS)
    unknown = set(names) - set(BENCHMARKS)
    if unknown:
        sys.exit(f"METERING_BENCH_ONLY: unknown {sorted(unknown)}; known: {list(BENCHMARKS)}")
    return names


def main() -> None:
    started = datetime.now(UTC)
    failed = []
    names = _selected()
    for name in names:
        if subprocess.run([sys.executable, "-m", f"bench.{name}"], check=False).returncode:
            failed.append(name)
    results = read_results()
    table = Table(
        "benchmark", "result", "target", title=f"make bench — {started:%Y-%m-%d %H:%M} UTC"
    )
    summary: list[dict[str, str]] = []
    for name in names:
        section = results.get(BENCHMARKS[name])
        if section is None or datetime.fromisoformat(section["measured_at"]) < started:
            table.add_row(f"[red]{name}", "[red]not measured in this run (failed)", "")
            continue
        for what, result, target in SUMMARIES[BENCHMARKS[name]](section):
            table.add_row(what, result, target)
            summary.append({"benchmark": what, "result": result, "target": target})
    Console().print(table)
    write_section(
        "summary", {"measured_at": started.isoformat(), "rows": summary, "failed": failed}
    )
    if failed:
        sys.exit(f"benchmarks failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
