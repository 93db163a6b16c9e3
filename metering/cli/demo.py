"""`metering demo`: the whole system on sample traffic, from one command.

1. starts the local stack and `metering run` (processors, HTTP API, ClickHouse sink);
2. creates a few dozen orgs (every plan × billing mode, credit purchases — some too
   small —, org and user caps) and drives last month's traffic plus this month's to date
   through the emitter, in bursts, showing events/s, dead letters, blocks and
   notifications live;
3. registers a webhook endpoint for every org through the API, pointing at a receiver
   the demo runs on loopback (which verifies each signature), and shows what the
   notifier delivered;
4. waits until everything is priced and stored, saves the Usage page of one org of each
   kind (this month and last) from the running API, and screenshots of the console as
   one org's owner and one of its members see it (signed in with login links);
5. stops `metering run`, runs the month-end batch for last month and prints the
   documents; JSON + HTML land in `var/demo/documents/YYYY-MM/`; last, it prints a login
   link for that owner, to open the console once `metering run` serves it again.

Each run uses new org ids (from its seed, by default the clock), so running it twice
adds a second set of orgs: the first set's documents are already issued and stay as they
are.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer
from confluent_kafka import OFFSET_END, TopicPartition
from rich.live import Live
from rich.table import Table

from metering import kafka_clients
from metering.api.session import login_link, login_token
from metering.api.tokens import issue, load_secret
from metering.cli.console_shots import save_console_screenshots
from metering.cli.output import console, fail
from metering.clickhouse.store import StoreInUse
from metering.documents.batch import BillingBatch
from metering.documents.schedule import last_closed_month
from metering.documents.service import store_with_sink, utc_now
from metering.documents.store import StoredDocument
from metering.documents.watermarks import SinkBehind
from metering.emitter import Emitter
from metering.notify.receiver import LocalReceiver
from metering.settings import Settings
from metering.stack.local import LocalStack
from metering.stack.process import StackError, free_port, stop_child
from metering.topics import admin_client, consumer_lag, groups_lag
from metering.traffic import OrgProfile, TrafficGenerator
from schemas.account import BillingMode, Plan

CATCH_UP_TIMEOUT_S = 300
WEBHOOKS_TIMEOUT_S = 60
API_READY_TIMEOUT_S = 60
CONSOLE_LINK_TTL = timedelta(hours=1)  # the owner's login link the demo prints


class OutputTail:
    """Counts what the pipeline writes while the demo runs: dead letters by reason and
    notifications by kind (stops and resumes by reason), from the topics' ends at start."""

    def __init__(self, settings: Settings) -> None:
        self.dead: Counter[str] = Counter()
        self.notes: Counter[str] = Counter()
        self.deliveries: Counter[str] = Counter()  # attempts by channel and status
        self._stop = threading.Event()
        self._consumer = kafka_clients.consumer(
            {
                "bootstrap.servers": settings.kafka_bootstrap,
                "group.id": f"metering-demo-tail-{os.getpid()}",
                "enable.auto.commit": False,
            }
        )
        topics = (
            settings.topics.usage_deadletter,
            settings.topics.notifications,
            settings.topics.notification_deliveries,
        )
        metadata = admin_client(settings.kafka_bootstrap).list_topics(timeout=10).topics
        self._consumer.assign(
            [TopicPartition(t, p, OFFSET_END) for t in topics for p in metadata[t].partitions]
        )
        self._deadletter = settings.topics.usage_deadletter
        self._deliveries = settings.topics.notification_deliveries
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for message in self._consumer.consume(num_messages=500, timeout=0.2):
                if message.error() or message.value() is None:
                    continue
                value = json.loads(message.value() or b"{}")
                if message.topic() == self._deadletter:
                    self.dead[value.get("reason", "?")] += 1
                elif message.topic() == self._deliveries:
                    self.deliveries[f"{value.get('channel')} {value.get('status')}"] += 1
                elif value.get("kind") in ("stopped", "resumed"):
                    self.notes[f"{value['kind']}: {value.get('reason')}"] += 1
                else:
                    self.notes[str(value.get("kind"))] += 1

    def stops(self) -> int:
        """The "stopped" notifications seen (every reason)."""
        return sum(n for kind, n in self.notes.items() if kind.startswith("stopped"))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._consumer.close()


