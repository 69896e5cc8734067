"""A deterministic, in-memory stand-in for the ledger's Kafka plumbing, for tests.

Each account key has its own store (as each key has its own state in Quix);
legs wait in a FIFO per target key and are delivered when the test says so,
so hypothesis can explore every interleaving of commands and legs."""

from __future__ import annotations

import copy
import uuid
from collections import defaultdict, deque
from typing import Any

from paystream.commands import reversal_command_id
from paystream.stream.store import DictStore
from pipelines.ledger import domain


def cmd(ctype: str, account: str, command_id: str | None = None, **body: Any) -> dict[str, Any]:
    c: dict[str, Any] = {
        "command_id": command_id or str(uuid.uuid4()), "type": ctype, "account_id": account,
        "issued_at": 0, "requested_by": "test", "open_account": None, "movement": None,
        "status_change": None, "reversal": None, "hold": None,
    }
    c.update(body)
    return c


def transfer(src: str, dst: str, amount: int, currency: str = "USD", pid: str | None = None) -> dict[str, Any]:
    return cmd("TRANSFER", src, pid, movement={"amount": amount, "currency": currency,
                                              "counterparty_id": dst, "metadata": {}})


def authorize(src: str, dst: str, amount: int, currency: str = "USD", pid: str | None = None,
              timeout_ms: int | None = None) -> dict[str, Any]:
    return cmd("AUTHORIZE", src, pid, movement={"amount": amount, "currency": currency, "counterparty_id": dst,
                                               "metadata": {}, "hold_timeout_ms": timeout_ms})


def capture(src: str, pid: str, amount: int | None = None, command_id: str | None = None) -> dict[str, Any]:
    return cmd("CAPTURE", src, command_id, hold={"payment_id": pid, "amount": amount})


def void(src: str, pid: str, command_id: str | None = None) -> dict[str, Any]:
    return cmd("VOID", src, command_id, hold={"payment_id": pid, "amount": None})


def tick_leg(now: int) -> dict[str, Any]:
    key = domain.DEFAULT_CLOCK
    return {"leg_id": str(uuid.uuid4()), "kind": "TICK", "command_id": key, "payment_id": key, "account_id": key,
            "counterparty_id": key, "amount": 0, "currency": "", "reason": None, "requested_by": "ledger",
            "issued_at": now}


def deposit(acct: str, amount: int, currency: str = "USD", pid: str | None = None) -> dict[str, Any]:
    return cmd("DEPOSIT", acct, pid, movement={"amount": amount, "currency": currency,
                                              "counterparty_id": None, "metadata": {}})


def open_account(acct: str, currency: str = "USD", kind: str = "USER") -> dict[str, Any]:
    return cmd("OPEN_ACCOUNT", acct, open_account={"external_number": acct[:8], "owner_id": "o",
                                                   "currency": currency, "kind": kind})


