"""What every managed service has in common; one subclass per service in its own module."""

from __future__ import annotations

import signal
from pathlib import Path

import psutil
from rich.console import Console

from ops.stack.layout import Layout
from paystream.settings import Settings


class Service:
    """One managed process: how to prepare, start, recognise and health-check it."""

    name: str = ""
    stop_signal: signal.Signals = signal.SIGTERM

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.layout = Layout.of(settings)

    # where
    @property
    def pid_file(self) -> Path:
        return self.layout.pid_file(self.name)

    @property
    def log_file(self) -> Path:
        return self.layout.log_file(self.name)

    @property
    def workdir(self) -> Path:
        return self.layout.home / self.name

    def ports(self) -> tuple[int, ...]:
        raise NotImplementedError

    # lifecycle
    def preflight(self) -> None:
        """Check (or install) the binaries; must not start anything."""

    def prepare(self, console: Console) -> None:
        """Downloads and one-off initialisation that have to happen before the first start."""

    def command(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str] | None:
        return None

    def run_as(self) -> str | None:
        return None

    def ready(self, log_offset: int) -> bool:
        return self.healthy()

    def after_ready(self, fresh: bool) -> None:
        """Idempotent set-up that needs the service up (databases, registry config)."""

    # identity and health
    def is_ours(self, proc: psutil.Process) -> bool:
        """Whether a live pid is still the process we started, not a recycled pid."""
        raise NotImplementedError

    def healthy(self) -> bool:
        raise NotImplementedError

    def _marker(self) -> str:
        return f"-Dpaystream.stack={self.name}@{self.layout.home}"

    def _cwd_is_workdir(self, proc: psutil.Process) -> bool:
        try:
            return Path(proc.cwd()).resolve() == self.workdir.resolve()
        except (psutil.Error, OSError):
            return False
