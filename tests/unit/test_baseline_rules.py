"""The benchmark's Postgres baseline decides every transfer as the ledger does.

`paystream bench compare` is only a fair comparison if both designs refuse the
same transfers for the same reasons; this runs each case through the ledger's
domain (both partitions, legs delivered) and through the baseline's checks.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from ops.lab.bench import baseline as B
from ops.lab.bench.compare import transfers
from tests.unit.ledger_sim import Sim, cmd, deposit, open_account, transfer


def _ledger(sim: Sim, c: dict[str, Any]) -> tuple[str, str | None]:
    sim.send(c)
    sim.drain()
    (ev,) = [e for e in sim.events if e["command_id"] == c["command_id"] and e["terminal"] and not e["replay"]]
    return ev["status"], ev["reason"]


def _row(sim: Sim, acct: str) -> tuple[Any, ...] | None:
    a = sim.stores[acct].get("a") if acct in sim.stores else None
    return None if a is None else (acct, a["currency"], a["status"], a["kind"], a["balance"])


def _baseline(sim: Sim, c: dict[str, Any]) -> tuple[str, str | None]:
    reason = B.static_reason(c)
    if reason is not None:
        return "REJECTED", reason
    mv = c["movement"]
    return B.decide(_row(sim, c["account_id"]), _row(sim, mv["counterparty_id"]), mv["amount"], mv["currency"])


CASES = {
    "completed": ({}, 100, "USD", "COMPLETED", None),
    "insufficient funds": ({}, 5_000, "USD", "REJECTED", "INSUFFICIENT_FUNDS"),
    "unknown sender": ({"sender": "missing"}, 100, "USD", "REJECTED", "UNKNOWN_ACCOUNT"),
    "frozen sender": ({"sender": "frozen"}, 100, "USD", "REJECTED", "ACCOUNT_FROZEN"),
    "currency mismatch": ({}, 100, "EUR", "REJECTED", "CURRENCY_MISMATCH"),
    "same account": ({"receiver": "self"}, 100, "USD", "REJECTED", "SAME_ACCOUNT"),
    "zero": ({}, 0, "USD", "REJECTED", "NON_POSITIVE_AMOUNT"),
    "negative": ({}, -5, "USD", "REJECTED", "NON_POSITIVE_AMOUNT"),
    "too large": ({}, 10**15 + 1, "USD", "REJECTED", "AMOUNT_TOO_LARGE"),
    "unknown currency": ({}, 100, "XXX", "REJECTED", "UNKNOWN_CURRENCY"),
    "unknown receiver": ({"receiver": "missing"}, 100, "USD", "FAILED", "RECEIVER_UNKNOWN"),
    "frozen receiver": ({"receiver": "frozen"}, 100, "USD", "FAILED", "RECEIVER_FROZEN"),
    "receiver in another currency": ({"receiver": "eur"}, 100, "USD", "FAILED", "RECEIVER_CURRENCY_MISMATCH"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_baseline_refuses_what_the_ledger_refuses(case: str) -> None:
    setup, amount, currency, status, reason = CASES[case]
    sim = Sim()
    src, dst = str(uuid.uuid4()), str(uuid.uuid4())
    if setup.get("sender") != "missing":
        sim.send(open_account(src))
        sim.send(deposit(src, 1_000))
    if setup.get("sender") == "frozen":
        sim.send(cmd("FREEZE", src, status_change={"reason": "t", "actor": "t"}))
    if setup.get("receiver") == "self":
        dst = src
    elif setup.get("receiver") != "missing":
        sim.send(open_account(dst, currency="EUR" if setup.get("receiver") == "eur" else "USD"))
        if setup.get("receiver") == "frozen":
            sim.send(cmd("FREEZE", dst, status_change={"reason": "t", "actor": "t"}))
    c = transfer(src, dst, amount, currency)
    before = _baseline(sim, c)  # decided on the state before the ledger applies it
    assert _ledger(sim, c) == (status, reason)
    assert before == (status, reason)


def test_workloads_have_the_advertised_shape() -> None:
    accounts = [str(uuid.uuid4()) for _ in range(100)]
    n = 4_000
    hot = transfers(accounts, n, "hot", "s")
    fanin = transfers(accounts, n, "fanin", "s")
    uniform = transfers(accounts, n, "uniform", "s")
    share = lambda cmds, f: sum(1 for c in cmds if f(c)) / n  # noqa: E731
    assert 0.48 < share(hot, lambda c: c["account_id"] == accounts[0]) < 0.54
    assert 0.48 < share(fanin, lambda c: c["movement"]["counterparty_id"] == accounts[0]) < 0.54
    assert share(uniform, lambda c: c["account_id"] == accounts[0]) < 0.05
    assert [c["movement"] for c in transfers(accounts, 10, "hot", "x")] == \
        [c["movement"] for c in transfers(accounts, 10, "hot", "x")]  # same seed, same workload
