"""The whole stack at once: up, down, stop one service, status, reset."""

from __future__ import annotations

import contextlib
import fcntl
import shutil
import time
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import psutil
from rich.console import Console

from ops.stack.broker import Kafka
from ops.stack.errors import StackError
from ops.stack.layout import Layout
from ops.stack.ports import port_is_free, port_owner
from ops.stack.postgres import Postgres
from ops.stack.redis import Redis
from ops.stack.registry import Registry
from ops.stack.service import Service
from ops.stack.supervision import memory_mib, owned_process, spawn, stop_process, wait_healthy, wait_ready
from paystream.settings import Settings

SERVICES: tuple[str, ...] = ("postgres", "redis", "kafka", "registry")

Health = Literal["up", "down", "unhealthy"]

LOCK_TIMEOUT = 600.0
# What `reset` deletes: everything stateful under home except secrets (the
# gateway's JWT key lives there too) and run/ (empty once `down` is done).
# "state": Quix state stores are caches of changelogs in Kafka; kept across a Kafka
# reset they no longer match it and every stateful app refuses to start
# (InvalidStoreChangelogOffset).
RESETTABLE_DIRS: tuple[str, ...] = ("postgres", "redis", "kafka", "registry", "logs", "state")


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    ports: tuple[int, ...]
    pid: int | None
    health: Health
    rss_mib: float | None  # main process
    tree_pss_mib: float | None = None  # main process and children, shared pages split
    processes: int = 0
    note: str = ""

    @property
    def port(self) -> int:
        return self.ports[0]


class UpReport(dict[str, float]):
    """Seconds until each service was ready (0.0 when reused), plus what was reused.

    A plain ``dict[str, float]`` for callers that only want timings; the CLI
    and tests also need to tell a fresh start from a reuse without parsing
    console output.
    """

    def __init__(self) -> None:
        super().__init__()
        self.reused: set[str] = set()
        self.started: set[str] = set()
        self.pids: dict[str, int] = {}
        self.prepare_seconds: dict[str, float] = {}


@contextlib.contextmanager
def _stack_lock(layout: Layout) -> Iterator[None]:
    """Serialise up/down/reset on one home, so parallel test sessions never double-start."""
    layout.run.mkdir(parents=True, exist_ok=True)
    with (layout.run / "stack.lock").open("w") as fh:
        deadline = time.monotonic() + LOCK_TIMEOUT
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise StackError(
                        f"another paystream stack command has held {layout.run / 'stack.lock'} "
                        f"for {LOCK_TIMEOUT:.0f}s"
                    ) from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _services(settings: Settings) -> list[Service]:
    return [Postgres(settings), Redis(settings), Kafka(settings), Registry(settings)]


def up(
    settings: Settings, console: Console | None = None, only: Collection[str] | None = None
) -> UpReport:
    """Start whatever is not already running; returns seconds-to-ready per service.

    All checks that can fail cheaply (ports, binaries, downloads) run before
    any process is started, so a conflict never leaves a half-started stack.
    ``only`` limits the stack to some services (the three-broker cluster brings
    its own Kafka and needs just Postgres and the registry from here).
    """
    console = console or Console(quiet=True)
    layout = Layout.of(settings)
    services = [s for s in _services(settings) if only is None or s.name in only]
    report = UpReport()

    with _stack_lock(layout):
        running: dict[str, psutil.Process] = {}
        for svc in services:
            proc = owned_process(svc)
            if proc is None:
                svc.pid_file.unlink(missing_ok=True)
            else:
                running[svc.name] = proc

        to_start = [svc for svc in services if svc.name not in running]
        _preflight_ports(services, to_start)
        for svc in to_start:
            svc.preflight()
        for svc in to_start:
            t0 = time.monotonic()
            svc.prepare(console)
            report.prepare_seconds[svc.name] = time.monotonic() - t0

        for svc in services:
            width = max(len(s) for s in SERVICES)
            ports = "/".join(str(p) for p in svc.ports())
            proc = running.get(svc.name)
            t0 = time.monotonic()
            if proc is not None:
                if not svc.healthy():
                    console.print(f"[yellow]{svc.name:<{width}}[/yellow]  running (pid {proc.pid}) "
                                  "but not healthy yet, waiting")
                    wait_healthy(svc, proc)
                svc.after_ready(fresh=False)
                report[svc.name] = 0.0
                report.reused.add(svc.name)
                report.pids[svc.name] = proc.pid
                console.print(f"[cyan]{svc.name:<{width}}[/cyan]  already running "
                              f"(pid {proc.pid}, port {ports})")
                continue
            popen, offset = spawn(svc)
            wait_ready(svc, popen, offset)
            svc.after_ready(fresh=True)
            elapsed = time.monotonic() - t0
            report[svc.name] = elapsed
            report.started.add(svc.name)
            report.pids[svc.name] = popen.pid
            prep = report.prepare_seconds.get(svc.name, 0.0)
            extra = f" [dim](+{prep:.1f}s setup)[/dim]" if prep >= 0.5 else ""
            console.print(f"[green]{svc.name:<{width}}[/green]  ready in {elapsed:.1f}s "
                          f"(pid {popen.pid}, port {ports}){extra}")
    return report


