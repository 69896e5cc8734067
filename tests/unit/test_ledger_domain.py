"""Ledger rules, without Kafka: examples for each rule, and properties over random
command sequences and leg interleavings."""

from __future__ import annotations

import copy
import json
import uuid
from collections import Counter, defaultdict
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from paystream.commands import reversal_command_id
from paystream.journal import GENESIS, check_chains
from paystream.stream.store import DictStore
from pipelines.ledger import domain
from tests.unit.ledger_sim import A, B, C, Sim, authorize, capture, cmd, deposit, funded, open_account, transfer, void


def money(amount: int, currency: str = "USD") -> dict:
    return {"amount": amount, "currency": currency, "counterparty_id": None, "metadata": {}}


def terminal(sim: Sim, command_id: str) -> list[dict]:
    return [e for e in sim.events if e["command_id"] == command_id and e["terminal"] and not e["replay"]]


def test_transfer_moves_money_through_transit():
    sim = funded()
    t = transfer(A, B, 30_000)
    (debit,) = sim.send(t)
    assert debit["type"] == "TRANSFER_DEBITED" and not debit["terminal"]
    assert sim.balance(A) == 70_000 and sim.balance(B) == 0
    sim.drain()
    (done,) = terminal(sim, t["command_id"])
    assert done["type"] == "TRANSFER_COMPLETED" and done["account_id"] == B
    assert sim.balance(B) == 30_000
    assert sim.posting_sums()[(domain.transit_account("USD"), "USD")] == 0


def test_overdraft_race_exactly_one_wins():
    sim = funded(100_000)
    ts = [transfer(A, B, 80_000) for _ in range(20)]
    outcomes = [sim.send(t)[0]["type"] for t in ts]
    sim.drain()
    assert outcomes.count("TRANSFER_DEBITED") == 1
    assert outcomes.count("COMMAND_REJECTED") == 19
    assert {e["reason"] for e in sim.events if e["type"] == "COMMAND_REJECTED"} == {"INSUFFICIENT_FUNDS"}
    assert sim.balance(A) == 20_000 and sim.balance(B) == 80_000


def test_duplicate_and_reused_id():
    sim = funded()
    t = transfer(A, B, 1_000)
    for _ in range(10):
        sim.send(copy.deepcopy(t))
    changed = copy.deepcopy(t)
    changed["movement"]["amount"] = 2_000
    (reuse,) = sim.send(changed)
    sim.drain()
    assert sim.balance(A) == 99_000 and sim.balance(B) == 1_000
    dups = [e for e in sim.events if e["type"] == "COMMAND_DUPLICATE"]
    assert len(dups) == 9 and all(e["replay"] and not e["postings"] for e in dups)
    assert reuse["reason"] == "ID_REUSED_WITH_DIFFERENT_FIELDS" and reuse["replay"]
    assert len(terminal(sim, t["command_id"])) == 1


def test_duplicate_of_a_rejection_repeats_the_rejection():
    sim = funded(10)
    t = transfer(A, B, 1_000)
    first = sim.send(t)[0]
    again = sim.send(copy.deepcopy(t))[0]
    assert first["reason"] == again["reason"] == "INSUFFICIENT_FUNDS"
    assert again["type"] == "COMMAND_DUPLICATE" and again["status"] == "REJECTED"


def test_receiver_refusal_refunds_the_sender():
    sim = funded()
    sim.send(cmd("FREEZE", B, status_change={"reason": "kyc", "actor": "admin"}))
    unknown = str(uuid.uuid4())
    t1, t2 = transfer(A, B, 5_000), transfer(A, unknown, 7_000)
    sim.send(t1)
    sim.send(t2)
    sim.drain()
    (f1,), (f2,) = terminal(sim, t1["command_id"]), terminal(sim, t2["command_id"])
    assert (f1["type"], f1["reason"]) == ("TRANSFER_FAILED", "RECEIVER_FROZEN")
    assert (f2["type"], f2["reason"]) == ("TRANSFER_FAILED", "RECEIVER_UNKNOWN")
    assert sim.balance(A) == 100_000 and sim.balance(B) == 0
    dup = sim.send(copy.deepcopy(t1))[0]
    assert dup["status"] == "FAILED" and dup["reason"] == "RECEIVER_FROZEN"


