"""The gateway's idempotent command path, with fakes for Redis, Kafka and Postgres.

`FakeKeys` keeps the rules of the Lua scripts in gateway/idempotency.py (claim,
accepted, unlock, done, release) over a dict; the integration tests run the real
scripts. Here the service's protocol around them runs in milliseconds: which answer
a retry gets in each state of its key.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest

from gateway import store
from gateway.errors import IdempotencyKeyReused, LedgerUnavailable, RequestInProgress
from gateway.idempotency import Claim
from gateway.ledger_io import SendError, Waiter
from gateway.movements import Movement
from gateway.service import Gateway
from gateway.store import AccountRef
from paystream.settings import Settings

LOCK_MS = 30_000


@dataclass
class FakeKeys:
    """The idempotency store's contract, over dicts (see the module docstring)."""

    keys: dict[str, dict[str, Any]] = field(default_factory=dict)
    records: dict[str, bytes] = field(default_factory=dict)

    def key(self, user_id: str, endpoint: str, idem_key: str) -> str:
        return f"idem:{user_id}:{endpoint}:{idem_key}"

    async def claim(self, key: str, fp: str, token: str, rate: Any = None) -> Claim:
        now = time.time() * 1000
        rec = self.keys.get(key)
        if rec is None:
            self.keys[key] = {"fp": fp, "state": "in_flight", "token": token, "lock_until": now + LOCK_MS,
                              "sent": False}
            return Claim("new")
        if rec["fp"] != fp:
            return Claim("mismatch")
        if rec["state"] == "done":
            return Claim("done", status=rec["status"], body=rec["body"], headers={})
        if rec["lock_until"] > now:
            return Claim("busy", retry_after=max(1, int((rec["lock_until"] - now) / 1000)))
        rec.update(state="in_flight", token=token, lock_until=now + LOCK_MS)
        return Claim("resume", sent=rec["sent"])

    async def release(self, key: str, token: str) -> None:
        rec = self.keys.get(key)
        if rec and rec["token"] == token and rec["state"] == "in_flight":
            del self.keys[key]

    async def accepted(self, key: str, token: str, record_key: str = "", record: bytes = b"",
                       record_ttl: int = 0) -> None:
        if record:
            self.records[record_key] = record
        rec = self.keys.get(key)
        if rec and rec["token"] == token:
            rec.update(state="accepted", sent=True)
        elif rec:
            rec["sent"] = True

    async def unlock(self, key: str, token: str) -> None:
        rec = self.keys.get(key)
        if rec and rec["token"] == token:
            rec["lock_until"] = 0

    async def done(self, key: str, status: int, body: bytes, headers: Any = None, record_key: str = "",
                   record: bytes = b"", record_ttl: int = 0) -> None:
        if record:
            self.records[record_key] = record
        if key in self.keys:
            self.keys[key].update(state="done", sent=True, status=status, body=body)


@dataclass
class FakeRedis:
    """What the service reads from Redis itself: payment records."""

    keys: FakeKeys

    async def execute(self, *args: Any) -> Any:
        if args[0] == "GET":
            return self.keys.records.get(args[1])
        if args[0] == "DEL":
            return int(self.keys.records.pop(args[1], None) is not None)
        raise AssertionError(args)


class FakeListener:
    def __init__(self) -> None:
        self.waiters: dict[str, Waiter] = {}

    def register(self, command_id: str) -> Waiter:
        self.waiters[command_id] = w = Waiter(command_id)
        return w

    def unregister(self, w: Waiter) -> None:
        self.waiters.pop(w.command_id, None)


class FakeLedger:
    """Kafka and the ledger: answers each sent command with `status`, or never."""

    def __init__(self, listener: FakeListener, status: str | None = "COMPLETED", refuse: bool = False) -> None:
        self.listener = listener
        self.status = status
        self.refuse = refuse
        self.sent: list[dict[str, Any]] = []

    async def send(self, cmd: dict[str, Any]) -> None:
        if self.refuse:
            raise SendError("broker down")
        self.sent.append(cmd)
        waiter = self.listener.waiters.get(cmd["command_id"])
        if self.status is not None and waiter is not None:
            waiter.queue.put_nowait({"type": "TRANSFER_COMPLETED", "status": self.status, "reason": None,
                                     "replay": False})


class FakeReads:
    async def told(self, *args: Any) -> None:
        return None


