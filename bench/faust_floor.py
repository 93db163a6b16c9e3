"""faust alone, for the pipeline benchmark: the worker's faust app and batching (same
settings, `take_events` of BATCH_SIZE within BATCH_WINDOW_S) with a processor that does
nothing — what faust's per-message path costs on this machine before any billing work.

Started by `bench.pipeline` as `python -m bench.faust_floor`, with the METERING_*
environment of the run (its own consumer group)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from faust.worker import Worker

from metering.settings import Settings
from metering.worker import BATCH_SIZE, BATCH_WINDOW_S, faust_app, raw_topic


def main() -> None:
    settings = Settings()
    app = faust_app(settings)

    @app.agent(raw_topic(app, settings.topics.usage_events), name="faust-floor")
    async def nothing(stream: Any) -> AsyncIterator[None]:
        # take_events acknowledges a batch when the next one is asked for.
        async for _events in stream.take_events(BATCH_SIZE, within=BATCH_WINDOW_S):
            yield None

    Worker(app, loglevel="warning", quiet=True).execute_from_commandline()


if __name__ == "__main__":
    main()
