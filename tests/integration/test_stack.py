"""The local stack manager against real processes.

The shared stack (default settings, home ``.stack``) is only ever brought up,
never torn down or reset here: other test sessions rely on it. Conflict tests
use a throw-away home so a failure cannot disturb it.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ops import stack
from paystream.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def shared() -> Settings:
    settings = Settings()
    stack.ensure_up(settings)
    return settings


def _pids(settings: Settings) -> dict[str, int]:
    layout = stack.Layout.of(settings)
    return {name: int(layout.pid_file(name).read_text()) for name in stack.SERVICES}


def test_up_twice_starts_nothing_the_second_time(shared: Settings) -> None:
    before = _pids(shared)
    report = stack.up(shared)
    assert report.reused == set(stack.SERVICES)
    assert report.started == set()
    assert report.pids == before
    assert _pids(shared) == before
    assert all(seconds == 0.0 for seconds in report.values())


def test_status_reports_every_service_up(shared: Settings) -> None:
    statuses = {st.name: st for st in stack.status(shared)}
    assert list(statuses) == list(stack.SERVICES)
    pids = _pids(shared)
    for name, st in statuses.items():
        assert st.health == "up", st
        assert st.pid == pids[name]
        assert st.rss_mib is not None and st.rss_mib > 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def held_port() -> Iterator[tuple[socket.socket, int]]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    try:
        yield sock, int(sock.getsockname()[1])
    finally:
        sock.close()


@pytest.mark.parametrize(
    ("service", "field"),
    [("redis", "redis_port"), ("kafka", "kafka_port"), ("kafka", "kafka_controller_port")],
)
def test_taken_port_fails_fast_and_starts_nothing(
    tmp_path: Path, held_port: tuple[socket.socket, int], service: str, field: str
) -> None:
    _, port = held_port
    ports = {
        "postgres_port": _free_port(),
        "redis_port": _free_port(),
        "kafka_port": _free_port(),
        "kafka_controller_port": _free_port(),
        "registry_port": _free_port(),
    }
    ports[field] = port
    settings = Settings(home=tmp_path / "home", **ports)  # type: ignore[arg-type]

    started = time.monotonic()
    with pytest.raises(stack.StackError) as caught:
        stack.up(settings)
    assert time.monotonic() - started < 5

    message = str(caught.value)
    assert f"{service}: port {port}" in message
    assert "nothing was started" in message
    run_dir = settings.home / "run"
    assert not list(run_dir.glob("*.pid")) if run_dir.exists() else True
    assert not (settings.home / "postgres").exists()
    assert all(st.health == "down" for st in stack.status(settings))


def test_down_on_a_home_with_nothing_running_is_a_no_op(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    assert stack.down(settings) == []
