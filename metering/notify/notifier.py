"""`metering notifier`: delivers the notifications of `billing.notifications.v1` to people.

A faust-streaming app (its own consumer group) with two agents:
- `notifications` takes each notification and starts one delivery per channel the org
  routes its kind to: a webhook to the org's endpoint, an email to its owners (and to
  the member, for their own cap notifications);
- `deliveries` reads the notifier's own attempt log, `billing.notification_deliveries.v1`,
  and carries out the attempts it scheduled (records `retrying` or `deferred`).

Every attempt ends in a record on that topic: `delivered`, `retrying` (with the time of
the next attempt: exponential back-off with ±20 % jitter, for up to 24 h after the first
attempt), `deferred` (the endpoint had too many deliveries waiting), `failed` (final,
also sent to `billing.notification_deadletter.v1` with the reason) or `cancelled` (the
endpoint or the recipients went away). So the schedule of retries lives in Kafka, not in
this process: a record is acknowledged to faust only once its outcome record (and dead
letter) is acknowledged by the broker, and offsets are acknowledged in order per
partition — the committed offset never passes a notification or a scheduled retry whose
next step is not durable. A SIGKILL therefore loses nothing: what was not committed is
read again and delivered again, with the same `webhook-id` (the notification's id).

To keep such repeats rare, the highest step of each delivery chain whose successor is
durable is remembered in Redis (`{org}:delivery:<delivery_id>`, 100 days); a record at
or below it is skipped. Losing Redis only means repeats, never losses.

Back-pressure and isolation: each record runs in a task of its own, so a slow endpoint
holds only its own deliveries. At most `notify_endpoint_concurrency` requests go to one
endpoint (the SMTP server counts as one) and `notify_concurrency` overall; deliveries
beyond 25 × the per-endpoint bound waiting for one endpoint are deferred (a record, not
memory); each agent holds at most MAX_TAKEN records not yet acknowledged, and waits for
room before taking more.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import threading
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn

import faust
from confluent_kafka import KafkaException
from pydantic import ValidationError
from redis.asyncio import Redis
from redis.exceptions import RedisError

from billing.accounts import MONEY_ROLES, OrgAccount
from metering.enforcement.keys import OrgKeys
from metering.enforcement.publisher import Publisher, PublishFailed
from metering.enforcement.records import OutputMessage
from metering.enforcement.state_codec import decode_account
from metering.notify.channels import (
    EmailSender,
    Outcome,
    SmtpServer,
    Verdict,
    WebhookSender,
    close_quietly,
)
from metering.notify.messages import email_message, webhook_body
from metering.notify.secrets import signing_key, webhook_secret
from metering.redis_clients import REDIS_RETRYABLE, async_client
from metering.retry import backoff_s
from metering.settings import Settings
from metering.topics import wait_for_topics
from schemas.outputs import (
    DeliveryChannel,
    DeliveryDeadLetter,
    DeliveryFailure,
    DeliveryStatus,
    Notification,
    NotificationDelivery,
    NotificationKind,
)
from schemas.validation import encode_event

# Any Redis failure is retried here (cluster ones included): losing Redis only repeats.
REDIS_ERRORS: tuple[type[Exception], ...] = (RedisError, *REDIS_RETRYABLE)

log = logging.getLogger("metering.notifier")

MARK_TTL_S = 100 * 24 * 3600  # beyond the notifications' 90 days: a replay finds its marks
MAX_TAKEN = {"notifications": 1000, "deliveries": 20_000}  # records held, per agent
WAITING_PER_SLOT = 25  # deliveries that may wait per per-endpoint slot before deferral
JITTER = 0.2
SMTP_TIMEOUT_S = 30.0
EXIT_UNEXPECTED = 70
ROTATION_OVERLAP = timedelta(hours=24)  # the previous secret signs too, for this long
SMTP = "smtp"  # the per-endpoint limiter of the SMTP server
OWNER_KINDS = frozenset(NotificationKind)  # every kind goes to the owners
MEMBER_KINDS = frozenset(
    {NotificationKind.THRESHOLD_REACHED, NotificationKind.STOPPED, NotificationKind.RESUMED}
)

# Step 0 of a chain is the notification itself; this script records the highest step
# whose successor is durable (never lowering it: two processes may overlap a rebalance).
_MARK = """
local current = tonumber(redis.call('GET', KEYS[1]) or '-1')
if tonumber(ARGV[1]) > current then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
end
return current
"""


@dataclass(frozen=True)
class Job:
    """The next step of one delivery chain: (notification, channel, drive)."""

    notification: Notification
    channel: DeliveryChannel
    decided_at: datetime
    drive: str = ""
    step: int = 0  # of the record that asks for this step (0: the notification)
    attempt: int = 0  # tries so far
    first_attempt_at: datetime | None = None
    due: datetime | None = None

    @property
    def delivery_id(self) -> str:
        base = f"{self.notification.notification_id}:{self.channel.value}"
        return f"{base}:{self.drive}" if self.drive else base

    @classmethod
    def scheduled(cls, record: NotificationDelivery) -> Job:
        return cls(
            notification=record.notification,
            channel=record.channel,
            decided_at=record.decided_at,
            drive=record.drive,
            step=record.step,
            attempt=record.attempt,
            first_attempt_at=record.first_attempt_at,
            due=record.next_attempt_at,
        )


@dataclass(frozen=True)
class Target:
    """Where one attempt goes: `endpoint` as recorded, `limiter` the per-endpoint bound."""

    endpoint: str
    limiter: str
    attempt: Callable[[], Awaitable[Outcome]]


class Limiter:
    """At most `slots` attempts at once to one endpoint; how many wait for a slot."""

    def __init__(self, slots: int) -> None:
        self.slots = asyncio.Semaphore(slots)
        self.waiting = 0


def retry_delay_s(settings: Settings, attempt: int) -> float:
    """Before try `attempt + 1`: base × 2^(attempt − 1), at most the maximum, ±20 %."""
    doubled = settings.notify_retry_base_seconds * float(2 ** max(attempt - 1, 0))
    delay = min(doubled, settings.notify_retry_max_seconds)
    jitter: float = random.uniform(1 - JITTER, 1 + JITTER)
    return delay * jitter


def recipients(state: OrgAccount, notification: Notification) -> list[str]:
    """The org's owners with an address, and the member a cap notification is about."""
    found = {
        member.email
        for member in state.members.values()
        if member.email and member.role in MONEY_ROLES and notification.kind in OWNER_KINDS
    }
    subject = state.members.get(notification.user_id or "")
    if subject is not None and subject.email and notification.kind in MEMBER_KINDS:
        found.add(subject.email)
    return sorted(found)


