"""Each fraud rule fires on a crafted sequence and stays silent on its near miss."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.fraud import config as fconfig
from pipelines.fraud import domain as R

CFG = fconfig.load(fconfig.DEFAULT_PATH)  # the shipped configuration
USD = CFG.limits("USD")
MIN = 60_000
T0 = 1_700_000_000_000
A, B, C, D = (str(uuid.UUID(int=i)) for i in range(1, 5))


def tr(amount: int, ts: int, receiver: str = B, sender: str = A) -> R.Transfer:
    return R.Transfer(str(uuid.uuid4()), sender, receiver, amount, "USD", ts)


def run(transfers: list[R.Transfer], state: R.State | None = None) -> list[R.Verdict]:
    out = []
    for t in transfers:
        v, state = R.evaluate(CFG, state, t)
        out.append(v)
    return out


def rules_of(v: R.Verdict) -> set[str]:
    return {h.rule for h in v.hits}


def test_shipped_config_matches_the_documented_defaults():
    defaults = fconfig.FraudConfig()
    assert CFG.risk == defaults.risk and CFG.scores == defaults.scores
    assert CFG.windows == defaults.windows and CFG.processing == defaults.processing
    assert CFG.limits("default") == defaults.limits("default") == USD
    assert CFG.limits("XYZ") == CFG.limits("default")


def test_unknown_config_key_is_an_error(tmp_path: Path):
    p = tmp_path / "f.toml"
    p.write_text("[windows]\nmax_transfer = 3\n")
    with pytest.raises(ValueError):
        fconfig.load(p)


def test_high_value():
    (v,) = run([tr(USD.high_value + 1, T0)])
    assert rules_of(v) == {"HIGH_VALUE"} and v.risk == "HIGH" and v.score == CFG.scores.high_value
    (miss,) = run([tr(USD.high_value - 1, T0)])
    assert "HIGH_VALUE" not in rules_of(miss)


def test_details_write_amounts_as_the_api_does():
    """An admin reads a rule's detail next to the review's amount: both decimal strings
    with the currency, never minor units; and no internal account id in the text."""
    (v,) = run([tr(1_200_000, T0)])  # 12,000.00 USD, over the 10,000.00 threshold
    (hit,) = [h for h in v.hits if h.rule == "HIGH_VALUE"]
    assert hit.detail == "12000.00 USD >= threshold 10000.00 USD"
    states: dict[str, R.State] = {}
    _send(states, tr(5_000, T0, sender=A, receiver=B))
    back = _send(states, tr(4_900, T0 + MIN, sender=B, receiver=A))
    (trip,) = [h for h in back.hits if h.rule == "ROUND_TRIP"]
    assert A not in trip.detail and B not in trip.detail, trip.detail


def test_per_currency_threshold():
    gbp = CFG.limits("GBP")
    assert gbp.high_value < USD.high_value
    v, _ = R.evaluate(CFG, None, R.Transfer("p", A, B, gbp.high_value, "GBP", T0))
    assert "HIGH_VALUE" in rules_of(v)
    v, _ = R.evaluate(CFG, None, R.Transfer("p", A, B, gbp.high_value, "USD", T0))
    assert "HIGH_VALUE" not in rules_of(v)


def test_structuring():
    near = USD.high_value - 1_000  # 99% of the threshold
    vs = run([tr(near, T0), tr(near, T0 + 3600_000), tr(near, T0 + 7200_000)])
    assert [("STRUCTURING" in rules_of(v)) for v in vs] == [False, False, True]
    assert vs[-1].risk == "MEDIUM"
    # near miss: the third falls outside the day
    vs = run([tr(near, T0), tr(near, T0 + 3600_000), tr(near, T0 + 86_400_000 + 1)])
    assert not any("STRUCTURING" in rules_of(v) for v in vs)
    # near miss: one of three is below the band
    floor = R._near_floor(CFG, USD)
    vs = run([tr(near, T0), tr(floor - 1, T0 + 1), tr(near, T0 + 2)])
    assert not any("STRUCTURING" in rules_of(v) for v in vs)
    vs = run([tr(floor, T0), tr(floor, T0 + 1), tr(floor, T0 + 2)])
    assert "STRUCTURING" in rules_of(vs[-1])


def test_round_amount_is_only_a_weak_signal():
    (v,) = run([tr(USD.round_min, T0)])
    assert rules_of(v) == {"ROUND_AMOUNT"} and v.risk == "LOW"
    (miss,) = run([tr(USD.round_min + 1, T0)])
    assert rules_of(miss) == set()
    (small,) = run([tr(USD.round_unit, T0)])  # round but below round_min
    assert rules_of(small) == set()


def test_velocity():
    n = CFG.windows.max_transfers
    step = CFG.windows.velocity_seconds * 1000 // (n + 1)
    vs = run([tr(100, T0 + i * step, receiver=B) for i in range(n + 1)])
    assert [("VELOCITY" in rules_of(v)) for v in vs] == [False] * n + [True]
    # near miss: the same count spread a little wider than the window
    step = CFG.windows.velocity_seconds * 1000 // n + 1
    vs = run([tr(100, T0 + i * step, receiver=B) for i in range(n + 1)])
    assert not any("VELOCITY" in rules_of(v) for v in vs)


def test_amount_velocity():
    third = USD.amount_per_hour // 3
    vs = run([tr(third, T0), tr(third, T0 + MIN), tr(third + 10, T0 + 2 * MIN)])
    assert [("AMOUNT_VELOCITY" in rules_of(v)) for v in vs] == [False, False, True]
    # exactly at the limit is allowed
    rest = USD.amount_per_hour - 2 * third
    vs = run([tr(third, T0), tr(third, T0 + MIN), tr(rest, T0 + 2 * MIN)])
    assert not any("AMOUNT_VELOCITY" in rules_of(v) for v in vs)
    # over the limit, but the first one left the hour
    vs = run([tr(third, T0), tr(third, T0 + 3_000_000), tr(third + 10, T0 + 3_600_001)])
    assert not any("AMOUNT_VELOCITY" in rules_of(v) for v in vs)


def test_fan_out():
    k = CFG.windows.max_receivers
    receivers = [str(uuid.uuid4()) for _ in range(k + 1)]
    vs = run([tr(100, T0 + i * 1000, receiver=r) for i, r in enumerate(receivers)])
    assert [("FAN_OUT" in rules_of(v)) for v in vs] == [False] * k + [True]
    # near miss: as many transfers, but one receiver repeats
    again = [*receivers[:k], receivers[0]]
    vs = run([tr(100, T0 + i * 1000, receiver=r) for i, r in enumerate(again)])
    assert not any("FAN_OUT" in rules_of(v) for v in vs)


def _send(states: dict[str, R.State], t: R.Transfer) -> R.Verdict:
    """The pipeline's order: score on the sender, then tell the receiver."""
    flow = R.flow_for(CFG, states.get(t.sender), t)
    verdict, states[t.sender] = R.evaluate(CFG, states.get(t.sender), t)
    states[t.receiver] = R.on_inflow(CFG, states.get(t.receiver), flow)
    return verdict