class Sim:
    def __init__(self) -> None:
        self.stores: dict[str, DictStore] = defaultdict(DictStore)
        self.pending: dict[str, deque[dict[str, Any]]] = defaultdict(deque)
        self.events: list[dict[str, Any]] = []
        self.log: list[tuple[str, dict[str, Any]]] = []  # every input applied, in order
        self.times: list[int] = []  # the log time each was applied at
        # The partition's log time: it moves only when a test says so (`tick`), as
        # record timestamps do, so batches of inputs share one time.
        self.clock = 0
        self.limits = domain.HoldLimits(default_ms=60_000, max_ms=3_600_000)

    def _emit(self, outs: list[domain.Output]) -> list[dict[str, Any]]:
        evs = []
        for o in outs:
            if o.topic == domain.EVENTS:
                self.events.append(o.value)
                evs.append(o.value)
            else:
                assert o.topic == domain.LEGS
                self.pending[o.key].append(o.value)
        return evs

    def _stores(self) -> domain.BatchStores:
        return domain.BatchStores(self.stores.__getitem__, limits=self.limits)

    def send(self, command: dict[str, Any]) -> list[dict[str, Any]]:
        self.log.append(("cmd", command))
        self.times.append(self.clock)
        return self._emit(domain.apply_batch(self._stores(), [command], self.clock, legs=False))

    def tick(self, advance_ms: int = 0) -> list[dict[str, Any]]:
        """The partition's clock moves on by `advance_ms`, and a tick says so."""
        self.clock += advance_ms
        leg = tick_leg(self.clock)
        self.log.append(("leg", leg))
        self.times.append(self.clock)
        return self._emit(domain.apply_batch(self._stores(), [leg], self.clock, legs=True))

    def deliver_one(self, key: str) -> list[dict[str, Any]]:
        leg = self.pending[key].popleft()
        self.log.append(("leg", leg))
        self.times.append(self.clock)
        return self._emit(domain.apply_batch(self._stores(), [leg], self.clock, legs=True))

    def drain(self) -> None:
        while any(self.pending.values()):
            for key in [k for k, q in self.pending.items() if q]:
                self.deliver_one(key)

    def balance(self, acct: str) -> int:
        a = self.stores[acct].get("a")
        return a["balance"] if a else 0

    def held(self, acct: str) -> int:
        a = self.stores[acct].get("a")
        return a.get("held", 0) if a else 0

    def posting_sums(self) -> dict[tuple[str, str], int]:
        sums: dict[tuple[str, str], int] = defaultdict(int)
        for e in self.events:
            for p in e["postings"]:
                sums[(p["account_id"], p["currency"])] += p["amount"]
        return sums


def scenario(A: str, B: str, C: str, NOBODY: str) -> list[dict[str, Any]]:
    """Every kind of event the ledger writes, on three accounts (NOBODY is never
    opened), in topic order per key: metadata with odd text, a duplicate, a refund,
    a rejection before the account exists, a reversal that freezes, holds."""
    sim = Sim()
    sim.send(cmd("DEPOSIT", A, movement={"amount": 5, "currency": "USD", "counterparty_id": None,
                                         "metadata": {}}))  # before A exists: a rejection on "q"/"h"  # fmt: skip
    for acct in (A, B, C):
        sim.send(open_account(acct))
    d = deposit(A, 10_000)
    d["movement"]["metadata"] = {"z": "last", "description": "rent é ✓ \x00\n", "a": ""}
    sim.send(d)
    t = transfer(A, B, 2_500)
    sim.send(t)
    sim.send(copy.deepcopy(t))  # a duplicate continues the chain
    sim.send(transfer(A, NOBODY, 100))  # refunded: TRANSFER_FAILED on A
    sim.send(transfer(A, B, 10**9))  # insufficient funds
    sim.drain()
    sim.send(cmd("REVERSE_TRANSFER", B, reversal_command_id(t["command_id"]),
                 reversal={"payment_id": t["command_id"], "reason": "fraud", "actor": "admin",
                           "freeze_receiver": True, "sender_id": A}))  # fmt: skip
    sim.drain()
    sim.send(cmd("UNFREEZE", B, status_change={"reason": "cleared", "actor": "admin"}))
    hold_each_way(sim, A, C)
    return sim.events


def hold_each_way(sim: Sim, src: str, dst: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Three holds of 300, 200 and 100 from `src`: the first captured (120 of it), the
    second voided, the third left to expire (a tick past its 5 s); legs delivered."""
    held, voided, lapsed = (authorize(src, dst, n, timeout_ms=5_000) for n in (300, 200, 100))
    for h in (held, voided, lapsed):
        sim.send(h)
    sim.send(capture(src, held["command_id"], 120))
    sim.send(void(src, voided["command_id"]))
    sim.drain()
    sim.tick(6_000)
    return held, voided, lapsed


A, B, C = (str(uuid.UUID(int=i)) for i in (1, 2, 3))


def funded(amount: int = 100_000) -> Sim:
    """Accounts A, B and C open, A holding `amount`."""
    sim = Sim()
    for acct in (A, B, C):
        sim.send(open_account(acct))
    sim.send(deposit(A, amount))
    return sim
