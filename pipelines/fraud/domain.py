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

import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
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


def _copy(state: State | None) -> State:
    """A full copy the rules may mutate. Read as a Mapping: a state stored before a key
    existed lacks it, and gets the key's empty value here."""
    s: Mapping[str, Any] = state or {}
    return {
        "opened": s.get("opened"),
        "owner": s.get("owner"),
        "last": s.get("last"),
        "out": [list(e) for e in s.get("out", [])],
        "near": list(s.get("near", [])),
        "in": [list(e) for e in s.get("in", [])],
    }


def risk_level(cfg: FraudConfig, score: int) -> RiskLevel:
    if score >= cfg.risk.high:
        return HIGH
    if score >= cfg.risk.medium:
        return MEDIUM
    return LOW


def on_account_opened(state: State | None, ts: int, owner: str | None = None) -> State:
    s = _copy(state)
    if s["opened"] is None:
        s["opened"] = ts
        s["owner"] = owner
    return s


# ------------------------------------------------------------------------ the rules


def _money(minor: int, currency: str) -> str:
    """An amount as the API writes it (a decimal string) with its currency: the
    detail is read by an admin in the review queue, beside the payment's amount."""
    return f"{format_minor(minor, currency)} {currency}"


def high_value(cfg: FraudConfig, lim: CurrencyLimits, s: State, t: Transfer) -> Hit | None:
    if t.amount < lim.high_value:
        return None
    return Hit("HIGH_VALUE", cfg.scores.high_value,
               f"{_money(t.amount, t.currency)} >= threshold {_money(lim.high_value, t.currency)}")


def _near_floor(cfg: FraudConfig, lim: CurrencyLimits) -> int:
    return math.ceil(lim.high_value * cfg.windows.structuring_band)


def is_near_threshold(cfg: FraudConfig, lim: CurrencyLimits, amount: int) -> bool:
    return _near_floor(cfg, lim) <= amount < lim.high_value


def structuring(cfg: FraudConfig, lim: CurrencyLimits, s: State, t: Transfer) -> Hit | None:
    if not is_near_threshold(cfg, lim, t.amount):
        return None
    since = t.ts - cfg.windows.structuring_seconds * 1000
    count = 1 + sum(1 for ts in s["near"] if ts >= since)
    if count < cfg.windows.structuring_count:
        return None
    return Hit("STRUCTURING", cfg.scores.structuring,
               f"{count} transfers just under {_money(lim.high_value, t.currency)} in "
               f"{cfg.windows.structuring_seconds}s")


def round_amount(cfg: FraudConfig, lim: CurrencyLimits, s: State, t: Transfer) -> Hit | None:
    if t.amount < lim.round_min or t.amount % lim.round_unit:
        return None
    return Hit("ROUND_AMOUNT", cfg.scores.round_amount,
               f"{_money(t.amount, t.currency)} is a multiple of {_money(lim.round_unit, t.currency)}")


def _recent_out(s: State, since: int) -> list[list[Any]]:
    return [e for e in s["out"] if e[0] >= since]


def velocity(cfg: FraudConfig, lim: CurrencyLimits, s: State, t: Transfer) -> Hit | None:
    w = cfg.windows
    count = 1 + len(_recent_out(s, t.ts - w.velocity_seconds * 1000))
    if count <= w.max_transfers:
        return None
    return Hit("VELOCITY", cfg.scores.velocity,
               f"{count} transfers in {w.velocity_seconds}s (max {w.max_transfers})")


def amount_velocity(cfg: FraudConfig, lim: CurrencyLimits, s: State, t: Transfer) -> Hit | None:
    w = cfg.windows
    total = t.amount + sum(e[1] for e in _recent_out(s, t.ts - w.amount_window_seconds * 1000))
    if total <= lim.amount_per_hour:
        return None
    return Hit("AMOUNT_VELOCITY", cfg.scores.amount_velocity,
               f"{_money(total, t.currency)} sent in {w.amount_window_seconds}s "
               f"(limit {_money(lim.amount_per_hour, t.currency)})")


def fan_out(cfg: FraudConfig, lim: CurrencyLimits, s: State, t: Transfer) -> Hit | None:
    w = cfg.windows
    receivers = {e[2] for e in _recent_out(s, t.ts - w.fan_out_seconds * 1000)} | {t.receiver}
    if len(receivers) <= w.max_receivers:
        return None
    return Hit("FAN_OUT", cfg.scores.fan_out,
               f"{len(receivers)} distinct receivers in {w.fan_out_seconds}s "
               f"(max {w.max_receivers})")