def test_a_receiver_in_another_currency_refunds_the_sender():
    """No conversion: a transfer to an account in another currency (a Kafka-direct
    producer can send one; the gateway refuses it before Kafka) is debited on the
    sender's partition, refused on the receiver's and refunded in full."""
    sim = funded()
    eur = str(uuid.UUID(int=10))
    sim.send(open_account(eur, currency="EUR"))
    t = transfer(A, eur, 5_000)
    (debit,) = sim.send(t)
    assert debit["type"] == "TRANSFER_DEBITED"
    sim.drain()
    (failed,) = terminal(sim, t["command_id"])
    assert (failed["type"], failed["reason"], failed["account_id"]) == ("TRANSFER_FAILED",
                                                                         "RECEIVER_CURRENCY_MISMATCH", A)
    assert sim.balance(A) == 100_000 and sim.balance(eur) == 0
    assert sim.posting_sums()[(domain.transit_account("USD"), "USD")] == 0


def test_a_payment_id_reused_by_a_second_sender_is_refunded_not_stranded():
    """Two senders, one payment id, one receiver: the receiver's dedupe marker for the
    credit holds the first, so the second debit used to sit in transit for ever (no
    credit, no refund, no outcome). It is refunded with a reason now."""
    sim = funded()
    sim.send(deposit(C, 50_000))
    pid = str(uuid.uuid4())
    first, second = transfer(A, B, 5_000, pid=pid), transfer(C, B, 7_000, pid=pid)
    sim.send(first)
    sim.send(second)
    sim.drain()
    outcomes = [e for e in sim.events if e["command_id"] == pid and e["terminal"] and not e["replay"]]
    assert sorted((e["account_id"], e["type"], e["reason"]) for e in outcomes) == sorted([
        (B, "TRANSFER_COMPLETED", None), (C, "TRANSFER_FAILED", "ID_REUSED_WITH_DIFFERENT_FIELDS"),
    ])
    assert (sim.balance(A), sim.balance(B), sim.balance(C)) == (95_000, 5_000, 50_000)
    transit = sum(v for (acct, _), v in sim.posting_sums().items() if acct == domain.transit_account("USD"))
    assert transit == 0
    # a replayed credit of the second payment is refunded again only in name: the
    # sender's partition drops the repeated refund leg
    legs = [leg for kind, leg in sim.log if kind == "leg" and leg["kind"] == "CREDIT" and leg["counterparty_id"] == C]
    sim.pending[B].append(legs[0])
    sim.drain()
    assert (sim.balance(A), sim.balance(B), sim.balance(C)) == (95_000, 5_000, 50_000)


def test_balances_stop_at_the_limit_with_a_clear_refusal():
    """Deposits and credits that would take a balance past MAX_BALANCE_MINOR are
    refused with a reason, not left to overflow an Avro long in the encoder."""
    from paystream.money import MAX_AMOUNT_MINOR, MAX_BALANCE_MINOR

    sim = funded()
    top = MAX_BALANCE_MINOR - sim.balance(B)
    while top > 0:  # fill B to the limit, one maximal deposit at a time
        step = min(top, MAX_AMOUNT_MINOR)
        (ev,) = sim.send(deposit(B, step))
        assert ev["type"] == "DEPOSITED"
        top -= step
    (over,) = sim.send(deposit(B, 1))
    assert (over["type"], over["reason"]) == ("COMMAND_REJECTED", "BALANCE_LIMIT")
    t = transfer(A, B, 1)
    sim.send(t)
    sim.drain()
    (failed,) = terminal(sim, t["command_id"])
    assert (failed["type"], failed["reason"]) == ("TRANSFER_FAILED", "RECEIVER_BALANCE_LIMIT")
    assert sim.balance(A) == 100_000 and sim.balance(B) == MAX_BALANCE_MINOR


