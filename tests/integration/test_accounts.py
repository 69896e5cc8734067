"""Several accounts per user, balances at any instant and statements, end to end: the
real gateway process, outbox relay, ledger and sink of `test_gateway` (its `gw`
fixture: a scratch database, a Redis prefix, a gateway on a free port)."""

from __future__ import annotations

import asyncio
import csv
import io
import time
import uuid
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import httpx
import psycopg
import pytest
import redis

from gateway.statements import statement
from paystream import commands as C
from paystream.codec import Codec
from tests.integration import test_gateway
from tests.integration.test_gateway import Env, Person, _ip, deposit, drain, pay, register, wait_balance, wait_opened
from tests.kafka_helpers import EventReader

pytestmark = pytest.mark.integration

# test_gateway's fixtures: its gateway, relay and sink processes on a scratch database
gw = test_gateway.gw
reader = test_gateway.reader


def stamp(when: datetime) -> str:
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")


def now() -> datetime:
    return datetime.now(UTC)


def tick() -> datetime:
    """An instant strictly between what happened before and what happens after (the
    ledger stamps events in milliseconds)."""
    time.sleep(0.02)
    t = now()
    time.sleep(0.02)
    return t


def get(env: Env, who: dict[str, str], path: str, **params: Any) -> httpx.Response:
    with env.client() as c:
        return c.get(path, params=params, headers=who)


def balance(env: Env, p: Person, at: datetime | None = None, who: dict[str, str] | None = None) -> str:
    params = {"at": stamp(at)} if at else {}
    r = get(env, who or p.headers, f"/v1/accounts/{p.number}/balance", **params)
    assert r.status_code == 200, r.text
    return str(r.json()["balance"])


def pages(env: Env, p: Person, limit: int, **window: str) -> list[dict[str, Any]]:
    """Every JSON page of a statement, following `starting_after`."""
    out, cursor = [], None
    while True:
        params: dict[str, Any] = {**window, "limit": limit}
        if cursor:
            params["starting_after"] = cursor
        r = get(env, p.headers, f"/v1/accounts/{p.number}/statement", **params)
        assert r.status_code == 200, r.text
        out.append(r.json())
        if not r.json()["has_more"]:
            return out
        cursor = r.json()["data"][-1]["id"]


class Row:
    """A posting read straight from the journal, for the reference statement."""

    def __init__(self, sequence: int, occurred_at: datetime, amount: int) -> None:
        self.sequence, self.occurred_at, self.amount = sequence, occurred_at, amount


def journal(env: Env, account_id: str) -> list[Row]:
    with psycopg.connect(env.dsn) as conn:
        rows = conn.execute(
            "SELECT sequence, occurred_at, amount FROM postings WHERE account_id = %s", (account_id,)
        ).fetchall()
    return [Row(*r) for r in rows]


def cents(text: str) -> int:
    return int(Decimal(text) * 100)


# ------------------------------------------------------------------ balances and statements


@pytest.fixture(scope="module")
def history(gw: Env) -> dict[str, Any]:
    """a: deposit 100 (t1) pay b 30 "rent" (t2) deposit 10 (t3) pay b 5.50 "=1+1" (t4),
    with an instant taken between each step."""
    if not gw.has_sink:
        pytest.skip("needs the sink")
    r = EventReader(gw.settings, Codec(gw.settings.registry_url))
    try:
        a, b = register(gw), register(gw)
        wait_opened(gw, r, a, b)
    finally:
        r.close()
    t = [tick()]
    assert deposit(gw, a, "100.00").status_code == 201
    t.append(tick())
    with gw.client() as c:
        assert pay(c, a, b, "30.00", description="rent").status_code == 201
    t.append(tick())
    assert deposit(gw, a, "10.00").status_code == 201
    t.append(tick())
    with gw.client() as c:
        last = pay(c, a, b, "5.50", description="=1+1")
        assert last.status_code == 201, last.text
        # read-your-writes: a was told 201, so a's next read shows it, at once
        r2 = c.get(f"/v1/accounts/{a.number}/balance", headers=a.headers)
        assert r2.status_code == 200 and r2.json()["balance"] == "74.50", r2.text
    t.append(tick())
    return {"a": a, "b": b, "t": t}


