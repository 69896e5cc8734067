"""The gateway end to end: a real `paystream run gateway` child process, the outbox
relay, the ledger and (when it exists) the read-model sink, over real Kafka,
Postgres and Redis.

Isolation on the shared stack: a fresh Postgres database per session (migrated
with 0001 + 0002; the sink's stored offsets are seeded at the current end of
`ledger.events`, so it does not replay other people's history), Redis db 1 under
a per-session key prefix, and the gateway on a free port. Client addresses are
set through X-Forwarded-For (the test gateway trusts 127.0.0.1 as a proxy), so
each test has its own rate-limit bucket.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
import psycopg
import pytest
import redis
from confluent_kafka import TopicPartition

from gateway.idempotency import fingerprint
from gateway.store import open_command_id
from ops.run_cli import COMPONENTS
from paystream import kafka
from paystream.codec import Codec
from paystream.settings import PROJECT_ROOT, Settings
from tests.conftest import Component
from tests.kafka_helpers import EventReader

pytestmark = pytest.mark.integration

TEST_DB = "paystream_gateway_test"
REDIS_DB = 1
PASSWORD = "Correct horse 42"
ADMIN_EMAIL = "root@gateway-test.example"
ADMIN_PASSWORD = "Admin password 42"
PAYMENTS_PER_MINUTE = 40


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Env:
    settings: Settings
    dsn: str
    base: str
    env: dict[str, str]
    prefix: str
    has_sink: bool
    relay: Component
    log_dir: Any
    admin_headers: dict[str, str]

    def client(self, ip: str | None = None) -> httpx.Client:
        headers = {"X-Forwarded-For": ip or _ip()}
        return httpx.Client(base_url=self.base, headers=headers, timeout=30)

    def account_id(self, number: str) -> str:
        with psycopg.connect(self.dsn) as conn:
            row = conn.execute(
                "SELECT account_id FROM gateway_accounts WHERE account_number = %s", (number,)
            ).fetchone()
        assert row is not None
        return str(row[0])


_ip_counter = iter(range(1, 10**6))


def _ip() -> str:
    """A fresh documentation-range address (never contacted; only a header value)."""
    n = next(_ip_counter) + (os.getpid() % 200) * 1000
    return f"198.51.{(n // 250) % 250}.{n % 250 + 1}"


def _create_database(settings: Settings) -> str:
    with psycopg.connect(settings.postgres_dsn, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {TEST_DB} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {TEST_DB}")
    return settings.postgres_dsn.rsplit("/", 1)[0] + f"/{TEST_DB}"


def _seed_sink_offsets(settings: Settings, dsn: str, group: str) -> None:
    c = kafka.consumer(settings, f"gwtest-probe-{uuid.uuid4()}")
    try:
        parts = c.list_topics("ledger.events", timeout=10).topics["ledger.events"].partitions
        highs = {p: c.get_watermark_offsets(TopicPartition("ledger.events", p), timeout=10)[1] for p in parts}
    finally:
        c.close()
    with psycopg.connect(dsn) as conn:
        for p, high in highs.items():
            conn.execute(
                "INSERT INTO sink_offsets (consumer, topic, partition, next_offset)"
                " VALUES (%s, 'ledger.events', %s, %s)",
                (group, p, high),
            )


def _wait_http(base: str, comp: Component, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert comp.proc is not None
        if comp.proc.poll() is not None:
            raise RuntimeError(f"gateway exited:\n{comp.tail()}")
        try:
            if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"gateway not ready:\n{comp.tail()}")


@pytest.fixture(scope="module")
def gw(stack: Settings, ledger: Component, log_dir: Any) -> Iterator[Env]:
    from ops.db import migrate

    dsn = _create_database(stack)
    migrate(Settings(postgres_dsn_override=dsn))
    sink_group = f"paystream-sink-gwtest-{uuid.uuid4().hex[:8]}"  # the sink principal's groups: paystream-sink*
    has_sink = "sink" in COMPONENTS
    if has_sink:
        _seed_sink_offsets(stack, dsn, sink_group)
    port = _free_port()
    prefix = f"gwtest:{uuid.uuid4().hex[:8]}:"
    env = {
        "PAYSTREAM_POSTGRES_DSN": dsn,
        "PAYSTREAM_REDIS_URL": f"{stack.redis_url.rsplit('/', 1)[0]}/{REDIS_DB}",
        "PAYSTREAM_GATEWAY_PORT": str(port),
        "PAYSTREAM_GATEWAY_REDIS_PREFIX": prefix,
        "PAYSTREAM_GATEWAY_TRUSTED_PROXIES": "127.0.0.1/32",
        "PAYSTREAM_SINK_GROUP": sink_group,
        "PAYSTREAM_SINK_METRICS_PORT": str(_free_port()),
        "PAYSTREAM_OUTBOX_POLL_INTERVAL": "0.2",
        "PAYSTREAM_GATEWAY_RATE_PAYMENTS_PER_MINUTE": str(PAYMENTS_PER_MINUTE),
    }
    subprocess.run(
        [
            sys.executable,
            "-m",
            "ops.cli",
            "admin",
            "create-user",
            "--email",
            ADMIN_EMAIL,
            "--role",
            "admin",
        ],
        env={**os.environ, **env, "PAYSTREAM_ADMIN_PASSWORD": ADMIN_PASSWORD},
        cwd=PROJECT_ROOT,
        check=True,
        capture_output=True,
    )
    comps = [
        Component("gateway", log_dir, env).start(),
        Component("outbox-relay", log_dir, env).start(),
    ]
    if has_sink:
        comps.append(Component("sink", log_dir, env).start())
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_http(base, comps[0])
        r = httpx.post(
            f"{base}/v1/auth/login",
            json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD},
            headers={"X-Forwarded-For": _ip()},
        )
        assert r.status_code == 200, r.text
        admin = {"Authorization": f"Bearer {r.json()['access_token']}"}
        yield Env(stack, dsn, base, env, prefix, has_sink, comps[1], log_dir, admin)
    finally:
        for c in comps:
            c.stop()
        r2 = redis.Redis.from_url(env["PAYSTREAM_REDIS_URL"])
        for k in r2.scan_iter(match=f"{prefix}*", count=1000):
            r2.delete(k)
        with psycopg.connect(stack.postgres_dsn, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {TEST_DB} WITH (FORCE)")


@pytest.fixture
def reader(stack: Settings, codec: Codec) -> Iterator[EventReader]:
    r = EventReader(stack, codec)
    yield r
    r.close()


@dataclass
class Person:
    email: str
    number: str
    headers: dict[str, str]
    user_id: str


def register(env: Env, currency: str = "USD") -> Person:
    email = f"u{uuid.uuid4().hex[:10]}@Example.com "
    with env.client() as c:
        r = c.post(
            "/v1/auth/register",
            json={"email": email, "password": PASSWORD, "name": "T", "currency": currency},
        )
        assert r.status_code == 201, r.text
        body = r.json()
        assert body["user"]["email"] == email.strip().lower()
        number = body["account"]["account_number"]
        r = c.post("/v1/auth/login", json={"email": email, "password": PASSWORD})
        assert r.status_code == 200, r.text
    token = r.json()["access_token"]
    return Person(email, number, {"Authorization": f"Bearer {token}"}, body["user"]["id"])


def wait_opened(env: Env, reader: EventReader, *people: Person) -> None:
    ids = {env.account_id(p.number) for p in people}
    reader.terminals([open_command_id(a) for a in ids], timeout=60)


def deposit(env: Env, p: Person, amount: str) -> httpx.Response:
    with env.client() as c:
        return c.post(
            f"/v1/accounts/{p.number}/deposits",
            headers={**env.admin_headers, "Idempotency-Key": uuid.uuid4().hex},
            json={"amount": amount, "currency": "USD"},
        )


def pay(c: httpx.Client, src: Person, dst: Person, amount: str, key: str | None = None, **extra: Any) -> httpx.Response:
    body = {
        "from_account": src.number,
        "to_account": dst.number,
        "amount": amount,
        "currency": "USD",
        **extra,
    }
    return c.post(
        "/v1/payments",
        json=body,
        headers={**src.headers, "Idempotency-Key": key or uuid.uuid4().hex},
    )


def wait_balance(env: Env, p: Person, expected: str, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    with env.client() as c:
        while True:
            acct = c.get(f"/v1/accounts/{p.number}", headers=p.headers).json()
            if acct["balance"] == expected or time.monotonic() > deadline:
                assert acct["balance"] == expected, acct
                return acct
            time.sleep(0.2)


def debits(reader: EventReader, payment_id: str) -> list[dict[str, Any]]:
    return [e for e in reader.events if e["payment_id"] == payment_id and e["type"] == "TRANSFER_DEBITED"]


def drain(reader: EventReader, seconds: float) -> None:
    """Keep reading for a while, to see events that should not exist."""
    end = time.monotonic() + seconds
    reader.poll_until(lambda evs: time.monotonic() > end, timeout=seconds + 5)


# ------------------------------------------------------------------------------ tests


def test_register_deposit_pay_history(gw: Env, reader: EventReader) -> None:
    a, b = register(gw), register(gw)
    with gw.client() as c:
        assert c.get(f"/v1/accounts/{a.number}", headers=a.headers).json()["status"] in (
            "opening",
            "active",
        )
    wait_opened(gw, reader, a, b)
    r = deposit(gw, a, "1000.00")
    assert r.status_code == 201, r.text
    assert r.json()["status"] == "completed" and r.json()["to_account"] == a.number
    with gw.client() as c:
        r = pay(c, a, b, "250.50", description="rent")
        assert r.status_code == 201, r.text
        payment = r.json()
        assert payment["status"] == "completed" and payment["amount"] == "250.50"
        assert payment["from_account"] == a.number and payment["to_account"] == b.number
        assert set(payment) >= {"id", "created_at", "currency", "description"}
        assert c.get(f"/v1/payments/{payment['id']}", headers=a.headers).json()["status"] == "completed"
        assert c.get(f"/v1/payments/{payment['id']}", headers=b.headers).status_code == 200
        me = c.get("/v1/me", headers=a.headers).json()
        assert me["email"] == a.email.strip().lower() and me["role"] == "user"
        mine = c.get("/v1/accounts", headers=a.headers).json()
        assert [x["account_number"] for x in mine["data"]] == [a.number]
        text = json.dumps(mine) + json.dumps(payment)
        assert gw.account_id(a.number) not in text and gw.account_id(b.number) not in text
    if not gw.has_sink:
        pytest.skip("read-model sink not available: balance and history checks skipped")
    acct = wait_balance(gw, a, "749.50")
    assert acct["status"] == "active" and acct["currency"] == "USD"
    wait_balance(gw, b, "250.50")
    with gw.client() as c:
        page1 = c.get(f"/v1/accounts/{a.number}/transactions?limit=1", headers=a.headers).json()
        assert page1["has_more"] is True and len(page1["data"]) == 1
        debit = page1["data"][0]
        assert debit["amount"] == "-250.50" and debit["balance_after"] == "749.50"
        assert debit["counterparty"] == b.number and debit["payment_id"] == payment["id"]
        page2 = c.get(
            f"/v1/accounts/{a.number}/transactions",
            params={"limit": 5, "starting_after": debit["id"]},
            headers=a.headers,
        ).json()
        assert page2["has_more"] is False
        assert [t["amount"] for t in page2["data"]] == ["1000.00"]
        listed = c.get("/v1/payments", headers=b.headers).json()
        assert payment["id"] in [x["id"] for x in listed["data"]]
        # a cursor must be one of the caller's own payments: someone else's payment id
        # answers exactly like an unknown one (no oracle for ids and their times)
        assert c.get("/v1/payments", params={"starting_after": payment["id"]}, headers=b.headers).status_code == 200
        outsider = register(gw)
        foreign = c.get("/v1/payments", params={"starting_after": payment["id"]}, headers=outsider.headers)
        unknown = c.get("/v1/payments", params={"starting_after": str(uuid.uuid4())}, headers=outsider.headers)
        assert foreign.status_code == unknown.status_code == 400
        assert foreign.json() == unknown.json() and foreign.json()["code"] == "invalid_cursor"


def test_a_client_told_completed_reads_it_next(gw: Env, reader: EventReader) -> None:
    """Issue: right after `201 completed` the sender's balance was the old one (5 of 5
    tries; the new one appeared 24-136 ms later). Reads now wait for the read model to
    show what the caller was told (gateway/reads.py)."""
    if not gw.has_sink:
        pytest.skip("needs the sink")
    a, b = register(gw), register(gw)
    wait_opened(gw, reader, a, b)
    assert deposit(gw, a, "100.00").status_code == 201
    wait_balance(gw, a, "100.00")
    with gw.client() as c:
        for i in range(1, 6):
            r = pay(c, a, b, "1.50", key=uuid.uuid4().hex)
            assert r.status_code == 201, r.text
            acct = c.get(f"/v1/accounts/{a.number}", headers=a.headers)
            left = "{}.{:02d}".format(*divmod(10_000 - 150 * i, 100))
            assert acct.status_code == 200 and acct.json()["balance"] == left, acct.text
            listed = c.get("/v1/payments", headers=a.headers).json()["data"]
            assert (listed[0]["id"], listed[0]["status"]) == (r.json()["id"], "completed")
            history = c.get(f"/v1/accounts/{a.number}/transactions", headers=a.headers).json()["data"]
            assert history[0]["payment_id"] == r.json()["id"]


def test_concurrent_identical_requests_make_one_payment(gw: Env, reader: EventReader) -> None:
    a, b = register(gw), register(gw)
    wait_opened(gw, reader, a, b)
    assert deposit(gw, a, "100.00").status_code == 201
    key = uuid.uuid4().hex

    async def burst() -> list[httpx.Response]:
        body = {
            "from_account": a.number,
            "to_account": b.number,
            "amount": "10.00",
            "currency": "USD",
        }
        async with httpx.AsyncClient(base_url=gw.base, timeout=30, headers={"X-Forwarded-For": _ip()}) as c:
            return await asyncio.gather(
                *[c.post("/v1/payments", json=body, headers={**a.headers, "Idempotency-Key": key}) for _ in range(10)]
            )

    responses = asyncio.run(burst())
    codes = sorted(r.status_code for r in responses)
    assert set(codes) <= {201, 409}, [(r.status_code, r.text) for r in responses]
    assert 201 in codes
    for r in responses:
        if r.status_code == 409:
            assert r.headers["content-type"].startswith("application/problem+json")
            assert r.json()["code"] == "request_in_progress" and int(r.headers["Retry-After"]) >= 1
    with gw.client() as c:  # after it finished: an identical replay
        again = pay(c, a, b, "10.00", key=key)
    assert again.status_code == 201 and again.headers["Idempotent-Replayed"] == "true"
    first = next(r for r in responses if r.status_code == 201)
    assert again.content == first.content
    pid = first.json()["id"]
    reader.terminals([pid])
    drain(reader, 1.5)
    assert len(debits(reader, pid)) == 1


def test_reused_key_with_other_body_is_422(gw: Env, reader: EventReader) -> None:
    a, b = register(gw), register(gw)
    wait_opened(gw, reader, a, b)
    assert deposit(gw, a, "50.00").status_code == 201
    key = uuid.uuid4().hex
    with gw.client() as c:
        assert pay(c, a, b, "5.00", key=key).status_code == 201
        r = pay(c, a, b, "6.00", key=key)
    assert r.status_code == 422 and r.json()["code"] == "idempotency_key_reused"


def test_a_retry_behind_a_holder_that_is_gone_gets_the_first_answer(gw: Env, reader: EventReader) -> None:
    """The key is locked by a request that will never finish it (its gateway died after
    sending, or Redis came back with the claim but not the answer): once the payment's
    outcome is final, a retry gets that answer, not 409 until the lock deadline. This
    is the race `paystream chaos` saw as "re-send after key loss answered differently"."""
    a, b = register(gw), register(gw)
    wait_opened(gw, reader, a, b)
    assert deposit(gw, a, "100.00").status_code == 201
    key = uuid.uuid4().hex
    r = redis.Redis.from_url(gw.env["PAYSTREAM_REDIS_URL"])
    idem_key = f"{gw.prefix}idem:{a.user_id}:payments:{hashlib.blake2b(key.encode(), digest_size=16).hexdigest()}"

    def held_by_a_ghost() -> None:
        lock_until = int(time.time() * 1000) + 30_000
        r.hset(idem_key, mapping={"state": "accepted", "token": "gone", "lock_until": lock_until, "sent": "1"})
        r.hdel(idem_key, "status", "body", "headers")

    with gw.client() as c:
        first = pay(c, a, b, "30.00", key=key)
        assert first.status_code == 201, first.text
        assert r.hget(idem_key, "state") == b"done"
        held_by_a_ghost()
        again = pay(c, a, b, "30.00", key=key)
        assert again.status_code == 201, again.text
        assert again.json()["id"] == first.json()["id"] and again.json()["status"] == "completed"
        assert r.hget(idem_key, "state") == b"done"  # and the key remembers it again
        if gw.has_sink:
            # the payment record is gone too: the read model has the outcome
            wait_balance(gw, a, "70.00")
            held_by_a_ghost()
            r.delete(f"{gw.prefix}pay:{first.json()['id']}")
            third = pay(c, a, b, "30.00", key=key)
            assert third.status_code == 201 and third.json()["status"] == "completed", third.text
            # Redis lost the key, another body under it is being held: the read model's
            # payment is not this request's, so the answer is 422, never the other's 201
            held_by_a_ghost()
            r.delete(f"{gw.prefix}pay:{first.json()['id']}")
            other_fp = fingerprint(
                {"from": a.number, "to": b.number, "amount": 3100, "currency": "USD", "description": None}
            )
            r.hset(idem_key, "fp", other_fp)
            other = pay(c, a, b, "31.00", key=key)
            assert other.status_code == 422 and other.json()["code"] == "idempotency_key_reused", other.text
    pid = first.json()["id"]
    reader.poll_until(lambda evs: any(e["payment_id"] == pid and e["type"] == "TRANSFER_COMPLETED" for e in evs))
    drain(reader, 1.0)
    assert len(debits(reader, pid)) == 1


def test_forgotten_key_still_pays_once(gw: Env, reader: EventReader) -> None:
    """Redis loses the key between two tries: the deterministic payment id makes the
    ledger answer the second send with COMMAND_DUPLICATE, and nothing moves twice."""
    a, b = register(gw), register(gw)
    wait_opened(gw, reader, a, b)
    assert deposit(gw, a, "100.00").status_code == 201
    key = uuid.uuid4().hex
    with gw.client() as c:
        first = pay(c, a, b, "30.00", key=key)
        assert first.status_code == 201, first.text
        r = redis.Redis.from_url(gw.env["PAYSTREAM_REDIS_URL"])
        gone = [k for k in r.scan_iter(match=f"{gw.prefix}*{a.user_id}*", count=1000)]
        gone += [f"{gw.prefix}pay:{first.json()['id']}".encode()]
        assert r.delete(*gone) >= 2
        second = pay(
            c,
            a,
            b,
            "30.00",
            key=key,
        )
    assert second.status_code in (201, 202), second.text
    assert second.json()["id"] == first.json()["id"]
    if gw.has_sink:
        assert second.status_code == 201 and second.json()["status"] == "completed"
    pid = first.json()["id"]
    reader.poll_until(lambda evs: any(e["payment_id"] == pid and e["replay"] for e in evs))
    assert len(debits(reader, pid)) == 1
    dup = [e for e in reader.events if e["payment_id"] == pid and e["replay"]]
    assert [e["type"] for e in dup] == ["COMMAND_DUPLICATE"]
    if gw.has_sink:
        wait_balance(gw, a, "70.00")
    # forgotten again, and this time the body differs: the ledger refuses the reused
    # id, the client gets 422, and the payment keeps its real amount
    r = redis.Redis.from_url(gw.env["PAYSTREAM_REDIS_URL"])
    r.delete(*[k for k in r.scan_iter(match=f"{gw.prefix}*{a.user_id}*", count=1000)])
    with gw.client() as c:
        third = pay(c, a, b, "31.00", key=key)
        assert third.status_code == 422 and third.json()["code"] == "idempotency_key_reused", third.text
        again = pay(c, a, b, "31.00", key=key)
        assert again.status_code == 422 and again.headers.get("Idempotent-Replayed") == "true"
        if gw.has_sink:
            shown = c.get(f"/v1/payments/{pid}", headers=a.headers).json()
            assert (shown["amount"], shown["status"]) == ("30.00", "completed")
    assert len(debits(reader, pid)) == 1


def test_overdraft_race_over_http(gw: Env, reader: EventReader) -> None:
    a, b = register(gw), register(gw)
    wait_opened(gw, reader, a, b)
    assert deposit(gw, a, "1000.00").status_code == 201

    async def race() -> list[httpx.Response]:
        body = {
            "from_account": a.number,
            "to_account": b.number,
            "amount": "800.00",
            "currency": "USD",
        }
        async with httpx.AsyncClient(base_url=gw.base, timeout=30, headers={"X-Forwarded-For": _ip()}) as c:
            return await asyncio.gather(
                *[
                    c.post(
                        "/v1/payments",
                        json=body,
                        headers={
                            **a.headers,
                            "Idempotency-Key": uuid.uuid4().hex,
                            "Prefer": "wait=20",
                        },
                    )
                    for _ in range(20)
                ]
            )

    responses = asyncio.run(race())
    codes = [r.status_code for r in responses]
    assert codes.count(201) == 1 and codes.count(402) == 19, [(r.status_code, r.text) for r in responses]
    refused = [r.json() for r in responses if r.status_code == 402]
    assert {p["code"] for p in refused} == {"insufficient_funds"}
    assert all(p["payment"]["status"] == "rejected" for p in refused)
    if gw.has_sink:
        wait_balance(gw, a, "200.00")
        wait_balance(gw, b, "800.00")


def _token(settings: Settings, **claims: Any) -> str:
    now = int(time.time())
    base = {
        "sub": str(uuid.uuid4()),
        "role": "user",
        "iss": settings.jwt_issuer,
        "iat": now,
        "exp": now + 600,
        "jti": str(uuid.uuid4()),
    }
    return jwt.encode({**base, **claims}, settings.jwt_key(), algorithm="HS256")


def _alg_none(claims: dict[str, Any]) -> str:
    def enc(d: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()

    return f"{enc({'alg': 'none', 'typ': 'JWT'})}.{enc(claims)}."


def test_hostile_requests_get_problems_and_post_nothing(gw: Env, reader: EventReader) -> None:
    a, b, other = register(gw), register(gw), register(gw)
    wait_opened(gw, reader, a, b, other)
    assert deposit(gw, a, "100.00").status_code == 201
    assert deposit(gw, other, "100.00").status_code == 201
    s = gw.settings
    now = int(time.time())
    a_claims = {
        "sub": a.user_id,
        "role": "user",
        "iss": s.jwt_issuer,
        "iat": now,
        "exp": now + 600,
        "jti": str(uuid.uuid4()),
    }
    tampered = a.headers["Authorization"][:-3] + ("AAA" if not a.headers["Authorization"].endswith("AAA") else "BBB")
    bad_tokens = {
        "tampered": tampered,
        "expired": "Bearer " + _token(s, sub=a.user_id, iat=now - 7200, exp=now - 3600),
        "alg_none": "Bearer " + _alg_none(a_claims),
        "unknown_role": "Bearer " + _token(s, sub=a.user_id, role="superuser"),
        "other_key": "Bearer " + jwt.encode(a_claims, "not-the-key-" * 4, algorithm="HS256"),
        "wrong_scheme": "Basic " + base64.b64encode(b"a:b").decode(),
    }
    body = {"from_account": a.number, "to_account": b.number, "amount": "1.00", "currency": "USD"}
    with gw.client() as c:
        for name, auth in bad_tokens.items():
            r = c.post("/v1/payments", json=body, headers={"Authorization": auth, "Idempotency-Key": name})
            assert r.status_code == 401, (name, r.text)
            assert r.headers["content-type"].startswith("application/problem+json")
            assert r.json()["code"] in ("invalid_token", "token_expired", "unauthorized"), name
        assert c.get("/v1/me", headers={"Authorization": bad_tokens["expired"]}).json()["code"] == "token_expired"
        # identity only from the token: forged identity headers change nothing
        forged = {
            "X-User-Id": other.user_id,
            "X-User-Role": "admin",
            "X-Forwarded-User": other.email.strip(),
        }
        assert c.get("/v1/me", headers=forged).status_code == 401
        me = c.get("/v1/me", headers={**a.headers, **forged}).json()
        assert me["id"] == a.user_id and me["role"] == "user"
        r = c.post(
            f"/v1/accounts/{a.number}/deposits",
            json={"amount": "5.00", "currency": "USD"},
            headers={**a.headers, **forged, "Idempotency-Key": "x"},
        )
        assert r.status_code == 403 and r.json()["code"] == "forbidden"
        # someone else's account looks exactly like a missing one
        missing = "PS0000000000"
        r1 = c.get(f"/v1/accounts/{other.number}", headers=a.headers)
        r2 = c.get(f"/v1/accounts/{missing}", headers=a.headers)
        assert r1.status_code == r2.status_code == 404 and r1.json() == r2.json()
        assert c.get(f"/v1/accounts/{other.number}/transactions", headers=a.headers).status_code == 404
        steal = {**body, "from_account": other.number}
        r = c.post("/v1/payments", json=steal, headers={**a.headers, "Idempotency-Key": "steal"})
        assert r.status_code == 404 and r.json()["code"] == "account_not_found"
        # money and body validation
        cases: list[tuple[Any, int, str]] = [
            ({**body, "amount": 1.5}, 422, "amount_not_a_string"),
            ({**body, "amount": 1}, 422, "amount_not_a_string"),
            ({**body, "amount": "1.001"}, 422, "too_many_decimals"),
            ({**body, "amount": "-5.00"}, 422, "non_positive_amount"),
            ({**body, "amount": "0.00"}, 422, "non_positive_amount"),
            ({**body, "amount": "99999999999999999999"}, 422, "amount_too_large"),
            ({**body, "amount": "1e3"}, 422, "invalid_amount"),
            ({**body, "amount": " 1.00"}, 422, "invalid_amount"),
            ({**body, "amount": "1.00\n"}, 422, "invalid_amount"),
            ({**body, "amount": "\t1.00"}, 422, "invalid_amount"),
            ({**body, "currency": "XXX"}, 422, "unknown_currency"),
            ({**body, "currency": "EUR"}, 422, "currency_mismatch"),
            ({**body, "to_account": "PS1234567890"}, 422, "invalid_account_number"),
            ({**body, "to_account": a.number}, 422, "same_account"),
            ({**body, "extra": 1}, 422, "validation_error"),
        ]
        for i, (payload, status, code) in enumerate(cases):
            r = c.post("/v1/payments", json=payload, headers={**a.headers, "Idempotency-Key": f"v{i}"})
            assert (r.status_code, r.json()["code"]) == (status, code), (payload, r.text)
            assert r.headers["content-type"].startswith("application/problem+json")
            assert {"type", "title", "status", "detail", "code"} <= set(r.json())
        raw = {**a.headers, "Idempotency-Key": "raw", "Content-Type": "application/json"}
        r = c.post("/v1/payments", content=b'{"from_account": "PS', headers=raw)
        assert (r.status_code, r.json()["code"]) == (400, "malformed_json")
        r = c.post("/v1/payments", content=b'{"a": "' + b"x" * 20_000 + b'"}', headers=raw)
        assert (r.status_code, r.json()["code"]) == (413, "body_too_large")
        r = c.post("/v1/payments", json=body, headers=a.headers)
        assert (r.status_code, r.json()["code"]) == (400, "idempotency_key_required")
        marker = pay(c, a, b, "0.01")
        assert marker.status_code == 201, marker.text
        # a payment is visible to its two parties only, and looks like a missing one otherwise
        pid = marker.json()["id"]
        assert c.get(f"/v1/payments/{pid}", headers=b.headers).status_code == 200
        hidden = c.get(f"/v1/payments/{pid}", headers=other.headers)
        missing_payment = c.get(f"/v1/payments/{uuid.uuid4()}", headers=other.headers)
        assert hidden.status_code == missing_payment.status_code == 404
        assert hidden.json() == missing_payment.json()
    reader.terminals([marker.json()["id"]])
    a_id = gw.account_id(a.number)
    moved = [e for e in reader.events if e["account_id"] == a_id and e["type"] == "TRANSFER_DEBITED"]
    assert [e["payment_id"] for e in moved] == [marker.json()["id"]]
    assert not [
        e for e in reader.events if e["account_id"] == gw.account_id(other.number) and e["type"] == "TRANSFER_DEBITED"
    ]


def test_register_and_login_rules(gw: Env) -> None:
    ip = _ip()
    with gw.client(ip) as c:
        weak = c.post(
            "/v1/auth/register",
            json={"email": "w@example.com", "password": "short", "name": "W", "currency": "USD"},
        )
        assert weak.status_code == 422 and weak.json()["code"] == "weak_password"
        assert "short" not in weak.text
        one_class = c.post(
            "/v1/auth/register",
            json={"email": "w@example.com", "password": "a" * 20, "name": "W", "currency": "USD"},
        )
        assert one_class.json()["code"] == "weak_password"
    p = register(gw)
    with gw.client() as c:
        dup = c.post(
            "/v1/auth/register",
            json={"email": p.email.upper(), "password": PASSWORD, "name": "D", "currency": "USD"},
        )
        assert dup.status_code == 409 and dup.json()["code"] == "email_taken"
    with gw.client() as c:
        wrong = c.post("/v1/auth/login", json={"email": p.email, "password": PASSWORD + "x"})
        unknown = c.post("/v1/auth/login", json={"email": "nobody@example.com", "password": PASSWORD})
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json()
    token = register(gw).headers["Authorization"].split()[1]
    claims = jwt.decode(token, options={"verify_signature": False})
    assert {"sub", "role", "exp", "iat", "jti"} <= set(claims)
    assert claims["exp"] - claims["iat"] == gw.settings.jwt_ttl_seconds


def test_rate_limits(gw: Env) -> None:
    ip = _ip()
    with gw.client(ip) as c:
        codes = [
            c.post("/v1/auth/login", json={"email": "x@example.com", "password": "nope"}).status_code for _ in range(6)
        ]
        assert codes == [401] * 5 + [429]
        limited = c.post("/v1/auth/login", json={"email": "x@example.com", "password": "nope"})
        assert limited.json()["code"] == "rate_limited" and int(limited.headers["Retry-After"]) >= 1
    with gw.client(_ip()) as c:
        codes = [
            c.post(
                "/v1/auth/register",
                json={
                    "email": f"r{uuid.uuid4().hex[:8]}@example.com",
                    "password": PASSWORD,
                    "name": "R",
                    "currency": "USD",
                },
            ).status_code
            for _ in range(4)
        ]
    assert codes == [201, 201, 201, 429]
    # a spoofed X-Forwarded-For chain is read from the right: the left-most entry,
    # written by the client, does not buy a fresh bucket
    # (a fresh email per attempt, so only the per-IP limit can answer 429)
    with httpx.Client(base_url=gw.base, timeout=30) as c:
        fixed = _ip()
        codes = [
            c.post(
                "/v1/auth/login",
                json={"email": f"s{uuid.uuid4().hex[:8]}@example.com", "password": "nope"},
                headers={"X-Forwarded-For": f"203.0.113.{i}, {fixed}"},
            ).status_code
            for i in range(6)
        ]
    assert codes == [401] * 5 + [429]


def test_login_locks_the_account_out_whatever_the_address(gw: Env) -> None:
    """Guessing one account's password from many addresses: after
    `gateway_login_lockout_after` (5) failures the email is locked out, even for
    the right password and from a fresh address; other accounts are not."""
    victim, bystander = register(gw), register(gw)
    codes = []
    for _ in range(7):
        with gw.client(_ip()) as c:  # a fresh address each time: the per-IP limit never trips
            codes.append(c.post("/v1/auth/login", json={"email": victim.email, "password": "wrong-" + PASSWORD}))
    assert [r.status_code for r in codes] == [401] * 5 + [429] * 2
    locked = codes[-1]
    assert locked.json()["code"] == "rate_limited"
    assert locked.headers["content-type"].startswith("application/problem+json")
    assert 1 <= int(locked.headers["Retry-After"]) <= 30
    with gw.client(_ip()) as c:
        right = c.post("/v1/auth/login", json={"email": victim.email.upper(), "password": PASSWORD})
        assert right.status_code == 429 and right.json()["code"] == "rate_limited"
        # an unknown email locks out the same way: a lockout does not reveal who is registered
        ghost = f"ghost{uuid.uuid4().hex[:8]}@example.com"
    ghost_codes = []
    for _ in range(6):
        with gw.client(_ip()) as c:
            ghost_codes.append(c.post("/v1/auth/login", json={"email": ghost, "password": PASSWORD}).status_code)
    assert ghost_codes == [401] * 5 + [429]
    with gw.client(_ip()) as c:
        ok = c.post("/v1/auth/login", json={"email": bystander.email, "password": PASSWORD})
        assert ok.status_code == 200, ok.text


def test_ipv6_clients_share_a_bucket_per_64(gw: Env) -> None:
    """An IPv6 client holds a whole /64; new addresses in it are not new buckets."""
    a, b = os.getpid() % 65536, next(_ip_counter) % 65535
    prefix = f"2001:db8:{a:x}:{b:x}"
    with httpx.Client(base_url=gw.base, timeout=30) as c:
        codes = [
            c.post(
                "/v1/auth/login",
                json={"email": f"v{uuid.uuid4().hex[:8]}@example.com", "password": "nope"},
                headers={"X-Forwarded-For": f"{prefix}:{i:x}:{i:x}:{i:x}:{i + 1:x}"},
            ).status_code
            for i in range(6)
        ]
        assert codes == [401] * 5 + [429]
        other = c.post(
            "/v1/auth/login",
            json={"email": f"v{uuid.uuid4().hex[:8]}@example.com", "password": "nope"},
            headers={"X-Forwarded-For": f"2001:db8:{a:x}:{b + 1:x}::1"},
        )
        assert other.status_code == 401  # the next /64 is another client


def test_payment_rate_limit_per_user(gw: Env) -> None:
    a, b = register(gw), register(gw)

    async def flood() -> list[httpx.Response]:
        body = {"from_account": a.number, "to_account": b.number, "amount": "1.00", "currency": "USD"}
        async with httpx.AsyncClient(base_url=gw.base, timeout=30) as c:
            return await asyncio.gather(
                *[
                    c.post(
                        "/v1/payments",
                        json=body,
                        headers={
                            **a.headers,
                            "Idempotency-Key": uuid.uuid4().hex,
                            "Prefer": "wait=0",
                            "X-Forwarded-For": _ip(),
                        },
                    )
                    for _ in range(PAYMENTS_PER_MINUTE + 5)
                ]
            )

    responses = asyncio.run(flood())
    limited = [r for r in responses if r.status_code == 429]
    assert 5 <= len(limited) <= 10, sorted(r.status_code for r in responses)
    assert all(r.json()["code"] == "rate_limited" and int(r.headers["Retry-After"]) >= 1 for r in limited)
    with gw.client() as c:  # another user is not affected
        assert pay(c, b, a, "1.00").status_code in (201, 402)


def test_two_relays_publish_each_row_once(gw: Env, reader: EventReader, log_dir: Any) -> None:
    second = Component("outbox-relay", log_dir, gw.env).start()
    try:
        people = [register(gw) for _ in range(6)]
        ids = [gw.account_id(p.number) for p in people]
        opens = {open_command_id(a) for a in ids}
        reader.terminals(opens, timeout=60)
        drain(reader, 1.0)
    finally:
        second.stop()
    assert not [e for e in reader.events if e["command_id"] in opens and e["replay"]]


def test_outbox_relay_killed_between_insert_and_publish(gw: Env, reader: EventReader) -> None:
    """The relay dies after Kafka acknowledged the OpenAccount but before the row was
    marked: the restarted relay publishes it again and the ledger opens one account."""
    gw.relay.kill9()
    p = register(gw)
    account_id = gw.account_id(p.number)
    with psycopg.connect(gw.dsn) as conn:
        pending = conn.execute(
            "SELECT count(*) FROM gateway_outbox WHERE message_key = %s AND published_at IS NULL",
            (account_id,),
        ).fetchone()
    assert pending == (1,)
    crashing = Component("outbox-relay", gw.log_dir, {**gw.env, "PAYSTREAM_OUTBOX_FAULT": "crash_after_publish"})
    crashing.start()
    assert crashing.proc is not None
    assert crashing.proc.wait(60) == -9, crashing.tail()
    with psycopg.connect(gw.dsn) as conn:
        row = conn.execute("SELECT published_at FROM gateway_outbox WHERE message_key = %s", (account_id,)).fetchone()
    assert row is not None and row[0] is None
    gw.relay.start()
    cid = open_command_id(account_id)
    reader.poll_until(lambda evs: sum(1 for e in evs if e["command_id"] == cid) >= 2, timeout=60)
    mine = [e for e in reader.events if e["command_id"] == cid]
    assert sorted(e["type"] for e in mine) == ["ACCOUNT_OPENED", "COMMAND_DUPLICATE"]
    deadline = time.monotonic() + 30
    while True:
        with psycopg.connect(gw.dsn) as conn:
            row = conn.execute(
                "SELECT published_at FROM gateway_outbox WHERE message_key = %s", (account_id,)
            ).fetchone()
        if row and row[0] is not None:
            break
        assert time.monotonic() < deadline, "restarted relay did not mark the row"
        time.sleep(0.2)
    assert deposit(gw, p, "1.00").status_code == 201


def test_openapi_fuzz_has_no_server_errors(gw: Env) -> None:
    """schemathesis against /openapi.json with a real user's token: whatever it
    generates, the answer is never a 5xx."""
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings
    from schemathesis import GenerationMode

    p = register(gw)
    schema = schemathesis.openapi.from_url(f"{gw.base}/openapi.json")
    failures: list[str] = []
    calls = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @settings(
                max_examples=6,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy(generation_mode=mode))
            def check(case: Any) -> None:
                nonlocal calls
                headers = {**p.headers, "X-Forwarded-For": _ip()}
                response = case.call(base_url=gw.base, headers=headers, timeout=30)
                calls += 1
                if response.status_code >= 500:
                    failures.append(
                        f"{case.method} {case.formatted_path} -> {response.status_code} {response.text[:200]}"
                    )

            check()
    assert calls > 50
    assert not failures, failures


def _bench_http(gw: Env, *args: str) -> subprocess.CompletedProcess[str]:
    """`paystream bench http`, tiny (4 clients, 8 payers), against the test's gateway."""
    return subprocess.run(
        [sys.executable, "-m", "ops.cli", "bench", "http", "--clients", "4", "--users", "8", "--merchants", "4",
         "--procs", "1", "--warmup", "0", "--base-url", gw.base, *args],
        env={**os.environ, **gw.env}, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=180,
    )  # fmt: skip