@pytest.mark.parametrize("kind", ["REFUND", "REVERSAL_CREDIT", "UNKNOWN"])
def test_a_leg_the_ledger_did_not_write_is_refused_not_raised(kind: str) -> None:
    """A refund (or reversal credit) to a key that never sent used to raise an
    AssertionError that nothing caught: the ledger stopped on that record for ever.
    Such a leg, and a leg of a kind the ledger never writes, come back as a dead
    letter with a reason, and leave nothing in state."""
    store = DictStore()
    target = str(uuid.uuid4())
    leg = {"leg_id": str(uuid.uuid4()), "kind": kind, "command_id": str(uuid.uuid4()),
           "payment_id": str(uuid.uuid4()), "account_id": target, "counterparty_id": str(uuid.uuid4()),
           "amount": 10**15, "currency": "USD", "reason": None, "requested_by": "forger", "issued_at": 0}
    (out,) = domain.apply_leg(store, leg, 0)
    assert out.topic == domain.DEAD and out.key == target
    assert out.value["code"] == "INVALID" and out.value["item"] == leg
    assert store.data == {}


def test_rejections_are_outcomes():
    sim = funded()
    sim.send(open_account(str(uuid.UUID(int=9)), currency="EUR"))
    cases = {
        "SAME_ACCOUNT": transfer(A, A, 1),
        "NON_POSITIVE_AMOUNT": transfer(A, B, 0),
        "AMOUNT_TOO_LARGE": transfer(A, B, 10**16),
        "UNKNOWN_CURRENCY": transfer(A, B, 1, currency="XXX"),
        "CURRENCY_MISMATCH": transfer(A, B, 1, currency="EUR"),
        "UNKNOWN_ACCOUNT": transfer(str(uuid.uuid4()), B, 1),
        "ALREADY_EXISTS": open_account(A),
    }
    for reason, c in cases.items():
        (ev,) = sim.send(c)
        assert (ev["type"], ev["reason"], ev["terminal"]) == ("COMMAND_REJECTED", reason, True), reason
    sim.send(cmd("FREEZE", A, status_change={"reason": "r", "actor": "x"}))
    assert sim.send(transfer(A, B, 1))[0]["reason"] == "ACCOUNT_FROZEN"


def test_reversal_once_even_into_negative():
    sim = funded()
    t = transfer(A, B, 40_000)
    sim.send(t)
    sim.drain()
    sim.send(cmd("WITHDRAW", B, movement=money(30_000)))
    rid = reversal_command_id(t["command_id"])
    rev = cmd("REVERSE_TRANSFER", B, rid, reversal={"payment_id": t["command_id"], "reason": "fraud",
                                                    "actor": "admin", "freeze_receiver": True})
    sim.send(rev)
    sim.drain()
    assert sim.balance(B) == -30_000 and sim.balance(A) == 100_000
    assert sim.stores[B].get("a")["status"] == "FROZEN"
    (done,) = terminal(sim, rid)
    assert done["type"] == "TRANSFER_REVERSED" and done["account_id"] == A
    # the same reversal again is a duplicate; a new reversal id is refused
    assert sim.send(copy.deepcopy(rev))[0]["type"] == "COMMAND_DUPLICATE"
    again = cmd("REVERSE_TRANSFER", B, reversal={"payment_id": t["command_id"], "reason": "x",
                                                 "actor": "admin", "freeze_receiver": False})
    assert sim.send(again)[0]["reason"] == "ALREADY_REVERSED"
    sim.drain()
    assert sim.balance(A) == 100_000


def _reversal(t: dict, *, sender: str | None) -> dict:
    return cmd("REVERSE_TRANSFER", t["movement"]["counterparty_id"], reversal_command_id(t["command_id"]),
               reversal={"payment_id": t["command_id"], "reason": "fraud", "actor": "admin",
                         "freeze_receiver": True, "sender_id": sender})


