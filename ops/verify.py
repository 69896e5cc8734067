"""`paystream verify`: audit the ledger's invariants and the read model.

Two independent sources are compared: a replay of `ledger.events` read straight
from Kafka (read_committed, from offset 0) and the Postgres read model. The
replay is deliberately written without the sink's code (`sinks.read_model`), so
a bug in the sink's fold cannot hide itself; only the input gate is shared
(`normalize_event`: canonical UUID spelling, and what is dead-lettered).

Checks (each names the offending ids when it fails):

a. balances sum to zero per currency: Postgres accounts, Postgres postings,
   every single event, and the replay;
b. per command at most one terminal non-replay outcome; per payment at most one
   debit, credit, reversal debit and reversal credit; every credit/reversal has
   the legs it depends on; no transfer stays in transit longer than a grace
   period (measured against the newest event, so a stopped ledger is not an error);
c. no USER account ever went below zero, except after a REVERSAL_DEBITED on it;
d. the read model equals the replay up to the sink's stored offsets (balances,
   postings count and sum per account, event count, payment and account status);
e. each event's `balance_after` equals the replayed balance of its account;
f. every account's hash chain is whole, in the topic and in the read model (each
   row's hash recomputed from the row and its postings), and the read model's chain
   heads equal the topic's (docs/LEDGER.md, "Tamper-evident journal"). Each broken
   chain is named by its first broken link: account, sequence, expected, found.
g. holds: each ends at most once (captured, voided or expired), none stays open past
   its expiry by more than the grace period, each hold event's `held_after` equals the
   account's replayed held total, and so does Postgres'.

Consistency of the cut: the Postgres side is read in one REPEATABLE READ
snapshot holding both the rows and `sink_offsets` (written in one transaction
by the sink), and (d) uses only the replayed events below those offsets. The
invariant checks (a-c, e) use the whole topic up to its end.
"""

from __future__ import annotations

import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import psycopg
import typer
from confluent_kafka import TopicPartition
from psycopg.rows import dict_row
from rich.console import Console
from rich.table import Table

from paystream import kafka, topics
from paystream.codec import Codec
from paystream.errors import DecodeError
from paystream.journal import Break, ChainChecker, event_hash
from paystream.records import (
    ACCOUNT_FROZEN,
    ACCOUNT_OPENED,
    ACCOUNT_UNFROZEN,
    AUTHORIZE,
    COMMAND_REJECTED,
    DEPOSIT,
    DEPOSITED,
    HOLD_CAPTURED,
    HOLD_EXPIRED,
    HOLD_PLACED,
    HOLD_VOIDED,
    REVERSAL_DEBITED,
    TRANSFER,
    TRANSFER_COMPLETED,
    TRANSFER_DEBITED,
    TRANSFER_FAILED,
    TRANSFER_REVERSED,
    WITHDRAW,
    WITHDRAWN,
    Decoded,
    EventType,
    LedgerEvent,
)
from paystream.settings import Settings, get_settings
from paystream.stream.pg_intake import stored_offsets
from sinks.read_model import canonical_uuid, event_from_row, normalize_event

TOPIC = topics.EVENTS
SHOW = 20  # offending ids printed per check

# Payment facts, as bits. A hold's capture is its debit.
DEBITED, CREDITED, FAILED, REJECTED, SETTLED, REV_DEBITED, REVERSED, PLACED, CANCELED, EXPIRED = (
    1 << i for i in range(10)
)
_FACT: dict[EventType, int] = {
    TRANSFER_DEBITED: DEBITED, TRANSFER_COMPLETED: CREDITED, TRANSFER_FAILED: FAILED,
    DEPOSITED: SETTLED, WITHDRAWN: SETTLED, REVERSAL_DEBITED: REV_DEBITED,
    TRANSFER_REVERSED: REVERSED, HOLD_PLACED: PLACED, HOLD_CAPTURED: DEBITED, HOLD_VOIDED: CANCELED,
    HOLD_EXPIRED: EXPIRED,
}  # fmt: skip
_ONCE: frozenset[EventType] = frozenset({
    TRANSFER_DEBITED, TRANSFER_COMPLETED, REVERSAL_DEBITED, TRANSFER_REVERSED, HOLD_PLACED, HOLD_CAPTURED,
    HOLD_VOIDED, HOLD_EXPIRED,
})  # fmt: skip
_HOLD_ENDS = (HOLD_CAPTURED, HOLD_VOIDED, HOLD_EXPIRED)


