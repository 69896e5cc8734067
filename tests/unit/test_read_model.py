"""The sink's pure fold: balance deltas, payment lifecycle, account status, audit rows.

Events come from the real ledger domain (`pipelines.ledger.domain`) driven in
memory, so the fold is tested against exactly the shapes the ledger emits.
"""

from __future__ import annotations

import copy
import itertools
import json
import uuid
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from paystream import commands as C
from paystream.stream.store import DictStore
from pipelines.ledger import domain
from sinks import read_model as rm


class MiniLedger:
    """Routes commands and legs between per-account stores, collecting events."""

    def __init__(self) -> None:
        self.stores: dict[str, DictStore] = {}
        self.events: list[dict[str, Any]] = []
        self.now = 1_700_000_000_000

    def _store(self, key: str) -> DictStore:
        return self.stores.setdefault(key, DictStore())

    def _apply(self, item: dict[str, Any], *, legs: bool) -> list[domain.Output]:
        return domain.apply_batch(domain.BatchStores(self._store), [item], self.now, legs=legs)

    def send(self, cmd: dict[str, Any]) -> None:
        self.now += 1
        self._route(self._apply(cmd, legs=False))

    def tick(self, advance_ms: int) -> None:
        self.now += advance_ms
        key = domain.DEFAULT_CLOCK
        self._route(self._apply({"kind": "TICK", "account_id": key}, legs=True))

    def _route(self, outs: list[domain.Output]) -> None:
        for o in outs:
            if o.topic == domain.EVENTS:
                self.events.append(o.value)
            else:
                self.now += 1
                self._route(self._apply(o.value, legs=True))


def opened(led: MiniLedger, n: int, deposit: int = 0) -> list[str]:
    ids = [str(uuid.uuid4()) for _ in range(n)]
    for a in ids:
        led.send(C.open_account(a, external_number=a[:12], owner_id="u", currency="USD"))
        if deposit:
            led.send(C.deposit(a, deposit, "USD", metadata={"description": "salary"}))
    return ids


def test_deltas_are_net_per_account_and_sum_to_zero():
    led = MiniLedger()
    a, b = opened(led, 2, deposit=1_000)
    led.send(C.transfer(a, b, 300, "USD"))
    led.send(C.transfer(b, a, 50, "USD"))
    d = rm.account_deltas(led.events)
    assert d[a] == 1_000 - 300 + 50 and d[b] == 1_000 + 300 - 50
    assert d[domain.transit_account("USD")] == 0
    assert d[domain.settlement_account("USD")] == -2_000
    assert sum(d.values()) == 0


def test_fold_of_only_new_events_is_what_a_replay_adds():
    """The sink folds the events Postgres reported as newly inserted: folding an
    empty set (a fully replayed batch) changes nothing."""
    led = MiniLedger()
    opened(led, 2, deposit=500)
    fx = rm.fold([])
    assert not fx.postings and not fx.accounts and not fx.payments and not fx.audit
    full = rm.fold(led.events)
    split = rm.account_deltas(led.events[:3]), rm.account_deltas(led.events[3:])
    merged = {k: split[0].get(k, 0) + split[1].get(k, 0) for k in set(split[0]) | set(split[1])}
    assert {k: v.delta for k, v in full.accounts.items() if v.has_postings} == merged