def test_a_reversal_that_overtakes_its_credit_waits_for_it():
    """Issue: a rejection reaching the receiver before the credit was refused
    UNKNOWN_PAYMENT for good (its id is fixed, retries replay the refusal) and the
    receiver kept the money. Now it waits, and the credit is taken back on arrival."""
    sim = funded()
    t = transfer(A, B, 40_000)
    sim.send(t)                               # debited; the credit leg lags
    rev = _reversal(t, sender=A)
    assert [e for e in sim.send(rev) if e["terminal"]] == []
    assert sim.send(copy.deepcopy(rev))[0]["type"] == "COMMAND_DUPLICATE"  # a retry meanwhile
    sim.drain()
    (done,) = terminal(sim, rev["command_id"])
    assert done["type"] == "TRANSFER_REVERSED" and done["account_id"] == A
    assert terminal(sim, t["command_id"])[0]["type"] == "TRANSFER_COMPLETED"
    assert sim.balance(A) == 100_000 and sim.balance(B) == 0
    assert sim.stores[B].get("a")["status"] == "FROZEN"


def test_an_overtaking_reversal_of_a_refused_credit_ends_rejected():
    sim = funded()
    t = transfer(A, B, 40_000)
    sim.send(t)
    rev = _reversal(t, sender=A)
    sim.send(rev)
    sim.send(cmd("FREEZE", B, status_change={"reason": "r", "actor": "x"}))  # B now refuses the credit
    sim.drain()
    assert terminal(sim, rev["command_id"])[0]["reason"] == "TRANSFER_NOT_COMPLETED"
    assert terminal(sim, t["command_id"])[0]["type"] == "TRANSFER_FAILED"
    assert sim.balance(A) == 100_000 and sim.balance(B) == 0


def test_a_reversal_of_a_payment_never_sent_is_refused_after_asking_the_sender():
    sim = funded()
    never = transfer(A, B, 40_000)           # not sent
    rev = _reversal(never, sender=A)
    sim.send(rev)
    sim.drain()
    (done,) = terminal(sim, rev["command_id"])
    assert (done["type"], done["reason"], done["account_id"]) == ("COMMAND_REJECTED", "UNKNOWN_PAYMENT", B)
    assert sim.balance(A) == 100_000 and sim.balance(B) == 0
    # the payment id stays usable: sent now, it is credited as any other
    sim.send(never)
    sim.drain()
    assert terminal(sim, never["command_id"])[0]["type"] == "TRANSFER_COMPLETED"
    assert sim.balance(B) == 40_000


def test_without_the_sender_an_overtaking_reversal_is_refused_as_before():
    sim = funded()
    t = transfer(A, B, 40_000)
    sim.send(t)
    rev = _reversal(t, sender=None)
    (ev,) = sim.send(rev)
    assert (ev["type"], ev["reason"]) == ("COMMAND_REJECTED", "UNKNOWN_PAYMENT")


def test_command_problem_catches_malformed_commands():
    assert domain.command_problem(transfer(A, B, 1), A) is None
    assert "differs" in domain.command_problem(transfer(A, B, 1), B)
    bad = transfer(A, B, 1)
    bad["movement"] = None
    assert "needs" in domain.command_problem(bad, A)
    assert "UUID" in domain.command_problem(transfer(A, "not-a-uuid", 1), A)
    upper = "0000000A-0000-0000-0000-00000000000B"
    assert "canonical" in domain.command_problem(transfer(upper, B, 1), upper)
    assert "UUID" in domain.command_problem(transfer(A, "{" + B + "}", 1), A)


# ----------------------------------------------------------------- properties