def _emitter(settings: Settings) -> Emitter:
    topics = settings.topics
    return Emitter(
        settings.kafka_bootstrap,
        usage_topic=topics.usage_events,
        account_topic=topics.account_events,
    )


def _lag(settings: Settings) -> int:
    """Records the processors, then the ClickHouse sink, have not committed yet."""
    topics, bootstrap = settings.topics, settings.kafka_bootstrap
    sink = [topics.usage_priced, topics.account_outcomes]
    return groups_lag(bootstrap, settings.worker_inputs()) + consumer_lag(
        bootstrap, settings.sink_group_id, sink
    )


def _wait_caught_up(settings: Settings, run: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + CATCH_UP_TIMEOUT_S
    with console.status(what) as status:
        while (lag := _lag(settings)) > 0:
            if run.poll() is not None:
                fail(f"`metering run` exited ({run.returncode}); see var/demo/run.log")
            if time.monotonic() > deadline:
                fail(f"the pipeline is still {lag:,} records behind after {CATCH_UP_TIMEOUT_S} s")
            status.update(f"{what} {lag:,} to go")
            time.sleep(0.3)


def _progress_table(
    sent: int, total: int, rate: float | None, tail: OutputTail, title: str = "Traffic"
) -> Table:
    table = Table(title=title, show_header=False, min_width=60)
    table.add_row("usage events sent", f"{sent:,} / {total:,}")
    if rate is not None:
        table.add_row("events/s (last second)", f"{rate:,.0f}")
    for reason, count in tail.dead.most_common():
        table.add_row(f"dead-lettered: {reason}", f"{count:,}")
    for kind, count in sorted(tail.notes.items()):
        table.add_row(f"notification {kind}", f"{count:,}")
    return table


def _drive(
    settings: Settings,
    traffic: TrafficGenerator,
    batches: list[tuple[int, datetime, timedelta]],
    run_id: str,
    tail: OutputTail,
) -> int:
    """Emit the usage in bursts of varying size (product traffic is not a flat line),
    with a live table. Returns how many events were sent."""
    rng = random.Random(traffic.seed)
    total = sum(count for count, _, _ in batches)
    sent, window_start, window_sent, rate = 0, time.monotonic(), 0, 0.0
    with (
        _emitter(settings) as emitter,
        Live(_progress_table(0, total, 0, tail), console=console, refresh_per_second=4) as live,
    ):
        for part, (count, start, span) in enumerate(batches):
            events = traffic.usage_events(count, span, id_prefix=f"{run_id}p{part}", start=start)
            burst_left = 0
            for raw in events:
                if burst_left == 0:  # a short pause, then a burst of 50–2,000 events
                    emitter.flush(10)
                    time.sleep(rng.uniform(0.0, 0.05))
                    burst_left = rng.randint(50, 2_000)
                emitter.emit_usage(raw)
                burst_left -= 1
                sent += 1
                window_sent += 1
                now = time.monotonic()
                if now - window_start >= 1.0:
                    rate, window_start, window_sent = window_sent / (now - window_start), now, 0
                if sent % 500 == 0:
                    live.update(_progress_table(sent, total, rate, tail))
        live.update(_progress_table(sent, total, rate, tail))
    return sent


def _save_usage_pages(
    settings: Settings, port: int, orgs: list[OrgProfile], months: list[str], out: Path
) -> list[Path]:
    """The Usage page (R18) of one org per plan × billing mode, from the running API."""
    secret = load_secret(settings.api_secret, settings.var_dir)
    saved = []
    kinds_seen: set[tuple[str, str]] = set()
    for org in orgs:
        kind = (org.plan.value, org.billing_mode.value)
        if kind in kinds_seen:
            continue
        kinds_seen.add(kind)
        token = issue(
            secret,
            now=datetime.now(UTC),
            ttl=timedelta(hours=1),
            org_id=org.org_id,
            user_id=org.members[0],
        )
        for month in months:
            query = urllib.parse.urlencode({"month": month})
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/orgs/{org.org_id}/usage?{query}",
                headers={"Authorization": f"Bearer {token}"},
            )
            with urllib.request.urlopen(request, timeout=30) as page:
                path = out / f"usage-{org.org_id}-{month}.html"
                path.write_bytes(page.read())
            saved.append(path)
    return saved


