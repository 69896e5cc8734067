"""Fraud keeps each partition's accounts decoded and writes a changed account once per
checkpoint (pipelines/fraud/app.py). What must hold: the state written at a commit is
exactly what the pure rules give for the messages since; nothing is written between
commits; after a failure nothing decoded outlives the state that committed; and a
partition that comes back (a new store partition) reads the state again."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from paystream.records import ACCOUNT_OPENED, TRANSFER_DEBITED
from paystream.stream import quix_compat
from pipelines.fraud import app as fraud_app
from pipelines.fraud import domain
from pipelines.fraud.app import STATE_KEY, FraudProcessor
from pipelines.fraud.config import FraudConfig
from pipelines.fraud.domain import on_account_opened, on_transfer, transfer_from_event

NOW = 1_700_000_000_000


class _Codec:
    def encode(self, topic: str, value: dict[str, Any]) -> bytes:
        return topic.encode()


class _StorePartition:
    """Stands for a Quix store partition (weakly referenced by the memo)."""


class _Transaction:
    """What `quix_compat.partition_local` reads: the store partition it belongs to."""

    def __init__(self, partition: object) -> None:
        self._partition = partition


class _State:
    """One key's state in a checkpoint's transaction; `store` stands for RocksDB."""

    def __init__(self, store: dict[str, Any], key: str, transaction: _Transaction) -> None:
        self.store, self.key, self._transaction = store, key, transaction
        self.reads = 0
        self.writes = 0

    def get(self, name: str, default: Any = None) -> Any:
        self.reads += 1
        return self.store.get(self.key, default)

    def set(self, name: str, value: Any) -> None:
        assert name == STATE_KEY
        self.writes += 1
        # Quix serializes on set: a later change in place must not reach the store.
        self.store[self.key] = domain.Account(value).state


def debit(sender: str, receiver: str, amount: int, ts: int) -> dict[str, Any]:
    return {"type": TRANSFER_DEBITED, "replay": False, "payment_id": str(uuid.uuid4()), "account_id": sender,
            "counterparty_id": receiver, "amount": amount, "currency": "EUR", "occurred_at": ts}


def opened(account: str, ts: int) -> dict[str, Any]:
    return {"type": ACCOUNT_OPENED, "replay": False, "account_id": account, "occurred_at": ts,
            "account": {"owner_id": "owner-" + account}}


@pytest.fixture(autouse=True)
def _fresh_locals() -> Any:
    quix_compat.forget_partition_locals()
    yield
    quix_compat.forget_partition_locals()


@pytest.fixture
def cfg() -> FraudConfig:
    return FraudConfig()


def run(p: FraudProcessor, store: dict[str, Any], tx: _Transaction, key: str, rec: dict[str, Any]) -> _State:
    state = _State(store, key, tx)
    p.handle(fraud_app.EVENTS, key, rec, state, None)  # type: ignore[arg-type]
    return state


def test_changed_accounts_are_written_once_per_checkpoint_as_the_pure_rules_give(
        monkeypatch: pytest.MonkeyPatch, cfg: FraudConfig) -> None:
    monkeypatch.setattr(fraud_app.time, "time", lambda: NOW / 1000)
    p = FraudProcessor(_Codec(), cfg)  # type: ignore[arg-type]
    store: dict[str, Any] = {}
    tx = _Transaction(_StorePartition())
    records = [opened("a", NOW - 10_000), opened("b", NOW - 10_000)]
    records += [debit("a" if i % 3 else "b", "b" if i % 3 else "a", 100 + i, NOW - 5_000 + i) for i in range(40)]
    states = [run(p, store, tx, r["account_id"], r) for r in records]
    assert store == {}, "nothing reaches the store between commits"
    assert sum(s.reads for s in states) == 2, "each account is read once, then kept decoded"

    p.write_changed()
    assert sum(s.writes for s in states) == 2, "each changed account is written once"
    expected: dict[str, Any] = {}
    for r in records:
        if r["type"] == ACCOUNT_OPENED:
            expected[r["account_id"]] = on_account_opened(expected.get(r["account_id"]), r["occurred_at"],
                                                          r["account"]["owner_id"])
        else:
            t = transfer_from_event(r)
            assert t is not None
            expected[t.sender], _, _ = on_transfer(cfg, expected.get(t.sender), t, fresh=True)
    assert store == {k: domain.Account(v).state for k, v in expected.items()}

    p.write_changed()
    assert sum(s.writes for s in states) == 2, "an account unchanged since the last commit is not written again"


def test_a_failed_commit_forgets_what_did_not_commit(monkeypatch: pytest.MonkeyPatch, cfg: FraudConfig) -> None:
    monkeypatch.setattr(fraud_app.time, "time", lambda: NOW / 1000)
    p = FraudProcessor(_Codec(), cfg)  # type: ignore[arg-type]
    store: dict[str, Any] = {}
    tx = _Transaction(_StorePartition())
    run(p, store, tx, "a", debit("a", "b", 500, NOW - 1_000))
    p.write_changed()
    committed = dict(store)
    run(p, store, tx, "a", debit("a", "c", 700, NOW - 500))
    p.discard_uncommitted()  # the commit failed: the second debit will be read again
    p.write_changed()
    assert store == committed
    again = run(p, store, tx, "a", debit("a", "c", 700, NOW - 500))
    assert again.reads == 1, "after a failure the account is read from the committed state"
    p.write_changed()
    assert [e[2] for e in store["a"]["out"]] == ["b", "c"]


def test_a_partition_that_comes_back_reads_its_state_again(monkeypatch: pytest.MonkeyPatch,
                                                           cfg: FraudConfig) -> None:
    monkeypatch.setattr(fraud_app.time, "time", lambda: NOW / 1000)
    p = FraudProcessor(_Codec(), cfg)  # type: ignore[arg-type]
    store: dict[str, Any] = {}
    run(p, store, _Transaction(first := _StorePartition()), "a", debit("a", "b", 500, NOW - 1_000))
    p.write_changed()
    store["a"]["out"].append([NOW - 900, 1, "x"])  # another instance moved on meanwhile
    again = run(p, store, _Transaction(_StorePartition()), "a", debit("a", "c", 700, NOW - 500))
    assert again.reads == 1
    p.write_changed()
    assert [e[2] for e in store["a"]["out"]] == ["b", "x", "c"]
    del first


def test_the_memo_stays_bounded_and_keeps_what_is_not_yet_written(monkeypatch: pytest.MonkeyPatch,
                                                                  cfg: FraudConfig) -> None:
    monkeypatch.setattr(fraud_app.time, "time", lambda: NOW / 1000)
    p = FraudProcessor(_Codec(), cfg, account_memo=8)  # type: ignore[arg-type]
    store: dict[str, Any] = {}
    tx = _Transaction(_StorePartition())
    for i in range(50):
        run(p, store, tx, f"a{i % 20}", debit(f"a{i % 20}", "z", 100 + i, NOW - 5_000 + i))
        if i % 7 == 6:
            p.write_changed()
    p.write_changed()
    part = quix_compat.partition_local(_State(store, "a0", tx), lambda: None)  # type: ignore[arg-type]
    assert part is not None and len(part.accounts) <= 8
    assert sorted(store) == sorted(f"a{i}" for i in range(20))
    assert sum(len(v["out"]) for v in store.values()) == 50, "no debit lost to an eviction"