def test_round_trip_one_hop():
    states: dict[str, R.State] = {}
    assert "ROUND_TRIP" not in rules_of(_send(states, tr(5_000, T0, sender=A, receiver=B)))
    v = _send(states, tr(4_900, T0 + MIN, sender=B, receiver=A))
    assert "ROUND_TRIP" in rules_of(v) and "1 hop" in v.hits[0].detail
    # near miss: B pays a third party, not A
    states = {}
    _send(states, tr(5_000, T0, sender=A, receiver=B))
    assert "ROUND_TRIP" not in rules_of(_send(states, tr(4_900, T0 + MIN, sender=B, receiver=C)))


def test_round_trip_two_hops():
    states: dict[str, R.State] = {}
    _send(states, tr(5_000, T0, sender=A, receiver=B))
    assert "ROUND_TRIP" not in rules_of(_send(states, tr(4_900, T0 + MIN, sender=B, receiver=C)))
    v = _send(states, tr(4_800, T0 + 2 * MIN, sender=C, receiver=A))
    assert "2 hop" in next(h.detail for h in v.hits if h.rule == "ROUND_TRIP")


def test_round_trip_near_misses():
    # three hops is out of scope: A -> B -> C -> D -> A
    states: dict[str, R.State] = {}
    for i, (s, r) in enumerate([(A, B), (B, C), (C, D)]):
        _send(states, tr(5_000, T0 + i * MIN, sender=s, receiver=r))
    closing = tr(5_000, T0 + 3 * MIN, sender=D, receiver=A)
    assert "ROUND_TRIP" not in rules_of(_send(states, closing))
    # outside the window
    states = {}
    _send(states, tr(5_000, T0, sender=A, receiver=B))
    late = T0 + CFG.windows.round_trip_seconds * 1000 + 1
    assert "ROUND_TRIP" not in rules_of(_send(states, tr(5_000, late, sender=B, receiver=A)))


def test_new_account():
    s = R.on_account_opened(None, T0)
    v, _ = R.evaluate(CFG, s, tr(USD.new_account_amount, T0 + MIN))
    assert rules_of(v) == {"NEW_ACCOUNT"} and v.risk == "MEDIUM"
    v, _ = R.evaluate(CFG, s, tr(USD.new_account_amount - 1, T0 + MIN))
    assert rules_of(v) == set()
    old = T0 + CFG.windows.new_account_seconds * 1000
    v, _ = R.evaluate(CFG, s, tr(USD.new_account_amount, old))
    assert rules_of(v) == set()
    v, _ = R.evaluate(CFG, None, tr(USD.new_account_amount, T0))  # unknown age: silent
    assert rules_of(v) == set()