def _register_endpoints(
    settings: Settings, port: int, orgs: list[OrgProfile], receiver: LocalReceiver
) -> None:
    """Every org's webhook endpoint, registered by its owner through the API, at a path
    of the demo's receiver, which keeps the secret the API revealed to check signatures."""
    secret = load_secret(settings.api_secret, settings.var_dir)
    for org in orgs:
        token = issue(
            secret,
            now=datetime.now(UTC),
            ttl=timedelta(hours=1),
            org_id=org.org_id,
            user_id=org.members[0],
        )
        path = f"/hooks/{org.org_id}"
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/orgs/{org.org_id}/notification-endpoint",
            data=json.dumps({"url": receiver.url(path)}).encode(),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            method="PUT",
        )
        with urllib.request.urlopen(request, timeout=30) as answer:
            receiver.secrets[path] = json.loads(answer.read())["secret"]


def _wait_for_webhooks(tail: OutputTail, receiver: LocalReceiver) -> None:
    """Until the receiver has every notification the pipeline published (or a minute),
    then what was delivered."""
    deadline = time.monotonic() + WEBHOOKS_TIMEOUT_S
    with console.status("delivering notifications…") as status:
        while (left := sum(tail.notes.values()) - len(receiver.unique())) > 0:
            if time.monotonic() > deadline:
                console.print(f"[yellow]{left} notifications not delivered after a minute")
                break
            status.update(f"delivering notifications… {left} to go")
            time.sleep(0.3)
    time.sleep(1.0)  # the tail reads the last delivery records
    console.print(_deliveries_table(tail, receiver))


