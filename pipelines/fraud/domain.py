"""Fraud rules as pure functions over plain data, and the records they produce
(alerts, freezes, flows), built deterministically from the payment id.

Nothing here touches Kafka or a clock: the app passes an account's state (a
JSON-able dict, as Quix keeps it) and one event in, and gets the new state and a
verdict back. Hypothesis and hand-made sequences drive the same code the
pipeline runs, and a test can compute the alerts a stream of events must
produce by folding it through these functions.

State per account key (the account is the sender for outgoing transfers and the
receiver for inbound flows):

* ``opened``  event time of ACCOUNT_OPENED (ms), or None if never seen
* ``owner``   the account's owner from ACCOUNT_OPENED (put on alerts, so the
              review decision can be told to that user), or None
* ``out``     ``[ts, amount, receiver]`` of recent outgoing transfers, oldest first,
              pruned to the longest counting window
* ``near``    ``ts`` of recent "just under the high-value threshold" transfers,
              kept for the (longer) structuring window without keeping every
              transfer for a day
* ``last``    ``[ts, [rules]]`` of the sender's last alert, for the cooldown
* ``in``      ``[ts, origin, hops]``: accounts whose money reached this one
              recently, directly (hops=1) or through one intermediary (hops=2),
              one entry per origin, for round-trip detection

Windows use event time (the ledger's ``occurred_at``), so a replay or a
catch-up after downtime gives the same verdicts as live processing.
Every rule that fires adds its score; there is no first-match-wins.
"""

from __future__ import annotations

import itertools
import math
import uuid
from bisect import bisect_left, bisect_right, insort
from collections.abc import Mapping
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, TypedDict

from paystream import commands as C
from paystream import ids
from paystream.money import format_minor
from paystream.records import (
    FREEZE,
    HIGH,
    HOLD_PLACED,
    LOW,
    MEDIUM,
    TRANSFER_DEBITED,
    Decoded,
    FraudAlert,
    FundsFlow,
    LedgerEvent,
    RiskLevel,
)
from pipelines.fraud.config import CurrencyLimits, FraudConfig

# The state layout above, for mypy (a plain dict at run time, as Quix stores it). The
# functional form because one key is `in`, a Python keyword.
State = TypedDict(
    "State",
    {
        "opened": int | None,
        "owner": str | None,
        "out": list[list[Any]],  # [ts, amount, receiver]
        "near": list[int],
        "in": list[list[Any]],  # [ts, origin, hops]
        "last": list[Any] | None,  # [ts, [rules]]
    },
)


@dataclass(frozen=True, slots=True)
class Transfer:
    payment_id: str
    sender: str
    receiver: str
    amount: int
    currency: str
    ts: int  # event time, epoch ms


@dataclass(frozen=True, slots=True)
class Hit:
    rule: str
    score: int
    detail: str


@dataclass(frozen=True, slots=True)
class Verdict:
    score: int
    risk: RiskLevel
    hits: tuple[Hit, ...]

    @property
    def alert(self) -> bool:
        return self.risk != LOW


@dataclass(frozen=True, slots=True)
class Origin:
    account: str
    ts: int
    hops: int


@dataclass(frozen=True, slots=True)
class Flow:
    """Money that left `sender` for `receiver`, with the origins it carries along:
    `sender` itself (1 hop) and whoever paid `sender` recently (2 hops)."""

    payment_id: str
    sender: str
    receiver: str
    amount: int
    currency: str
    ts: int
    origins: tuple[Origin, ...]


def empty_state() -> State:
    return {"opened": None, "owner": None, "out": [], "near": [], "in": [], "last": None}


_TS = itemgetter(0)
_AMOUNT = itemgetter(1)
_RECEIVER = itemgetter(2)


def _in_order(e: list[Any]) -> tuple[int, str]:
    return e[0], e[1]