ACCOUNTS = [str(uuid.UUID(int=i)) for i in range(1, 6)]
action = st.one_of(
    st.tuples(st.just("transfer"), st.sampled_from(ACCOUNTS), st.sampled_from(ACCOUNTS),
              st.integers(-5, 60_000), st.sampled_from(["USD", "USD", "EUR"])),
    st.tuples(st.just("deposit"), st.sampled_from(ACCOUNTS), st.integers(1, 50_000)),
    st.tuples(st.just("withdraw"), st.sampled_from(ACCOUNTS), st.integers(1, 50_000)),
    st.tuples(st.just("freeze"), st.sampled_from(ACCOUNTS)),
    st.tuples(st.just("unfreeze"), st.sampled_from(ACCOUNTS)),
    st.tuples(st.just("reverse"), st.integers(0, 50)),
    st.tuples(st.just("retry"), st.integers(0, 50)),
    st.tuples(st.just("deliver"), st.sampled_from(ACCOUNTS)),
    st.tuples(st.just("authorize"), st.sampled_from(ACCOUNTS), st.sampled_from(ACCOUNTS),
              st.integers(-5, 60_000), st.sampled_from([None, 1, 30_000, 10_000_000])),
    st.tuples(st.just("capture"), st.integers(0, 50), st.sampled_from([None, 1, 2, 3])),
    st.tuples(st.just("void"), st.integers(0, 50)),
    st.tuples(st.just("tick"), st.sampled_from([0, 999, 20_000, 70_000])),
)