@dataclass
class World:
    gw: Gateway
    keys: FakeKeys
    ledger: FakeLedger
    rows: dict[str, dict[str, Any]]


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> World:
    keys, listener = FakeKeys(), FakeListener()
    ledger = FakeLedger(listener)
    gw = Gateway(Settings(jwt_secret="x" * 40), redis=FakeRedis(keys), idem=keys,  # type: ignore[arg-type]
                 sender=ledger, listener=listener, reads=FakeReads())  # type: ignore[arg-type]
    rows: dict[str, dict[str, Any]] = {}

    async def payment_row(_pool: Any, payment_id: str) -> dict[str, Any] | None:
        return rows.get(payment_id)

    async def payment_rows(_pool: Any, payment_ids: list[str]) -> dict[str, dict[str, Any]]:
        return {i: rows[i] for i in payment_ids if i in rows}

    monkeypatch.setattr(store, "payment_row", payment_row)
    monkeypatch.setattr(store, "payment_rows", payment_rows)  # the id check's, many at once
    return World(gw, keys, ledger, rows)


def a_transfer(amount: int = 1000, key: str | None = None) -> Movement:
    user = "u-" + uuid.uuid4().hex[:6]
    src = AccountRef("PS0000000001", str(uuid.uuid4()), user, "USD")
    dst = AccountRef("PS0000000002", str(uuid.uuid4()), "someone", "USD")
    return Movement("transfer", user, key or uuid.uuid4().hex, amount, "USD", None, source=src, target=dst)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_completed_then_replayed_byte_for_byte(world: World) -> None:
    move = a_transfer()
    first = run(world.gw.submit(move, wait=1))
    assert first.status == 201 and orjson.loads(first.body)["status"] == "completed"
    again = run(world.gw.submit(move, wait=1))
    assert (again.status, again.body) == (first.status, first.body)
    assert again.headers["Idempotent-Replayed"] == "true"
    assert len(world.ledger.sent) == 1  # the retry never reached Kafka


def test_another_body_under_the_key_is_422(world: World) -> None:
    move = a_transfer()
    run(world.gw.submit(move, wait=1))
    other = Movement("transfer", move.user_id, move.idem_key, 999, "USD", None, source=move.source,
                     target=move.target)
    with pytest.raises(IdempotencyKeyReused):
        run(world.gw.submit(other, wait=1))


def test_no_answer_in_time_is_202_and_the_retry_waits_again_instead_of_409(world: World) -> None:
    world.ledger.status = None  # the ledger is slow
    move = a_transfer()
    first = run(world.gw.submit(move, wait=0.05))
    assert first.status == 202 and first.headers["Location"] == f"/v1/payments/{move.payment_id}"
    world.ledger.status = "COMPLETED"
    second = run(world.gw.submit(move, wait=1))
    assert second.status == 201
    assert len(world.ledger.sent) == 2  # re-sent: the ledger deduplicates by payment id


def test_a_key_held_by_a_request_still_running_is_409(world: World) -> None:
    move = a_transfer()
    run(world.keys.claim(world.gw.idem.key(move.user_id, "payments", move.idem_key), move.fingerprint(), "other"))
    with pytest.raises(RequestInProgress) as exc:
        run(world.gw.submit(move, wait=1))
    assert exc.value.retry_after and exc.value.retry_after >= 1
    assert world.ledger.sent == []


def test_a_key_held_by_a_holder_that_is_gone_answers_the_known_outcome(world: World) -> None:
    move = a_transfer()
    key = world.gw.idem.key(move.user_id, "payments", move.idem_key)
    run(world.keys.claim(key, move.fingerprint(), "gone"))
    cmd = move.command()
    world.rows[move.payment_id] = {"kind": "TRANSFER", "from_account": cmd["account_id"],
                                   "to_account": cmd["movement"]["counterparty_id"], "amount": move.minor,
                                   "currency": "USD", "description": None, "status": "COMPLETED", "reason": None}
    answer = run(world.gw.submit(move, wait=1))
    assert answer.status == 201 and orjson.loads(answer.body)["status"] == "completed"
    # another movement under that id in the read model: never its 201
    world.rows[move.payment_id]["amount"] = move.minor + 1
    world.keys.keys.clear()
    world.keys.records.clear()
    run(world.keys.claim(key, move.fingerprint(), "gone"))
    answer = run(world.gw.submit(move, wait=1))
    assert answer.status == 422


def test_a_refused_send_frees_the_key_for_the_retry(world: World) -> None:
    world.ledger.refuse = True
    move = a_transfer()
    for _ in range(2):
        with pytest.raises(LedgerUnavailable):
            run(world.gw.submit(move, wait=1))
    assert world.keys.keys == {}
    world.ledger.refuse = False
    assert run(world.gw.submit(move, wait=1)).status == 201