def test_fold_accounts_payments_and_audit():
    led = MiniLedger()
    a, b = opened(led, 2, deposit=1_000)
    t = C.transfer(a, b, 400, "USD")
    led.send(t)
    led.send(C.transfer(a, b, 10_000, "USD"))  # rejected: insufficient funds
    led.send(
        C.reverse_transfer(
            b, t["command_id"], reason="fraud", actor="admin:1", freeze_receiver=True
        )
    )
    fx = rm.fold(led.events)
    acct_b = fx.accounts[b]
    assert acct_b.status == "FROZEN" and acct_b.kind == "USER" and acct_b.external_number == b[:12]
    assert acct_b.delta == 1_000 + 400 - 400
    assert fx.accounts[a].delta == 1_000
    assert fx.accounts[domain.transit_account("USD")].kind == "TRANSIT"
    pay = fx.payments[t["command_id"]]
    assert (pay.status, pay.from_account, pay.to_account, pay.amount) == ("REVERSED", a, b, 400)
    assert sorted(s.status for s in fx.payments.values()).count("REJECTED") == 1
    deposits = [p for p in fx.payments.values() if p.kind == "DEPOSIT"]
    assert all(p.description == "salary" and p.to_account in (a, b) for p in deposits)
    actions = [(r[3], r[2]) for r in fx.audit]
    assert ("REVERSAL_DEBITED", "admin:1") in actions and (
        "TRANSFER_REVERSED",
        "admin:1",
    ) in actions
    assert ("ACCOUNT_FROZEN", "admin:1") in actions
    assert len(fx.postings) == sum(len(e["postings"]) for e in led.events)


def test_replays_do_not_change_payments_or_accounts():
    led = MiniLedger()
    a, b = opened(led, 2, deposit=1_000)
    t = C.transfer(a, b, 100, "USD")
    led.send(t)
    before = len(led.events)
    led.send(dict(t))  # same id again: COMMAND_DUPLICATE, replay=true
    dup = led.events[before:]
    assert [e["type"] for e in dup] == ["COMMAND_DUPLICATE"]
    fx = rm.fold(dup)
    assert not fx.payments and not fx.postings and fx.accounts[a].status is None


def test_second_account_with_the_same_number_in_one_batch_gets_none():
    led = MiniLedger()
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    led.send(C.open_account(a, external_number="N-1", owner_id="u", currency="USD"))
    led.send(C.open_account(b, external_number="N-1", owner_id="v", currency="USD"))
    fx = rm.fold(led.events)
    assert fx.accounts[a].external_number == "N-1" and fx.accounts[b].external_number is None
    assert fx.duplicate_numbers == [(b, "N-1")]


def _change(status: str, ms: int, reason: str | None = None) -> rm.PaymentChange:
    return rm.PaymentChange("p", "TRANSFER", status, reason=reason, created_ms=ms, updated_ms=ms)


def test_lifecycle_never_moves_backwards():
    done = rm.merge_payment(_change("PENDING", 1), _change("COMPLETED", 2))
    assert done.status == "COMPLETED"
    assert rm.merge_payment(done, _change("PENDING", 3)).status == "COMPLETED"
    assert rm.merge_payment(done, _change("REVERSED", 4, "fraud")).reason == "fraud"
    rev = rm.merge_payment(_change("REVERSED", 4), _change("COMPLETED", 2))
    assert (rev.status, rev.created_ms, rev.updated_ms) == ("REVERSED", 2, 4)
    # a terminal status is never replaced by another terminal one
    failed = rm.merge_payment(_change("FAILED", 2, "RECEIVER_FROZEN"), _change("COMPLETED", 3))
    assert (failed.status, failed.reason) == ("FAILED", "RECEIVER_FROZEN")


@settings(max_examples=60, deadline=None)
@given(st.permutations(["PENDING", "COMPLETED", "REVERSED"]))
def test_lifecycle_is_order_independent(order: list[str]):
    """Partitions are read in any relative order; the final status must not care."""
    changes = [_change(s, i) for i, s in enumerate(order)]
    final = changes[0]
    for c in changes[1:]:
        final = rm.merge_payment(final, c)
    assert final.status == "REVERSED"
    assert (final.created_ms, final.updated_ms) == (0, 2)


def test_transfer_fold_in_any_partition_order():
    led = MiniLedger()
    a, b = opened(led, 2, deposit=1_000)
    t = C.transfer(a, b, 250, "USD")
    start = len(led.events)
    led.send(t)
    legs = led.events[start:]
    results = set()
    for perm in itertools.permutations(legs):
        fx = rm.fold(list(perm))
        p = fx.payments[t["command_id"]]
        results.add((p.status, p.from_account, p.to_account, p.amount))
    assert results == {("COMPLETED", a, b, 250)}


