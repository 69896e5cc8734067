"""Redis from the Debian package, appending to its AOF every second."""

from __future__ import annotations

import shutil
from pathlib import Path

import psutil
from rich.console import Console

from ops.stack.service import Service
from ops.stack.tools import apt_install


class Redis(Service):
    name = "redis"

    def ports(self) -> tuple[int, ...]:
        return (self.settings.redis_port,)

    def _binary(self) -> str | None:
        return shutil.which("redis-server") or (
            "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
        )

    def preflight(self) -> None:
        if self._binary() is None:
            apt_install("redis-server", "Redis")

    def prepare(self, console: Console) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)

    def command(self) -> list[str]:
        binary = self._binary()
        assert binary is not None
        return [
            binary,
            "--port", str(self.settings.redis_port),
            "--bind", "127.0.0.1",
            "--dir", str(self.workdir),
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--daemonize", "no",
            "--save", "",
        ]

    def is_ours(self, proc: psutil.Process) -> bool:
        try:
            return proc.name().startswith("redis-server") and self._cwd_is_workdir(proc)
        except psutil.Error:
            return False

    def healthy(self) -> bool:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        # No retries: redis-py's default retry turns one stuck PING into ~10 s.
        client = redis.Redis(
            host="127.0.0.1", port=self.settings.redis_port, socket_timeout=2,
            socket_connect_timeout=2, retry=Retry(NoBackoff(), 0),
        )
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()