class Account:
    """An account's fraud state as the scorer holds it: the stored dict (`state`,
    written back as it is), its windows kept sorted by time, and an index of the
    inbound origins by account.

    Why not just the dict: a busy account keeps up to `max_entries` per window, and
    scoring must not cost in proportion to that. Sorted windows let each rule find
    its window's start by bisection and pruning cut a prefix; the index finds an
    origin without a scan. The pure functions below wrap the in-place ones on a
    copy; the pipeline keeps one `Account` per account between commits (docs/FRAUD.md)."""

    __slots__ = ("origins", "state", "sums")

    def __init__(self, stored: Mapping[str, Any] | None = None) -> None:
        # A full copy the rules may mutate. Read as a Mapping: a state stored before a
        # key existed lacks it, and gets the key's empty value here. Lists are sorted
        # (states written before they were kept sorted may not be: Timsort makes the
        # usual, already sorted case linear).
        s: Mapping[str, Any] = stored or {}
        self.state: State = {
            "opened": s.get("opened"),
            "owner": s.get("owner"),
            "last": s.get("last"),
            "out": sorted((list(e) for e in s.get("out", [])), key=_TS),
            "near": sorted(s.get("near", [])),
            "in": sorted((list(e) for e in s.get("in", [])), key=_in_order),
        }
        self.origins: dict[str, list[Any]] = {e[1]: e for e in self.state["in"]}
        # Prefix sums of the outgoing amounts (sums[i] - sums[j]: out[j:i]), so the
        # hour's total is a bisection, not a sum over up to `max_entries` entries.
        # Derived, never stored; every change to "out" goes through `_out_add` and
        # `_out_cut`, which keep it in step.
        self.sums: list[int] = [0, *itertools.accumulate(map(_AMOUNT, self.state["out"]))]


def _copy(state: State | None) -> State:
    return Account(state).state


def risk_level(cfg: FraudConfig, score: int) -> RiskLevel:
    if score >= cfg.risk.high:
        return HIGH
    if score >= cfg.risk.medium:
        return MEDIUM
    return LOW


def on_account_opened(state: State | None, ts: int, owner: str | None = None) -> State:
    a = Account(state)
    account_opened(a, ts, owner)
    return a.state


def account_opened(a: Account, ts: int, owner: str | None = None) -> None:
    s = a.state
    if s["opened"] is None:
        s["opened"] = ts
        s["owner"] = owner


# ------------------------------------------------------------------------ the rules


def _money(minor: int, currency: str) -> str:
    """An amount as the API writes it (a decimal string) with its currency: the
    detail is read by an admin in the review queue, beside the payment's amount."""
    return f"{format_minor(minor, currency)} {currency}"


def high_value(cfg: FraudConfig, lim: CurrencyLimits, a: Account, t: Transfer) -> Hit | None:
    if t.amount < lim.high_value:
        return None
    return Hit("HIGH_VALUE", cfg.scores.high_value,
               f"{_money(t.amount, t.currency)} >= threshold {_money(lim.high_value, t.currency)}")


def _near_floor(cfg: FraudConfig, lim: CurrencyLimits) -> int:
    return math.ceil(lim.high_value * cfg.windows.structuring_band)


def is_near_threshold(cfg: FraudConfig, lim: CurrencyLimits, amount: int) -> bool:
    return _near_floor(cfg, lim) <= amount < lim.high_value


def structuring(cfg: FraudConfig, lim: CurrencyLimits, a: Account, t: Transfer) -> Hit | None:
    if not is_near_threshold(cfg, lim, t.amount):
        return None
    near = a.state["near"]
    count = 1 + len(near) - bisect_left(near, t.ts - cfg.windows.structuring_seconds * 1000)
    if count < cfg.windows.structuring_count:
        return None
    return Hit("STRUCTURING", cfg.scores.structuring,
               f"{count} transfers just under {_money(lim.high_value, t.currency)} in "
               f"{cfg.windows.structuring_seconds}s")


def round_amount(cfg: FraudConfig, lim: CurrencyLimits, a: Account, t: Transfer) -> Hit | None:
    if t.amount < lim.round_min or t.amount % lim.round_unit:
        return None
    return Hit("ROUND_AMOUNT", cfg.scores.round_amount,
               f"{_money(t.amount, t.currency)} is a multiple of {_money(lim.round_unit, t.currency)}")


def velocity(cfg: FraudConfig, lim: CurrencyLimits, a: Account, t: Transfer) -> Hit | None:
    w = cfg.windows
    out = a.state["out"]
    count = 1 + len(out) - bisect_left(out, t.ts - w.velocity_seconds * 1000, key=_TS)
    if count <= w.max_transfers:
        return None
    return Hit("VELOCITY", cfg.scores.velocity,
               f"{count} transfers in {w.velocity_seconds}s (max {w.max_transfers})")


