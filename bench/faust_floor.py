"""faust alone, for the pipeline benchmark: the worker's faust app and batching (same
settings, `take_events` of BATCH_SIZE within BATCH_WINDOW_S) with a processor that does
nothing — what faust's per-message path costs on this machine before any billing work.

Started by `bench.pipeline` through `start` (as `python -m bench.faust_floor`, on the
benchmark's namespace, in a consumer group of its own)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

from bench.harness import Namespace
from metering.settings import Settings


def start(namespace: Namespace) -> tuple[Settings, subprocess.Popen[bytes]]:
    """The floor over `namespace`'s topics, in its own consumer group: its settings and
    its process."""
    settings = namespace.variant(group_id=f"{namespace.settings.group_id}-faust-floor")
    command = [sys.executable, "-m", "bench.faust_floor"]
    [process] = namespace.spawn(command, settings=settings, sink_in_worker=False)
    return settings, process


def main() -> None:
    # faust takes a second to import: only the floor's process pays for it.
    from faust.worker import Worker  # noqa: PLC0415

    from metering.worker import BATCH_SIZE, BATCH_WINDOW_S, faust_app, raw_topic  # noqa: PLC0415

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