def test_balance_at_any_instant(gw: Env, history: dict[str, Any]) -> None:
    a, t = history["a"], history["t"]
    assert [balance(gw, a, at) for at in t] == ["0.00", "100.00", "70.00", "80.00", "74.50"]
    assert balance(gw, a) == "74.50"
    assert balance(gw, a, t[0] - timedelta(days=365)) == "0.00"
    assert balance(gw, a, t[-1] + timedelta(days=365)) == "74.50"
    # an offset is honoured: the same instant written in another zone
    east = t[2].astimezone(timezone(timedelta(hours=5, minutes=30)))
    r = get(gw, a.headers, f"/v1/accounts/{a.number}/balance", at=east.isoformat())
    assert (r.json()["balance"], r.json()["at"]) == ("70.00", stamp(t[2]))
    # the balance is exactly each line's balance_after at that line's own instant
    (page,) = pages(gw, a, 100)
    for line in page["data"]:
        assert balance(gw, a, datetime.fromisoformat(line["occurred_at"])) == line["balance_after"]


def test_times_must_carry_an_offset(gw: Env, history: dict[str, Any]) -> None:
    a = history["a"]
    for bad in ("2026-01-31T10:00:00", "2026-01-31", "yesterday", "2026-13-01T00:00:00Z"):
        for path, param in (("balance", "at"), ("statement", "from"), ("statement", "to")):
            r = get(gw, a.headers, f"/v1/accounts/{a.number}/{path}", **{param: bad})
            assert r.status_code == 400 and r.json()["code"] == "invalid_timestamp", (path, bad, r.text)
            assert r.headers["content-type"].startswith("application/problem+json")
    t = history["t"]
    r = get(gw, a.headers, f"/v1/accounts/{a.number}/statement", **{"from": stamp(t[3]), "to": stamp(t[1])})
    assert r.status_code == 400 and r.json()["code"] == "invalid_window"
    r = get(gw, a.headers, f"/v1/accounts/{a.number}/statement", starting_after="nope")
    assert r.status_code == 400 and r.json()["code"] == "invalid_cursor"


def test_statement_of_a_window(gw: Env, history: dict[str, Any]) -> None:
    a, b, t = history["a"], history["b"], history["t"]
    (page,) = pages(gw, a, 20, **{"from": stamp(t[1]), "to": stamp(t[3])})
    assert (page["opening_balance"], page["closing_balance"]) == ("100.00", "80.00")
    assert page["from"] == stamp(t[1]) and page["currency"] == "USD" and page["account_number"] == a.number
    got = [(x["type"], x["amount"], x["balance_after"], x["counterparty"], x["description"]) for x in page["data"]]
    assert got == [("transfer_debited", "-30.00", "70.00", b.number, "rent"),
                   ("deposited", "10.00", "80.00", None, None)]  # fmt: skip
    # consecutive windows chain; an empty window closes where it opens
    (before,) = pages(gw, a, 20, to=stamp(t[1]))
    assert before["closing_balance"] == page["opening_balance"] == "100.00"
    (empty,) = pages(gw, a, 20, **{"from": stamp(t[4]), "to": stamp(t[4])})
    assert (empty["opening_balance"], empty["data"], empty["closing_balance"]) == ("74.50", [], "74.50")
    # the receiver's lines: the sender's description, the sender as counterparty
    deadline = time.monotonic() + 30
    while True:
        (theirs,) = pages(gw, b, 20)
        if len(theirs["data"]) == 2 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    got = [(x["type"], x["amount"], x["balance_after"], x["counterparty"], x["description"])
           for x in theirs["data"]]  # fmt: skip
    assert got == [("transfer_completed", "30.00", "30.00", a.number, "rent"),
                   ("transfer_completed", "5.50", "35.50", a.number, "=1+1")]  # fmt: skip