class Notifier:
    """Carries out jobs: one attempt each, its outcome made durable before it returns."""

    def __init__(self, settings: Settings, redis: Redis, publisher: Publisher) -> None:
        self._settings = settings
        self._redis = redis
        self._publisher = publisher
        self._topics = settings.topics
        self._key = signing_key(settings)
        self._mark = redis.register_script(_MARK)
        self._webhooks = WebhookSender(
            timeout_s=settings.webhook_timeout_seconds,
            concurrency=settings.notify_concurrency,
            allow_private=settings.webhook_allow_private,
        )
        self._email = (
            EmailSender(SmtpServer.from_url(settings.smtp_url), timeout_s=SMTP_TIMEOUT_S)
            if settings.smtp_url
            else None
        )
        self._overall = asyncio.Semaphore(settings.notify_concurrency)
        self._limiters: dict[str, Limiter] = defaultdict(
            lambda: Limiter(settings.notify_endpoint_concurrency)
        )

    def channels(self) -> list[DeliveryChannel]:
        return [DeliveryChannel.WEBHOOK] + ([DeliveryChannel.EMAIL] if self._email else [])

    async def close(self) -> None:
        await close_quietly(self._webhooks)

    # -- one job ---------------------------------------------------------------------

    async def run(self, job: Job) -> None:
        """Skip a step already done; else wait until due, attempt, record the outcome."""
        keys = OrgKeys(self._settings.redis_prefix, job.notification.org_id)
        mark_key = keys.delivery(job.delivery_id)
        done = await self._retried(lambda: self._redis.get(mark_key), "reading a mark")
        if done is not None and int(done) >= job.step:
            return
        if job.due is not None:
            wait = (job.due - datetime.now(UTC)).total_seconds()
            if wait > 0:
                await asyncio.sleep(wait)
        raw = await self._retried(lambda: self._redis.get(keys.account), "reading the org")
        state = decode_account(raw)
        target = self._target(job, state) if state is not None else None
        if target is None:
            # Nowhere to send it (no endpoint, no address, the kind not routed there): a
            # first step just ends; a scheduled retry says it was cancelled.
            records = [self._record(job, DeliveryStatus.CANCELLED, "", Outcome(Verdict.FINAL))]
            if job.step > 0:
                await self._publish(records)
        else:
            records = await self._attempt(job, target)
            await self._publish(records)
        await self._retried(
            lambda: self._mark(keys=[mark_key], args=[job.step, MARK_TTL_S]), "recording a mark"
        )

    def _target(self, job: Job, state: OrgAccount) -> Target | None:
        notification = job.notification
        if job.channel is DeliveryChannel.WEBHOOK:
            endpoint = state.webhook
            if endpoint is None or notification.kind not in state.webhook_kinds:
                return None
            secret_ids = [endpoint.secret_id]
            if endpoint.previous_secret_id and endpoint.rotated_at:
                rotated = datetime.fromisoformat(endpoint.rotated_at)
                if datetime.now(UTC) - rotated < ROTATION_OVERLAP:
                    secret_ids.append(endpoint.previous_secret_id)
            secrets = [webhook_secret(self._key, state.org_id, i) for i in secret_ids]
            body = webhook_body(notification, job.decided_at, self._settings.console_url)
            msg_id = notification.notification_id
            url = endpoint.url
            return Target(url, url, lambda: self._webhooks.send(url, secrets, msg_id, body))
        email = self._email
        if email is None or notification.kind not in state.email_kinds:
            return None
        to = recipients(state, notification)
        if not to:
            return None
        message = email_message(
            notification,
            sender=self._settings.smtp_from,
            recipients=to,
            console_url=self._settings.console_url,
        )
        return Target(", ".join(to), SMTP, lambda: email.send(message, to))

    async def _attempt(self, job: Job, target: Target) -> list[OutputMessage]:
        limiter = self._limiters[target.limiter]
        if limiter.waiting >= WAITING_PER_SLOT * self._settings.notify_endpoint_concurrency:
            return self._records(job, target, None)
        limiter.waiting += 1
        try:
            await limiter.slots.acquire()
        finally:
            limiter.waiting -= 1
        try:
            async with self._overall:
                outcome = await target.attempt()
        finally:
            limiter.slots.release()
        return self._records(job, target, outcome)

    def _records(self, job: Job, target: Target, outcome: Outcome | None) -> list[OutputMessage]:
        """The attempt's record and, if it was the last, its dead letter."""
        settings = self._settings
        now = datetime.now(UTC)
        if outcome is None:  # deferred: not attempted, not counted
            delay = settings.notify_retry_base_seconds * random.uniform(1 - JITTER, 1 + JITTER)
            first = job.first_attempt_at or now
            deferred = replace(job, first_attempt_at=first)
            return [
                self._record(
                    deferred,
                    DeliveryStatus.DEFERRED,
                    target.endpoint,
                    Outcome(Verdict.RETRY, error="deferred: too many deliveries waiting"),
                    next_at=now + timedelta(seconds=delay),
                )
            ]
        tried = replace(job, attempt=job.attempt + 1, first_attempt_at=job.first_attempt_at or now)
        assert tried.first_attempt_at is not None
        if outcome.verdict is Verdict.DELIVERED:
            return [self._record(tried, DeliveryStatus.DELIVERED, target.endpoint, outcome)]
        reason = outcome.reason
        if outcome.verdict is Verdict.RETRY:
            delay = retry_delay_s(settings, tried.attempt)
            if outcome.retry_after_s is not None:
                delay = min(max(delay, outcome.retry_after_s), settings.notify_retry_max_seconds)
            next_at = now + timedelta(seconds=delay)
            window = timedelta(hours=settings.notify_retry_hours)
            if next_at <= tried.first_attempt_at + window:
                return [
                    self._record(
                        tried, DeliveryStatus.RETRYING, target.endpoint, outcome, next_at=next_at
                    )
                ]
            reason = DeliveryFailure.RETRIES_EXHAUSTED
        assert reason is not None
        record = self._record(tried, DeliveryStatus.FAILED, target.endpoint, outcome)
        letter = DeliveryDeadLetter(
            reason=reason,
            detail=outcome.error or reason.value,
            delivery=NotificationDelivery.model_validate_json(record.value or b""),
        )
        log.warning(
            "delivery %s given up after %d attempts: %s (%s)",
            tried.delivery_id,
            tried.attempt,
            reason.value,
            outcome.error,
        )
        return [
            record,
            OutputMessage(
                self._topics.notification_deadletter,
                job.notification.org_id,
                encode_event(letter),
            ),
        ]

    def _record(
        self,
        job: Job,
        status: DeliveryStatus,
        endpoint: str,
        outcome: Outcome,
        next_at: datetime | None = None,
    ) -> OutputMessage:
        now = datetime.now(UTC)
        delivery = NotificationDelivery(
            delivery_id=job.delivery_id,
            notification_id=job.notification.notification_id,
            org_id=job.notification.org_id,
            channel=job.channel,
            drive=job.drive,
            step=job.step + 1,
            attempt=job.attempt,
            status=status,
            endpoint=endpoint,
            response_status=outcome.response_status,
            latency_ms=outcome.latency_ms,
            error=outcome.error,
            decided_at=job.decided_at,
            attempted_at=now,
            first_attempt_at=job.first_attempt_at or now,
            next_attempt_at=next_at,
            notification=job.notification,
        )
        return OutputMessage(
            self._topics.notification_deliveries, job.notification.org_id, encode_event(delivery)
        )

    # -- durable writes, retried until they succeed --------------------------------

    async def _publish(self, messages: list[OutputMessage]) -> None:
        attempt = 0
        while True:
            try:
                await self._publisher.publish(messages)
                return
            except (PublishFailed, KafkaException) as exc:
                await _backoff(attempt, f"publishing {len(messages)} delivery records", exc)
                attempt += 1

    async def _retried(self, call: Callable[[], Awaitable[Any]], what: str) -> Any:
        attempt = 0
        while True:
            try:
                return await call()
            except REDIS_ERRORS as exc:
                await _backoff(attempt, what, exc)
                attempt += 1


