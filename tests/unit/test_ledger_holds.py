"""Holds (two-phase transfers) in the ledger's rules: AUTHORIZE, CAPTURE, VOID and
expiry by the log's time. Properties over random mixes with the other commands are
in test_ledger_domain.py."""

from __future__ import annotations

import uuid

from paystream.commands import reversal_command_id
from paystream.stream.store import DictStore
from pipelines.ledger import domain
from tests.unit.ledger_sim import A, B, C, authorize, capture, cmd, funded, transfer, void


def types(events: list[dict]) -> list[tuple[str, str | None]]:
    return [(e["type"], e["reason"]) for e in events]


def test_a_hold_lowers_the_available_balance_not_the_posted_one():
    sim = funded(100_000)
    (placed,) = sim.send(authorize(A, B, 60_000))
    assert placed["type"] == "HOLD_PLACED" and placed["terminal"] and placed["status"] == "COMPLETED"
    assert placed["postings"] == [] and placed["balance_after"] == 100_000 and placed["held_after"] == 60_000
    assert placed["expires_at"] == sim.clock + sim.limits.default_ms
    assert sim.balance(A) == 100_000 and sim.held(A) == 60_000
    # what is held cannot be spent twice: by a transfer, a withdrawal or another hold
    assert types(sim.send(transfer(A, C, 50_000))) == [("COMMAND_REJECTED", "INSUFFICIENT_FUNDS")]
    assert types(sim.send(authorize(A, C, 50_000))) == [("COMMAND_REJECTED", "INSUFFICIENT_FUNDS")]
    assert types(sim.send(transfer(A, C, 40_000)))[0] == ("TRANSFER_DEBITED", None)


def test_capture_moves_the_money_as_a_transfer_does():
    sim = funded()
    hold = authorize(A, B, 30_000)
    sim.send(hold)
    cap = capture(A, hold["command_id"])
    (captured,) = sim.send(cap)
    assert captured["type"] == "HOLD_CAPTURED" and captured["payment_id"] == hold["command_id"]
    assert captured["held_after"] == 0 and captured["balance_after"] == 70_000
    assert {p["amount"] for p in captured["postings"]} == {-30_000, 30_000}
    sim.drain()
    (done,) = [e for e in sim.events if e["type"] == "TRANSFER_COMPLETED"]
    assert done["command_id"] == cap["command_id"] and done["payment_id"] == hold["command_id"]
    assert done["terminal"] and sim.balance(B) == 30_000 and sim.held(A) == 0


def test_a_partial_capture_releases_the_rest():
    sim = funded(100_000)
    hold = authorize(A, B, 30_000)
    sim.send(hold)
    (captured,) = sim.send(capture(A, hold["command_id"], 12_000))
    assert captured["amount"] == 12_000 and "released 18000" in captured["note"]
    sim.drain()
    assert sim.balance(A) == 88_000 and sim.held(A) == 0 and sim.balance(B) == 12_000


def test_a_capture_above_the_hold_or_of_nothing_is_refused_and_the_hold_stays():
    sim = funded()
    hold = authorize(A, B, 30_000)
    sim.send(hold)
    assert types(sim.send(capture(A, hold["command_id"], 30_001))) == [("COMMAND_REJECTED", "CAPTURE_EXCEEDS_HOLD")]
    assert types(sim.send(capture(A, hold["command_id"], 0))) == [("COMMAND_REJECTED", "NON_POSITIVE_AMOUNT")]
    assert types(sim.send(capture(A, str(uuid.uuid4())))) == [("COMMAND_REJECTED", "UNKNOWN_HOLD")]
    assert sim.held(A) == 30_000