def test_statement_pages_carry_the_running_balance_and_match_the_journal(gw: Env, history: dict[str, Any]) -> None:
    a, t = history["a"], history["t"]
    window = {"from": stamp(t[0]), "to": stamp(t[4])}
    whole = pages(gw, a, 100, **window)
    one_by_one = pages(gw, a, 1, **window)
    assert len(whole) == 1 and len(one_by_one) == 4
    lines = [x for p in one_by_one for x in p["data"]]
    assert lines == whole[0]["data"]
    assert [x["balance_after"] for x in lines] == ["100.00", "70.00", "80.00", "74.50"]
    for p in one_by_one:
        assert (p["opening_balance"], p["closing_balance"]) == ("0.00", "74.50")
    # the same window over the journal itself, by the pure function the pages follow
    ref = statement(journal(gw, gw.account_id(a.number)), t[0], t[4])
    assert (ref.opening, ref.closing) == (0, 7450)
    assert [cents(x["balance_after"]) for x in lines] == [line.balance for line in ref.lines]


def test_statement_as_csv_is_the_json_window(gw: Env, history: dict[str, Any]) -> None:
    a, t = history["a"], history["t"]
    window = {"from": stamp(t[0]), "to": stamp(t[4])}
    with gw.client() as c:
        r = c.get(f"/v1/accounts/{a.number}/statement", params={**window, "limit": 1},
                  headers={**a.headers, "Accept": "text/csv"})  # fmt: skip
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert "attachment" in r.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert list(rows[0]) == ["occurred_at", "id", "type", "payment_id", "counterparty", "description", "amount",
                             "currency", "balance_after"]  # fmt: skip
    assert (rows[0]["type"], rows[0]["balance_after"]) == ("opening_balance", "0.00")
    assert (rows[-1]["type"], rows[-1]["balance_after"]) == ("closing_balance", "74.50")
    (page,) = pages(gw, a, 100, **window)
    body = rows[1:-1]  # CSV ignores limit: the whole window
    assert [(x["id"], x["type"], x["amount"], x["balance_after"], x["payment_id"]) for x in body] == [
        (x["id"], x["type"], x["amount"], x["balance_after"], x["payment_id"]) for x in page["data"]]
    assert [x["description"] for x in body] == ["", "rent", "", "'=1+1"]  # never a formula


def test_only_owners_and_admins_read_balances_and_statements(gw: Env, history: dict[str, Any]) -> None:
    a, b = history["a"], history["b"]
    for path in ("balance", "statement"):
        mine = get(gw, a.headers, f"/v1/accounts/{a.number}/{path}")
        other = get(gw, b.headers, f"/v1/accounts/{a.number}/{path}")
        nobody = get(gw, b.headers, f"/v1/accounts/PS0000000000/{path}")
        assert other.status_code == nobody.status_code == 404 and other.json() == nobody.json()
        admin = get(gw, gw.admin_headers, f"/v1/accounts/{a.number}/{path}")
        assert admin.status_code == mine.status_code == 200
        assert admin.json()["account_number"] == a.number
        if path == "statement":
            assert admin.json()["data"] == mine.json()["data"]
        assert get(gw, {}, f"/v1/accounts/{a.number}/{path}").status_code == 401


# ------------------------------------------------------------------ several accounts


def open_account(env: Env, p: Person, currency: str, key: str | None = None) -> httpx.Response:
    with env.client() as c:
        return c.post("/v1/accounts", json={"currency": currency},
                      headers={**p.headers, "Idempotency-Key": key or uuid.uuid4().hex})  # fmt: skip


def accounts(env: Env, p: Person) -> list[dict[str, Any]]:
    r = get(env, p.headers, "/v1/accounts")
    assert r.status_code == 200, r.text
    return list(r.json()["data"])


def as_person(p: Person, number: str) -> Person:
    return Person(p.email, number, p.headers, p.user_id)