@dataclass
class Check:
    name: str
    ok: bool
    summary: str
    offenders: list[str] = field(default_factory=list)


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)
    cut: dict[int, int] = field(default_factory=dict)
    end: dict[int, int] = field(default_factory=dict)
    replayed: int = 0
    rejected: list[str] = field(default_factory=list)  # undecodable values, skipped by both sides
    compared: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def check(self, name: str) -> Check:
        return next(c for c in self.checks if c.name == name)

    def add(self, name: str, offenders: list[str], summary: str) -> None:
        self.checks.append(Check(name, not offenders, summary, offenders))


class Replay:
    """Balances, journal totals and payment facts rebuilt from events in topic order."""

    def __init__(self, invariants: bool) -> None:
        self.invariants = invariants
        self.event_ids: set[str] = set()
        self.duplicates: list[str] = []
        self.balance: dict[str, int] = defaultdict(int)
        self.journal: dict[str, list[int]] = {}  # account -> [count, sum]
        self.by_currency: dict[str, int] = defaultdict(int)
        self.kind: dict[str, str] = {}
        self.status: dict[str, str] = {}
        self.facts: dict[str, int] = defaultdict(int)
        # invariants only
        self.terminals: dict[str, int] = defaultdict(int)
        self.twice: list[str] = []
        self.unbalanced: list[str] = []
        self.negative: dict[str, str] = {}
        self.reversed_accounts: set[str] = set()
        self.balance_after_wrong: dict[str, str] = {}
        self.debit_at: dict[str, int] = {}
        self.held: dict[str, int] = defaultdict(int)  # account -> replayed held total
        self.hold_amount: dict[str, int] = {}  # payment -> amount held by its HOLD_PLACED
        self.hold_expires: dict[str, int] = {}  # payment -> its HOLD_PLACED's expires_at
        self.held_after_wrong: dict[str, str] = {}
        self.needs: dict[str, int] = defaultdict(int)  # payment -> facts its checked events require
        self.newest = 0

    def feed(self, ev: LedgerEvent | Decoded, checked: bool = True) -> None:
        eid = ev["event_id"]
        if eid in self.event_ids:
            self.duplicates.append(eid)
            return
        self.event_ids.add(eid)
        acct, etype, pay = (
            canonical_uuid(ev["account_id"]),
            ev["type"],
            canonical_uuid(ev["payment_id"]),
        )
        per_event: dict[str, int] = defaultdict(int)
        for p in ev["postings"]:
            pa = canonical_uuid(p["account_id"])
            self.balance[pa] += p["amount"]
            j = self.journal.get(pa)
            if j is None:
                self.journal[pa] = [1, p["amount"]]
            else:
                j[0] += 1
                j[1] += p["amount"]
            self.by_currency[p["currency"]] += p["amount"]
            per_event[p["currency"]] += p["amount"]
            self.kind.setdefault(pa, p["account_kind"])
        if not ev["replay"]:
            if etype == ACCOUNT_OPENED and (info := ev.get("account")):
                self.kind[acct] = info["kind"]
                self.status[acct] = "ACTIVE"
            elif etype == ACCOUNT_FROZEN:
                self.status[acct] = "FROZEN"
            elif etype == ACCOUNT_UNFROZEN:
                self.status[acct] = "ACTIVE"
            fact = _FACT.get(etype)
            if etype == COMMAND_REJECTED and ev["command_type"] in (TRANSFER, DEPOSIT, WITHDRAW, AUTHORIZE):
                fact = REJECTED
            if fact is not None:
                if self.invariants and etype in _ONCE and self.facts[pay] & fact:
                    self.twice.append(f"{pay} ({etype} twice)")
                if self.invariants and etype in _HOLD_ENDS and self.facts[pay] & (DEBITED | CANCELED | EXPIRED):
                    self.twice.append(f"{pay} (a hold ended twice: {etype} after another end)")
                self.facts[pay] |= fact
            if etype == HOLD_PLACED:
                self.hold_amount[pay] = ev["amount"] or 0
                self.hold_expires[pay] = ev.get("expires_at") or 0
                self.held[acct] += self.hold_amount[pay]
            elif etype in _HOLD_ENDS:
                self.held[acct] -= self.hold_amount.get(pay, 0)
        if not self.invariants:
            return
        self.newest = max(self.newest, ev["occurred_at"])
        if any(per_event.values()):
            self.unbalanced.append(eid)
        if ev["terminal"] and not ev["replay"]:
            cid = canonical_uuid(ev["command_id"])
            self.terminals[cid] += 1
            if self.terminals[cid] == 2:
                self.twice.append(f"{cid} (two terminal outcomes)")
        if etype == REVERSAL_DEBITED and not ev["replay"]:
            self.reversed_accounts.add(acct)
        held_after = ev.get("held_after")
        if held_after is not None and self.held[acct] != held_after:
            self.held_after_wrong.setdefault(
                acct, f"{acct}: held_after {held_after} != journal {self.held[acct]} (event {eid})"
            )
        if etype in (TRANSFER_DEBITED, HOLD_CAPTURED) and not ev["replay"]:
            self.debit_at[pay] = ev["occurred_at"]
        if checked and not ev["replay"]:
            # Facts on other partitions that must already be committed.
            if etype == TRANSFER_COMPLETED:
                self.needs[pay] |= DEBITED
            elif etype == REVERSAL_DEBITED:
                self.needs[pay] |= CREDITED
            elif etype == TRANSFER_REVERSED:
                self.needs[pay] |= REV_DEBITED
        touched = {canonical_uuid(p["account_id"]) for p in ev["postings"]}
        for a in touched:
            if (
                self.kind.get(a) == "USER"
                and self.balance[a] < 0
                and a not in self.reversed_accounts
            ):
                self.negative.setdefault(a, f"{a} at {self.balance[a]} (event {eid})")
        after = ev.get("balance_after")
        if (
            after is not None
            and self.kind.get(acct, "USER") == "USER"
            and self.balance[acct] != after
        ):
            self.balance_after_wrong.setdefault(
                acct, f"{acct}: balance_after {after} != journal {self.balance[acct]} (event {eid})"
            )

    def lapsed_holds(self, grace: float) -> list[str]:
        """Holds still open more than `grace` seconds past their expiry: an expiry was
        lost. Measured against the newest event, like transfers in transit, so a
        stopped ledger is not an error."""
        return [f"{pay} held {(self.newest - exp) / 1000:.0f}s past its expiry"
                for pay, exp in self.hold_expires.items()
                if not self.facts.get(pay, 0) & (DEBITED | CANCELED | EXPIRED) and self.newest - exp > grace * 1000]

    def payment_status(self, pay: str) -> str | None:
        """The status the facts imply, derived on its own terms (not the sink's merge)."""
        f = self.facts.get(pay, 0)
        if f & REVERSED:
            return "REVERSED"
        if f & (CREDITED | SETTLED):
            return "COMPLETED"
        if f & FAILED:
            return "FAILED"
        if f & REJECTED:
            return "REJECTED"
        if f & DEBITED:
            return "PENDING"
        if f & CANCELED:
            return "CANCELED"
        if f & EXPIRED:
            return "EXPIRED"
        if f & PLACED:
            return "REQUIRES_CAPTURE"
        return None