def test_void_releases_and_exactly_one_of_capture_and_void_wins():
    sim = funded()
    hold = authorize(A, B, 30_000)
    sim.send(hold)
    (voided,) = sim.send(void(A, hold["command_id"]))
    assert voided["type"] == "HOLD_VOIDED" and voided["terminal"] and voided["held_after"] == 0
    assert types(sim.send(capture(A, hold["command_id"]))) == [("COMMAND_REJECTED", "HOLD_VOIDED")]
    assert types(sim.send(void(A, hold["command_id"]))) == [("COMMAND_REJECTED", "HOLD_VOIDED")]
    other = authorize(A, B, 10_000)
    sim.send(other)
    sim.send(capture(A, other["command_id"]))
    assert types(sim.send(void(A, other["command_id"]))) == [("COMMAND_REJECTED", "HOLD_CAPTURED")]
    sim.drain()
    assert sim.balance(A) == 90_000 and sim.balance(B) == 10_000 and sim.held(A) == 0


def test_a_tick_expires_a_hold_once_and_a_late_capture_loses():
    sim = funded()
    hold = authorize(A, B, 30_000, timeout_ms=5_000)
    sim.send(hold)
    assert sim.tick(4_000) == []  # not yet
    (expired,) = sim.tick(2_000)  # 6 s: the bucket of 5 s has ended
    assert expired["type"] == "HOLD_EXPIRED" and not expired["terminal"] and expired["held_after"] == 0
    assert sim.tick(60_000) == []  # never twice
    assert types(sim.send(capture(A, hold["command_id"]))) == [("COMMAND_REJECTED", "HOLD_EXPIRED")]
    assert sim.held(A) == 0 and sim.balance(A) == 100_000


def test_a_capture_after_expires_at_loses_even_before_any_tick():
    """The single writer decides by the hold's time against the command's log time,
    not by when a tick happens to come."""
    sim = funded()
    hold = authorize(A, B, 30_000, timeout_ms=5_000)
    sim.send(hold)
    sim.clock += 5_000  # the capture's own time is the expiry time: too late
    assert types(sim.send(capture(A, hold["command_id"]))) == [
        ("HOLD_EXPIRED", None), ("COMMAND_REJECTED", "HOLD_EXPIRED"),
    ]  # fmt: skip
    assert sim.tick(10_000) == [] and sim.held(A) == 0


def test_hold_timeouts_outside_the_limits_are_refused():
    sim = funded()
    too_long = authorize(A, B, 1, timeout_ms=sim.limits.max_ms + 1)
    assert types(sim.send(too_long)) == [("COMMAND_REJECTED", "INVALID_EXPIRY")]
    assert types(sim.send(authorize(A, B, 1, timeout_ms=0))) == [("COMMAND_REJECTED", "INVALID_EXPIRY")]
    assert types(sim.send(authorize(A, A, 1))) == [("COMMAND_REJECTED", "SAME_ACCOUNT")]


def test_a_frozen_account_keeps_its_holds_until_void_or_expiry():
    sim = funded()
    hold = authorize(A, B, 30_000)
    sim.send(hold)
    sim.send(cmd("FREEZE", A, status_change={"reason": "r", "actor": "t"}))
    assert types(sim.send(capture(A, hold["command_id"]))) == [("COMMAND_REJECTED", "ACCOUNT_FROZEN")]
    assert types(sim.send(void(A, hold["command_id"])))[0] == ("HOLD_VOIDED", None)


def test_a_refused_capture_credit_is_refunded_and_the_capture_fails():
    sim = funded()
    hold = authorize(A, B, 30_000)
    sim.send(hold)
    sim.send(cmd("FREEZE", B, status_change={"reason": "r", "actor": "t"}))
    cap = capture(A, hold["command_id"])
    sim.send(cap)
    sim.drain()
    (failed,) = [e for e in sim.events if e["type"] == "TRANSFER_FAILED"]
    assert failed["command_id"] == cap["command_id"] and failed["reason"] == "RECEIVER_FROZEN"
    assert sim.balance(A) == 100_000 and sim.held(A) == 0
    (again,) = sim.send(cap)  # a retry of the capture repeats its outcome
    assert again["type"] == "COMMAND_DUPLICATE" and again["status"] == "FAILED"


