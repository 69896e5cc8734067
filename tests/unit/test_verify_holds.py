"""`paystream verify`'s replay of holds (check g), over events the ledger's rules emit."""

from __future__ import annotations

import copy

from ops.verify import Replay
from tests.unit.ledger_sim import A, B, authorize, funded, hold_each_way


def _replay(events: list[dict]) -> Replay:
    r = Replay(invariants=True)
    for e in events:
        r.feed(copy.deepcopy(e))
    return r


def test_a_whole_history_of_holds_passes() -> None:
    sim = funded()
    held, _, lapsed = hold_each_way(sim, A, B)
    r = _replay(sim.events)
    assert (r.twice, r.held_after_wrong, r.lapsed_holds(grace=0)) == ([], {}, [])
    assert dict(r.held) == {A: 0} and r.payment_status(lapsed["command_id"]) == "EXPIRED"
    assert r.payment_status(held["command_id"]) == "COMPLETED"


def test_a_lost_expiry_a_wrong_held_total_and_a_second_end_are_named() -> None:
    sim = funded()
    h = authorize(A, B, 300, timeout_ms=1_000)
    sim.send(h)
    sim.clock += 60_000
    later = authorize(A, B, 1, timeout_ms=600_000)
    sim.send(later)  # the newest event is a minute past the first hold's expiry, and no tick came
    r = _replay(sim.events)
    assert r.lapsed_holds(grace=30) == [f"{h['command_id']} held 59s past its expiry"]
    assert r.lapsed_holds(grace=120) == []

    sim.tick(0)
    expired = sim.events[-1]
    wrong = {**expired, "held_after": 7}
    assert list(_replay([*sim.events[:-1], wrong]).held_after_wrong) == [A]
    again = {**expired, "event_id": "00000000-0000-4000-8000-000000000001", "sequence": expired["sequence"] + 1}
    assert any("ended twice" in t for t in _replay([*sim.events, again]).twice)
