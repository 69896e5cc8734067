"""Throwaway stacks on free ports, for tools that restart services or need a quiet group.

The shared development stack is used by several people at once: nothing that
kills Kafka, Postgres or Redis, or that must be alone in the ledger's consumer
group, may run against it. These helpers give such a tool its own home under
/tmp and its own ports, and the environment its child processes need so that
they, too, talk only to that stack.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import tempfile
from collections.abc import Collection, Iterator
from pathlib import Path

from rich.console import Console

from paystream.settings import Settings


def free_ports(n: int) -> list[int]:
    """Ports the OS just handed out; held together so the n are distinct."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def isolated_settings(home: Path, *, kafka_heap: str = "384m", **extra: object) -> Settings:
    """Settings for a stack of its own. Every *_override is cleared explicitly, so a
    PAYSTREAM_BOOTSTRAP_SERVERS (etc.) in the environment cannot point it at the shared one."""
    kafka, controller, registry, postgres, redis, gateway, metrics = free_ports(7)
    return Settings(
        home=home,
        kafka_port=kafka,
        kafka_controller_port=controller,
        registry_port=registry,
        postgres_port=postgres,
        redis_port=redis,
        gateway_port=gateway,
        sink_metrics_port=metrics,
        kafka_heap=kafka_heap,
        bootstrap_servers_override=None,
        registry_url_override=None,
        postgres_dsn_override=None,
        redis_url_override=None,
        postgres_password=None,
        **extra,  # type: ignore[arg-type]
    )


def settings_env(settings: Settings) -> dict[str, str]:
    """Environment for a child process (`paystream run ...`) that must use `settings`.

    Addresses are passed as explicit overrides: they win over anything inherited,
    and a child never falls back to the default ports of the shared stack.
    """
    return {
        "PAYSTREAM_HOME": str(settings.home),
        "PAYSTREAM_KAFKA_PORT": str(settings.kafka_port),
        "PAYSTREAM_KAFKA_CONTROLLER_PORT": str(settings.kafka_controller_port),
        "PAYSTREAM_REGISTRY_PORT": str(settings.registry_port),
        "PAYSTREAM_POSTGRES_PORT": str(settings.postgres_port),
        "PAYSTREAM_REDIS_PORT": str(settings.redis_port),
        "PAYSTREAM_GATEWAY_PORT": str(settings.gateway_port),
        "PAYSTREAM_SINK_METRICS_PORT": str(settings.sink_metrics_port),
        "PAYSTREAM_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
        "PAYSTREAM_REGISTRY_URL": settings.registry_url,
        "PAYSTREAM_POSTGRES_DSN": settings.postgres_dsn,
        "PAYSTREAM_REDIS_URL": settings.redis_url,
    }


def bootstrap(settings: Settings, console: Console | None = None,
              only: Collection[str] | None = None, topics: bool = True) -> None:
    """Stack up, then topics, schemas and migrations: what `paystream up --stack-only` does."""
    from ops import stack
    from ops.db import migrate
    from ops.schemas_cli import register_all
    from ops.topics import apply_topics

    stack.up(settings, console=console, only=only)
    if topics:
        apply_topics(settings)
    register_all(settings.registry_url)
    migrate(settings)


@contextlib.contextmanager
def isolated_stack(
    prefix: str = "paystream-iso-",
    *,
    keep: bool = False,
    console: Console | None = None,
    only: Collection[str] | None = None,
    topics: bool = True,
    bare: bool = False,
    **extra: object,
) -> Iterator[Settings]:
    """A bootstrapped stack in a fresh temp home; stopped and deleted afterwards
    (unless `keep`, for looking at its logs). `bare`: the services only, as
    `paystream stack up` leaves them (no topics, schemas or migrations)."""
    from ops import stack

    root = Path(tempfile.mkdtemp(prefix=prefix))
    root.chmod(0o711)  # the postgres user must traverse it to reach its data dir
    settings = isolated_settings(root / "home", **extra)  # type: ignore[arg-type]
    try:
        if bare:
            stack.up(settings, console=console, only=only)
        else:
            bootstrap(settings, console, only=only, topics=topics)
        yield settings
    finally:
        try:
            stack.down(settings)
        finally:
            if not keep:
                shutil.rmtree(root, ignore_errors=True)
