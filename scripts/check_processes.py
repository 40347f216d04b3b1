"""Process handling shared by the end-to-end check scripts (prometheus_check.py, dashboard_check.py): start a
program in its own session with its output in a log, stop the whole session, poll for a condition while the
program lives, and quote a log's last lines in a failure."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from contextlib import ExitStack
from pathlib import Path


class CheckFailed(AssertionError):
    pass


def start(cmd: list[str], log: Path, stack: ExitStack, **kwargs) -> subprocess.Popen:
    """Start `cmd` in a new session, output to `log`; the stack stops it (and its children) on exit."""
    out = open(log, "wb")
    stack.callback(out.close)
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True, **kwargs)
    stack.callback(stop, proc)
    return proc


def stop(proc: subprocess.Popen, grace_s: float = 20) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace_s)
            return
        except subprocess.TimeoutExpired:
            pass
    try:  # the leader has exited or ignored SIGTERM: make sure nothing of its session is left
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(5)


def wait_for(what: str, predicate, timeout_s: float, proc: subprocess.Popen | None = None, log: Path | None = None,
             interval_s: float = 0.25):
    """Poll `predicate` until it returns a truthy value; fail after `timeout_s` or when `proc` exits."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise CheckFailed(f"{what}: the process exited with status {proc.returncode}\n{tail(log)}")
        if time.monotonic() > deadline:
            raise CheckFailed(f"{what}: not within {timeout_s:.0f} s\n{tail(log)}")
        time.sleep(interval_s)


def tail(log: Path | None, lines: int = 30) -> str:
    if log is None or not log.is_file():
        return ""
    text = log.read_text(errors="replace").splitlines()[-lines:]
    return f"--- last lines of {log.name} ---\n" + "\n".join(text)
