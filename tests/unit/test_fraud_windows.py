"""The fraud scorer against a plain model of its rules.

The scorer keeps each account's windows sorted and indexed so that a busy account
costs no more per event than a quiet one (bisection, prefix cuts, an index of
inbound origins). The model below is the rules as written in docs: every window a
full scan over a list kept sorted by time, the newest `max_entries` kept. Random
streams of openings, debits and flows (times that sometimes run backwards, flows
delivered late and out of order, windows and limits small enough to be crossed
often) must give the same verdicts, flows and states, both through the pure
functions and through `Account`s kept between events as the pipeline keeps them.
"""

from __future__ import annotations

import copy
import itertools
import math
import uuid
from typing import Any

from hypothesis import event, given, settings
from hypothesis import strategies as st

from pipelines.fraud import config as fconfig
from pipelines.fraud import domain as R

SHIPPED = fconfig.load(fconfig.DEFAULT_PATH)
CFG = SHIPPED.model_copy(update={"windows": fconfig.Windows(
    velocity_seconds=60, max_transfers=3, fan_out_seconds=60, max_receivers=2, amount_window_seconds=600,
    structuring_seconds=300, structuring_count=2, round_trip_seconds=300, new_account_seconds=100,
    max_entries=10, max_origins=3, alert_cooldown_seconds=30,
)})
W = CFG.windows
LIM = CFG.limits("USD")
ACCOUNTS = [str(uuid.UUID(int=i)) for i in range(1, 13)]  # more than max_entries origins
T0 = 1_700_000_000_000


# --------------------------------------------------------------------------- the model


def m_empty() -> dict[str, Any]:
    return {"opened": None, "owner": None, "out": [], "near": [], "in": [], "last": None}


def m_prune(s: dict[str, Any], now: int) -> None:
    s["out"] = sorted((e for e in s["out"] if e[0] >= now - W.outgoing_ms), key=lambda e: e[0])[-W.max_entries:]
    s["near"] = sorted(ts for ts in s["near"] if ts >= now - W.structuring_seconds * 1000)[-W.max_entries:]
    s["in"] = sorted((e for e in s["in"] if e[0] >= now - W.round_trip_seconds * 1000),
                     key=lambda e: (e[0], e[1]))[-W.max_entries:]


def m_rules(s: dict[str, Any], t: R.Transfer) -> list[str]:
    near = math.ceil(LIM.high_value * W.structuring_band) <= t.amount < LIM.high_value
    out = s["out"]
    fired = []
    if t.amount >= LIM.high_value:
        fired.append("HIGH_VALUE")
    if near and 1 + sum(1 for ts in s["near"] if ts >= t.ts - W.structuring_seconds * 1000) >= W.structuring_count:
        fired.append("STRUCTURING")
    if t.amount >= LIM.round_min and t.amount % LIM.round_unit == 0:
        fired.append("ROUND_AMOUNT")
    if 1 + sum(1 for e in out if e[0] >= t.ts - W.velocity_seconds * 1000) > W.max_transfers:
        fired.append("VELOCITY")
    if t.amount + sum(e[1] for e in out if e[0] >= t.ts - W.amount_window_seconds * 1000) > LIM.amount_per_hour:
        fired.append("AMOUNT_VELOCITY")
    if len({e[2] for e in out if e[0] >= t.ts - W.fan_out_seconds * 1000} | {t.receiver}) > W.max_receivers:
        fired.append("FAN_OUT")
    if any(e[1] == t.receiver and e[0] >= t.ts - W.round_trip_seconds * 1000 for e in s["in"]):
        fired.append("ROUND_TRIP")
    if (s["opened"] is not None and t.amount >= LIM.new_account_amount
            and t.ts - s["opened"] < W.new_account_seconds * 1000):
        fired.append("NEW_ACCOUNT")
    return fired


def m_flow(s: dict[str, Any], t: R.Transfer) -> list[tuple[str, int, int]]:
    since = t.ts - W.round_trip_seconds * 1000
    second = sorted(((e[1], e[0], 2) for e in s["in"]
                     if e[2] == 1 and e[0] >= since and e[1] not in (t.receiver, t.sender)),
                    key=lambda o: o[1])
    return [(t.sender, t.ts, 1), *second[max(0, len(second) - (W.max_origins - 1)):]]