def test_normalize_event_canonicalizes_ids_and_strips_nul():
    led = MiniLedger()
    (a,) = opened(led, 1)
    ev = dict(led.events[0])
    ev["account_id"] = "{" + a.upper() + "}"
    ev["requested_by"] = "x\x00y"
    ev["metadata"] = {"k\x00": "v"}
    assert rm.normalize_event(ev) is None
    assert (
        ev["account_id"] == a
        and ev["requested_by"] == "x\ufffdy"
        and ev["metadata"] == {"k\ufffd": "v"}
    )
    bad = dict(led.events[0], payment_id="not-a-uuid")
    assert "not a UUID" in (rm.normalize_event(bad) or "")


def test_timestamps_are_exact_milliseconds():
    assert rm.ts(1_700_000_000_123).isoformat() == "2023-11-14T22:13:20.123000+00:00"


class _Msg:
    """The few `confluent_kafka.Message` methods the sink's decoder uses."""

    def __init__(self, partition: int, offset: int, value: bytes) -> None:
        self._p, self._o, self._v = partition, offset, value

    def error(self) -> None:
        return None

    def partition(self) -> int:
        return self._p

    def offset(self) -> int:
        return self._o

    def value(self) -> bytes:
        return self._v

    def key(self) -> bytes:
        return b"k"

    def timestamp(self) -> tuple[int, int]:
        return (1, 1_700_000_000_000)

    def headers(self) -> None:
        return None


class _Codec:
    def __init__(self, events: dict[bytes, dict[str, Any]]) -> None:
        self.events = events

    def decode(self, topic: str, data: bytes) -> dict[str, Any]:
        from paystream.errors import DecodeError, UnknownSchemaError

        if data == b"unknown-schema":
            raise UnknownSchemaError("schema id 999 is unknown")
        if data not in self.events:
            raise DecodeError("bad magic byte")
        return dict(self.events[data])


def test_sink_dead_letters_undecodable_values_and_still_advances():
    from paystream.stream.pg_intake import decode_batch
    from sinks.postgres_sink import COMPONENT, TOPIC, ReadModel

    led = MiniLedger()
    opened(led, 1)
    good = led.events[0]
    bad_ids = dict(good, event_id="nope")
    # no Kafka, registry or Postgres: only the sink's decoder in the intake's batch
    handler = ReadModel(_Codec({b"good": good, b"bad-ids": bad_ids}))  # type: ignore[arg-type]
    msgs = [_Msg(0, 5, b"good"), _Msg(0, 6, b"\x07junk"), _Msg(1, 9, b"unknown-schema"),
            _Msg(1, 10, b"bad-ids")]  # fmt: skip
    batch = decode_batch(msgs, handler.decode, topic=TOPIC, component=COMPONENT)
    assert [(it.partition, it.offset) for it in batch.items] == [(0, 5)]
    assert batch.next_offsets == {0: 7, 1: 11}
    assert [(d["source_partition"], d["source_offset"], d["reason_code"]) for d in batch.letters] == [
        (0, 6, "UNDECODABLE"), (1, 9, "UNKNOWN_SCHEMA"), (1, 10, "INVALID"),
    ]  # fmt: skip
    assert all(d["component"] == "sink" and d["key"] == b"k" for d in batch.letters)
    assert batch.letters[0]["value"] == b"\x07junk"  # the message as it was, for `dlq show`