def _deliveries_table(tail: OutputTail, receiver: LocalReceiver) -> Table:
    unique = receiver.unique()
    latencies = sorted(max(r.received_at - r.decided_at, 0.0) for r in unique.values())
    table = Table(title="Notification deliveries (webhooks to the demo's receiver)")
    table.add_column("what")
    table.add_column("count", justify="right")
    table.add_row("notifications published", f"{sum(tail.notes.values()):,}")
    table.add_row("webhooks received (distinct webhook-id)", f"{len(unique):,}")
    verified = sum(1 for r in receiver.receipts if r.verified)
    table.add_row("signatures verified", f"{verified:,} of {len(receiver.receipts):,}")
    table.add_row("repeats (same webhook-id)", f"{len(receiver.receipts) - len(unique):,}")
    for kind, count in sorted(Counter(r.kind for r in unique.values()).items()):
        table.add_row(f"  {kind}", f"{count:,}")
    for status, count in sorted(tail.deliveries.items()):
        table.add_row(f"delivery records: {status}", f"{count:,}")
    if latencies:
        p50 = latencies[len(latencies) // 2]
        p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
        table.add_row("decision → receipt p50 / p99", f"{p50 * 1000:,.0f} / {p99 * 1000:,.0f} ms")
    return table


def _wait_for_api(port: int, run: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + API_READY_TIMEOUT_S
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/openapi.json", timeout=1):
                return
        except OSError:  # refused, reset or timed out: not listening yet
            if run.poll() is not None or time.monotonic() > deadline:
                fail("the HTTP API of `metering run` did not start; see var/demo/run.log")
            time.sleep(0.3)


def demo(
    orgs: Annotated[int, typer.Option(help="organizations to simulate")] = 36,
    members: Annotated[int, typer.Option(help="members per organization")] = 6,
    events: Annotated[int, typer.Option(help="usage events (last month + this month)")] = 40_000,
    seed: Annotated[int | None, typer.Option(help="traffic seed; default: the clock")] = None,
) -> None:
    """The whole pipeline on sample traffic: stack, `metering run`, a month of usage, the
    month-end documents."""
    settings = Settings()
    started = time.monotonic()
    try:
        with console.status("starting the local stack…"):
            LocalStack(settings).up()
    except StackError as exc:
        fail(str(exc))
    now = datetime.now(UTC)
    run_seed = seed if seed is not None else int(now.timestamp()) % 1_000_000
    month = last_closed_month(now)
    last_start = datetime.fromisoformat(f"{month}-01T00:00:00+00:00")
    this_start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    traffic = TrafficGenerator(run_seed, orgs, members, last_start)
    out = settings.var_dir / "demo"
    out.mkdir(parents=True, exist_ok=True)
    port = free_port()

    with (out / "run.log").open("ab") as log:
        run = subprocess.Popen(
            [str(Path(sys.executable).parent / "metering"), "run"],
            env={
                **os.environ,
                "METERING_HTTP_PORT": str(port),
                # the demo runs the month-end batch itself, once its traffic is in
                "METERING_BILLING_SCHEDULE": "false",
                # it backfills last month from its first day: up to 62 days late
                "METERING_MAX_EVENT_AGE_DAYS": "62",
                # its webhook receiver listens on loopback
                "METERING_WEBHOOK_ALLOW_PRIVATE": "true",
            },
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    tail = OutputTail(settings)
    receiver = LocalReceiver().start()
    try:
        with _emitter(settings) as emitter:
            for event in traffic.account_events():
                emitter.emit_account(event)
        _wait_caught_up(settings, run, "creating orgs…")
        _wait_for_api(port, run)
        _register_endpoints(settings, port, traffic.orgs, receiver)
        _wait_caught_up(settings, run, "registering webhook endpoints…")
        sent = _drive(
            settings,
            traffic,
            [
                (events * 3 // 4, last_start, this_start - last_start),
                (events - events * 3 // 4, this_start, now - timedelta(minutes=1) - this_start),
            ],
            f"demo{run_seed}",
            tail,
        )
        _poison(settings, f"demo{run_seed}", traffic.orgs[0].org_id, traffic.orgs[0].members[0])
        _wait_caught_up(settings, run, "pricing and storing…")
        time.sleep(1.0)  # the tail reads the last notifications and dead letters
        console.print(_progress_table(sent, sent, None, tail, title="Pipeline output"))
        _wait_for_webhooks(tail, receiver)
        pages = _save_usage_pages(settings, port, traffic.orgs, [now.strftime("%Y-%m"), month], out)
        console_view = _screenshots(settings, port, _console_org(traffic.orgs), out)
    finally:
        tail.close()
        stop_child(run, timeout_s=60)
        receiver.stop()

    documents_dir = out / "documents" / month
    try:
        with (
            console.status(f"month-end batch for {month}…"),
            store_with_sink(settings) as store,
        ):
            report = BillingBatch(settings, store, clock=utc_now).run(month, documents_dir)
    except (StoreInUse, SinkBehind) as exc:
        fail(str(exc))

    console.print(_documents_table(report.documents, traffic, month))
    console.print(
        f"{orgs} orgs × {members} members, {sent:,} usage events + {POISON} poison "
        f"({events * 3 // 4:,} in {month}, the rest this month to date); "
        f"{sum(tail.dead.values()):,} dead-lettered, {tail.stops():,} stops notified; "
        f"{sum(report.issued.values())} documents issued by the batch now. "
        f"Files: {documents_dir}/ (JSON + HTML); Usage pages: "
        f"{', '.join(p.name for p in pages[:2])}… in {out}/. "
        f"Took {time.monotonic() - started:.0f} s."
    )
    _print_console(settings, *console_view)


def _print_console(settings: Settings, shown: OrgProfile, shots: list[Path] | str) -> None:
    """Where the screenshots are, and a login link for the org's primary owner."""
    if isinstance(shots, str):
        console.print(shots)
    else:
        console.print(f"Console screenshots (owner, member): {', '.join(map(str, shots))}")
    token = login_token(
        load_secret(settings.api_secret, settings.var_dir),
        shown.org_id,
        shown.members[0],
        now=datetime.now(UTC),
        ttl=CONSOLE_LINK_TTL,
    )
    console.print(
        f"Open the console as {shown.org_id}'s primary owner: run `.venv/bin/metering run` "
        f"(the API on {settings.console_url}), then open, once, within "
        f"{CONSOLE_LINK_TTL.total_seconds() / 3600:.0f} hour:\n"
        f"{login_link(settings.console_url, token)}",
        soft_wrap=True,
        highlight=False,
    )


def _screenshots(
    settings: Settings, port: int, shown: OrgProfile, out: Path
) -> tuple[OrgProfile, list[Path] | str]:
    return shown, save_console_screenshots(
        load_secret(settings.api_secret, settings.var_dir),
        f"http://127.0.0.1:{port}",
        shown.org_id,
        {"console-owner.png": shown.members[0], "console-member.png": shown.members[1]},
        out,
    )


def _console_org(orgs: list[OrgProfile]) -> OrgProfile:
    """The org whose console the demo shows: self-serve and seat-based when there is one
    (credits, caps and included usage on one page)."""
    return next(
        (
            org
            for org in orgs
            if org.billing_mode is BillingMode.SELF_SERVE
            and org.plan is Plan.SEAT_BASED
            and len(org.members) > 1
        ),
        orgs[0],
    )


def _documents_table(
    documents: list[StoredDocument], traffic: TrafficGenerator, month: str
) -> Table:
    """This run's documents of the month, summed per plan × billing mode × kind."""
    profile = {org.org_id: org for org in traffic.orgs}
    groups: dict[tuple[str, str, str], list[int]] = {}
    for document in documents:
        org = profile.get(document.org_id)
        if org is None:  # an earlier run's org
            continue
        key = (org.plan.value, org.billing_mode.value, document.kind)
        groups.setdefault(key, []).append(document.total_cents)
    table = Table(
        "plan",
        "billing mode",
        "document",
        "count",
        "total (USD)",
        "largest (USD)",
        title=f"Documents of {month} (this run's orgs)",
    )
    for (plan, mode, kind), totals in sorted(groups.items()):
        table.add_row(
            plan,
            mode,
            kind,
            str(len(totals)),
            f"{sum(totals) / 100:,.2f}",
            f"{max(totals) / 100:,.2f}",
        )
    return table


POISON = 30


def _poison(settings: Settings, run_id: str, org_id: str, user_id: str) -> None:
    """Bad input of several kinds, straight to the topic (the emitter SDK would refuse
    it): malformed JSON, an unknown model, a negative token count, an event from the
    future. Each must be dead-lettered with its reason, never dropped."""
    producer = kafka_clients.producer({"bootstrap.servers": settings.kafka_bootstrap})
    future = (datetime.now(UTC) + timedelta(hours=2)).isoformat()
    for n in range(POISON):
        event = {
            "event_id": f"{run_id}-poison-{n}",
            "org_id": org_id,
            "user_id": user_id,
            "surface": "chat_web",
            "model": "claude-sonnet-4-5",
            "input_tokens": 10,
            "output_tokens": 10,
            "occurred_at": datetime.now(UTC).isoformat(),
        }
        match n % 4:
            case 0:
                value = b"{not json"
            case 1:
                value = json.dumps({**event, "model": "claude-unknown-9"}).encode()
            case 2:
                value = json.dumps({**event, "input_tokens": -5}).encode()
            case _:
                value = json.dumps({**event, "occurred_at": future}).encode()
        producer.produce(settings.topics.usage_events, value=value, key=org_id.encode())
    producer.flush(30)
