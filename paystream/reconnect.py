"""Waiting out a lost Postgres connection: which errors mean the connection is gone,
and how long to wait before trying again. Shared by every loop that reconnects (the
read-model sink, the reviews and webhooks intakes, both outbox relays)."""

from __future__ import annotations

import psycopg


class Backoff:
    """Capped exponential backoff: 0.2 s, doubling, at most 5 s. `reset` once the
    connection has done real work again, not merely opened."""

    def __init__(self, first: float = 0.2, cap: float = 5.0) -> None:
        self.first, self.cap = first, cap
        self.delay = first

    def next(self) -> float:
        """The delay to wait now; the one after it doubles."""
        delay, self.delay = self.delay, min(self.delay * 2, self.cap)
        return delay

    def reset(self) -> None:
        self.delay = self.first


def connection_lost(exc: BaseException) -> bool:
    """Whether a psycopg error means the connection is gone (server restart, admin
    shutdown, network), which a reconnect fixes, rather than a statement that failed."""
    if isinstance(exc, psycopg.InterfaceError):
        return True
    if not isinstance(exc, psycopg.OperationalError):
        return False
    state = getattr(exc, "sqlstate", None)
    # No SQLSTATE: the client lost or could not open the connection. Class 08 is
    # connection exceptions; 57P01-57P03 are admin/crash shutdown and "cannot connect now".
    return state is None or state.startswith("08") or state in ("57P01", "57P02", "57P03")