def test_an_event_whose_postings_do_not_balance_is_refused_before_it_is_folded() -> None:
    a, t = str(uuid.uuid4()), str(uuid.uuid4())
    ev = {"event_id": str(uuid.uuid4()), "command_id": str(uuid.uuid4()), "payment_id": str(uuid.uuid4()),
          "account_id": a, "counterparty_id": None, "metadata": {}, "account": None,
          "postings": [{"account_id": a, "kind": "USER", "amount": -100, "currency": "USD"},
                       {"account_id": t, "kind": "TRANSIT", "amount": 101, "currency": "USD"}]}
    problem = rm.normalize_event(ev)
    assert problem is not None and problem.startswith(rm.UNBALANCED)
    ev["postings"][1]["amount"] = 100
    assert rm.normalize_event(ev) is None


@settings(max_examples=50, deadline=None)
@given(st.permutations(range(9)))
def test_holds_fold_to_one_outcome_in_any_order(order: list[int]) -> None:
    """A captured, a voided and an expired hold: whichever order their events reach
    the fold (partitions are read independently), each payment ends in its status,
    a capture's amount is what moved, and the sender's held total is that of its
    last hold event."""
    led = MiniLedger()
    a, b = opened(led, 2, deposit=1_000)
    start = len(led.events)
    captured, voided, lapsed = (C.authorize(a, b, n, "USD", hold_timeout_ms=60_000) for n in (300, 200, 100))
    for h in (captured, voided, lapsed):
        led.send(h)
    led.send(C.hold_action("CAPTURE", a, captured["command_id"], amount=120))
    led.send(C.hold_action("VOID", a, voided["command_id"]))
    led.tick(61_000)
    events = led.events[start:]
    assert len(events) == 7  # 3 placed, captured + completed, voided, expired
    shuffled = [events[i] for i in order[: len(events)] if i < len(events)]
    shuffled += [e for e in events if e not in shuffled]
    fx = rm.fold(shuffled)
    got = {pid: (p.status, p.amount, p.authorized) for pid, p in fx.payments.items()}
    assert got == {
        captured["command_id"]: ("COMPLETED", 120, 300),
        voided["command_id"]: ("CANCELED", None, 200),
        lapsed["command_id"]: ("EXPIRED", None, 100),
    }
    assert fx.accounts[a].held == 0 and fx.accounts[a].delta == -120
    assert all(p.expires_ms for p in fx.payments.values())


# ------------------------------------------------------------- the hash chain's row


def as_stored(row: tuple[Any, ...]) -> dict[str, Any]:
    """A `ledger_events` row as verify reads it back: JSON columns decoded."""
    stored = dict(zip(rm.EVENT_COLUMNS, row, strict=True))
    stored["metadata"] = json.loads(stored["metadata"])
    stored["account"] = None if stored["account"] is None else json.loads(stored["account"])
    return stored


def test_a_row_and_its_postings_give_the_event_back_with_its_hash() -> None:
    """verify recomputes each row's hash from the read model alone: that needs every
    field of the event in the row (a field added to LedgerEvent without a column fails
    here). The sink replaces NUL in text (Postgres cannot store it); such an event's
    row is the cleaned event, and its hash cannot be recomputed from the row."""
    from paystream.journal import event_hash
    from tests.unit.ledger_sim import scenario

    events = scenario(*(str(uuid.uuid4()) for _ in range(4)))
    cleaned = 0
    for ev in events:
        original = copy.deepcopy(ev)
        assert rm.normalize_event(ev) is None
        back = rm.event_from_row(as_stored(rm.event_row(ev, 0, 0)), ev["postings"])
        assert back == ev
        if ev == original:
            assert event_hash(back) == ev["hash"]
        else:
            cleaned += 1
    assert cleaned == 1  # the deposit whose description holds a NUL


def test_rows_from_before_the_chain_store_null_hashes() -> None:
    ev = MiniLedger()
    ev.send(C.open_account(str(uuid.uuid4()), external_number="N1", owner_id="o", currency="USD"))
    (opened,) = ev.events
    legacy = {**opened, "prev_hash": "", "hash": ""}
    stored = as_stored(rm.event_row(legacy, 0, 0))
    assert (stored["prev_hash"], stored["hash"]) == (None, None)
    assert rm.event_from_row(stored, [])["hash"] == ""
