"""Notifier benchmark (`make bench`): notifications delivered per second, and the latency
from the decision (the notification's publication on `billing.notifications.v1`) to the
webhook's receipt, on a private namespace (`bench.harness`).

Set-up: ORGS orgs, each with a webhook endpoint (an account event, folded into Redis by a
real `metering worker`) at its own path of one receiver on loopback, which verifies
every signature with the org's secret (`metering.notify.receiver`). Then, with a real
`metering notifier`:
- throughput: a backlog of BACKLOG notifications published before the notifier starts,
  timed from the first receipt to the last (distinct webhook-ids);
- latency: PACED_RATE_PER_S notifications a second for PACED_SECONDS, each timed from
  its publication (the record's timestamp, carried in the body's `timestamp`) to its
  receipt; p50/p99/max.
Notifications are published directly (as the worker publishes them): the worker's own
event → decision latency is the pipeline benchmark's event → block. The receiver is a
Python thread server in this process, on the same two cores: it is part of what is
measured. Results in bench/results.json, section "notifier".
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import redis
from confluent_kafka import Producer
from rich.console import Console
from rich.table import Table

from bench.harness import Namespace, percentile, record
from metering.enforcement.keys import OrgKeys
from metering.notify.receiver import LocalReceiver
from metering.notify.secrets import webhook_secret
from schemas.outputs import Notification, NotificationKind
from schemas.validation import encode_event

ORGS = 50
BACKLOG = 5_000
PACED_RATE_PER_S = 100
PACED_SECONDS = 20
PARTITIONS = 12
KEY = "bench-webhook-signing-key-0123456789abcdef"
TIMEOUT_S = 300


def _orgs(ns: Namespace, receiver: LocalReceiver) -> list[str]:
    orgs = [f"bench-notify-{n}" for n in range(ORGS)]
    now = datetime.now(UTC).isoformat()
    with ns.emitter() as emitter:
        for org in orgs:
            path = f"/{org}"
            receiver.secrets[path] = webhook_secret(KEY.encode(), org, f"s-{org}")
            for kind, data in (
                (
                    "org.created",
                    {
                        "plan": "usage_based",
                        "billing_mode": "sales_assisted",
                        "term_start": now[:10],
                        "seats": {"enterprise": 1},
                    },
                ),
                ("notification_endpoint.set", {"url": receiver.url(path), "secret_id": f"s-{org}"}),
            ):
                emitter.emit_account(
                    {
                        "event_id": f"{org}-{kind}",
                        "type": kind,
                        "org_id": org,
                        "occurred_at": now,
                        "actor": None,
                        "data": data,
                    }
                )
    client = redis.Redis.from_url(ns.settings.redis_url)
    deadline = time.monotonic() + TIMEOUT_S
    for org in orgs:  # until the worker has folded every endpoint into Redis
        while b"webhook" not in (client.get(OrgKeys(ns.settings.redis_prefix, org).account) or b""):
            if time.monotonic() > deadline:
                raise TimeoutError("the worker did not apply the endpoints")
            time.sleep(0.1)
    client.close()
    return orgs


def _notification(org: str, n: int, tag: str) -> Notification:
    return Notification(
        notification_id=f"{org}:2026-01:threshold:{tag}{n}|0.5",
        kind=NotificationKind.THRESHOLD_REACHED,
        org_id=org,
        user_id=f"u{n}",
        month="2026-01",
        threshold="0.5",
        spend=5_000_000_000,
        cap=10_000_000_000,
    )


def _wait(receiver: LocalReceiver, ids: set[str]) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not ids <= set(receiver.unique()):
        if time.monotonic() > deadline:
            missing = len(ids - set(receiver.unique()))
            raise TimeoutError(f"{missing} notifications not delivered")
        time.sleep(0.05)


def main() -> None:
    with Namespace.create(
        "benchnotify",
        partitions=PARTITIONS,
        log="bench-notifier.log",
        webhook_allow_private=True,
        webhook_signing_key=KEY,
    ) as ns:
        settings = ns.variant(notifier_group_id=f"{ns.settings.group_id}-notifier")
        ns.groups.add(settings.notifier_group_id)
        receiver = LocalReceiver().start()
        try:
            ns.metering("worker", sink_in_worker=False)
            orgs = _orgs(ns, receiver)
            producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, "linger.ms": 5})
            topic = ns.topics.notifications

            backlog = [_notification(orgs[n % ORGS], n, "b") for n in range(BACKLOG)]
            for item in backlog:
                producer.produce(topic, key=item.org_id.encode(), value=encode_event(item))
            producer.flush(60)
            ns.metering("notifier", settings=settings)
            _wait(receiver, {n.notification_id for n in backlog})
            got = [receiver.unique()[n.notification_id].received_at for n in backlog]
            seconds = max(got) - min(got)

            paced = []
            started = time.perf_counter()
            for n in range(PACED_RATE_PER_S * PACED_SECONDS):
                due = started + n / PACED_RATE_PER_S
                time.sleep(max(due - time.perf_counter(), 0))
                item = _notification(orgs[n % ORGS], n, "p")
                producer.produce(topic, key=item.org_id.encode(), value=encode_event(item))
                producer.poll(0)
                paced.append(item.notification_id)
            producer.flush(60)
            _wait(receiver, set(paced))
            unique = receiver.unique()
            latencies = [(unique[i].received_at - unique[i].decided_at) * 1000 for i in paced]
            verified = all(r.verified for r in receiver.receipts)
            repeats = len(receiver.receipts) - len(unique)
        finally:
            receiver.stop()
    t = {
        "orgs": ORGS,
        "notifications": BACKLOG,
        "seconds": round(seconds, 3),
        "delivered_per_s": round(BACKLOG / seconds),
    }
    p = {
        "rate_per_s": PACED_RATE_PER_S,
        "notifications": len(paced),
        "latency_ms_p50": percentile(latencies, 0.5, 1),
        "latency_ms_p99": percentile(latencies, 0.99, 1),
        "latency_ms_max": round(max(latencies), 1),
    }
    results = {"throughput": t, "latency": p, "signatures_verified": verified, "repeats": repeats}
    table = Table("benchmark", "result", title="Notifier → webhook receiver on loopback")
    table.add_row(
        "notifications delivered",
        f"{t['delivered_per_s']:,}/s ({t['notifications']:,} to {t['orgs']} endpoints)",
    )
    table.add_row(
        f"decision → webhook receipt at {p['rate_per_s']}/s",
        f"p50 {p['latency_ms_p50']} ms · p99 {p['latency_ms_p99']} ms · "
        f"max {p['latency_ms_max']} ms",
    )
    table.add_row("signatures verified · repeats", f"{verified} · {repeats}")
    Console().print(table)
    record("notifier", results)


if __name__ == "__main__":
    main()