def run_actions(actions: list[tuple]) -> tuple[Sim, list[dict]]:
    sim = Sim()
    for i, acct in enumerate(ACCOUNTS[:-1]):  # the last account is never opened
        sim.send(open_account(acct, currency="EUR" if i == 3 else "USD"))
    sent: list[dict] = []
    transfers: list[dict] = []  # transfers and authorizations: what reversals and captures pick from
    holds: list[dict] = []
    for a in actions:
        kind = a[0]
        if kind == "transfer":
            c = transfer(a[1], a[2], a[3], a[4])
            transfers.append(c)
        elif kind == "authorize":
            c = authorize(a[1], a[2], a[3], timeout_ms=a[4])
            holds.append(c)
            transfers.append(c)
        elif kind in ("capture", "void"):
            if not holds:
                continue
            h = holds[a[1] % len(holds)]
            if kind == "void":
                c = void(h["account_id"], h["command_id"])
            else:  # all of it, or a part: a share of the held amount (maybe more than held)
                share = a[2]
                c = capture(h["account_id"], h["command_id"],
                            None if share is None else max(1, h["movement"]["amount"]) * share // 2)
        elif kind == "tick":
            sim.tick(a[1])
            continue
        elif kind in ("deposit", "withdraw"):
            c = cmd(kind.upper(), a[1], movement=money(a[2]))
        elif kind in ("freeze", "unfreeze"):
            c = cmd(kind.upper(), a[1], status_change={"reason": "r", "actor": "t"})
        elif kind == "reverse":
            if not transfers:
                continue
            t = transfers[a[1] % len(transfers)]
            # with the sender (as compensation sends it) a reversal that overtakes its
            # credit waits for it; without (older producers) it is refused at once
            c = cmd("REVERSE_TRANSFER", t["movement"]["counterparty_id"], reversal_command_id(t["command_id"]),
                    reversal={"payment_id": t["command_id"], "reason": "r", "actor": "t",
                              "freeze_receiver": a[1] % 2 == 0,
                              "sender_id": t["account_id"] if a[1] % 3 else None})
        elif kind == "retry":
            if not sent:
                continue
            c = copy.deepcopy(sent[a[1] % len(sent)])
        else:
            if sim.pending[a[1]]:
                sim.deliver_one(a[1])
            continue
        sent.append(c)
        sim.send(c)
    sim.drain()
    return sim, sent


@settings(max_examples=300, deadline=None)
@given(st.lists(action, max_size=60))
def test_money_is_conserved_and_balances_match_postings(actions):
    sim, _ = run_actions(actions)
    per_currency: dict[str, int] = defaultdict(int)
    for e in sim.events:
        event_sum: dict[str, int] = defaultdict(int)
        for p in e["postings"]:
            event_sum[p["currency"]] += p["amount"]
            per_currency[p["currency"]] += p["amount"]
        assert all(v == 0 for v in event_sum.values()), e
    assert all(v == 0 for v in per_currency.values())
    sums = sim.posting_sums()
    for acct in ACCOUNTS:
        a = sim.stores[acct].get("a")
        if a:
            assert a["balance"] == sums.get((acct, a["currency"]), 0)
    # once every leg is delivered nothing is left in transit
    for cur in ("USD", "EUR"):
        assert sums.get((domain.transit_account(cur), cur), 0) == 0


@settings(max_examples=300, deadline=None)
@given(st.lists(action, max_size=60))
def test_no_user_balance_negative_except_by_reversal(actions):
    sim, _ = run_actions(actions)
    reversed_from = {e["account_id"] for e in sim.events if e["type"] == "REVERSAL_DEBITED"}
    running: Counter[str] = Counter()
    for e in sim.events:
        for p in e["postings"]:
            if p["account_kind"] == "USER":
                running[p["account_id"]] += p["amount"]
                if running[p["account_id"]] < 0:
                    assert p["account_id"] in reversed_from


@settings(max_examples=300, deadline=None)
@given(st.lists(action, max_size=60))
def test_every_command_has_exactly_one_terminal_outcome(actions):
    sim, sent = run_actions(actions)
    outcomes = Counter(e["command_id"] for e in sim.events if e["terminal"] and not e["replay"])
    for c in sent:
        assert outcomes[c["command_id"]] == 1, c


@settings(max_examples=200, deadline=None)
@given(st.lists(action, max_size=50), st.data())
def test_replaying_a_prefix_twice_changes_nothing(actions, data):
    sim, _ = run_actions(actions)
    def money_state() -> dict:
        # everything but the event sequence and chain head, which replies to replays advance
        return {k: {f: v for f, v in (s.get("a") or {}).items() if f not in ("seq", "h")}
                for k, s in sim.stores.items()}

    before = money_state()
    n_postings = sum(len(e["postings"]) for e in sim.events)
    cut = data.draw(st.integers(0, len(sim.log)))
    for _ in range(2):
        for (kind, msg), now in zip(sim.log[:cut], sim.times, strict=False):
            outs = domain.apply_batch(domain.BatchStores(sim.stores.__getitem__, limits=sim.limits),
                                      [copy.deepcopy(msg)], now, legs=kind == "leg")
            assert all(o.topic == domain.EVENTS and not o.value["postings"] and o.value["held_after"] is None
                       for o in outs)
    assert money_state() == before
    assert sum(len(e["postings"]) for e in sim.events) == n_postings


@settings(max_examples=200, deadline=None)
@given(st.lists(action, max_size=60))
def test_sequences_are_gapless_per_account(actions):
    sim, _ = run_actions(actions)
    seqs: dict[str, list[int]] = defaultdict(list)
    for e in sim.events:
        seqs[e["account_id"]].append(e["sequence"])
    for acct, s in seqs.items():
        assert s == list(range(1, len(s) + 1)), acct
    assert len({e["event_id"] for e in sim.events}) == len(sim.events)


@settings(max_examples=200, deadline=None)
@given(st.lists(action, max_size=60))
def test_every_key_keeps_one_whole_hash_chain(actions):
    """Replies to retries, rejections on keys that are not accounts (yet), legs and
    reversals: every event links to the one before it on its key."""
    sim, _ = run_actions(actions)
    assert check_chains(sim.events) == []
    heads = {e["account_id"]: e["hash"] for e in sim.events}
    for acct, head in heads.items():
        data = sim.stores[acct].data
        assert (data.get("a") or {}).get("h", data.get("h")) == head


def test_a_chain_begun_before_the_account_was_opened_continues_in_its_record():
    sim = Sim()
    (rejected,) = sim.send(deposit(A, 5))
    assert (rejected["sequence"], rejected["prev_hash"]) == (1, GENESIS)
    assert sim.stores[A].data["h"] == rejected["hash"]
    (opened,) = sim.send(open_account(A))
    assert (opened["sequence"], opened["prev_hash"]) == (2, rejected["hash"])
    assert sim.stores[A].data["a"]["h"] == opened["hash"]
    (deposited,) = sim.send(deposit(A, 5))
    assert deposited["prev_hash"] == opened["hash"]
    assert sim.stores[A].data["h"] == rejected["hash"]  # "h" is read once, then the record's


def test_an_account_from_before_the_chain_starts_its_chain_at_genesis():
    """An account record a ledger without the chain wrote (no "h"): its next event
    links to GENESIS, and the checker accepts unchained events before it."""
    sim = Sim()
    old = [{**e, "prev_hash": "", "hash": ""} for e in sim.send(open_account(A)) + sim.send(deposit(A, 7))]
    del sim.stores[A].data["a"]["h"]
    (ev,) = sim.send(deposit(A, 1))
    assert (ev["sequence"], ev["prev_hash"]) == (3, GENESIS)
    assert check_chains([*old, ev]) == []


def test_the_chain_head_survives_a_restart_from_serialized_state():
    """The head is plain JSON in the changelogged account record, as "seq" is: a
    ledger restored from its changelog continues the chain where it stopped."""
    sim = Sim()
    first = sim.send(open_account(A)) + sim.send(deposit(A, 9))
    restored = Sim()
    restored.stores[A] = DictStore(json.loads(json.dumps(sim.stores[A].data)))
    (ev,) = restored.send(deposit(A, 1))
    assert check_chains([*first, ev]) == []


@given(st.one_of(st.uuids().map(str), st.uuids().map(lambda u: str(u).upper()),
                 st.uuids().map(lambda u: u.hex), st.text(max_size=40)))
def test_is_uuid_accepts_exactly_the_canonical_spelling(text: str) -> None:
    try:
        canonical = str(uuid.UUID(text)) == text
    except ValueError:
        canonical = False
    assert domain.is_uuid(text) == canonical


class CopyingStore:
    """A store that keeps copies, as a serializing state store does."""

    def __init__(self, inner: DictStore) -> None:
        self.inner = inner

    def get(self, key: str, default: Any = None) -> Any:
        return copy.deepcopy(self.inner.get(key, default))

    def set(self, key: str, value: Any) -> None:
        self.inner.set(key, copy.deepcopy(value))

    def delete(self, key: str) -> None:
        self.inner.delete(key)


@settings(max_examples=300, deadline=None)
@given(st.lists(action, max_size=60), st.data())
def test_any_split_into_batches_gives_the_same_events_and_state(actions, data):
    """The batched single writer's claim: applying a stream of inputs in batches (each
    account read and written once per batch, `domain.apply_batch`) is the same as
    applying them one by one. The stream is the one-by-one run's own input log, cut
    at random points into runs of commands or of legs; a leg joins a batch only once
    the input that produced it has been applied in an earlier batch, as a leg becomes
    visible only after its producer's commit.

    Accounts may also be memoized across batches (`domain.AccountMemo`, from none to
    every account, evicting as it fills), as the ledger does for as long as it owns
    a partition; the store copies values in and out as Quix's serialization does,
    so a memo that ever disagreed with the store would show."""
    single, _ = run_actions(actions)
    batched = Sim()
    limit = data.draw(st.sampled_from([0, 1, 2, 5, 1000]))
    memo = domain.AccountMemo(limit) if limit else None
    produced: set[str] = set()
    log, times = single.log, single.times
    i = 0
    while i < len(log):
        kind, now = log[i][0], times[i]
        size = data.draw(st.integers(1, 8))
        batch = []
        while i < len(log) and len(batch) < size and log[i][0] == kind and times[i] == now:
            if kind == "leg" and log[i][1]["leg_id"] not in produced:
                break
            batch.append(log[i][1])
            i += 1
        if not batch:  # the next leg's producer is still in this run: apply it first
            continue
        stores = domain.BatchStores(lambda a: CopyingStore(batched.stores[a]), memo, limits=single.limits)
        outs = domain.apply_batch(stores, batch, now, legs=kind == "leg")
        for o in outs:
            if o.topic == domain.LEGS:
                produced.add(o.value["leg_id"])
            else:
                batched.events.append(o.value)
    assert batched.events == single.events
    assert {k: s.data for k, s in batched.stores.items() if s.data} == {
        k: s.data for k, s in single.stores.items() if s.data
    }
    assert check_chains(batched.events) == []



def test_a_rule_that_would_create_money_stops_before_anything_is_written(monkeypatch: pytest.MonkeyPatch) -> None:
    """The run-time money assertions are independent of the rules: a rule bug that
    posts unbalanced amounts, or moves a balance by other than its postings, raises
    before the account is written, so the adapter's transaction never shows it."""
    class Recording(DictStore):
        writes: list[str] = []

        def set(self, key: str, value: Any) -> None:
            self.writes.append(key)
            super().set(key, value)

    store = Recording()
    domain.apply_command(store, open_account(A), 0)
    domain.apply_command(store, deposit(A, 1000), 0)
    store.writes.clear()
    real = domain._posting

    def generous(account_id: str, kind: str, amount: int, currency: str) -> dict[str, Any]:
        return real(account_id, kind, amount + (1 if kind == "TRANSIT" else 0), currency)

    monkeypatch.setattr(domain, "_posting", generous)
    with pytest.raises(domain.InvariantBroken, match="do not sum to zero"):
        domain.apply_command(store, transfer(A, B, 100), 0)
    assert "a" not in store.writes  # the account record was not written
    monkeypatch.setattr(domain, "_posting", real)

    def overdraw(account: dict[str, Any], amount: int) -> bool:
        return True  # a broken funds check

    monkeypatch.setattr(domain, "has_funds", overdraw)
    with pytest.raises(domain.InvariantBroken, match="after a funded debit"):
        domain.apply_command(store, transfer(A, B, 5000), 0)


def test_the_books_own_accounts_cannot_be_opened_as_records() -> None:
    """Transit and settlement balances are sums of postings; an account record under
    their id would take both sides of a posting and trip the money assertions."""
    store = DictStore()
    out = domain.apply_command(store, open_account(domain.settlement_account("USD")), 0)
    assert out[0].value["type"] == "COMMAND_REJECTED" and out[0].value["reason"] == "NOT_ALLOWED"


@settings(max_examples=300, deadline=None)
@given(st.lists(action, max_size=60))
def test_holds_are_conserved_and_end_exactly_once(actions):
    """Held totals equal the holds still HELD; each hold ends at most once (captured,
    voided or expired), a captured one moves at most what it held, and once the log's
    time passes every expiry no hold is left."""
    sim, _ = run_actions(actions)

    def open_holds(acct: str) -> int:
        return sum(v["amount"] for k, v in sim.stores[acct].data.items() if k.startswith("h:") and v["st"] == "HELD")

    for acct in ACCOUNTS:
        assert sim.held(acct) == open_holds(acct)
    sim.tick(0)  # a tick now: no hold whose second has passed is left
    for acct in ACCOUNTS:
        for k, v in sim.stores[acct].data.items():
            if k.startswith("h:") and v["st"] == "HELD":
                assert v["exp"] // domain.TIMER_BUCKET_MS >= sim.clock // domain.TIMER_BUCKET_MS, (k, v, sim.clock)
    sim.tick(domain.HoldLimits().max_ms + 2 * domain.TIMER_BUCKET_MS)
    ends: Counter[str] = Counter()
    placed = {e["payment_id"]: e["amount"] for e in sim.events if e["type"] == "HOLD_PLACED"}
    for e in sim.events:
        if e["type"] in ("HOLD_CAPTURED", "HOLD_VOIDED", "HOLD_EXPIRED"):
            ends[e["payment_id"]] += 1
            assert e["amount"] <= placed[e["payment_id"]]
            assert e["held_after"] is not None and e["held_after"] >= 0
    assert all(n == 1 for n in ends.values()), ends
    assert set(ends) == set(placed)
    for acct in ACCOUNTS:
        assert sim.held(acct) == 0
