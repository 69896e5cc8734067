"""Shared fixtures. Integration tests run against the real local stack, which
`make test` (and so CI) starts first; the `stack` fixture makes sure of it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from paystream.settings import PROJECT_ROOT, Settings, get_settings


@pytest.fixture(scope="session")
def settings() -> Settings:
    return get_settings()


@pytest.fixture(scope="session")
def stack(settings: Settings) -> Settings:
    from ops import stack as stack_mod
    from ops.schemas_cli import register_all
    from ops.topics import apply_topics

    stack_mod.up(settings)
    apply_topics(settings)
    register_all(settings.registry_url)
    return settings


@pytest.fixture(scope="session")
def codec(stack: Settings):
    from paystream.codec import Codec

    return Codec(stack.registry_url)


class Component:
    """A paystream component run as a real child process, as `paystream up` runs it."""

    def __init__(self, name: str, log_dir: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.log_path = log_dir / f"{name}-{int(time.time() * 1000)}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Component:
        self.log = open(self.log_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ops.cli", "run", self.name],
            stdout=self.log, stderr=subprocess.STDOUT, env=self.env, cwd=PROJECT_ROOT,
            start_new_session=True,
        )
        return self

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("component-logs")


@pytest.fixture(scope="session")
def ledger(stack: Settings, log_dir: Path) -> Iterator[Component]:
    # An instance id of its own per test session: concurrent sessions then share the
    # partitions like scaled-out instances instead of fencing each other.
    comp = Component("ledger", log_dir, env={"PAYSTREAM_LEDGER_INSTANCE": f"test-{os.getpid()}"}).start()
    yield comp
    comp.stop()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def sink(db: Settings, log_dir: Path) -> Iterator[Component]:
    """The read-model sink as a real process (`paystream run sink`)."""
    port = _free_port()
    comp = Component(
        "sink",
        log_dir,
        env={
            # Static membership under an id of our own: kill -9 and restart takes the
            # partitions straight back instead of waiting out the session timeout.
            "PAYSTREAM_SINK_INSTANCE": f"test-{os.getpid()}",
            "PAYSTREAM_SINK_METRICS_PORT": str(port),
        },
    ).start()
    comp.metrics_port = port  # type: ignore[attr-defined]
    yield comp
    comp.stop()


def caught_up(settings: Settings, timeout: float = 120.0) -> None:
    """Wait until the sink has stored everything committed to ledger.events so far."""
    from ops.verify import end_offsets, wait_for_sink

    target = end_offsets(settings)
    assert wait_for_sink(settings, settings.sink_group, target, timeout), (
        f"sink did not reach {target} in {timeout}s"
    )


@pytest.fixture(scope="session")
def db(stack: Settings) -> Settings:
    """The stack with the read-model schema migrated."""
    from ops.db import migrate

    migrate(stack)
    return stack


@contextlib.contextmanager
def scratch_database(stack: Settings, name: str) -> Iterator[str]:
    """A migrated database of the test's own on the stack's Postgres (dropped after):
    its DSN. For tests whose rows must not meet the shared read model's."""
    import psycopg

    from ops.db import migrate

    with psycopg.connect(stack.postgres_dsn, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name}")
    dsn = stack.postgres_dsn.rsplit("/", 1)[0] + f"/{name}"
    migrate(Settings(postgres_dsn_override=dsn))
    try:
        yield dsn
    finally:
        with psycopg.connect(stack.postgres_dsn, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(scope="module")
def api(db: Settings) -> Iterator[Any]:
    """The real gateway app in process (its JWT auth, its pool, the review and
    webhook routers), for tests that drive the API next to pipeline processes.
    Webhook URLs on 127.0.0.1 are allowed: the receivers are local test servers."""
    from fastapi.testclient import TestClient

    from gateway.app import create_app

    with TestClient(create_app(db.model_copy(update={"webhook_allow_private_urls": True}))) as client:
        yield client


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run the slow load-and-crash tests last, so every other test (and every
    downstream consumer that must catch up on the shared journal) runs first and fast."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is not None)
