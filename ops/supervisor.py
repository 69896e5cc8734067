"""Runs paystream's components as child processes with prefixed logs.

`paystream up` uses it: one foreground process that starts every component,
restarts one that dies (with backoff, so a crash loop does not spin), and on
Ctrl-C or SIGTERM stops them all, waiting for each to finish its current
transaction.
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

from rich.console import Console
from rich.markup import escape

COLORS = ["cyan", "magenta", "green", "yellow", "blue", "red"]


@dataclass
class Child:
    name: str
    argv: list[str]
    color: str
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    next_start: float = 0.0
    started_at: float = field(default_factory=time.monotonic)


# A child that ran at least this long was healthy: it is restarted at once. One that
# dies sooner is crash-looping (a bad setting, a stopped service): back off.
HEALTHY_SECONDS = 10.0


def restart_delay(uptime: float, restarts: int) -> tuple[float, int]:
    """Seconds to wait before restarting a child that ran `uptime` seconds, and the
    new count of quick deaths in a row. Backing off every death kept the ledger down
    for 16.5 s after three kill -9 within a minute (issue 18): a process that ran
    healthily and died (a kill, an OOM) should be back at once; only a crash loop
    needs the backoff, 0.5 s doubling to 30 s."""
    if uptime >= HEALTHY_SECONDS:
        return 0.0, 0
    restarts += 1
    return min(30.0, 0.5 * 2 ** (restarts - 1)), restarts


class Supervisor:
    def __init__(self, components: dict[str, list[str]], console: Console | None = None) -> None:
        self.console = console or Console()
        self.children = [
            Child(name, argv, COLORS[i % len(COLORS)]) for i, (name, argv) in enumerate(components.items())
        ]
        self.stopping = False
        self.sel = selectors.DefaultSelector()

    def _start(self, child: Child) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if sys.stdout.isatty():
            # The children write to a pipe (ours), so they cannot see the terminal:
            # tell them, and they log for a person instead of one JSON object a line.
            env.setdefault("PAYSTREAM_LOG_FORMAT", "console")
        child.proc = subprocess.Popen(
            child.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
            start_new_session=True,
        )
        child.started_at = time.monotonic()
        assert child.proc.stdout is not None
        os.set_blocking(child.proc.stdout.fileno(), False)
        self.sel.register(child.proc.stdout, selectors.EVENT_READ, child)
        self._say(child, f"started (pid {child.proc.pid})")

    def _say(self, child: Child, line: str) -> None:
        self.console.print(f"[{child.color}]{child.name:>13} |[/] {escape(line)}", highlight=False, soft_wrap=True)

    def _pump(self, timeout: float) -> None:
        for key, _ in self.sel.select(timeout):
            child: Child = key.data
            stream = key.fileobj
            try:
                data = stream.read()  # type: ignore[union-attr]
            except (BlockingIOError, ValueError):
                continue
            if not data:
                self.sel.unregister(stream)
                continue
            for line in data.decode("utf-8", "replace").splitlines():
                self._say(child, line)

    def _reap(self) -> None:
        for child in self.children:
            if child.proc is None or child.proc.poll() is None:
                continue
            code = child.proc.returncode
            child.proc = None
            if self.stopping:
                continue
            delay, child.restarts = restart_delay(time.monotonic() - child.started_at, child.restarts)
            child.next_start = time.monotonic() + delay
            self.console.print(f"[red]{child.name} exited with {code}; restarting in {delay:.1f}s[/red]")

    def stop(self, *_: object) -> None:
        self.stopping = True

    def run(self) -> int:
        signal.signal(signal.SIGINT, self.stop)
        signal.signal(signal.SIGTERM, self.stop)
        for child in self.children:
            self._start(child)
        while not self.stopping:
            self._pump(0.2)
            self._reap()
            now = time.monotonic()
            for child in self.children:
                if child.proc is None and now >= child.next_start and not self.stopping:
                    self._start(child)
        self.console.print("stopping components…")
        for child in self.children:
            if child.proc is not None and child.proc.poll() is None:
                child.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(
            c.proc is not None and c.proc.poll() is None for c in self.children
        ):
            self._pump(0.2)
        for child in self.children:
            if child.proc is not None and child.proc.poll() is None:
                child.proc.kill()
        self.console.print("all components stopped")
        return 0


def component_argv(name: str) -> list[str]:
    return [sys.executable, "-m", "ops.cli", "run", name]