def amount_velocity(cfg: FraudConfig, lim: CurrencyLimits, a: Account, t: Transfer) -> Hit | None:
    w = cfg.windows
    out, sums = a.state["out"], a.sums
    total = t.amount + sums[-1] - sums[bisect_left(out, t.ts - w.amount_window_seconds * 1000, key=_TS)]
    if total <= lim.amount_per_hour:
        return None
    return Hit("AMOUNT_VELOCITY", cfg.scores.amount_velocity,
               f"{_money(total, t.currency)} sent in {w.amount_window_seconds}s "
               f"(limit {_money(lim.amount_per_hour, t.currency)})")


def fan_out(cfg: FraudConfig, lim: CurrencyLimits, a: Account, t: Transfer) -> Hit | None:
    w = cfg.windows
    out, limit = a.state["out"], w.max_receivers
    start = bisect_left(out, t.ts - w.fan_out_seconds * 1000, key=_TS)
    # The newest entries usually decide: a sender paying many receivers is over the
    # limit within its last few transfers, and then the rest of the window (up to
    # `max_entries`) need not be read. Only a sender within the limit costs a scan.
    tail = max(start, len(out) - 4 * (limit + 1))
    receivers = set(map(_RECEIVER, out[tail:]))
    receivers.add(t.receiver)
    partial = len(receivers) > limit and tail > start
    if not partial:
        receivers.update(map(_RECEIVER, out[start:tail]))
        if len(receivers) <= limit:
            return None
    return Hit("FAN_OUT", cfg.scores.fan_out,
               f"{'at least ' if partial else ''}{len(receivers)} distinct receivers in {w.fan_out_seconds}s "
               f"(max {limit})")


def round_trip(cfg: FraudConfig, lim: CurrencyLimits, a: Account, t: Transfer) -> Hit | None:
    e = a.origins.get(t.receiver)  # one entry per origin
    if e is None or e[0] < t.ts - cfg.windows.round_trip_seconds * 1000:
        return None
    return Hit("ROUND_TRIP", cfg.scores.round_trip,
               f"money from the receiver returns to it via {e[2]} hop(s) "
               f"within {cfg.windows.round_trip_seconds}s")


def new_account(cfg: FraudConfig, lim: CurrencyLimits, a: Account, t: Transfer) -> Hit | None:
    opened = a.state["opened"]
    if opened is None or t.amount < lim.new_account_amount:
        return None
    age_ms = t.ts - opened
    if age_ms >= cfg.windows.new_account_seconds * 1000:
        return None
    return Hit("NEW_ACCOUNT", cfg.scores.new_account,
               f"{_money(t.amount, t.currency)} sent {max(age_ms, 0) // 1000}s after opening")


RULES = (high_value, structuring, round_amount, velocity, amount_velocity, fan_out, round_trip,
         new_account)


# ---------------------------------------------------------------------- evaluation


def _cut(entries: list[Any], start: int, keep: int) -> None:
    """Drop `entries[:start]` and then all but the last `keep`, in place."""
    start = max(start, len(entries) - keep)
    if start > 0:
        del entries[:start]


def _out_cut(a: Account, start: int, keep: int) -> None:
    """`_cut` of the outgoing window, with its prefix sums."""
    out = a.state["out"]
    start = max(start, len(out) - keep)
    if start > 0:
        del out[:start]
        del a.sums[:start]


def _out_add(a: Account, t: Transfer) -> None:
    out, sums = a.state["out"], a.sums
    i = bisect_right(out, t.ts, key=_TS)  # after equal times: in arrival order
    out.insert(i, [t.ts, t.amount, t.receiver])
    sums.insert(i + 1, sums[i] + t.amount)
    for j in range(i + 2, len(sums)):  # only when times ran backwards
        sums[j] += t.amount


def _prune(cfg: FraudConfig, a: Account, now: int) -> None:
    w = cfg.windows
    s = a.state
    out, near, inbound = s["out"], s["near"], s["in"]
    _out_cut(a, bisect_left(out, now - w.outgoing_ms, key=_TS), w.max_entries)
    _cut(near, bisect_left(near, now - w.structuring_seconds * 1000), w.max_entries)
    start = max(bisect_left(inbound, now - w.round_trip_seconds * 1000, key=_TS), len(inbound) - w.max_entries)
    for e in inbound[:start]:
        del a.origins[e[1]]
    _cut(inbound, start, w.max_entries)