# ----------------------------------------------------------------------------- kafka


def end_offsets(settings: Settings) -> dict[int, int]:
    """Last stable offsets: the end as a read_committed reader sees it."""
    c = kafka.consumer(settings, f"verify-{uuid.uuid4()}")
    try:
        parts = c.list_topics(TOPIC, timeout=10).topics[TOPIC].partitions
        return {p: c.get_watermark_offsets(TopicPartition(TOPIC, p), timeout=10)[1] for p in parts}
    finally:
        c.close()


def read_topic(
    settings: Settings,
    codec: Codec,
    upto: dict[int, int],
    sink: Callable[[int, int, dict[str, Any]], None],
    start: dict[int, int] | None = None,
    rejects: list[str] | None = None,
) -> int:
    """Feed every committed event in [start, upto) per partition, in partition order;
    values that do not decode are skipped (and listed in `rejects`), as the sink skips them."""
    start = start or {}
    todo = {p: o for p, o in upto.items() if o > start.get(p, 0)}
    if not todo:
        return 0
    c = kafka.consumer(settings, f"verify-{uuid.uuid4()}", **{"fetch.wait.max.ms": 50})
    c.assign([TopicPartition(TOPIC, p, start.get(p, 0)) for p in todo])
    n = 0
    idle_since = time.monotonic()
    try:
        while todo:
            msgs = c.consume(5000, 0.5)
            for m in msgs:
                if m.error() is not None:
                    continue
                p, o = m.partition(), m.offset()
                assert p is not None and o is not None
                if p in todo and o < todo[p]:
                    try:
                        ev = codec.decode(TOPIC, m.value())
                    except DecodeError as exc:  # the sink dead-letters these too
                        if rejects is not None:
                            rejects.append(f"{TOPIC}[{p}]@{o}: {exc}")
                        continue
                    sink(p, o, ev)
                    n += 1
            if msgs:
                idle_since = time.monotonic()
            for tp in c.position([TopicPartition(TOPIC, p) for p in list(todo)]):
                if tp.offset >= todo[tp.partition]:
                    del todo[tp.partition]
            if todo and time.monotonic() - idle_since > 30:
                raise TimeoutError(f"{TOPIC} partitions {sorted(todo)} stopped short of their end")
    finally:
        c.close()
    return n