def test_a_captured_hold_can_be_reversed_and_an_uncaptured_one_cannot():
    sim = funded()
    captured, held = authorize(A, B, 30_000), authorize(A, B, 20_000)
    sim.send(captured)
    sim.send(held)
    sim.send(capture(A, captured["command_id"]))
    for hold in (captured, held):
        sim.send(cmd("REVERSE_TRANSFER", B, reversal_command_id(hold["command_id"]),
                     reversal={"payment_id": hold["command_id"], "reason": "r", "actor": "t",
                               "freeze_receiver": False, "sender_id": A}))
        sim.drain()
    outcome = {e["payment_id"]: (e["type"], e["reason"]) for e in sim.events if e["terminal"]
               and e["command_type"] == "REVERSE_TRANSFER"}  # fmt: skip
    assert outcome == {captured["command_id"]: ("TRANSFER_REVERSED", None),
                       held["command_id"]: ("COMMAND_REJECTED", "UNKNOWN_PAYMENT")}
    assert sim.balance(A) == 100_000 and sim.held(A) == 20_000 and sim.balance(B) == 0


def test_commands_for_holds_are_checked_for_shape():
    bad = capture(A, "not-a-uuid")
    assert "UUID payment_id" in domain.command_problem(bad, A)
    assert "UUID counterparty_id" in domain.command_problem(authorize(A, "x", 1), A)
    mixed = authorize(A, B, 1)
    mixed["hold"] = {"payment_id": B, "amount": None}
    assert "must not carry `hold`" in domain.command_problem(mixed, A)


def test_fingerprints_of_commands_without_hold_fields_did_not_change():
    """A memo written before holds existed must still match an honest retry."""
    t = transfer(A, B, 5, pid="5a3c8a37-3c4b-4f39-8d3c-1f0a2b3c4d5e")
    legacy = {k: v for k, v in t.items() if k != "hold"}
    legacy["movement"] = {k: v for k, v in t["movement"].items() if k != "hold_timeout_ms"}
    assert domain.fingerprint(t) == domain.fingerprint(legacy)
    assert domain.fingerprint(authorize(A, B, 5, pid=t["command_id"])) != domain.fingerprint(
        authorize(A, B, 5, pid=t["command_id"], timeout_ms=1000))


def test_timers_walk_buckets_in_order_and_at_most_a_bound_per_tick():
    store = DictStore()
    timers = domain.HoldTimers(store)
    timers.add(1_500, 0, A, "p1")
    timers.add(1_999, 0, B, "p2")
    timers.add(2_000, 0, A, "p3")
    assert timers.due(1_999) == []  # the 1 s bucket ends at 2 s
    assert timers.due(2_000) == [(A, "p1"), (B, "p2")]
    far = 10 * domain.MAX_BUCKETS_PER_TICK * domain.TIMER_BUCKET_MS
    timers.add(far, 2_000, C, "p4")
    assert timers.due(far + 1_000) == [(A, "p3")]  # p4 lies past this tick's bound
    while not (due := timers.due(far + 1_000)):
        pass
    assert due == [(C, "p4")]
    assert timers.due(far * 2) == [] and store.data == {"tn": far * 2 // 1000, "tc": 0}
    timers.add(500, far * 2, A, "late")  # its time is long past: due at the next tick
    assert timers.due(far * 2 + 1) == [] and timers.due(far * 2 + 1_000) == [(A, "late")]


def test_a_short_hold_placed_after_a_long_one_expires_on_time():
    """A timer far ahead must not hold back one placed later that is due sooner."""
    sim = funded()
    sim.send(authorize(A, B, 1_000, timeout_ms=sim.limits.max_ms))
    short = authorize(A, B, 1_000, timeout_ms=2_000)
    sim.send(short)
    (expired,) = sim.tick(3_000)
    assert expired["payment_id"] == short["command_id"] and sim.held(A) == 1_000
