"""Background processes owned by the stack: start detached, remember by pid file, stop."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path


class StackError(RuntimeError):
    """A problem an operator can act on; the CLI prints it as one line."""


def port_open(host: str, port: int, timeout_s: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now (the kernel's pick; free until someone binds it)."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


def read_pid(pid_file: Path, marker: str = "") -> int | None:
    """The pid recorded in `pid_file` if that process is still alive (and its command line
    contains `marker`, so a recycled pid is not mistaken for ours), else None."""
    try:
        pid = int(pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        cmdline = b""
    if marker and cmdline and marker.encode() not in cmdline:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    # A zombie child of ours counts as gone.
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
        if waited == pid:
            return None
    except ChildProcessError:
        pass
    return pid


def spawn(argv: Sequence[str], log_file: Path, pid_file: Path, cwd: Path | None = None) -> int:
    """Start `argv` in its own session (so it outlives the CLI), output appended to
    `log_file`, pid written to `pid_file`."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("ab") as log:
        process = subprocess.Popen(
            list(argv),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            start_new_session=True,
        )
    pid_file.write_text(f"{process.pid}\n")
    return process.pid


def wait_until(
    ready: Callable[[], bool], timeout_s: float, what: str, alive: Callable[[], bool]
) -> None:
    """Poll `ready` until true; fail early if the process died, late if it never got ready."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if ready():
            return
        if not alive():
            raise StackError(f"{what} exited during start-up; see its log")
        time.sleep(0.2)
    raise StackError(f"{what} did not become ready within {timeout_s:.0f} s; see its log")


def terminate(pid_file: Path, marker: str, timeout_s: float = 60.0) -> bool:
    """SIGTERM, wait for a clean shutdown, SIGKILL if it hangs. True if something was stopped."""
    pid = read_pid(pid_file, marker)
    if pid is None:
        pid_file.unlink(missing_ok=True)
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and read_pid(pid_file, marker) is not None:
        time.sleep(0.2)
    if read_pid(pid_file, marker) is not None:
        os.kill(pid, signal.SIGKILL)
        while read_pid(pid_file, marker) is not None:
            time.sleep(0.1)
    pid_file.unlink(missing_ok=True)
    return True


def stop_child(child: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited after `timeout_s`."""
    if child.poll() is None:
        child.terminate()
        try:
            child.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
