"""Every Kafka client of the project is made here (confluent-kafka: consumers, producers,
admin clients), so one place decides what they log: each is given the `metering.kafka`
logger, whose records `metering.logs` shows or not. Without a logger librdkafka writes
its lines straight to stderr, past any logging configuration."""

from __future__ import annotations

from typing import Any

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient

from metering.logs import kafka_logger


def consumer(config: dict[str, Any]) -> Consumer:
    return Consumer(config, logger=kafka_logger())


def producer(config: dict[str, Any]) -> Producer:
    return Producer(config, logger=kafka_logger())


def admin(config: dict[str, Any]) -> AdminClient:
    return AdminClient(config, logger=kafka_logger())