# -------------------------------------------------------------------------- postgres


def sink_offsets(conn: psycopg.Connection[Any], consumer: str) -> dict[int, int]:
    """The sink's stored position on ledger.events (its rows in `sink_offsets`, the
    offsets table every intake shares)."""
    return stored_offsets(conn, consumer, TOPIC)


def wait_for_sink(
    settings: Settings, consumer: str, target: dict[int, int], timeout: float
) -> bool:
    deadline = time.monotonic() + timeout
    with psycopg.connect(settings.postgres_dsn, autocommit=True) as conn:
        while True:
            stored = sink_offsets(conn, consumer)
            if all(stored.get(p, 0) >= o for p, o in target.items() if o > 0):
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.25)


@dataclass
class Snapshot:
    offsets: dict[int, int]
    balances: dict[str, int]
    kinds: dict[str, str]
    statuses: dict[str, str | None]
    journal: dict[str, tuple[int, int]]
    events: int
    payments: dict[str, str]
    currency_balance: dict[str, int]
    currency_postings: dict[str, int]
    unbalanced_events: list[str]
    chains: RowChains
    held: dict[str, int] = field(default_factory=dict)


def event_rows_sql(where: str = "TRUE") -> str:
    """Each `ledger_events` row (WHERE `where`, alias e) with its postings, as
    `event_from_row` takes them, and whether the postings' copies of the event's
    payment, sequence and time agree with it; by account and sequence."""
    return f"""
SELECT e.event_id::text AS event_id, e.command_id::text AS command_id,
       e.payment_id::text AS payment_id, e.account_id::text AS account_id, e.sequence, e.type,
       e.command_type, e.status, e.terminal, e.replay, e.reason,
       e.counterparty_id::text AS counterparty_id, e.amount, e.currency, e.balance_after,
       e.requested_by, e.note, e.metadata, e.occurred_at, e.account, e.prev_hash, e.hash, e.held_after,
       e.expires_at,
       COALESCE(p.postings, '[]'::json) AS postings, COALESCE(p.agree, true) AS postings_agree
FROM ledger_events e
LEFT JOIN LATERAL (
    SELECT json_agg(json_build_object('account_id', x.account_id::text, 'account_kind', x.account_kind,
                                      'amount', x.amount, 'currency', x.currency) ORDER BY x.idx) AS postings,
           bool_and(x.payment_id = e.payment_id AND x.sequence = e.sequence
                    AND x.occurred_at = e.occurred_at) AS agree
    FROM postings x WHERE x.event_id = e.event_id
) p ON true
WHERE {where}
ORDER BY e.account_id, e.sequence
"""


