"""Data contracts of the pipeline: event models, reason codes, the price-book format.

Everything a producer, a processor or an external client must agree on lives here, and
nothing here does I/O. `billing/` and `metering/` import from this package, never the
other way round.
"""
