"""Balances at an instant and statements of a window, as arithmetic over postings.

The journal (the read model's `postings`) is the record: an account's balance at
an instant is the sum of its postings stamped at or before it, and a statement
of the half-open window [start, end) is

    opening  = the balance just before `start` (postings stamped before it),
    lines    = the window's postings in the account's own order (`sequence`:
               a user account's postings are all emitted by its partition),
               each with its running balance,
    closing  = opening + the window's postings = the balance just before `end`.

Half-open, so consecutive windows chain: the closing balance of [a, b) is the
opening balance of [b, c), and a posting stamped exactly `b` is in the second.

Which postings belong to a window is decided by their time; the order inside it
by their sequence. The two agree as long as the ledger's clock does not step back,
and if it does, every number here is still the sum it claims to be.

The route pages a window (JSON) and streams it (CSV) from SQL that computes the
sums (`gateway.store.statement_totals`) and reads one page of lines at a time;
`running` turns a page's amounts into balances from the balance carried into it.
`statement` is the same computation over an in-memory list, the reference the
property tests hold the paging to.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, Protocol, TypeVar


class Posting(Protocol):
    """What the arithmetic needs of a posting (a row of `postings`)."""

    @property
    def sequence(self) -> int: ...

    @property
    def occurred_at(self) -> datetime: ...

    @property
    def amount(self) -> int: ...


P = TypeVar("P", bound=Posting)


@dataclass(frozen=True, slots=True)
class Line(Generic[P]):
    posting: P
    balance: int  # the account's balance right after this posting


@dataclass(frozen=True, slots=True)
class Statement(Generic[P]):
    opening: int
    lines: list[Line[P]]
    closing: int


def running(carried: int, amounts: Iterable[int]) -> Iterator[int]:
    """The balance after each amount, starting from `carried`: the window's opening
    balance plus the postings of the window before this page."""
    balance = carried
    for amount in amounts:
        balance += amount
        yield balance


def balance_at(postings: Iterable[P], at: datetime) -> int:
    """The balance as of `at`: every posting stamped at or before it."""
    return sum(p.amount for p in postings if p.occurred_at <= at)


def in_window(postings: Iterable[P], start: datetime, end: datetime) -> list[P]:
    """The postings of [start, end), in the account's order."""
    return sorted((p for p in postings if start <= p.occurred_at < end), key=lambda p: p.sequence)


def statement(postings: Sequence[P], start: datetime, end: datetime) -> Statement[P]:
    """The statement of [start, end) over all of an account's postings."""
    opening = sum(p.amount for p in postings if p.occurred_at < start)
    window = in_window(postings, start, end)
    lines = [Line(p, b) for p, b in zip(window, running(opening, (p.amount for p in window)), strict=True)]
    return Statement(opening, lines, lines[-1].balance if lines else opening)