@dataclass
class RowChains:
    """The read model's chains, each row's hash recomputed from the row itself."""

    checker: ChainChecker = field(default_factory=ChainChecker)
    heads: dict[str, tuple[int, str]] = field(default_factory=dict)  # account -> last (sequence, hash)
    unverifiable: list[str] = field(default_factory=list)
    disagreeing_postings: list[str] = field(default_factory=list)

    def feed(self, row: dict[str, Any]) -> None:
        ev = event_from_row(row, row["postings"])
        where = f"ledger_events row of event {ev['event_id']}"
        recompute = True
        if ev["hash"] and "\ufffd" in str(ev) and event_hash(ev) != ev["hash"]:
            # The sink replaced a NUL in this event's text (Postgres cannot store it):
            # the row is not the event byte for byte, so its hash cannot be recomputed
            # here; its links still are, and the topic's check covers the event itself.
            self.unverifiable.append(ev["event_id"])
            recompute = False
        self.checker.feed(ev, where, recompute=recompute)
        if not row["postings_agree"]:
            self.disagreeing_postings.append(
                f"postings of event {ev['event_id']} disagree with it on payment_id, sequence or occurred_at"
            )
        self.heads[ev["account_id"]] = (ev["sequence"], ev["hash"])


def read_model_chains(conn: psycopg.Connection[Any]) -> RowChains:
    chains = RowChains()
    with conn.cursor(name="verify_chains", row_factory=dict_row) as cur:
        cur.itersize = 2000
        for row in cur.execute(event_rows_sql()):
            chains.feed(row)
    return chains


def snapshot(settings: Settings, consumer: str) -> Snapshot:
    with psycopg.connect(settings.postgres_dsn) as conn:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        with conn.transaction():
            offsets = sink_offsets(conn, consumer)
            accts = conn.execute(
                "SELECT account_id::text, balance, kind, status, held FROM accounts"
            ).fetchall()
            journal = conn.execute(
                "SELECT account_id::text, count(*), sum(amount) FROM postings GROUP BY 1"
            ).fetchall()
            n_events = conn.execute("SELECT count(*) FROM ledger_events").fetchone()
            payments = conn.execute("SELECT payment_id::text, status FROM payments").fetchall()
            by_cur = conn.execute(
                "SELECT currency, sum(balance) FROM accounts GROUP BY 1"
            ).fetchall()
            by_cur_p = conn.execute(
                "SELECT currency, sum(amount) FROM postings GROUP BY 1"
            ).fetchall()
            unbalanced = conn.execute(
                "SELECT DISTINCT event_id::text FROM postings GROUP BY event_id, currency"
                " HAVING sum(amount) <> 0 LIMIT 1000"
            ).fetchall()
            chains = read_model_chains(conn)
    return Snapshot(
        offsets=offsets,
        balances={a: int(b) for a, b, _, _, _ in accts},
        kinds={a: k for a, _, k, _, _ in accts},
        statuses={a: s for a, _, _, s, _ in accts},
        held={a: int(h) for a, _, _, _, h in accts if h},
        journal={a: (int(c), int(s)) for a, c, s in journal},
        events=int(n_events[0]) if n_events else 0,
        payments=dict(payments),
        currency_balance={str(c): int(s) for c, s in by_cur},
        currency_postings={str(c): int(s) for c, s in by_cur_p},
        unbalanced_events=[r[0] for r in unbalanced],
        chains=chains,
    )


# ----------------------------------------------------------------------------- audit


