"""Which Postgres errors mean the connection is gone, which a reconnect fixes (the outbox
relay reconnects for them; the Kafka-to-Postgres intakes count them in
`paystream_pgconsumer_reconnects_total`), and which are a statement that failed."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import errors

from paystream.reconnect import Backoff, connection_lost


@pytest.mark.parametrize("exc", [
    errors.AdminShutdown(), errors.CrashShutdown(), errors.CannotConnectNow(),
    errors.ConnectionFailure(), errors.ConnectionException(),
    psycopg.OperationalError("server closed the connection unexpectedly"),  # no SQLSTATE
    psycopg.InterfaceError("the connection is closed"),
])  # fmt: skip
def test_lost_connections_are_waited_out(exc: Exception) -> None:
    assert connection_lost(exc)


@pytest.mark.parametrize("exc", [
    errors.QueryCanceled(), errors.DiskFull(), errors.DeadlockDetected(), errors.LockNotAvailable(),
    errors.UniqueViolation(), errors.UndefinedTable(), ValueError("not a database error"),
])  # fmt: skip
def test_failing_statements_are_not(exc: Exception) -> None:
    assert not connection_lost(exc)


def test_backoff_doubles_to_its_cap_and_resets() -> None:
    b = Backoff()
    assert [b.next() for _ in range(7)] == [0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]
    b.reset()
    assert b.next() == 0.2
