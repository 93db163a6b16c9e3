"""`metering` or `billing` with a crash installed at a fault point, for the crash tests:

    python -m tests.e2e.faulty POINT TIMES PROGRAM [ARGUMENTS...]

runs `PROGRAM ARGUMENTS` (the installed command's own entry point, in this process) and
exits with `EXIT_FAULT_INJECTED` the TIMES-th time the process reaches POINT
(`metering/faults.py`). Production code only marks the points and reads nothing that
makes it crash: the crash lives here, with the tests that want it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from metering import faults
from metering.cli.billing import app as billing_app
from metering.cli.main import app as metering_app

EXIT_FAULT_INJECTED = 77
ROOT = Path(__file__).resolve().parents[2]
PROGRAMS = {"metering": metering_app, "billing": billing_app}


def command(point: faults.Point, times: int, program: str, *arguments: str) -> list[str]:
    """The command line that runs `program arguments` with the crash installed."""
    return [sys.executable, "-m", "tests.e2e.faulty", point.value, str(times), program, *arguments]


def environment() -> dict[str, str]:
    """What `command` needs in its environment: `tests` is not an installed package, so
    the repository goes on the path (whatever the test's working directory)."""
    inherited = os.environ.get("PYTHONPATH", "")
    return {"PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), inherited) if p)}


def run(
    point: faults.Point, times: int, program: str, *arguments: str, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """`command` to its end, with `env` added to this process's environment."""
    return subprocess.run(
        command(point, times, program, *arguments),
        env={**os.environ, **env, **environment()},
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )


def crash_at(point: faults.Point, times: int) -> None:
    """Exit this process the `times`-th time it reaches `point`: at once, skipping every
    `finally` and flush, as a crash would."""
    reached = 0

    def crash() -> None:
        nonlocal reached
        reached += 1
        if reached >= times:
            print(f"fault injection: exiting at {point} ({reached} times)", file=sys.stderr)
            sys.stderr.flush()
            os._exit(EXIT_FAULT_INJECTED)

    faults.install(point, crash)


def main(argv: list[str]) -> None:
    point, times, program, *arguments = argv
    crash_at(faults.Point(point), int(times))
    PROGRAMS[program](args=arguments, prog_name=program)


if __name__ == "__main__":
    main(sys.argv[1:])