def verify(
    settings: Settings | None = None,
    *,
    wait: float = 0.0,
    consumer: str | None = None,
    pending_grace: float = 300.0,
    codec: Codec | None = None,
) -> Report:
    """Run every check; `wait` > 0 first waits (up to that many seconds) for the
    sink to reach the topic's current end, so the comparison covers everything."""
    settings = settings or get_settings()
    consumer = consumer or settings.sink_group
    codec = codec or Codec(settings.registry_url)
    t0 = time.monotonic()
    report = Report()
    if wait > 0:
        target = end_offsets(settings)
        caught_up = wait_for_sink(settings, consumer, target, wait)
        report.add(
            "sink caught up",
            [] if caught_up else [f"{consumer} did not reach {target}"],
            f"waited up to {wait:.0f}s for the sink to reach the topic's end",
        )
    snap = snapshot(settings, consumer)
    report.cut = snap.offsets
    end1 = end_offsets(settings)  # >= the cut: the sink cannot be past the end
    full, cut = Replay(invariants=True), Replay(invariants=False)
    chains = ChainChecker()
    cut_heads: dict[str, tuple[int, str]] = {}

    def chain(p: int, o: int, ev: dict[str, Any]) -> None:
        # The event as the ledger wrote it: before the input gate, which may clean text.
        chains.feed(ev, f"{TOPIC}[{p}]@{o}")
        if o < snap.offsets.get(p, 0):
            cut_heads[ev["account_id"]] = (ev["sequence"], ev.get("hash") or "")

    def feed(p: int, o: int, ev: dict[str, Any]) -> None:
        chain(p, o, ev)
        problem = normalize_event(ev)  # same input gate as the sink: it dead-letters these
        if problem is not None:
            report.rejected.append(f"{TOPIC}[{p}]@{o}: {problem}")
            return
        full.feed(ev)
        if o < snap.offsets.get(p, 0):
            cut.feed(ev)

    report.replayed = read_topic(settings, codec, end1, feed, rejects=report.rejected)
    # A credit commits after its debit, but partitions' ends were sampled one by
    # one: read on to a fresh end so a debit committed meanwhile is seen. Events
    # from this tail only satisfy dependencies; they are not checked themselves.
    end2 = end_offsets(settings)
    def feed_tail(p: int, o: int, ev: dict[str, Any]) -> None:
        chain(p, o, ev)
        if normalize_event(ev) is None:
            full.feed(ev, checked=False)

    report.replayed += read_topic(settings, codec, end2, feed_tail, start=end1)
    report.end = end2
    report.compared = len(cut.event_ids)
    _invariants(report, full, snap, pending_grace)
    _compare(report, cut, snap)
    _chains(report, chains, snap.chains, cut_heads)
    report.seconds = time.monotonic() - t0
    return report


def _nonzero(sums: dict[str, int]) -> list[str]:
    return [f"{cur}: {s:+d}" for cur, s in sorted(sums.items()) if s != 0]