def test_open_another_account_idempotently(gw: Env, reader: EventReader) -> None:
    p = register(gw)
    key = uuid.uuid4().hex
    first = open_account(gw, p, "EUR", key)
    assert first.status_code == 201, first.text
    view = first.json()
    assert (view["currency"], view["status"], view["balance"]) == ("EUR", "opening", "0.00")
    assert first.headers["location"] == f"/v1/accounts/{view['account_number']}"
    again = open_account(gw, p, "EUR", key)
    assert again.status_code == 201 and again.content == first.content
    assert again.headers["Idempotent-Replayed"] == "true"
    other = open_account(gw, p, "GBP", key)
    assert other.status_code == 422 and other.json()["code"] == "idempotency_key_reused"
    numbers = [x["account_number"] for x in accounts(gw, p)]
    assert numbers == [p.number, view["account_number"]]
    # Redis forgets the key: the account id derives from it, so nothing opens twice
    r = redis.Redis.from_url(gw.env["PAYSTREAM_REDIS_URL"])
    assert r.delete(*r.scan_iter(match=f"{gw.prefix}idem:{p.user_id}:accounts:*", count=1000)) == 1
    forgotten = open_account(gw, p, "EUR", key)
    assert forgotten.status_code == 201 and forgotten.json()["account_number"] == view["account_number"]
    r.delete(*r.scan_iter(match=f"{gw.prefix}idem:{p.user_id}:accounts:*", count=1000))
    assert open_account(gw, p, "USD", key).json()["code"] == "idempotency_key_reused"
    assert [x["account_number"] for x in accounts(gw, p)] == numbers
    # the ledger opens it, in its currency
    wait_opened(gw, reader, as_person(p, view["account_number"]))
    eur = next(x for x in accounts(gw, p) if x["account_number"] == view["account_number"])
    assert (eur["currency"], eur["status"]) == ("EUR", "active")


def test_concurrent_openings_with_one_key_open_one_account(gw: Env) -> None:
    p = register(gw)
    key = uuid.uuid4().hex

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=gw.base, timeout=30, headers={"X-Forwarded-For": _ip()}) as c:
            return await asyncio.gather(*[
                c.post("/v1/accounts", json={"currency": "JPY"}, headers={**p.headers, "Idempotency-Key": key})
                for _ in range(8)])  # fmt: skip

    answers = asyncio.run(burst())
    assert {r.status_code for r in answers} <= {201, 409}, [r.text for r in answers]
    opened = {r.json()["account_number"] for r in answers if r.status_code == 201}
    assert len(opened) == 1
    assert len(accounts(gw, p)) == 2


def test_accounts_per_user_are_limited(gw: Env) -> None:
    p = register(gw)
    limit = gw.settings.gateway_max_accounts_per_user
    for _ in range(limit - 1):
        assert open_account(gw, p, "USD").status_code == 201
    refused = open_account(gw, p, "USD")
    assert refused.status_code == 409 and refused.json()["code"] == "too_many_accounts"
    assert len(accounts(gw, p)) == limit
    assert open_account(gw, p, "XYZ").json()["code"] == "unknown_currency"
    with gw.client() as c:
        r = c.post("/v1/accounts", json={"currency": "EUR"}, headers=p.headers)
    assert r.status_code == 400 and r.json()["code"] == "idempotency_key_required"


def deposit_in(env: Env, p: Person, amount: str, currency: str) -> httpx.Response:
    with env.client() as c:
        return c.post(f"/v1/accounts/{p.number}/deposits", json={"amount": amount, "currency": currency},
                      headers={**env.admin_headers, "Idempotency-Key": uuid.uuid4().hex})  # fmt: skip