def test_bench_http_smoke(gw: Env) -> None:
    """`paystream bench http` runs end to end (tiny: the real run is manual) and fails
    loudly when requests do not end as asked: this gateway allows each user 40
    payments a minute, far below what 4 clients send, so most requests are 429s. A
    bench that reported them as a rate is what the issue found (a completed phase of
    frozen accounts measured as 0.0 req/s)."""
    out = _bench_http(gw, "--seconds", "1")
    assert "accepted:" in out.stdout and "completed:" in out.stdout, out.stdout + out.stderr
    assert out.returncode == 1, out.stdout + out.stderr
    assert "bench http failed" in out.stdout and "429 rate_limited" in out.stdout, out.stdout


def test_bench_http_rate_offers_an_open_loop_load(gw: Env) -> None:
    """`--rate` sends on a schedule, not as fast as answers come back: 4 clients at 8
    payments/s over 2 s offer about 16 requests, where the closed loop sends hundreds."""
    out = _bench_http(gw, "--seconds", "2", "--phases", "accepted", "--rate", "8")
    assert out.returncode == 0, out.stdout + out.stderr
    found = re.search(r"statuses \{202: (\d+)\}", out.stdout)
    assert found is not None, out.stdout
    assert 8 <= int(found.group(1)) <= 24, out.stdout


