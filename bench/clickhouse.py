"""ClickHouse benchmark (`make bench`): dashboard query latency over 10 million stored
events, and the rate at which the sink stores priced usage while the processors run.

Method:
1. queries: a fresh embedded store (chDB, in a temp dir) is migrated and loaded with
   LOAD_ROWS usage rows by a few `INSERT … SELECT … FROM numbers(…)` statements —
   ClickHouse generates them: 2,000 orgs with a skew (org n gets a share ∝ the gap
   between (n+1)^0.4 and n^0.4: the biggest ≈ 5 % of all rows), 20 users per org, the
   price book's models and the generator's surfaces in `metering.traffic`'s mix,
   log-normal token counts as that generator draws them, costs at the price book's
   per-token rates, `occurred_at` uniform from the first day of the month before last
   to now. The materialized views fill the rollups as the rows go in. Then
   `queries.member_spend` for the current month is timed RUNS_MEMBER times after a
   warm-up (one run in four on the biggest org, the rest on random orgs), and
   `model_spend`, `daily_spend` and `top_spenders` the same way with fewer runs;
   p50/p99/max in ms, timed around the Python call (client and engine in-process);
2. sink: on a private namespace (`bench.harness`: 12 partitions, Redis prefix, consumer
   groups),
   N usage events (METERING_BENCH_EVENTS, default 200,000) for 200 orgs are put on
   `usage.events.v1` first, as in `bench/pipeline.py`; one `metering worker` (with its
   ClickHouse sink child, on a fresh embedded store) is started, and both consumer
   groups are sampled every POLL_S: the processors' group over the input topics, the
   sink's group over `usage.priced.v1` + `account.events.v1`. The sink owns the
   embedded store while it runs, so its progress is read from its committed offsets (it
   commits only after the rows are inserted); once its lag is 0 the worker is stopped
   (SIGTERM: the sink flushes and exits) and the store is opened to check that the
   stored rows equal the priced records. The sink's rate is taken from its first commit
   to its last (the part of the run it had work); whether it keeps up, from its lag when
   the processors' lag reached 0 and how long it took after that;
3. sink alone: `metering sink --once` with a new consumer group and a fresh store drains
   the same priced topic with nothing else of the pipeline running (its own ceiling).
Results are printed and written to bench/results.json (section "clickhouse").
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

from confluent_kafka import TopicPartition
from rich.console import Console
from rich.table import Table

from bench.harness import Namespace, percentile, record, scratch
from metering import kafka_clients
from metering.clickhouse import queries
from metering.clickhouse.migrations import migrate
from metering.clickhouse.store import Store, StoreInUse
from metering.settings import Settings
from metering.topics import consumer_lag
from metering.traffic import MODEL_WEIGHTS, SURFACE_WEIGHTS, TrafficGenerator

LOAD_ROWS = int(os.environ.get("METERING_BENCH_CH_ROWS", "10000000"))
LOAD_CHUNKS = 5  # INSERT statements (each streams its rows in ~1M-row blocks)
CH_ORGS = 2000
CH_USERS_PER_ORG = 20
ORG_SKEW = 2.5  # org index = floor(CH_ORGS * u ** ORG_SKEW), u uniform in [0, 1)
SEAT_ALLOWANCE_DAYS = 7  # even orgs: usage of a month's first days is inside the allowance
WARMUP_RUNS = 5
RUNS_MEMBER = 240
RUNS_OTHER = 100
RUNS_TOP = 50
MTD_TARGET_P99_MS = 50.0  # the ClickHouse issue's target for month-to-date queries

SINK_EVENTS = int(os.environ.get("METERING_BENCH_EVENTS", "200000"))
PARTITIONS = 12
SINK_ORGS = 200
POLL_S = 0.5
SINK_TIMEOUT_S = 1800.0


def _latency(times_ms: list[float]) -> dict[str, float]:
    return {
        "runs": len(times_ms),
        "p50_ms": percentile(times_ms, 0.5),
        "p99_ms": percentile(times_ms, 0.99),
        "max_ms": round(max(times_ms), 2),
    }


def _du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


# -- 1. query latency over a bulk-loaded store ------------------------------------------


def _weighted_index(weights: list[int], draw: str) -> str:
    """A 1-based index into `weights` for `draw` uniform in [0, sum(weights))."""
    bounds, total = [], 0
    for index, weight in enumerate(weights[:-1], start=1):
        total += weight
        bounds.append(f"{draw} < {total}, {index}")
    return f"multiIf({', '.join(bounds)}, {len(weights)})"


def _load_sql(store: Store, first: int, count: int, since: datetime, now: datetime) -> str:
    """`count` generated usage rows (row numbers `first`…), priced like the pipeline
    prices them (the rates in force now; one price-book version covers the window)."""
    book = Settings().load_price_book()
    models, model_weights = zip(*MODEL_WEIGHTS.items(), strict=True)
    surfaces, surface_weights = zip(*SURFACE_WEIGHTS.items(), strict=True)
    rates = [book.token_rates(model, now)[0] for model in models]
    version = book.token_rates(models[0], now)[1]
    if book.token_rates(models[0], since)[1] != version:
        raise RuntimeError("a price-book version starts inside the generated window")

    def array(values: list[int]) -> str:
        return "[" + ", ".join(str(v) for v in values) + "]"

    def uniform(salt: int) -> str:  # deterministic, in (0, 1)
        return f"((cityHash64(number, {salt}) % 1000000) + 0.5) / 1e6"

    def lognormal(mu: float, sigma: float, salt: int) -> str:  # Box-Muller
        z = f"sqrt(-2 * log({uniform(salt)})) * cos(2 * pi() * {uniform(salt + 1)})"
        return f"exp({mu} + {sigma} * {z})"

    span_us = int((now - since).total_seconds() * 1_000_000)
    return f"""
