"""`metering run`'s children, kept running: a child that dies (killed, out of memory, an
error it could not survive) is started again after a back-off, and each restart is
logged. Without this, the API child of `metering run` — which also runs the ClickHouse
sink and serves the gate — stayed down until someone restarted the whole command."""

from __future__ import annotations

import logging
import subprocess
import threading
import time

from metering.clickhouse.service import spawn_child
from metering.stack.process import stop_child

log = logging.getLogger("metering.run")

MAX_BACKOFF_S = 60.0
# A child that ran this long before dying is not crash-looping: the back-off starts over.
STABLE_AFTER_S = 60.0


class Supervisor:
    """Runs `metering <arguments>` as a child and restarts it whenever it exits, waiting
    `backoff_s` before the first restart and twice as long before each next one (up to
    MAX_BACKOFF_S) while it keeps dying young."""

    def __init__(self, name: str, *arguments: str, backoff_s: float = 1.0) -> None:
        self.name = name
        self._arguments = arguments
        self._backoff_s = backoff_s
        self._stopping = threading.Event()
        self._lock = threading.Lock()  # spawning vs. stopping: never a child after stop()
        self._child: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        # The thread that spawns a child must outlive it: the child's parent-death signal
        # (PR_SET_PDEATHSIG, set by spawn_child) fires when that *thread* ends.
        self._thread = threading.Thread(target=self._run, name=f"supervise-{name}", daemon=True)

    def start(self) -> Supervisor:
        self._thread.start()
        return self

    def _spawn(self) -> subprocess.Popen[bytes] | None:
        with self._lock:
            if self._stopping.is_set():
                return None
            self._child = spawn_child(*self._arguments)
            return self._child

    def _run(self) -> None:
        delay = self._backoff_s
        while (child := self._spawn()) is not None:
            started = time.monotonic()
            code = child.wait()
            if self._stopping.is_set():
                return
            lived = time.monotonic() - started
            if lived >= STABLE_AFTER_S:
                delay = self._backoff_s
            self.restarts += 1
            log.error(
                "metering run: the %s child (pid %d) exited with code %s after %.0f s; "
                "restarting it in %.1f s (restart %d)",
                self.name,
                child.pid,
                code,
                lived,
                delay,
                self.restarts,
            )
            if self._stopping.wait(delay):
                return
            delay = min(delay * 2, MAX_BACKOFF_S)

    def stop(self) -> None:
        """Stop supervising and stop the child (SIGTERM, then SIGKILL after 30 s)."""
        with self._lock:
            self._stopping.set()
            child = self._child
        if child is not None:
            stop_child(child)
        self._thread.join(timeout=60)