def test_pay_from_either_account_and_never_across_currencies(gw: Env, reader: EventReader) -> None:
    """A user with a USD and an EUR account pays from each; a transfer between two
    currencies is refused at the gateway, and nothing reaches Kafka."""
    a, b = register(gw), register(gw)
    a_eur = as_person(a, open_account(gw, a, "EUR").json()["account_number"])
    b_eur = as_person(b, open_account(gw, b, "EUR").json()["account_number"])
    wait_opened(gw, reader, a, b, a_eur, b_eur)
    assert deposit(gw, a, "50.00").status_code == 201
    assert deposit_in(gw, a_eur, "80.00", "EUR").status_code == 201
    with gw.client() as c:
        usd = pay(c, a, b, "5.00")
        eur = pay(c, a_eur, b_eur, "7.00", currency="EUR")
        assert usd.status_code == eur.status_code == 201, (usd.text, eur.text)
        assert (eur.json()["from_account"], eur.json()["currency"]) == (a_eur.number, "EUR")
        refused = {
            "receiver in EUR": pay(c, a, b_eur, "1.00"),
            "sender in USD": pay(c, a, b_eur, "1.00", currency="EUR"),
            "sender in EUR": pay(c, a_eur, b, "1.00", currency="EUR"),
        }
    keys = {}
    for what, r in refused.items():
        assert r.status_code == 422 and r.json()["code"] == "currency_mismatch", (what, r.text)
        keys[what] = r.request.headers["Idempotency-Key"]
    # nothing was sent for any of them: no event of their payment ids
    ids = {C.payment_id_for(a.user_id, k) for k in keys.values()}
    drain(reader, 1.5)
    assert not [e for e in reader.events if e["payment_id"] in ids]
    wait_balance(gw, a, "45.00")
    wait_balance(gw, a_eur, "73.00")


def test_one_key_on_payments_from_two_accounts(gw: Env, reader: EventReader) -> None:
    """Keys are scoped to the user, not the account: the same key from another of the
    user's accounts is another request under the same key (422), and an identical
    retry is replayed. The payment id comes from (user, key), so it names one payment."""
    a, b = register(gw), register(gw)
    a2 = as_person(a, open_account(gw, a, "USD").json()["account_number"])
    wait_opened(gw, reader, a, b, a2)
    assert deposit(gw, a, "20.00").status_code == 201
    assert deposit(gw, a2, "20.00").status_code == 201
    key = uuid.uuid4().hex
    with gw.client() as c:
        first = pay(c, a, b, "3.00", key=key)
        assert first.status_code == 201, first.text
        other = pay(c, a2, b, "3.00", key=key)
        assert other.status_code == 422 and other.json()["code"] == "idempotency_key_reused", other.text
        same = pay(c, a, b, "3.00", key=key)
        assert same.status_code == 201 and same.content == first.content
        assert same.headers["Idempotent-Replayed"] == "true"
    assert first.json()["id"] == C.payment_id_for(a.user_id, key)
    wait_balance(gw, a, "17.00")
    wait_balance(gw, a2, "20.00")


def test_a_forgotten_key_reused_from_another_account_moves_nothing(gw: Env, reader: EventReader) -> None:
    """Redis loses the key, and the user reuses it from their other account to another
    receiver: the ledger dedupes ids per account, so neither that sender's partition
    nor that receiver's knows the id. The payment id must still name one payment."""
    a, b, c = register(gw), register(gw), register(gw)
    a2 = as_person(a, open_account(gw, a, "USD").json()["account_number"])
    wait_opened(gw, reader, a, b, c, a2)
    assert deposit(gw, a, "20.00").status_code == 201
    assert deposit(gw, a2, "20.00").status_code == 201
    key = uuid.uuid4().hex
    with gw.client() as client:
        first = pay(client, a, b, "3.00", key=key)
        assert first.status_code == 201, first.text
        pid = first.json()["id"]
        r = redis.Redis.from_url(gw.env["PAYSTREAM_REDIS_URL"])
        gone = [*r.scan_iter(match=f"{gw.prefix}idem:{a.user_id}:*", count=1000), f"{gw.prefix}pay:{pid}"]
        assert r.delete(*gone) >= 2
        wait_balance(gw, b, "3.00")  # the read model has the first payment
        other = pay(client, a2, c, "4.00", key=key)
    assert other.status_code == 422 and other.json()["code"] == "idempotency_key_reused", other.text
    drain(reader, 1.5)
    assert not [e for e in reader.events if e["payment_id"] == pid and e["account_id"] in
                (gw.account_id(a2.number), gw.account_id(c.number))]  # fmt: skip
    wait_balance(gw, a2, "20.00")
    wait_balance(gw, c, "0.00")