def _invariants(report: Report, full: Replay, snap: Snapshot, grace: float) -> None:
    pg_sums = _nonzero(snap.currency_balance)
    pg_sums += [f"postings {x}" for x in _nonzero(snap.currency_postings)]
    pg_sums += [f"event {e} postings do not balance" for e in snap.unbalanced_events]
    report.add(
        "a. zero sum per currency (postgres)",
        pg_sums,
        f"{len(snap.currency_balance)} currencies over {len(snap.balances)} accounts",
    )
    replay_sums = _nonzero(full.by_currency)
    replay_sums += [f"event {e} postings do not balance" for e in full.unbalanced]
    report.add(
        "a. zero sum per currency (replay)",
        replay_sums,
        f"{len(full.by_currency)} currencies over {len(full.event_ids)} events",
    )
    missing: list[str] = []
    for pay, need in full.needs.items():
        lacking = need & ~full.facts.get(pay, 0)
        if lacking & DEBITED:
            missing.append(f"{pay} credited without a debit")
        if lacking & CREDITED:
            missing.append(f"{pay} reversed without a completed credit")
        if lacking & REV_DEBITED:
            missing.append(f"{pay} reversal credited without a reversal debit")
    stuck: list[str] = []
    in_flight = 0
    for pay, at in full.debit_at.items():
        if full.facts[pay] & (CREDITED | FAILED):
            continue
        in_flight += 1
        age = (full.newest - at) / 1000
        if age > grace:
            stuck.append(f"{pay} in transit for {age:.0f}s")
    report.add(
        "b. one outcome per command, one leg of each kind per payment",
        full.twice + [f"event {e} appears twice in the topic" for e in full.duplicates]
        + missing + stuck,
        f"{len(full.terminals)} commands, {len(full.facts)} payments, "
        f"{in_flight} in transit (grace {grace:.0f}s)",
    )  # fmt: skip
    report.add("c. no user account below zero except after a reversal",
               list(full.negative.values()),
               f"{sum(1 for k in full.kind.values() if k == 'USER')} user accounts, "
               f"{len(full.reversed_accounts)} with reversals")  # fmt: skip
    report.add(
        "e. balance_after agrees with the journal",
        list(full.balance_after_wrong.values()),
        "every event's stated balance equals its account's replayed balance",
    )
    report.add(
        "g. held totals agree with the journal, no hold outlives its expiry",
        list(full.held_after_wrong.values()) + [f"{a}: replayed held total {h} < 0" for a, h in full.held.items()
                                                if h < 0] + full.lapsed_holds(grace),
        f"{len(full.hold_amount)} holds, {sum(full.held.values())} held now (grace {grace:.0f}s)",
    )


def _compare(report: Report, cut: Replay, snap: Snapshot) -> None:
    bad: list[str] = []
    for acct in sorted(set(cut.balance) | {a for a, b in snap.balances.items() if b}):
        want, got = cut.balance.get(acct, 0), snap.balances.get(acct)
        if got != want:
            bad.append(f"{acct}: postgres {got} != replay {want}")
    for acct in sorted({a for a, h in cut.held.items() if h} | set(snap.held)):
        want, got = cut.held.get(acct, 0), snap.held.get(acct, 0)
        if got != want:
            bad.append(f"{acct}: postgres held {got} != replay {want}")
    report.add(
        "d. balances equal the replay",
        bad,
        f"{len(snap.balances)} accounts in postgres, {len(cut.balance)} with postings in replay",
    )
    bad = []
    for acct in sorted(set(cut.journal) | set(snap.journal)):
        j = cut.journal.get(acct, [0, 0])
        pg_journal = snap.journal.get(acct, (0, 0))
        if pg_journal != (j[0], j[1]):
            bad.append(f"{acct}: postgres (count, sum) {pg_journal} != replay {tuple(j)}")
    if snap.events != len(cut.event_ids):
        bad.append(f"ledger_events: postgres {snap.events} rows != replay {len(cut.event_ids)}")
    report.add(
        "d. postings and events equal the replay",
        bad,
        f"{sum(c for c, _ in snap.journal.values())} postings, {snap.events} events",
    )
    bad = []
    for pay in sorted(set(cut.facts) | set(snap.payments)):
        want_status, pg_status = cut.payment_status(pay), snap.payments.get(pay)
        if pg_status != want_status:
            bad.append(f"{pay}: postgres {pg_status} != replay {want_status}")
    for acct, want_status in cut.status.items():
        if snap.statuses.get(acct) != want_status:
            bad.append(
                f"account {acct}: postgres status {snap.statuses.get(acct)} != {want_status}"
            )
    report.add(
        "d. payment and account statuses equal the replay",
        bad,
        f"{len(snap.payments)} payments, {len(cut.status)} opened accounts",
    )


def journal_chains(records: Iterable[tuple[int, int, Mapping[str, Any]]]) -> ChainChecker:
    """Check (f.) over journal records (partition, offset, event as decoded) in
    partition order: what `verify` runs on the topic, for a copy of it kept elsewhere."""
    checker = ChainChecker()
    for p, o, ev in records:
        checker.feed(ev, f"{TOPIC}[{p}]@{o}")
    return checker