def m_transfer(s: dict[str, Any], t: R.Transfer) -> tuple[list[tuple[str, int, int]], list[str], bool]:
    flow = m_flow(s, t)
    m_prune(s, t.ts)
    fired = m_rules(s, t)
    s["out"].append([t.ts, t.amount, t.receiver])
    if math.ceil(LIM.high_value * W.structuring_band) <= t.amount < LIM.high_value:
        s["near"].append(t.ts)
    m_prune(s, t.ts)  # sorts, and keeps the newest max_entries (nothing newer is cut by time)
    score = min(1000, sum(getattr(CFG.scores, r.lower()) for r in fired))
    risk = R.risk_level(CFG, score)
    alert = risk == "HIGH" or (risk == "MEDIUM" and (
        not s["last"] or t.ts - s["last"][0] >= W.alert_cooldown_seconds * 1000 or not set(fired) <= set(s["last"][1])))
    if alert:
        s["last"] = [t.ts, sorted(fired)]
    return flow, fired, alert


def m_inflow(s: dict[str, Any], flow: R.Flow) -> None:
    by = {e[1]: e for e in s["in"]}
    for o in flow.origins:
        if o.account == flow.receiver:
            continue
        cur = by.get(o.account)
        if cur is None or o.ts > cur[0] or (o.ts == cur[0] and o.hops < cur[2]):
            by[o.account] = [o.ts, o.account, o.hops]
    s["in"] = list(by.values())
    m_prune(s, max([flow.ts, *(e[0] for e in s["in"])]))


# --------------------------------------------------------------------------- streams

amounts = st.one_of(
    st.integers(1, 10_000),  # the usual payment
    st.integers(math.ceil(LIM.high_value * W.structuring_band), LIM.high_value - 1),  # just under
    st.sampled_from([LIM.round_min, LIM.round_min + LIM.round_unit, LIM.new_account_amount]),
    st.integers(LIM.high_value, 3 * LIM.high_value),
)
# Mostly seconds apart, so windows fill up; sometimes backwards; sometimes past every window.
gaps = st.integers(0, 99).flatmap(lambda p: st.integers(0, 5_000) if p < 80 else st.integers(-20_000, 0) if p < 93
                                  else st.integers(20_000, 400_000))
busy = st.sampled_from(ACCOUNTS[:3])  # most money moves between a few accounts
steps = st.lists(st.one_of(
    st.tuples(st.just("open"), st.sampled_from(ACCOUNTS), gaps),
    st.tuples(st.just("pay"), st.tuples(busy, busy | st.sampled_from(ACCOUNTS)), gaps, amounts),
    st.tuples(st.just("pay"), st.tuples(st.sampled_from(ACCOUNTS), busy), gaps, amounts),
    st.tuples(st.just("deliver"), st.integers(0, 3)),
    st.tuples(st.just("deliver"), st.just(0)),
    st.tuples(st.just("deliver"), st.integers(0, 200)),  # late, out of order
), min_size=100, max_size=300)


def _state_view(s: Any) -> dict[str, Any]:
    return {k: s[k] for k in ("opened", "owner", "out", "near", "in", "last")}


