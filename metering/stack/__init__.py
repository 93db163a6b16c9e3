"""The local stack: a single-node Kafka (KRaft) broker and a Redis server as local
processes, for development, tests and the demo. Production runs these as real services
(see docs/) and points the `METERING_*` endpoints at them."""