def _chains(report: Report, journal: ChainChecker, rows: RowChains, cut_heads: dict[str, tuple[int, str]]) -> None:
    def summary(checker: ChainChecker) -> str:
        return (f"{checker.checked} chained events on {len(checker.heads) + len(checker.breaks)} keys"
                + (f", {checker.unchained} from before the chain" if checker.unchained else ""))  # fmt: skip

    report.add(
        "f. hash chains are whole (journal)",
        [str(b) for b in journal.first_breaks()],
        summary(journal) + ", each event's hash recomputed",
    )
    report.add(
        "f. hash chains are whole (read model)",
        [str(b) for b in rows.checker.first_breaks()] + rows.disagreeing_postings,
        summary(rows.checker) + ", each row's hash recomputed from the row"
        + (f"; {len(rows.unverifiable)} row(s) with text the sink cleaned of NUL only linked: "
           f"{', '.join(rows.unverifiable[:3])}" if rows.unverifiable else ""),
    )  # fmt: skip
    bad = []
    for acct in sorted(set(cut_heads) | set(rows.heads)):
        want, got = cut_heads.get(acct), rows.heads.get(acct)
        if want != got:
            bad.append(str(Break(acct, (got or want or (0, ""))[0], "chain head",
                                 _head(want), _head(got), "read model vs journal")))  # fmt: skip
    report.add(
        "f. chain heads in postgres equal the journal's",
        bad,
        f"{len(rows.heads)} accounts' last (sequence, hash) in postgres against the journal below the cut",
    )


def _head(head: tuple[int, str] | None) -> str:
    return "none" if head is None else f"sequence {head[0]} hash {head[1] or '(unchained)'}"


# ------------------------------------------------------------------------------- cli


def render(report: Report, console: Console) -> None:
    table = Table(title="paystream verify", show_lines=False)
    table.add_column("check")
    table.add_column("result")
    table.add_column("detail")
    for c in report.checks:
        table.add_row(
            c.name,
            "[green]ok[/green]" if c.ok else f"[red]FAIL ({len(c.offenders)})[/red]",
            c.summary,
        )
    console.print(table)
    lag = {p: report.end.get(p, 0) - report.cut.get(p, 0) for p in sorted(report.end)}
    console.print(
        f"replayed {report.replayed} events from Kafka; compared {report.compared} "
        f"below the sink's offsets (lag per partition {lag}) in {report.seconds:.1f}s"
    )
    if report.rejected:
        console.print(f"[yellow]{len(report.rejected)} value(s) in {TOPIC} skipped as undecodable "
                      "(the sink dead-letters them to paystream.dlq):[/yellow]")  # fmt: skip
        for line in report.rejected[:SHOW]:
            console.print(f"  {line}", highlight=False, soft_wrap=True)
    for c in report.checks:
        if not c.ok:
            console.print(f"[red]{c.name}[/red]")
            for line in c.offenders[:SHOW]:
                console.print(f"  {line}", highlight=False, soft_wrap=True)
            if len(c.offenders) > SHOW:
                console.print(f"  ... and {len(c.offenders) - SHOW} more")
    console.print("[green]all checks passed[/green]" if report.ok else "[red]verify FAILED[/red]")


def register(app: typer.Typer) -> None:
    @app.command("verify")
    def verify_cmd(
        wait: float = typer.Option(
            0.0, "--wait", help="seconds to wait for the sink to catch up first"
        ),
        consumer: str = typer.Option(
            None, "--consumer", help="sink offsets owner (default: settings)"
        ),
        pending_grace: float = typer.Option(
            300.0, "--pending-grace", help="seconds a transfer may stay in transit"
        ),
    ) -> None:
        """Check the ledger's invariants and that the read model equals a replay; exit 1 if not."""
        console = Console()
        report = verify(get_settings(), wait=wait, consumer=consumer, pending_grace=pending_grace)
        render(report, console)
        if not report.ok:
            raise typer.Exit(1)