def test_resp_client_pipelines_and_recovers(stack: Settings) -> None:
    from redis.exceptions import ConnectionError as RedisConnectionError

    from gateway.resp import RespClient, Script

    url = f"{stack.redis_url.rsplit('/', 1)[0]}/{REDIS_DB}"
    key = f"gwtest:resp:{uuid.uuid4().hex}"

    async def go() -> None:
        c = RespClient(url)
        script = Script(f"-- {uuid.uuid4()}\nreturn ARGV[1]")
        assert await c.evalsha(script, [], ["x"]) == b"x"  # NOSCRIPT, then EVAL
        assert await c.evalsha(script, [], ["y"]) == b"y"
        got = await asyncio.gather(*(c.execute("INCR", key) for _ in range(300)))
        assert sorted(got) == list(range(1, 301))  # replies matched to requests in order
        assert c._proto is not None and c._proto.transport is not None
        c._proto.transport.close()
        await asyncio.sleep(0.05)
        assert await c.execute("PING") == b"PONG"  # reconnected
        assert await c.execute("DEL", key) == 1
        await c.close()
        with pytest.raises(RedisConnectionError):
            await RespClient("redis://127.0.0.1:1/0", timeout=2).execute("PING")

    asyncio.run(go())


def test_login_guard_locks_out_exponentially(stack: Settings) -> None:
    from gateway.idempotency import LoginGuard
    from gateway.resp import RespClient

    async def go() -> None:
        redis = RespClient(f"{stack.redis_url.rsplit('/', 1)[0]}/{REDIS_DB}")
        guard = LoginGuard(redis, f"gwtest:{uuid.uuid4().hex[:8]}:", threshold=3, base_seconds=1,
                           max_seconds=2, reset_seconds=60)
        email = "lock@example.com"
        assert [await guard.attempt(email) for _ in range(3)] == [None, None, None]
        assert await guard.attempt(email) == 1  # the third failure locked it for 1 s
        await asyncio.sleep(1.1)
        assert await guard.attempt(email) is None  # the fourth attempt: locked for 2 s
        assert await guard.attempt(email) == 2
        await asyncio.sleep(2.1)
        assert await guard.attempt(email) is None  # the fifth: capped at 2 s
        assert await guard.attempt(email) == 2
        assert await guard.attempt("other@example.com") is None
        await guard.succeeded(email)  # a correct password clears it
        assert await guard.attempt(email) is None
        await redis.execute("DEL", guard.key(email), guard.key("other@example.com"))
        await redis.close()

    asyncio.run(go())