@settings(max_examples=150, deadline=None)
@given(steps)
def test_the_scorer_equals_the_model(stream):
    model = {a: m_empty() for a in ACCOUNTS}
    pure: dict[str, R.State | None] = dict.fromkeys(ACCOUNTS)
    kept = {a: R.Account() for a in ACCOUNTS}  # as the pipeline keeps them between events
    pending: list[R.Flow] = []  # flows in flight to their receivers
    ts = T0
    event(f"steps {len(stream) // 50 * 50}")
    for step in stream:
        if step[0] == "open":
            _, account, gap = step
            ts += gap
            R.account_opened(kept[account], ts, "owner")
            pure[account] = R.on_account_opened(pure[account], ts, "owner")
            if model[account]["opened"] is None:
                model[account]["opened"], model[account]["owner"] = ts, "owner"
        elif step[0] == "pay":
            _, (sender, receiver), gap, amount = step
            if sender == receiver:
                continue
            ts += gap
            t = R.Transfer(str(uuid.uuid4()), sender, receiver, amount, "USD", ts)
            before = copy.deepcopy(pure[sender])
            want_flow, want_rules, want_alert = m_transfer(model[sender], t)
            new, flow, alert = R.on_transfer(CFG, pure[sender], t, fresh=True)
            assert pure[sender] == before  # pure: its input is not modified
            pure[sender] = new
            flow2, alert2 = R.transfer(CFG, kept[sender], t, fresh=True)
            for f, a in ((flow, alert), (flow2, alert2)):
                assert [(o.account, o.ts, o.hops) for o in f.origins] == want_flow
                assert (a is not None) == want_alert
                if a is not None:
                    assert sorted(r["rule"] for r in a["reasons"]) == sorted(want_rules)
            pending.append(flow)
            event(f"out {len(model[sender]['out']) // 5 * 5}")
        elif pending:
            flow = pending.pop(step[1] % len(pending))
            m_inflow(model[flow.receiver], flow)
            pure[flow.receiver] = R.on_inflow(CFG, pure[flow.receiver], flow)
            R.inflow(CFG, kept[flow.receiver], flow)
            event(f"in {len(model[flow.receiver]['in'])}")
        for acc in ACCOUNTS:
            want = model[acc]
            assert _state_view(kept[acc].state) == want
            assert kept[acc].origins == {e[1]: e for e in want["in"]}
            sums = kept[acc].sums
            assert [x - sums[0] for x in sums] == [0, *itertools.accumulate(e[1] for e in want["out"])]
            if pure[acc] is not None:
                assert _state_view(pure[acc]) == want


def test_a_state_stored_unsorted_is_read_sorted():
    """States written before the windows were kept sorted may hold them in arrival order."""
    stored = {"opened": T0, "owner": None, "last": None, "near": [T0 + 5, T0 + 1],
              "out": [[T0 + 9, 1, "b"], [T0 + 2, 2, "c"]], "in": [[T0 + 3, "x", 1], [T0 + 3, "a", 2]]}
    a = R.Account(stored)
    assert a.state["out"] == [[T0 + 2, 2, "c"], [T0 + 9, 1, "b"]]
    assert a.state["near"] == [T0 + 1, T0 + 5]
    assert a.state["in"] == [[T0 + 3, "a", 2], [T0 + 3, "x", 1]]
    assert a.origins["x"] == [T0 + 3, "x", 1]
    assert stored["near"] == [T0 + 5, T0 + 1]  # the stored one is left alone


LONG = SHIPPED.model_copy(update={"windows": SHIPPED.windows.model_copy(update={
    "fan_out_seconds": 60, "max_receivers": 3, "amount_window_seconds": 90, "max_entries": 400})})
LONG_LIM = LONG.limits("USD")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 120_000), st.integers(1, LONG_LIM.amount_per_hour // 40),
                          st.sampled_from(ACCOUNTS)), min_size=20, max_size=300),
       st.integers(0, 130_000), st.sampled_from(ACCOUNTS), st.integers(1, LONG_LIM.amount_per_hour // 40))
def test_window_rules_read_only_what_they_need_of_long_windows(entries, now, receiver, amount):
    """Fan-out stops reading once the newest entries are over the limit, and the
    amount over the hour is a difference of prefix sums: on windows longer than the
    model test's, both must still say what a full scan says."""
    a = R.Account({"out": [[T0 + ts, amt, r] for ts, amt, r in entries]})
    t = R.Transfer(str(uuid.uuid4()), ACCOUNTS[0], receiver, amount, "USD", T0 + now)
    out = a.state["out"]
    receivers = {e[2] for e in out if e[0] >= t.ts - 60_000} | {receiver}
    hit = R.fan_out(LONG, LONG_LIM, a, t)
    assert (hit is not None) == (len(receivers) > 3)
    if hit is not None:
        words = hit.detail.split()
        if words[0] == "at":  # "at least N": read part of the window, N over the limit
            event("fan-out decided by the newest entries")
            assert 3 < int(words[2]) <= len(receivers)
        else:
            assert int(words[0]) == len(receivers)
    total = amount + sum(e[1] for e in out if e[0] >= t.ts - 90_000)
    assert (R.amount_velocity(LONG, LONG_LIM, a, t) is not None) == (total > LONG_LIM.amount_per_hour)