INSERT INTO {store.table("usage_events")}
    (event_id, org_id, user_id, surface, model, input_tokens, output_tokens,
     cache_creation_input_tokens, cache_read_input_tokens, cost_nano_usd,
     included_nano_usd, billed_nano_usd, price_version, occurred_at, priced_at,
     source_partition, source_offset, priced_partition, priced_offset)
WITH
    toUInt32(floor({CH_ORGS} * pow({uniform(1)}, {ORG_SKEW}))) AS org_n,
    {_weighted_index(list(model_weights), f"cityHash64(number, 3) % {sum(model_weights)}")}
        AS model_i,
    {_weighted_index(list(surface_weights), f"cityHash64(number, 4) % {sum(surface_weights)}")}
        AS surface_i,
    least(toUInt32({lognormal(7.5, 1.0, 5)}), 200000) AS input_t,
    least(toUInt32({lognormal(6.0, 0.9, 7)}), 64000) AS output_t,
    if(cityHash64(number, 9) % 4 = 0, intDiv(input_t, 2), 0) AS cache_write_t,
    if(cityHash64(number, 10) % 3 = 0, input_t * 3, 0) AS cache_read_t,
    toInt64(input_t) * {array([r.input for r in rates])}[model_i]
        + toInt64(output_t) * {array([r.output for r in rates])}[model_i]
        + toInt64(cache_write_t) * {array([r.cache_write for r in rates])}[model_i]
        + toInt64(cache_read_t) * {array([r.cache_read for r in rates])}[model_i] AS cost,
    addMicroseconds(
        toDateTime64('{since:%Y-%m-%d %H:%M:%S}', 6, 'UTC'), cityHash64(number, 11) % {span_us}
    ) AS at,
    if(org_n % 2 = 0 AND toDayOfMonth(at) <= {SEAT_ALLOWANCE_DAYS}, cost, 0) AS included
SELECT
    lower(hex(cityHash64(number, 12))) || lower(hex(cityHash64(number, 13))),
    'org_' || leftPad(toString(org_n), 4, '0'),
    'u_' || leftPad(toString(org_n), 4, '0') || '_'
        || leftPad(toString(cityHash64(number, 2) % {CH_USERS_PER_ORG}), 3, '0'),
    {list(surfaces)}[surface_i],
    {list(models)}[model_i],
    input_t,
    output_t,
    cache_write_t,
    cache_read_t,
    cost,
    included,
    cost - included,
    toDate('{version.isoformat()}'),
    at,
    addMilliseconds(at, 20 + cityHash64(number, 14) % 200),
    org_n % {PARTITIONS},
    number,
    org_n % {PARTITIONS},
    number