def _preflight_ports(services: list[Service], to_start: list[Service]) -> None:
    problems: list[str] = []
    seen: dict[int, str] = {}
    for svc in services:
        for port in svc.ports():
            if port in seen:
                problems.append(f"{svc.name} and {seen[port]} are both configured for port {port}")
            seen[port] = svc.name
    for svc in to_start:
        for port in svc.ports():
            if not port_is_free(port):
                owner = port_owner(port)
                held = f" (held by {owner})" if owner else ""
                problems.append(f"{svc.name}: port {port} on 127.0.0.1 is already in use{held}")
    if problems:
        raise StackError(
            "cannot start the stack; nothing was started:\n  "
            + "\n  ".join(problems)
            + "\nStop whatever holds the port, or choose another one "
            "(PAYSTREAM_POSTGRES_PORT, PAYSTREAM_REDIS_PORT, PAYSTREAM_KAFKA_PORT, "
            "PAYSTREAM_KAFKA_CONTROLLER_PORT, PAYSTREAM_REGISTRY_PORT)."
        )


def down(settings: Settings, console: Console | None = None) -> list[str]:
    """Stop the services ``up`` started, newest first; returns the names stopped."""
    console = console or Console(quiet=True)
    with _stack_lock(Layout.of(settings)):
        return _down(settings, console)


def _down(settings: Settings, console: Console) -> list[str]:
    stopped: list[str] = []
    width = max(len(s) for s in SERVICES)
    for svc in reversed(_services(settings)):
        proc = owned_process(svc)
        if proc is None:
            if svc.pid_file.exists():
                console.print(f"[dim]{svc.name:<{width}}  stale pid file removed[/dim]")
            svc.pid_file.unlink(missing_ok=True)
            continue
        t0 = time.monotonic()
        killed = stop_process(svc, proc)
        svc.pid_file.unlink(missing_ok=True)
        stopped.append(svc.name)
        how = "killed (did not stop within 30s)" if killed else "stopped"
        console.print(f"[green]{svc.name:<{width}}[/green]  {how} in {time.monotonic() - t0:.1f}s "
                      f"(pid {proc.pid})")
    return stopped


def stop_service(settings: Settings, name: str, console: Console | None = None) -> bool:
    """Stop one service of this home gracefully (its own stop signal); ``up`` starts it again.

    Fault injection restarts services one at a time on an isolated stack; it
    must never touch processes of another home, hence the pid-file ownership check.
    Returns False when the service was not running.
    """
    console = console or Console(quiet=True)
    svc = next((s for s in _services(settings) if s.name == name), None)
    if svc is None:
        raise StackError(f"unknown service {name!r}; one of {', '.join(SERVICES)}")
    with _stack_lock(Layout.of(settings)):
        proc = owned_process(svc)
        if proc is None:
            svc.pid_file.unlink(missing_ok=True)
            return False
        t0 = time.monotonic()
        stop_process(svc, proc)
        svc.pid_file.unlink(missing_ok=True)
        console.print(f"{name} stopped in {time.monotonic() - t0:.1f}s (pid {proc.pid})")
        return True


def status(settings: Settings) -> list[ServiceStatus]:
    """Health of what this home owns; a foreign listener on our port is noted, never adopted."""
    result: list[ServiceStatus] = []
    for svc in _services(settings):
        ports = svc.ports()
        proc = owned_process(svc)
        if proc is None:
            notes = []
            for port in ports:
                if not port_is_free(port):
                    owner = port_owner(port)
                    notes.append(f"port {port} in use by {owner or 'another process'}")
            result.append(ServiceStatus(svc.name, ports, None, "down", None,
                                        note="; ".join(notes)))
            continue
        health: Health = "up" if svc.healthy() else "unhealthy"
        rss, pss, count = memory_mib(proc)
        result.append(ServiceStatus(svc.name, ports, proc.pid, health, rss, pss, count))
    return result


def ensure_up(settings: Settings, console: Console | None = None) -> UpReport:
    """For tests and tools that need the stack: a no-op (a few health checks) when it is up."""
    return up(settings, console=console)


def resettable_paths(settings: Settings) -> list[Path]:
    layout = Layout.of(settings)
    return [layout.home / name for name in RESETTABLE_DIRS if (layout.home / name).exists()]


def reset(settings: Settings, console: Console | None = None) -> list[Path]:
    """Stop the stack and delete its data (not the download cache, not secrets)."""
    console = console or Console(quiet=True)
    with _stack_lock(Layout.of(settings)):
        _down(settings, console)
        paths = resettable_paths(settings)
        for path in paths:
            shutil.rmtree(path)
            console.print(f"deleted {path}")
    return paths