async def _backoff(attempt: int, what: str, exc: BaseException) -> None:
    delay = backoff_s(attempt)  # Kafka/Redis errors: retried, never given up
    log.warning("%s failed (%s); retrying in %.1f s", what, exc, delay)
    await asyncio.sleep(delay)


# -- faust: taking records, acknowledging them in order --------------------------------


@dataclass
class _Taken:
    event: Any
    task: asyncio.Task[None] | None = None
    done: bool = False


@dataclass
class Dispatcher:
    """One agent's records: each runs its jobs in a task of its own; a record is
    acknowledged to faust when its jobs are durable *and* every earlier record of its
    partition is acknowledged, so the committed offset never passes unfinished work."""

    stream: Any
    notifier: Notifier
    limit: int
    _queues: dict[Any, deque[_Taken]] = field(default_factory=dict)
    _room: asyncio.Semaphore | None = None

    async def take(self, event: Any, jobs: list[Job]) -> None:
        if self._room is None:
            self._room = asyncio.Semaphore(self.limit)
        await self._room.acquire()  # back-pressure: at most `limit` records held
        message = event.message
        message.incref()  # faust's own acknowledgement leaves ours to be the last
        taken = _Taken(event)
        self._queues.setdefault(message.tp, deque()).append(taken)
        taken.task = asyncio.create_task(self._run(taken, jobs))

    async def _run(self, taken: _Taken, jobs: list[Job]) -> None:
        assert self._room is not None
        try:
            await asyncio.gather(*(self.notifier.run(job) for job in jobs))
        except asyncio.CancelledError:
            self._room.release()
            raise
        except Exception:
            # Not durable, so not acknowledged; stop before faust commits past it.
            log.exception("unexpected error delivering a notification; exiting")
            _exit()
        self._room.release()
        taken.done = True
        queue = self._queues.get(taken.event.message.tp)
        while queue and queue[0].done:
            await self.stream.ack(queue.popleft().event)

    def forget(self, partitions: Any) -> None:
        """Partitions revoked: their records are another process's now (it reads them
        again from the committed offset); stop working on them here."""
        for tp in partitions:
            for taken in self._queues.pop(tp, deque()):
                if taken.task is not None:
                    taken.task.cancel()