def test_a_request_waiting_for_the_ledger_still_holds_its_key(stack: Settings) -> None:
    """gateway/README.md: a request still running answers 409. Running includes
    waiting for the ledger after the command was sent; only once the holder answered
    (202 or 503) does a retry take over and wait for the outcome itself."""
    from gateway.idempotency import IdempotencyStore
    from gateway.resp import RespClient

    async def go() -> None:
        redis = RespClient(f"{stack.redis_url.rsplit('/', 1)[0]}/{REDIS_DB}")
        idem = IdempotencyStore(redis, f"gwtest:{uuid.uuid4().hex[:8]}:", ttl_seconds=60, lock_seconds=30)
        key = idem.key("user", "payments", uuid.uuid4().hex)
        assert (await idem.claim(key, "fp", "first")).kind == "new"
        assert (await idem.claim(key, "fp", "second")).kind == "busy"  # not sent yet
        await idem.accepted(key, "first")  # sent; the first request now waits for the ledger
        busy = await idem.claim(key, "fp", "second")
        assert busy.kind == "busy" and busy.retry_after >= 1
        await idem.unlock(key, "second")  # only the holder can let go
        assert (await idem.claim(key, "fp", "third")).kind == "busy"
        await idem.unlock(key, "first")  # the first answered 202
        resumed = await idem.claim(key, "fp", "fourth")
        assert resumed.kind == "resume" and resumed.sent
        await redis.execute("DEL", key)
        await redis.close()

    asyncio.run(go())


