"""Statements and balances at an instant (gateway/statements.py): the arithmetic the
statement endpoint pages, held to sums over any postings and any window."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.deps import instant
from gateway.problems import Problem
from gateway.routes.accounts import _cell, wants_csv
from gateway.statements import balance_at, in_window, running, statement

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class P:
    sequence: int
    occurred_at: datetime
    amount: int


def at(ms: int) -> datetime:
    return T0 + timedelta(milliseconds=ms)


# Times are drawn independently of sequences: the window is chosen by time and
# ordered by sequence, and the sums must hold even if the ledger's clock stepped back.
postings = st.lists(
    st.tuples(st.integers(0, 50), st.integers(-10**12, 10**12)), max_size=40
).map(lambda xs: [P(i + 1, at(ms), amount) for i, (ms, amount) in enumerate(xs)])
times = st.integers(-5, 55).map(at)


@given(postings, times, times)
def test_a_statement_sums_to_closing_minus_opening(ps: list[P], a: datetime, b: datetime) -> None:
    start, end = min(a, b), max(a, b)
    s = statement(ps, start, end)
    window = [p for p in ps if start <= p.occurred_at < end]
    assert s.closing - s.opening == sum(p.amount for p in window)
    assert [line.posting for line in s.lines] == sorted(window, key=lambda p: p.sequence)
    for k, line in enumerate(s.lines):
        assert line.balance == s.opening + sum(x.posting.amount for x in s.lines[: k + 1])
    # opening and closing are balances at instants: just before start, just before end
    assert s.opening == balance_at(ps, start - timedelta(microseconds=1))
    assert s.closing == balance_at(ps, end - timedelta(microseconds=1))


@given(postings, times, times, times)
def test_consecutive_windows_chain(ps: list[P], a: datetime, b: datetime, c: datetime) -> None:
    x, y, z = sorted((a, b, c))
    first, second, whole = statement(ps, x, y), statement(ps, y, z), statement(ps, x, z)
    assert first.closing == second.opening
    assert (whole.opening, whole.closing) == (first.opening, second.closing)


@given(postings, times, times, st.integers(0, 40))
def test_a_page_starting_mid_window_carries_the_running_balance(
    ps: list[P], a: datetime, b: datetime, cut: int
) -> None:
    """What the route does for a page: the balance carried into it is the opening
    plus the window's postings up to the cursor (`store.statement_totals`)."""
    start, end = min(a, b), max(a, b)
    s = statement(ps, start, end)
    window = in_window(ps, start, end)
    cut = min(cut, len(window))
    cursor = window[cut - 1].sequence if cut else 0
    carried = sum(p.amount for p in window if p.sequence <= cursor)
    page = list(running(s.opening + carried, (p.amount for p in window[cut:])))
    assert page == [line.balance for line in s.lines[cut:]]


def test_an_empty_window_closes_where_it_opens() -> None:
    ps = [P(1, at(0), 500), P(2, at(10), -200)]
    s = statement(ps, at(5), at(5))
    assert (s.opening, s.lines, s.closing) == (500, [], 500)
    s = statement(ps, at(0), at(10))  # half-open: the posting stamped `end` is not in it
    assert [(line.posting.sequence, line.balance) for line in s.lines] == [(1, 500)]
    assert (s.opening, s.closing) == (0, 500)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-01-31T23:59:59Z", datetime(2026, 1, 31, 23, 59, 59, tzinfo=UTC)),
        ("2026-01-31t23:59:59.5+01:00", datetime(2026, 1, 31, 22, 59, 59, 500000, tzinfo=UTC)),
        ("2026-01-31 23:59:59.123456789-00:30", datetime(2026, 2, 1, 0, 29, 59, 123456, tzinfo=UTC)),
    ],
)
def test_times_are_rfc3339_with_an_offset(text: str, expected: datetime) -> None:
    assert instant(text, "at") == expected


@pytest.mark.parametrize(
    "text",
    ["2026-01-31T23:59:59", "2026-01-31", "yesterday", "2026-02-30T00:00:00Z", "2026-01-31T24:00:00Z",
     "0001-01-01T00:00:00+01:00", "2026-01-31T23:59:59+25:00", "\uff12\uff10\uff12\uff16-01-31T23:59:59Z", "",
     "x" * 5000],
)  # fmt: skip
def test_a_time_without_an_offset_or_malformed_is_400(text: str) -> None:
    with pytest.raises(Problem) as err:
        instant(text, "at")
    assert (err.value.status, err.value.code) == (400, "invalid_timestamp")


@pytest.mark.parametrize(
    ("accept", "csv"),
    [
        ("text/csv", True),
        ("text/csv; charset=utf-8", True),
        ("application/json, text/csv;q=0.5", False),
        ("application/json;q=0.1, text/csv", True),
        ("*/*", False),
        (None, False),
        ("text/csv;q=abc", False),
    ],
)
def test_csv_only_when_the_client_prefers_it(accept: str | None, csv: bool) -> None:
    assert wants_csv(accept) is csv


def test_free_text_never_becomes_a_spreadsheet_formula() -> None:
    assert _cell('=HYPERLINK("http://x")') == "'=HYPERLINK(\"http://x\")"
    assert _cell("+1") == "'+1" and _cell("@SUM(A1)") == "'@SUM(A1)"
    assert _cell("rent") == "rent" and _cell(None) == ""