FROM numbers({first}, {count})
"""


def _time_calls(calls: list[Callable[[], object]]) -> list[float]:
    for call in calls[:WARMUP_RUNS]:
        call()
    times = []
    for call in calls:
        begin = time.perf_counter()
        call()
        times.append((time.perf_counter() - begin) * 1000)
    return times


def _org_calls(
    store: Store,
    query: Callable[[Store, str, str], object],
    *,
    month: str,
    runs: int,
    biggest: str,
    rng: random.Random,
) -> tuple[list[float], list[float]]:
    """Times of `runs` calls, and those of the calls on the biggest org (one in four)."""
    orgs = [biggest if n % 4 == 0 else f"org_{rng.randrange(CH_ORGS):04d}" for n in range(runs)]
    times = _time_calls([partial(query, store, org, month) for org in orgs])
    return times, [t for t, org in zip(times, orgs, strict=True) if org == biggest]


def query_bench() -> dict[str, Any]:
    now = datetime.now(UTC).replace(microsecond=0)
    month_start = now.replace(day=1, hour=0, minute=0, second=0)
    previous = (month_start - timedelta(days=1)).replace(day=1)
    since = (previous - timedelta(days=1)).replace(day=1)  # the month before last
    month = f"{now:%Y-%m}"
    with scratch("bench-clickhouse") as directory:
        store = Store(f"chdb://{directory / 'store'}")
        try:
            migrate(store)
            started = time.perf_counter()
            chunk = -(-LOAD_ROWS // LOAD_CHUNKS)
            for first in range(0, LOAD_ROWS, chunk):
                store.command(_load_sql(store, first, min(chunk, LOAD_ROWS - first), since, now))
            load_s = time.perf_counter() - started
            ((rows, daily_rows),) = store.rows(
                f"SELECT (SELECT count() FROM {store.table('usage_events')}), "
                f"(SELECT count() FROM {store.table('usage_daily')})"
            )
            if rows != LOAD_ROWS:
                raise RuntimeError(f"loaded {rows:,} rows, expected {LOAD_ROWS:,}")
            ((biggest, biggest_mtd),) = store.rows(
                f"SELECT org_id, sum(events) FROM {store.table('usage_monthly')} "
                "WHERE month = %(start)s GROUP BY org_id ORDER BY sum(events) DESC LIMIT 1",
                {"start": month_start.date()},
            )
            ((mtd_rows,),) = store.rows(
                f"SELECT sum(events) FROM {store.table('usage_monthly')} WHERE month = %(start)s",
                {"start": month_start.date()},
            )
            rng = random.Random(7)
            results: dict[str, Any] = {
                "load": {
                    "rows": LOAD_ROWS,
                    "orgs": CH_ORGS,
                    "seconds": round(load_s, 2),
                    "rows_per_s": round(LOAD_ROWS / load_s),
                    "usage_daily_rows": int(daily_rows),
                    "month_to_date_rows": int(mtd_rows),
                    "biggest_org": biggest,
                    "biggest_org_month_to_date_rows": int(biggest_mtd),
                    "store_bytes": _du(directory),
                }
            }
            org_queries: list[tuple[str, Callable[[Store, str, str], object], int]] = [
                ("member_spend", queries.member_spend, RUNS_MEMBER),
                ("model_spend", queries.model_spend, RUNS_OTHER),
                ("daily_spend", queries.daily_spend, RUNS_OTHER),
            ]
            for name, query, runs in org_queries:
                times, on_biggest = _org_calls(
                    store, query, month=month, runs=runs, biggest=biggest, rng=rng
                )
                results[name] = {
                    **_latency(times),
                    "biggest_org_p50_ms": percentile(on_biggest, 0.5),
                    "biggest_org_max_ms": round(max(on_biggest), 2),
                }
            results["top_spenders"] = _latency(
                _time_calls([partial(queries.top_spenders, store, month)] * RUNS_TOP)
            )
            ((parts,),) = store.rows(
                "SELECT count() FROM system.parts "
                "WHERE active AND database = %(db)s AND table = 'usage_daily'",
                {"db": store.database},
            )
            results["load"]["usage_daily_parts"] = int(parts)
        finally:
            store.close()
    results["mtd_target_p99_ms"] = MTD_TARGET_P99_MS
    results["mtd_target_met"] = all(
        results[name]["p99_ms"] <= MTD_TARGET_P99_MS
        for name in ("member_spend", "model_spend", "daily_spend", "top_spenders")
    )
    return results


# -- 2. sink rows/s beside the processors ---------------------------------------------


class _GroupProbe:
    """Committed offsets of one consumer group against the ends of its topics: the same
    sums as `metering.topics.consumer_lag`, with one long-lived client (it never joins
    the group) and the committed count kept apart from the lag."""

    def __init__(self, bootstrap: str, group_id: str, topics: list[str]) -> None:
        self._consumer = kafka_clients.consumer(
            {"bootstrap.servers": bootstrap, "group.id": group_id}
        )
        metadata = self._consumer.list_topics(timeout=10).topics
        self._partitions = [
            TopicPartition(topic, p) for topic in topics for p in metadata[topic].partitions
        ]

    def offsets(self) -> dict[str, tuple[int, int]]:
        """Per topic: (committed, end), summed over its partitions."""
        sums: dict[str, tuple[int, int]] = {}
        for tp in self._consumer.committed(self._partitions, timeout=10):
            _low, high = self._consumer.get_watermark_offsets(tp, timeout=10, cached=False)
            committed, end = sums.get(tp.topic, (0, 0))
            sums[tp.topic] = (committed + max(tp.offset, 0), end + high)
        return sums

    def close(self) -> None:
        self._consumer.close()


@dataclass
class _Sample:
    at: float
    processor_lag: int  # usage + account records the processors have not committed
    sink_lag: int  # priced + account records the sink has not committed
    sink_rows: int  # priced records the sink has committed (so inserted)
    priced: int  # priced records on the topic


def _sample(settings: Settings, processors: list[_GroupProbe], sink: _GroupProbe) -> _Sample:
    processor_offsets = [o for probe in processors for o in probe.offsets().values()]
    sink_offsets = sink.offsets()
    rows, priced = sink_offsets[settings.topics.usage_priced]
    return _Sample(
        at=time.perf_counter(),
        processor_lag=sum(end - committed for committed, end in processor_offsets),
        sink_lag=sum(end - committed for committed, end in sink_offsets.values()),
        sink_rows=rows,
        priced=priced,
    )


def _watch(settings: Settings, worker: subprocess.Popen[bytes]) -> list[_Sample]:
    """Samples until the processors have committed the backlog and the sink everything
    they produced."""
    topics = settings.topics
    processors = [
        _GroupProbe(settings.kafka_bootstrap, group, [topic])
        for group, topic in settings.worker_inputs()
    ]
    sink = _GroupProbe(
        settings.kafka_bootstrap,
        settings.sink_group_id,
        [topics.usage_priced, topics.account_events],
    )
    samples: list[_Sample] = []
    deadline = time.perf_counter() + SINK_TIMEOUT_S
    try:
        while True:
            sample = _sample(settings, processors, sink)
            samples.append(sample)
            if sample.processor_lag == 0 and sample.sink_lag == 0 and sample.sink_rows > 0:
                return samples
            if worker.poll() is not None:
                raise RuntimeError(f"the worker exited ({worker.returncode}) before the end")
            if sample.at > deadline:
                raise TimeoutError(f"not caught up after {SINK_TIMEOUT_S:.0f} s: {sample}")
            time.sleep(POLL_S)
    finally:
        for probe in processors:
            probe.close()
        sink.close()


def _open_when_released(url: str, timeout_s: float = 120.0) -> Store:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return Store(url)
        except StoreInUse:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _summarise(samples: list[_Sample], started: float, batch_seconds: float) -> dict[str, Any]:
    proc_done = next(s for s in samples if s.processor_lag == 0)
    sink_done = samples[-1]
    priced = sink_done.priced
    first_proc = next((s for s in samples if s.processor_lag < samples[0].processor_lag), proc_done)
    first_sink = next((s for s in samples if s.sink_rows > 0), sink_done)
    # The sink's best 5-second window.
    window = max(1, round(5 / POLL_S))
    peak = max(
        (
            (b.sink_rows - a.sink_rows) / (b.at - a.at)
            for a, b in zip(samples, samples[window:], strict=False)
        ),
        default=0.0,
    )
    proc_seconds = proc_done.at - started
    catch_up_s = max(sink_done.at - proc_done.at, 0.0)
    lag_at_proc_done = max(priced - proc_done.sink_rows, 0)
    sink_active_s = max(sink_done.at - first_sink.at, 1e-9)
    return {
        "events": SINK_EVENTS,
        "processors": {
            "seconds": round(proc_seconds, 2),
            "events_per_s": round(SINK_EVENTS / proc_seconds),
            # After the group's first commit (start-up and group join excluded).
            "steady_events_per_s": round(
                (first_proc.processor_lag) / max(proc_done.at - first_proc.at, 1e-9)
            ),
        },
        "sink": {
            "priced_rows": priced,
            "seconds": round(sink_done.at - started, 2),
            # From its first commit to its last: the part of the run it had work.
            "rows_per_s": round((priced - first_sink.sink_rows) / sink_active_s),
            "peak_5s_rows_per_s": round(peak),
            "lag_at_processors_done": lag_at_proc_done,
            "finished_after_processors_s": round(catch_up_s, 2),
            # Done within two polls and two batch windows of the processors: it keeps up.
            "keeps_up": catch_up_s <= 2 * (POLL_S + batch_seconds),
        },
    }


def _alone(ns: Namespace, priced: int) -> dict[str, Any]:
    """The sink's own ceiling: `metering sink --once` with a new group and a fresh store
    drains the whole priced topic with nothing else of the pipeline running."""
    settings = ns.variant(
        sink_group_id=f"{ns.settings.sink_group_id}-alone", clickhouse_url=ns.store_url("alone")
    )
    topics = settings.topics
    started = time.perf_counter()
    sink = ns.metering("sink", "--once", settings=settings)
    probe = _GroupProbe(
        settings.kafka_bootstrap,
        settings.sink_group_id,
        [topics.usage_priced, topics.account_events],
    )
    first: tuple[float, int] | None = None
    try:
        while True:
            rows, _end = probe.offsets()[topics.usage_priced]
            now = time.perf_counter()
            if first is None and rows > 0:
                first = (now, rows)
            if rows >= priced:
                break
            if sink.poll() is not None:
                raise RuntimeError(f"`metering sink --once` exited ({sink.returncode}) early")
            if now - started > SINK_TIMEOUT_S:
                raise TimeoutError(f"`metering sink --once` not done after {SINK_TIMEOUT_S} s")
            time.sleep(POLL_S)
        sink.wait(timeout=120)
    finally:
        probe.close()
        ns.stop(sink)
    since_first = now - first[0] if first else 0.0
    return {
        "rows": priced,
        "seconds": round(now - started, 2),  # store open, migrations and group join included
        "rows_per_s": round((priced - first[1]) / since_first) if first and since_first else None,
    }


def sink_bench() -> dict[str, Any]:
    with Namespace.create(
        "benchch", partitions=PARTITIONS, log="bench-clickhouse-worker.log"
    ) as ns:
        return _sink_bench(ns)


def _sink_bench(ns: Namespace) -> dict[str, Any]:
    settings = ns.settings
    traffic = TrafficGenerator(
        seed=98,
        orgs=SINK_ORGS,
        members_per_org=10,
        start=datetime.now(UTC) - timedelta(hours=1),
    )
    accounts = ns.emit_backlog(traffic, SINK_EVENTS)
    started = time.perf_counter()
    worker = ns.metering("worker", sink_in_worker=True)
    samples = _watch(settings, worker)
    topics = settings.topics  # cross-check with the project's own lag function
    sink_lag = consumer_lag(
        settings.kafka_bootstrap,
        settings.sink_group_id,
        [topics.usage_priced, topics.account_events],
    )
    if sink_lag:
        raise RuntimeError(f"the sink's lag is {sink_lag}, not 0")
    worker.send_signal(signal.SIGTERM)  # the sink child flushes and exits with it
    worker.wait(timeout=120)
    stopped = time.perf_counter()
    with _open_when_released(settings.clickhouse_url) as store:
        ((rows, distinct, rollup, account_rows),) = store.rows(
            f"SELECT (SELECT count() FROM {store.table('usage_events')}), "
            f"(SELECT uniqExact(event_id) FROM {store.table('usage_events')}), "
            f"(SELECT sum(events) FROM {store.table('usage_daily')}), "
            f"(SELECT count() FROM {store.table('account_events')})"
        )
    results = _summarise(samples, started, settings.sink_batch_seconds)
    priced = results["sink"]["priced_rows"]
    results["sink"].update(
        {
            "stored_rows": int(rows),
            "stored_distinct_event_ids": int(distinct),
            "usage_daily_events": int(rollup),
            "account_rows": int(account_rows),
            "account_events": len(accounts),
            "rows_match_priced": int(rows) == priced == int(distinct) == int(rollup),
            "worker_stop_s": round(stopped - samples[-1].at, 2),
        }
    )
    results["sink_alone"] = _alone(ns, priced)
    return results


def main() -> None:
    results = {"queries": query_bench()}
    results.update(sink_bench())

    q, load = results["queries"], results["queries"]["load"]
    table = Table(
        "benchmark",
        "result",
        title=f"ClickHouse (embedded chDB): {load['rows']:,} stored events, sink beside 1 worker",
    )
    table.add_row(
        "bulk load (INSERT … SELECT, views included)",
        f"{load['rows_per_s']:,} rows/s ({load['rows']:,} rows in {load['seconds']} s; "
        f"{load['usage_daily_rows']:,} usage_daily rows; "
        f"{load['store_bytes'] / 2**20:,.0f} MiB on disk, before merges)",
    )
    for name in ("member_spend", "model_spend", "daily_spend"):
        r = q[name]
        table.add_row(
            f"{name} (this month)",
            f"p50 {r['p50_ms']} ms · p99 {r['p99_ms']} ms · max {r['max_ms']} ms "
            f"({r['runs']} runs; biggest org p50 {r['biggest_org_p50_ms']} ms)",
        )
    t = q["top_spenders"]
    table.add_row(
        "top_spenders (this month)",
        f"p50 {t['p50_ms']} ms · p99 {t['p99_ms']} ms · max {t['max_ms']} ms ({t['runs']} runs)",
    )
    table.add_row(
        f"MTD p99 ≤ {MTD_TARGET_P99_MS:g} ms",
        "met" if q["mtd_target_met"] else "NOT met",
    )
    p, s = results["processors"], results["sink"]
    table.add_row(
        "processors (1 worker)",
        f"{p['events_per_s']:,} events/s ({results['events']:,} events, {p['seconds']} s; "
        f"{p['steady_events_per_s']:,}/s after the first commit)",
    )
    table.add_row(
        "sink (child of the worker)",
        f"{s['rows_per_s']:,} rows/s sustained ({s['priced_rows']:,} rows, done at "
        f"{s['seconds']} s); best 5 s {s['peak_5s_rows_per_s']:,} rows/s",
    )
    table.add_row(
        "sink vs processors",
        f"{'keeps up' if s['keeps_up'] else 'falls behind'}: lag {s['lag_at_processors_done']:,}"
        f" rows when the processors finished, done {s['finished_after_processors_s']} s later"
        f" (sampled every {POLL_S} s)",
    )
    a = results["sink_alone"]
    table.add_row(
        "sink alone (`metering sink --once`, backlog)",
        f"{a['rows_per_s'] or 0:,} rows/s after its first commit ({a['rows']:,} rows, "
        f"{a['seconds']} s with start-up)",
    )
    table.add_row(
        "stored rows = priced records",
        f"{'yes' if s['rows_match_priced'] else 'NO'} ({s['stored_rows']:,} rows, "
        f"{s['stored_distinct_event_ids']:,} event ids, rollup {s['usage_daily_events']:,})",
    )
    Console().print(table)
    record("clickhouse", results)


if __name__ == "__main__":
    main()