def test_a_failure_while_waiting_unlocks_the_key(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    world.ledger.status = None
    move = a_transfer()

    async def broken(*_: Any) -> None:
        raise OSError("postgres went away")

    monkeypatch.setattr(world.gw, "wait_outcome", broken)
    with pytest.raises(OSError):
        run(world.gw.submit(move, wait=1))
    rec = world.keys.keys[world.gw.idem.key(move.user_id, "payments", move.idem_key)]
    assert rec["lock_until"] == 0 and rec["sent"]  # the retry resumes at once, not 409


def test_the_three_views_of_a_movement_agree() -> None:
    move = a_transfer(1234)
    cmd, rec = move.command(), move.record()
    assert cmd["command_id"] == rec["id"] == move.payment_id
    assert cmd["movement"]["amount"] == 1234 and rec["amount"] == "12.34"
    assert rec["from_account"] == "PS0000000001" and rec["to_account"] == "PS0000000002"
    deposit = Movement("deposit", "admin", "k", 500, "USD", "cash", target=move.source)
    assert deposit.payment_id != Movement("withdrawal", "admin", "k", 500, "USD", "cash",
                                          source=move.source).payment_id
    assert deposit.command()["account_id"] == move.source.account_id  # type: ignore[union-attr]


def test_the_answer_behind_a_held_key_keeps_the_payment_as_first_written(world: World) -> None:
    move = a_transfer()
    first = orjson.loads(run(world.gw.submit(move, wait=1)).body)
    key = world.gw.idem.key(move.user_id, "payments", move.idem_key)
    world.keys.keys[key].update(state="accepted", lock_until=time.time() * 1000 + LOCK_MS)  # a holder is back
    time.sleep(0.01)
    again = orjson.loads(run(world.gw.submit(move, wait=1)).body)
    assert again["created_at"] == first["created_at"] and again["status"] == "completed"


def test_an_expired_key_reused_for_another_movement_never_gets_the_old_answer(world: World) -> None:
    """The payment record outlives the key (7 days against 1): a new request with the
    old key and another body, behind a held claim, is 422, not the old 201."""
    move = a_transfer(1000)
    run(world.gw.submit(move, wait=1))
    world.keys.keys.clear()  # the key expired; the payment record did not
    other = Movement("transfer", move.user_id, move.idem_key, 2000, "USD", None, source=move.source,
                     target=move.target)
    run(world.keys.claim(world.gw.idem.key(move.user_id, "payments", move.idem_key), other.fingerprint(), "x"))
    answer = run(world.gw.submit(other, wait=1))
    assert answer.status == 422


def test_a_command_that_cannot_be_encoded_is_ledger_unavailable_not_a_client_error(world: World) -> None:
    from paystream.errors import UnknownSchemaError

    async def registry_down(cmd: dict[str, Any]) -> None:
        raise UnknownSchemaError("registry unreachable")

    world.ledger.send = registry_down  # type: ignore[method-assign]
    with pytest.raises(LedgerUnavailable):
        run(world.gw.submit(a_transfer(), wait=1))
    with pytest.raises(LedgerUnavailable):
        run(world.gw.send_and_wait(a_transfer().command(), 0.1))


def test_a_new_key_whose_payment_id_another_movement_holds_sends_nothing(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis forgot the key and the user reuses it from another of their accounts: the
    ledger would not refuse it there (it remembers ids per account), so the gateway
    refuses it before Kafka when the read model holds the id for another movement."""
    move = a_transfer()
    cmd = move.command()
    row = {"kind": "TRANSFER", "from_account": cmd["account_id"], "to_account": cmd["movement"]["counterparty_id"],
           "amount": move.minor, "currency": "USD", "description": None, "status": "COMPLETED", "reason": None}
    elsewhere = AccountRef("PS0000000003", str(uuid.uuid4()), move.user_id, "USD")
    other = Movement("transfer", move.user_id, move.idem_key, move.minor, "USD", None, source=elsewhere,
                     target=move.target)
    world.rows[move.payment_id] = row
    answer = run(world.gw.submit(other, wait=1))
    assert answer.status == 422 and orjson.loads(answer.body)["code"] == "idempotency_key_reused"
    assert world.ledger.sent == []
    again = run(world.gw.submit(other, wait=1))  # the key remembers the refusal
    assert (again.status, again.body) == (answer.status, answer.body) and world.ledger.sent == []
    # the same movement under a forgotten key is sent again (the ledger answers its duplicate)
    world.keys.keys.clear()
    assert run(world.gw.submit(move, wait=1)).status == 201 and len(world.ledger.sent) == 1

    async def down(_pool: Any, payment_id: Any) -> None:
        raise OSError("postgres is down")

    monkeypatch.setattr(store, "payment_row", down)  # payments do not depend on the read model
    monkeypatch.setattr(store, "payment_rows", down)
    assert run(world.gw.submit(a_transfer(), wait=1)).status == 201