def evaluate(cfg: FraudConfig, state: State | None, t: Transfer) -> tuple[Verdict, State]:
    """Score one outgoing transfer against the sender's recent history, then add it
    to that history. The transfer counts in its own windows ("the 21st transfer
    in ten minutes")."""
    a = Account(state)
    return score(cfg, a, t), a.state


def score(cfg: FraudConfig, a: Account, t: Transfer) -> Verdict:
    """`evaluate` in place."""
    _prune(cfg, a, t.ts)
    lim = cfg.limits(t.currency)
    hits = tuple(h for rule in RULES if (h := rule(cfg, lim, a, t)) is not None)
    total = min(1000, sum(h.score for h in hits))
    s, keep = a.state, cfg.windows.max_entries
    _out_add(a, t)
    _out_cut(a, 0, keep)
    if is_near_threshold(cfg, lim, t.amount):
        insort(s["near"], t.ts)
        _cut(s["near"], 0, keep)
    return Verdict(total, risk_level(cfg, total), hits)


def should_alert(cfg: FraudConfig, state: State | None, verdict: Verdict, ts: int) -> bool:
    """MEDIUM alerts are rate-limited per sender (see `alert_cooldown_seconds`); HIGH
    never is, because every HIGH payment must reach review to be reversible."""
    if verdict.risk == HIGH:
        return True
    if verdict.risk != MEDIUM:
        return False
    last = state.get("last") if state else None
    if not last or ts - last[0] >= cfg.windows.alert_cooldown_seconds * 1000:
        return True
    return not {h.rule for h in verdict.hits} <= set(last[1])


def alerted(state: State, verdict: Verdict, ts: int) -> State:
    s = _copy(state)
    _alerted(s, verdict, ts)
    return s


def _alerted(s: State, verdict: Verdict, ts: int) -> None:
    s["last"] = [ts, sorted({h.rule for h in verdict.hits})]


def flow_for(cfg: FraudConfig, state: State | Account | None, t: Transfer) -> Flow:
    """What the receiver must learn about this transfer to spot money coming back:
    the sender (1 hop) and the sender's own direct payers (2 hops), the newest
    first to be kept. Origins that are the receiver itself are left out: that loop
    is caught on the sender's side."""
    inbound = (state if isinstance(state, Account) else Account(state)).state["in"]  # sorted by time
    since = t.ts - cfg.windows.round_trip_seconds * 1000
    room = cfg.windows.max_origins - 1
    second: list[Origin] = []
    for e in reversed(inbound):
        if len(second) >= room or e[0] < since:
            break
        if e[2] == 1 and e[1] != t.receiver and e[1] != t.sender:
            second.append(Origin(e[1], int(e[0]), 2))
    second.reverse()
    origins = (Origin(t.sender, t.ts, 1), *second)
    return Flow(t.payment_id, t.sender, t.receiver, t.amount, t.currency, t.ts,
                origins[: cfg.windows.max_origins])


def on_inflow(cfg: FraudConfig, state: State | None, flow: Flow) -> State:
    """Record where the receiver's new money came from; one entry per origin, the
    newest one wins (a later entry keeps the origin in the window longest)."""
    a = Account(state)
    inflow(cfg, a, flow)
    return a.state


def inflow(cfg: FraudConfig, a: Account, flow: Flow) -> None:
    """`on_inflow` in place."""
    inbound, index = a.state["in"], a.origins
    for o in flow.origins:
        if o.account == flow.receiver:
            continue
        cur = index.get(o.account)
        if cur is None or o.ts > cur[0] or (o.ts == cur[0] and o.hops < cur[2]):
            if cur is not None:
                del inbound[bisect_left(inbound, _in_order(cur), key=_in_order)]  # (time, origin) is unique
            e = [o.ts, o.account, o.hops]
            insort(inbound, e, key=_in_order)
            index[o.account] = e
    _prune(cfg, a, max(flow.ts, inbound[-1][0]) if inbound else flow.ts)


_SCORED = frozenset({TRANSFER_DEBITED, HOLD_PLACED})