def test_owner_is_kept_from_the_opening_and_survives_later_events():
    s = R.on_account_opened(None, T0, "user-7")
    _, s2 = R.evaluate(CFG, s, tr(1_000, T0 + MIN))
    assert s2["owner"] == "user-7"
    assert R.on_account_opened(s2, T0 + 2 * MIN, "someone-else")["owner"] == "user-7"


def test_several_rules_add_up():
    s = R.on_account_opened(None, T0)
    v, _ = R.evaluate(CFG, s, tr(USD.high_value, T0 + MIN))  # a round number too
    assert rules_of(v) == {"HIGH_VALUE", "NEW_ACCOUNT", "ROUND_AMOUNT"}
    assert v.score == CFG.scores.high_value + CFG.scores.new_account + CFG.scores.round_amount


def test_medium_alerts_cool_down_per_sender_but_high_never_does():
    n = CFG.windows.max_transfers
    k = CFG.windows.max_receivers
    state: R.State | None = None
    alerts = []
    for i in range(n + 10):
        t = tr(100, T0 + i * 1000, receiver=str(uuid.UUID(int=100 + i % (k + 1))))
        v, state = R.evaluate(CFG, state, t)
        if R.should_alert(CFG, state, v, t.ts):
            state = R.alerted(state, v, t.ts)
            alerts.append(i)
    assert alerts == [n]  # velocity + fan-out: one alert, then quiet
    # a new rule breaks the cooldown
    t = tr(USD.amount_per_hour, T0 + (n + 10) * 1000, receiver=C)
    v, state = R.evaluate(CFG, state, t)
    assert "AMOUNT_VELOCITY" in rules_of(v) and R.should_alert(CFG, state, v, t.ts)
    # after the cooldown the same rules alert again
    later = T0 + CFG.windows.alert_cooldown_seconds * 1000 + (n + 10) * 1000
    medium = R.Verdict(60, "MEDIUM", (R.Hit("VELOCITY", 30, ""), R.Hit("FAN_OUT", 30, "")))
    assert not R.should_alert(CFG, R.alerted(R.empty_state(), medium, T0), medium, T0 + 1)
    assert R.should_alert(CFG, R.alerted(R.empty_state(), medium, T0), medium, later)
    high = R.Verdict(80, "HIGH", (R.Hit("HIGH_VALUE", 80, ""),))
    assert R.should_alert(CFG, R.alerted(R.empty_state(), high, T0), high, T0 + 1)
    low = R.Verdict(10, "LOW", (R.Hit("ROUND_AMOUNT", 10, ""),))
    assert not R.should_alert(CFG, None, low, T0)


def test_transfer_from_event_ignores_everything_but_first_debits():
    ev = {"type": "TRANSFER_DEBITED", "replay": False, "payment_id": "p", "account_id": A,
          "counterparty_id": B, "amount": 5, "currency": "USD", "occurred_at": T0}
    assert R.transfer_from_event(ev) == R.Transfer("p", A, B, 5, "USD", T0)
    assert R.transfer_from_event({**ev, "replay": True}) is None
    assert R.transfer_from_event({**ev, "type": "TRANSFER_COMPLETED"}) is None
    # an authorization is scored when placed, its capture never again
    assert R.transfer_from_event({**ev, "type": "HOLD_PLACED"}) == R.Transfer("p", A, B, 5, "USD", T0)
    assert R.transfer_from_event({**ev, "type": "HOLD_CAPTURED"}) is None


amounts = st.integers(min_value=1, max_value=3 * USD.high_value)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(amounts, st.integers(0, 120_000), st.sampled_from([B, C, D])),
                min_size=1, max_size=60))
def test_verdicts_are_consistent_and_state_stays_bounded(steps):
    state: R.State | None = R.on_account_opened(None, T0)
    ts = T0
    for amount, gap, receiver in steps:
        ts += gap
        t = tr(amount, ts, receiver=receiver)
        v, new = R.evaluate(CFG, state, t)
        again, _ = R.evaluate(CFG, state, t)
        assert again == v  # pure: the input state is not modified
        assert v.score == min(1000, sum(h.score for h in v.hits))
        assert v.risk == R.risk_level(CFG, v.score)
        assert len({h.rule for h in v.hits}) == len(v.hits)
        assert all(e[0] >= ts - CFG.windows.outgoing_ms for e in new["out"])
        assert len(new["out"]) <= CFG.windows.max_entries
        assert [e[0] for e in new["out"]] == sorted(e[0] for e in new["out"])
        state = new