def test_failed_send_releases_the_key(stack: Settings) -> None:
    """Kafka refuses the command: 503, and the key is free for the retry (nothing was
    sent, so nothing can be replayed)."""
    from gateway.errors import LedgerUnavailable
    from gateway.ledger_io import SendError
    from gateway.movements import Movement
    from gateway.service import Gateway
    from gateway.store import AccountRef

    settings = Settings(
        redis_url_override=f"{stack.redis_url.rsplit('/', 1)[0]}/{REDIS_DB}",
        gateway_redis_prefix=f"gwtest:{uuid.uuid4().hex[:8]}:",
    )

    class Refusing:
        sent = 0

        async def send(self, cmd: dict[str, Any]) -> None:
            self.sent += 1
            raise SendError("broker down")

    async def go() -> None:
        refusing = Refusing()
        gw = Gateway(settings, sender=refusing)  # type: ignore[arg-type]
        user, key = str(uuid.uuid4()), uuid.uuid4().hex
        src = AccountRef("PS1", str(uuid.uuid4()), user, "USD")
        dst = AccountRef("PS2", str(uuid.uuid4()), str(uuid.uuid4()), "USD")
        move = Movement("transfer", user, key, 100, "USD", None, source=src, target=dst)
        for _ in range(2):  # the second try is not "in progress": the key was released
            with pytest.raises(LedgerUnavailable) as exc:
                await gw.submit(move, wait=0)
            assert (exc.value.status, exc.value.code, exc.value.retry_after) == (503, "ledger_unavailable", 1)
        assert refusing.sent == 2
        assert await gw.redis.execute("EXISTS", gw.idem.key(user, "payments", key)) == 0
        await gw.redis.close()

    asyncio.run(go())


def test_readyz_keeps_traffic_away_until_the_listener_caught_up(api: Any) -> None:
    """Liveness (/healthz) answers 200 whatever the listener's state; readiness
    (/readyz, Kubernetes' readiness probe in the chart) is 503 until the outcome
    listener has caught up, since a payment sent before could not get its outcome."""
    listener = api.app.state.gw.listener
    deadline = time.monotonic() + 60
    while not listener.ready.is_set() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert api.get("/readyz").status_code == 200
    listener.ready.clear()
    try:
        r = api.get("/readyz")
        assert (r.status_code, r.json()["ok"]) == (503, False)
        assert api.get("/healthz").status_code == 200
    finally:
        listener.ready.set()
    assert api.get("/readyz").status_code == 200