def _exit() -> NoReturn:
    os._exit(EXIT_UNEXPECTED)


def _decided_at(event: Any) -> datetime:
    return datetime.fromtimestamp(event.message.timestamp, tz=UTC)


def raw_topic(app: faust.App, name: str) -> faust.TopicT:
    return app.topic(
        name, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
    )


def create_app(settings: Settings) -> faust.App:
    faust_dir = settings.var_dir / "faust"
    faust_dir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        settings.notifier_group_id,
        datadir=faust_dir / f"{settings.notifier_group_id}-data",
        broker=f"kafka://{settings.kafka_bootstrap}",
        store="memory://",
        web_enabled=False,
        topic_disable_leader=True,
        topic_allow_declare=False,
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=1.0,
        producer_acks=-1,
        broker_session_timeout=10.0,
        broker_heartbeat_interval=2.0,
        broker_rebalance_timeout=20.0,
        # A scheduled retry is held (unacknowledged) until it is due, up to
        # notify_retry_max_seconds: a rebalance must not wait for it (the next owner reads
        # it again), and a commit offset held that long is not a livelock.
        stream_wait_empty=False,
        broker_commit_livelock_soft_timeout=settings.notify_retry_max_seconds * 2 + 300,
    )
    redis = async_client(settings)
    publisher = Publisher(settings.kafka_bootstrap)
    topics = settings.topics
    holder: dict[str, Notifier] = {}
    dispatchers: list[Dispatcher] = []

    def notifier() -> Notifier:
        if "n" not in holder:  # inside the running loop (its semaphores belong to it)
            holder["n"] = Notifier(settings, redis, publisher)
        return holder["n"]

    @app.agent(raw_topic(app, topics.notifications), name="notifications")
    async def on_notifications(stream: Any) -> AsyncIterator[None]:
        dispatcher = Dispatcher(stream, notifier(), MAX_TAKEN["notifications"])
        dispatchers.append(dispatcher)
        async for event in stream.events():
            try:
                notification = Notification.model_validate_json(event.value)
            except ValidationError as exc:
                log.error("skipping a record that is not a notification: %s", exc)
                await dispatcher.take(event, [])
                continue
            jobs = [
                Job(notification, channel, _decided_at(event))
                for channel in dispatcher.notifier.channels()
            ]
            await dispatcher.take(event, jobs)
            yield None

    @app.agent(raw_topic(app, topics.notification_deliveries), name="deliveries")
    async def on_deliveries(stream: Any) -> AsyncIterator[None]:
        dispatcher = Dispatcher(stream, notifier(), MAX_TAKEN["deliveries"])
        dispatchers.append(dispatcher)
        pending = {DeliveryStatus.RETRYING, DeliveryStatus.DEFERRED}
        async for event in stream.events():
            try:
                record = NotificationDelivery.model_validate_json(event.value)
            except ValidationError as exc:
                log.error("skipping a record that is not a delivery: %s", exc)
                record = None
            jobs = [Job.scheduled(record)] if record and record.status in pending else []
            await dispatcher.take(event, jobs)
            yield None

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]  # mode types it narrowly
    async def forget_revoked(_app: Any, *args: Any, **_: Any) -> None:
        for dispatcher in dispatchers:
            dispatcher.forget(args[0])

    @app.on_before_shutdown.connect  # type: ignore[arg-type]
    async def close(_app: Any, **_: Any) -> None:
        if "n" in holder:
            with contextlib.suppress(Exception):
                await holder["n"].close()

    return app


def topics_needed(settings: Settings) -> list[str]:
    topics = settings.topics
    return [
        topics.notifications,
        topics.notification_deliveries,
        topics.notification_deadletter,
    ]


def run_notifier(settings: Settings, loglevel: str = "warning") -> None:
    """Run until SIGTERM/SIGINT; started before Kafka or its topics, it waits for them."""
    from faust.worker import Worker  # noqa: PLC0415 - only needed when running

    log.setLevel(loglevel.upper())
    stop = threading.Event()
    signals = (signal.SIGTERM, signal.SIGINT)
    previous = [signal.signal(sig, lambda *_: stop.set()) for sig in signals]
    try:
        if not wait_for_topics(settings.kafka_bootstrap, topics_needed(settings), stop, log):
            return
    finally:
        for sig, handler in zip(signals, previous, strict=True):
            signal.signal(sig, handler)
    signing_key(settings)  # fail now, not at the first webhook, if the key is unusable
    if settings.smtp_url:
        SmtpServer.from_url(settings.smtp_url)
    Worker(create_app(settings), loglevel=loglevel, quiet=True).execute_from_commandline()