def transfer_from_event(ev: LedgerEvent | Decoded) -> Transfer | None:
    """The transfer a TRANSFER_DEBITED ledger event describes, or None for any other
    event (replays included: a duplicate never debits again). Takes the codec's
    untyped dict too, as the pipeline decodes it (`paystream.records.Decoded`).

    An authorization (HOLD_PLACED) is scored as the transfer it promises, when it is
    placed: a HIGH alert freezes the sender, which stops the capture (the ledger
    refuses to capture from a frozen account), and a rejected review voids the hold.
    Its capture is not scored again."""
    if ev.get("type") not in _SCORED or ev.get("replay"):
        return None
    amount, receiver, currency = ev.get("amount"), ev.get("counterparty_id"), ev.get("currency")
    if amount is None or not receiver or not currency:
        return None
    return Transfer(ev["payment_id"], ev["account_id"], receiver, int(amount), currency, int(ev["occurred_at"]))


# ----------------------------------------------------------------- records

ACTOR = "fraud"
NAMESPACE = uuid.UUID("c6a7d3e2-4b1f-4d0a-9e57-2f8b1c3a9d40")


def alert_id(payment_id: str) -> str:
    """One alert per payment, whoever computes it and however often."""
    return ids.uuid5(NAMESPACE, f"alert:{payment_id}")


def freeze_command_id(alert: str) -> str:
    """Deterministic, so a re-emitted freeze is a ledger duplicate, not a second freeze."""
    return ids.uuid5(NAMESPACE, f"freeze:{alert}")


def alert_record(t: Transfer, v: Verdict, owner: str | None = None) -> FraudAlert:
    return {
        "alert_id": alert_id(t.payment_id),
        "payment_id": t.payment_id,
        "account_id": t.sender,
        "counterparty_id": t.receiver,
        "amount": t.amount,
        "currency": t.currency,
        "score": v.score,
        "risk": v.risk,
        "reasons": [{"rule": h.rule, "score": h.score, "detail": h.detail} for h in v.hits],
        # Event time, not wall-clock: a reprocessed alert is byte-for-byte the same.
        "detected_at": t.ts,
        "sender_owner_id": owner,
    }


def freeze_command(alert: FraudAlert) -> dict[str, Any]:
    rules_fired = ",".join(r["rule"] for r in alert["reasons"])
    return C.status_change(
        FREEZE, alert["account_id"], actor=ACTOR, command_id=freeze_command_id(alert["alert_id"]),
        reason=f"fraud alert {alert['alert_id']} ({alert['risk']}: {rules_fired})",
    )  # fmt: skip


def flow_record(f: Flow) -> FundsFlow:
    return {
        "payment_id": f.payment_id, "sender_id": f.sender, "receiver_id": f.receiver,
        "amount": f.amount, "currency": f.currency, "occurred_at": f.ts,
        "origins": [{"account_id": o.account, "hops": o.hops, "occurred_at": o.ts}
                    for o in f.origins],
    }  # fmt: skip


def flow_from_record(r: FundsFlow | Decoded) -> Flow:
    return Flow(
        r["payment_id"], r["sender_id"], r["receiver_id"], int(r["amount"]), r["currency"],
        int(r["occurred_at"]),
        tuple(Origin(o["account_id"], int(o["occurred_at"]), int(o["hops"]))
              for o in r["origins"]),
    )  # fmt: skip


def on_transfer(cfg: FraudConfig, state: State | None, t: Transfer, *,
                fresh: bool) -> tuple[State, Flow, FraudAlert | None]:
    """Score a debit: (new state, flow for the receiver, alert or None). Pure, so the
    tests can compute exactly which alerts a sequence of events must produce."""
    a = Account(state)
    flow, alert = transfer(cfg, a, t, fresh=fresh)
    return a.state, flow, alert


def transfer(cfg: FraudConfig, a: Account, t: Transfer, *, fresh: bool) -> tuple[Flow, FraudAlert | None]:
    """`on_transfer` in place: the flow for the receiver and the alert or None."""
    flow = flow_for(cfg, a, t)
    verdict = score(cfg, a, t)
    alert = None
    if fresh and should_alert(cfg, a.state, verdict, t.ts):
        _alerted(a.state, verdict, t.ts)
        alert = alert_record(t, verdict, a.state["owner"])
    return flow, alert
