"""Holds (two-phase transfers) end to end: over HTTP through the real gateway, ledger
and sink, and Kafka-direct in Avro; expiry by the ledger's ticks."""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
import pytest

from paystream import commands as C
from paystream.codec import Codec
from paystream.settings import Settings
from tests.conftest import Component
from tests.integration.test_gateway import Env, Person, deposit, drain, gw, pay, reader, register, wait_opened
from tests.kafka_helpers import EventReader, send

pytestmark = pytest.mark.integration
__all__ = ["gw", "reader"]  # fixtures, imported for this module's tests


def _act(c: httpx.Client, who: Person, payment_id: str, action: str, key: str | None = None,
         **body: Any) -> httpx.Response:
    return c.post(f"/v1/payments/{payment_id}/{action}", json=body or None,
                  headers={**who.headers, "Idempotency-Key": key or uuid.uuid4().hex})


def _account(c: httpx.Client, who: Person) -> dict[str, Any]:
    r = c.get(f"/v1/accounts/{who.number}", headers=who.headers)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def _account_until(c: httpx.Client, who: Person, field: str, value: str, timeout: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        acct = _account(c, who)
        if acct[field] == value or time.monotonic() > deadline:
            assert acct[field] == value, acct
            return acct
        time.sleep(0.1)


def _payment_until(c: httpx.Client, who: Person, payment_id: str, status: str, timeout: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        view = c.get(f"/v1/payments/{payment_id}", headers=who.headers).json()
        if view.get("status") == status or time.monotonic() > deadline:
            assert view.get("status") == status, view
            return view  # type: ignore[no-any-return]
        time.sleep(0.2)


def test_authorize_capture_part_and_cancel_over_http(gw: Env, reader: EventReader) -> None:
    a, b, stranger = register(gw), register(gw), register(gw)
    wait_opened(gw, reader, a, b)
    assert deposit(gw, a, "100.00").status_code == 201
    with gw.client() as c:
        r = pay(c, a, b, "30.00", capture=False)
        assert r.status_code == 201, r.text
        held = r.json()
        assert (held["status"], held["amount"], held["amount_authorized"]) == ("requires_capture", "30.00", "30.00")
        acct = _account(c, a)  # read-your-writes: the hold shows at once
        assert (acct["posted"], acct["available"], acct["balance"]) == ("100.00", "70.00", "100.00")
        # what is held cannot be spent again
        r = pay(c, a, b, "80.00")
        assert r.status_code == 402 and r.json()["code"] == "insufficient_funds", r.text
        # a stranger cannot see it, let alone capture it
        assert _act(c, stranger, held["id"], "capture").status_code == 404
        # the receiver captures part of it; a retry of the same request replays the answer
        key = uuid.uuid4().hex
        r = _act(c, b, held["id"], "capture", key, amount="12.50")
        assert r.status_code == 200, r.text
        assert (r.json()["status"], r.json()["amount"], r.json()["id"]) == ("completed", "12.50", held["id"])
        again = _act(c, b, held["id"], "capture", key, amount="12.50")
        assert again.status_code == 200 and again.headers.get("Idempotent-Replayed") == "true"
        assert _act(c, b, held["id"], "capture", key, amount="1.00").status_code == 422  # same key, other body
        assert _account(c, b)["posted"] == "12.50"  # b captured: b's reads show it at once
        acct = _account_until(c, a, "posted", "87.50")  # a did not ask: a's catch up
        assert acct["available"] == "87.50"
        txs = c.get(f"/v1/accounts/{a.number}/transactions", headers=a.headers).json()["data"]
        assert [(t["type"], t["amount"]) for t in txs if t["payment_id"] == held["id"]] == [("hold_captured", "-12.50")]
        holds = c.get(f"/v1/accounts/{a.number}/holds", headers=a.headers).json()["data"]
        assert holds == []  # captured: no longer open
        view = _payment_until(c, a, held["id"], "completed")
        assert (view["amount"], view["amount_authorized"]) == ("12.50", "30.00") and view["expires_at"]
        # a second capture of the same hold is the ledger's to refuse
        r = _act(c, a, held["id"], "capture")
        assert r.status_code == 402 and r.json()["code"] == "hold_captured", r.text

        r = pay(c, a, b, "10.00", capture=False)
        second = r.json()["id"]
        assert _account(c, a)["available"] == "77.50"
        holds = c.get(f"/v1/accounts/{a.number}/holds", headers=a.headers).json()["data"]
        assert [(h["id"], h["status"], h["amount_authorized"]) for h in holds] == [
            (second, "requires_capture", "10.00")]
        assert c.get(f"/v1/accounts/{a.number}/holds", headers=stranger.headers).status_code == 404
        r = _act(c, a, second, "cancel")
        assert r.status_code == 200 and r.json()["status"] == "canceled", r.text
        assert _account(c, a)["available"] == "87.50"
        r = _act(c, b, second, "capture")
        assert r.status_code == 402 and r.json()["code"] == "hold_voided", r.text
        assert _payment_until(c, b, second, "canceled")["amount_authorized"] == "10.00"


def test_a_hold_nobody_captures_expires_once(gw: Env, reader: EventReader) -> None:
    a, b = register(gw), register(gw)
    wait_opened(gw, reader, a, b)
    assert deposit(gw, a, "50.00").status_code == 201
    with gw.client() as c:
        r = pay(c, a, b, "20.00", capture=False, hold_seconds=1)
        assert r.status_code == 201, r.text
        pid = r.json()["id"]
        assert _account(c, a)["available"] == "30.00"
        # ticks every second, timers per second: expired within a few seconds
        view = _payment_until(c, a, pid, "expired", timeout=15)
        assert view["amount_authorized"] == "20.00"
        assert _account(c, a)["available"] == "50.00"
        r = _act(c, b, pid, "capture")
        assert r.status_code == 402 and r.json()["code"] == "hold_expired", r.text
    reader.poll_until(lambda evs: any(e["payment_id"] == pid and e["type"] == "HOLD_EXPIRED" for e in evs))
    drain(reader, 3)  # ticks go on: still one expiry
    expiries = [e for e in reader.events if e["payment_id"] == pid and e["type"] == "HOLD_EXPIRED"]
    assert len(expiries) == 1 and expiries[0]["held_after"] == 0


def test_holds_kafka_direct(stack: Settings, codec: Codec, ledger: Component, reader: EventReader) -> None:
    """The same commands in Avro straight to the ledger's topics, as a direct
    producer sends them: AUTHORIZE, a partial CAPTURE, a VOID, refusals."""
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    opens = [C.open_account(x, external_number=x[:12], owner_id="t", currency="USD") for x in (a, b)]
    dep = C.deposit(a, 10_000, "USD")
    send(stack, codec, [*opens, dep])
    reader.terminals([dep["command_id"]], timeout=90)
    h1, h2 = C.authorize(a, b, 4_000, "USD"), C.authorize(a, b, 3_000, "USD", hold_timeout_ms=60_000)
    too_much = C.authorize(a, b, 4_000, "USD")
    send(stack, codec, [h1, h2, too_much])
    out = reader.terminals([h1["command_id"], h2["command_id"], too_much["command_id"]])
    assert out[h1["command_id"]]["type"] == "HOLD_PLACED" and out[h2["command_id"]]["held_after"] == 7_000
    assert out[too_much["command_id"]]["reason"] == "INSUFFICIENT_FUNDS"
    cap = C.hold_action("CAPTURE", a, h1["command_id"], amount=2_500)
    void = C.hold_action("VOID", a, h2["command_id"])
    late = C.hold_action("CAPTURE", a, h2["command_id"])
    send(stack, codec, [cap, void, late])
    out = reader.terminals([cap["command_id"], void["command_id"], late["command_id"]])
    assert out[cap["command_id"]]["type"] == "TRANSFER_COMPLETED" and out[cap["command_id"]]["amount"] == 2_500
    assert out[cap["command_id"]]["account_id"] == b
    assert out[void["command_id"]]["type"] == "HOLD_VOIDED"
    assert (out[late["command_id"]]["type"], out[late["command_id"]]["reason"]) == ("COMMAND_REJECTED", "HOLD_VOIDED")
    captured = next(e for e in reader.events if e["command_id"] == cap["command_id"] and e["type"] == "HOLD_CAPTURED")
    assert (captured["balance_after"], captured["held_after"]) == (7_500, 3_000)  # h2 is still held
