"""The money rules as pure functions and value objects: no Kafka, Redis or ClickHouse.

Amounts are `int` nano-dollars throughout (SPEC §2); rounding to cents happens only when
a document is assembled.
"""
