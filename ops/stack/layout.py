"""Where a stack home keeps its state, and where downloads are cached."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from paystream.settings import Settings


@dataclass(frozen=True)
class Layout:
    home: Path
    cache: Path

    @classmethod
    def of(cls, settings: Settings) -> Layout:
        return cls(home=settings.home.resolve(), cache=settings.cache_dir.expanduser().resolve())

    @property
    def run(self) -> Path:
        return self.home / "run"

    @property
    def logs(self) -> Path:
        return self.home / "logs"

    @property
    def secrets(self) -> Path:
        return self.home / "secrets"

    def pid_file(self, name: str) -> Path:
        return self.run / f"{name}.pid"

    def log_file(self, name: str) -> Path:
        return self.logs / f"{name}.log"
