"""`paystream up`: bootstraps, supervises components with prefixed logs, restarts a
component that dies, and stops everything on Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from paystream.settings import PROJECT_ROOT, Settings

pytestmark = pytest.mark.integration


def _wait_for(proc: subprocess.Popen[str], lines: list[str], needle: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line:
            lines.append(line)
            if needle in line:
                return line
        elif proc.poll() is not None:
            break
    raise AssertionError(f"{needle!r} not seen; output:\n{''.join(lines[-40:])}")


def test_up_supervises_restarts_and_stops(stack: Settings):
    env = {**os.environ, "PAYSTREAM_LEDGER_INSTANCE": f"up-{os.getpid()}", "COLUMNS": "200"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "ops.cli", "up", "--only", "ledger"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=PROJECT_ROOT,
        start_new_session=True,
    )
    lines: list[str] = []
    try:
        _wait_for(proc, lines, "database migrated", 120)
        started = _wait_for(proc, lines, "started (pid", 60)
        pid = int(started.split("pid ")[1].split(")")[0])
        _wait_for(proc, lines, "ledger |", 60)  # the component's own output, prefixed
        os.kill(pid, signal.SIGKILL)
        _wait_for(proc, lines, "restarting in", 30)
        again = _wait_for(proc, lines, "started (pid", 60)
        new_pid = int(again.split("pid ")[1].split(")")[0])
        assert new_pid != pid
        proc.send_signal(signal.SIGINT)
        _wait_for(proc, lines, "all components stopped", 60)
        assert proc.wait(30) == 0
        assert not psutil.pid_exists(new_pid) or psutil.Process(new_pid).status() == psutil.STATUS_ZOMBIE
    finally:
        if proc.poll() is None:
            proc.kill()