def round_trip(cfg: FraudConfig, lim: CurrencyLimits, s: State, t: Transfer) -> Hit | None:
    since = t.ts - cfg.windows.round_trip_seconds * 1000
    hops = [e[2] for e in s["in"] if e[1] == t.receiver and e[0] >= since]
    if not hops:
        return None
    return Hit("ROUND_TRIP", cfg.scores.round_trip,
               f"money from the receiver returns to it via {min(hops)} hop(s) "
               f"within {cfg.windows.round_trip_seconds}s")


def new_account(cfg: FraudConfig, lim: CurrencyLimits, s: State, t: Transfer) -> Hit | None:
    opened = s["opened"]
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


def _prune(cfg: FraudConfig, s: State, now: int) -> None:
    w = cfg.windows
    out_since = now - w.outgoing_ms
    s["out"] = [e for e in s["out"] if e[0] >= out_since][-w.max_entries:]
    near_since = now - w.structuring_seconds * 1000
    s["near"] = [ts for ts in s["near"] if ts >= near_since][-w.max_entries:]
    in_since = now - w.round_trip_seconds * 1000
    s["in"] = [e for e in s["in"] if e[0] >= in_since][-w.max_entries:]


def evaluate(cfg: FraudConfig, state: State | None, t: Transfer) -> tuple[Verdict, State]:
    """Score one outgoing transfer against the sender's recent history, then add it
    to that history. The transfer counts in its own windows ("the 21st transfer
    in ten minutes")."""
    s = _copy(state)
    _prune(cfg, s, t.ts)
    lim = cfg.limits(t.currency)
    hits = tuple(h for rule in RULES if (h := rule(cfg, lim, s, t)) is not None)
    score = min(1000, sum(h.score for h in hits))
    s["out"].append([t.ts, t.amount, t.receiver])
    s["out"] = s["out"][-cfg.windows.max_entries:]
    if is_near_threshold(cfg, lim, t.amount):
        s["near"].append(t.ts)
        s["near"] = s["near"][-cfg.windows.max_entries:]
    return Verdict(score, risk_level(cfg, score), hits), s


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
    s["last"] = [ts, sorted({h.rule for h in verdict.hits})]
    return s


def flow_for(cfg: FraudConfig, state: State | None, t: Transfer) -> Flow:
    """What the receiver must learn about this transfer to spot money coming back:
    the sender (1 hop) and the sender's own direct payers (2 hops). Origins that
    are the receiver itself are left out: that loop is caught on the sender's side."""
    s: Mapping[str, Any] = state or {}  # may be a stored state, older than the "in" key
    since = t.ts - cfg.windows.round_trip_seconds * 1000
    second = [
        Origin(e[1], int(e[0]), 2)
        for e in s.get("in", [])
        if e[2] == 1 and e[0] >= since and e[1] not in (t.receiver, t.sender)
    ]
    second.sort(key=lambda o: o.ts)
    origins = (Origin(t.sender, t.ts, 1), *second[-(cfg.windows.max_origins - 1):])
    return Flow(t.payment_id, t.sender, t.receiver, t.amount, t.currency, t.ts,
                origins[: cfg.windows.max_origins])


def on_inflow(cfg: FraudConfig, state: State | None, flow: Flow) -> State:
    """Record where the receiver's new money came from; one entry per origin, the
    newest one wins (a later entry keeps the origin in the window longest)."""
    s = _copy(state)
    by_origin: dict[str, list[Any]] = {e[1]: e for e in s["in"]}
    for o in flow.origins:
        if o.account == flow.receiver:
            continue
        cur = by_origin.get(o.account)
        if cur is None or o.ts > cur[0] or (o.ts == cur[0] and o.hops < cur[2]):
            by_origin[o.account] = [o.ts, o.account, o.hops]
    s["in"] = sorted(by_origin.values(), key=lambda e: (e[0], e[1]))
    _prune(cfg, s, max([flow.ts, *(e[0] for e in s["in"])]))
    return s


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
    flow = flow_for(cfg, state, t)
    verdict, new = evaluate(cfg, state, t)
    alert = None
    if fresh and should_alert(cfg, new, verdict, t.ts):
        new = alerted(new, verdict, t.ts)
        alert = alert_record(t, verdict, state.get("owner") if state else None)
    return new, flow, alert
