"""The Python SDK (`paystream.client`, `paystream.webhooks`) against the real stack: a
`paystream run gateway` child process, the outbox relay, the ledger, the sink and the
webhooks worker, over real Kafka, Postgres and Redis (the `gw` fixture of
test_gateway.py, plus a second gateway over the same database and Redis that allows
webhook URLs on 127.0.0.1 and lets scripts register and log in freely).

The retry policy itself (which failure, which delay, how many) is
tests/unit/test_sdk_client.py, with a fake gateway and a fake clock; here the claims
are that it holds against the real thing: retries keep one payment, errors are
typed, lists are walked to the end, and a real delivery's signature verifies."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.store import open_command_id
from ops.lab.webhook_receiver import Receiver
from paystream import webhooks
from paystream.client import (
    AsyncClient,
    Client,
    Conflict,
    IdempotencyKeyReused,
    InvalidRequest,
    NotFound,
    PaymentRefused,
    Unauthorized,
)
from paystream.codec import Codec
from paystream.settings import Settings
from tests.conftest import Component, _free_port
from tests.integration.test_gateway import ADMIN_EMAIL, ADMIN_PASSWORD, PASSWORD, Env, _ip, _wait_http, gw, reader
from tests.integration.test_webhook_delivery import notification, produce
from tests.kafka_helpers import EventReader

pytestmark = pytest.mark.integration
__all__ = ["gw", "reader"]  # fixtures, imported for this module's tests


@pytest.fixture(scope="module")
def sdk_base(gw: Env, log_dir: Path) -> Iterator[str]:
    """A second gateway over `gw`'s database and Redis: webhook URLs on 127.0.0.1 are
    allowed (the receivers are local) and scripts may register and log in freely
    (the examples run from one address)."""
    port = _free_port()
    env = {**gw.env, "PAYSTREAM_GATEWAY_PORT": str(port), "PAYSTREAM_WEBHOOK_ALLOW_PRIVATE_URLS": "true",
           "PAYSTREAM_GATEWAY_RATE_REGISTER_PER_MINUTE": "1000",
           "PAYSTREAM_GATEWAY_RATE_LOGIN_PER_MINUTE": "1000"}  # fmt: skip
    comp = Component("gateway", log_dir, env).start()
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_http(base, comp)
        yield base
    finally:
        comp.stop()


@pytest.fixture(scope="module")
def hooks(gw: Env, log_dir: Path) -> Iterator[Component]:
    """The webhooks worker over `gw`'s database."""
    env = {**gw.env, "PAYSTREAM_WEBHOOK_ALLOW_PRIVATE_URLS": "true", "PAYSTREAM_WEBHOOK_BACKOFF_BASE_SECONDS": "0.2",
           "PAYSTREAM_WEBHOOK_INSTANCE": f"sdk-{os.getpid()}",
           "PAYSTREAM_WEBHOOKS_METRICS_PORT": str(_free_port())}  # fmt: skip
    comp = Component("webhooks", log_dir, env).start()
    yield comp
    comp.stop()


@pytest.fixture
def short_tokens(gw: Env, log_dir: Path) -> Iterator[str]:
    """A gateway over `gw`'s database that issues tokens for 3 seconds."""
    port = _free_port()
    env = {**gw.env, "PAYSTREAM_GATEWAY_PORT": str(port), "PAYSTREAM_JWT_TTL_SECONDS": "3",
           "PAYSTREAM_GATEWAY_RATE_LOGIN_PER_MINUTE": "1000"}  # fmt: skip
    comp = Component("gateway", log_dir, env).start()
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_http(base, comp)
        yield base
    finally:
        comp.stop()


def user(base: str, currency: str = "USD", **kwargs: Any) -> tuple[Client, str]:
    """A registered, logged-in user (a client of their own, from an address of their
    own) and their first account's number."""
    email = f"sdk-{uuid.uuid4().hex[:10]}@example.com"
    client = Client(base, headers={"X-Forwarded-For": _ip()}, **kwargs)
    registration = client.register(email, PASSWORD, "SDK", currency)
    assert registration.user.email == email and registration.account.status == "opening"
    client.login(email, PASSWORD)
    return client, registration.account.account_number


def opened(gw: Env, reader: EventReader, *numbers: str) -> None:
    reader.terminals([open_command_id(gw.account_id(n)) for n in numbers], timeout=60)


def admin(base: str) -> Client:
    return Client(base, email=ADMIN_EMAIL, password=ADMIN_PASSWORD, headers={"X-Forwarded-For": _ip()})


def debits(reader: EventReader, payment_id: str, settle: float = 1.5) -> int:
    """How many times the ledger debited `payment_id` (reading on for `settle` s, to
    see a second one if there were one)."""
    reader.terminals([payment_id])
    end = time.monotonic() + settle
    reader.poll_until(lambda evs: time.monotonic() > end, timeout=settle + 5)
    return sum(1 for e in reader.events if e["payment_id"] == payment_id and e["type"] == "TRANSFER_DEBITED")


# ------------------------------------------------------------------------------ tests


def test_a_users_day_through_the_sdk(gw: Env, reader: EventReader, sdk_base: str) -> None:
    a, a_num = user(sdk_base)
    b, b_num = user(sdk_base)
    opened(gw, reader, a_num, b_num)
    with admin(sdk_base) as root:
        deposit = root.deposit(a_num, Decimal("100.00"), "USD", description="top-up")
        assert (deposit.kind, deposit.status, deposit.amount, deposit.to_account) == (
            "deposit", "completed", Decimal("100.00"), a_num)  # fmt: skip
        before = datetime.now(UTC)
        p = a.create_payment(a_num, b_num, "30.00", "USD", description="rent")
        assert (p.status, p.amount, p.from_account, p.to_account, p.description) == (
            "completed", Decimal("30.00"), a_num, b_num, "rent")  # fmt: skip
        assert b.get_payment(p.id) == a.get_payment(p.id)  # either party
        assert a.me().role == "user" and root.me().role == "admin"
        account = a.get_account(a_num)  # read-your-writes: the payment shows at once
        assert (account.status, account.posted, account.available) == ("active", Decimal("70.00"), Decimal("70.00"))
        assert [x.account_number for x in a.list_accounts()] == [a_num]
        assert a.balance(a_num, at=before).balance == Decimal("100.00")
        assert a.balance(a_num).balance == Decimal("70.00")
        assert [(t.type, t.amount) for t in a.list_transactions(a_num)] == [
            ("transfer_debited", Decimal("-30.00")), ("deposited", Decimal("100.00"))]  # fmt: skip
        statement = a.statement(a_num, start=before - timedelta(hours=1))
        assert statement.opening_balance == 0 and statement.closing_balance == Decimal("70.00")
        assert [line.description for line in statement.lines] == ["top-up", "rent"]
        csv = a.statement_csv(a_num)
        assert csv.splitlines()[0].startswith("occurred_at,id,type") and "closing_balance" in csv.splitlines()[-1]

        euros = a.open_account("EUR", idempotency_key="open-eur")
        assert a.open_account("EUR", idempotency_key="open-eur").account_number == euros.account_number
        assert {x.currency for x in a.list_accounts()} == {"USD", "EUR"}

        assert root.freeze(a_num, reason="sdk test").status == "frozen"
        with pytest.raises(PaymentRefused) as err:
            a.create_payment(a_num, b_num, "1.00", "USD")
        assert err.value.code == "account_frozen"
        with pytest.raises(Conflict) as conflict:
            root.freeze(a_num)
        assert conflict.value.code == "already_frozen"
        assert root.unfreeze(a_num).status == "active"
        assert root.withdraw(a_num, Decimal("20.00"), "USD").status == "completed"
    assert b.get_account(b_num).posted == Decimal("30.00")


def test_holds_through_the_sdk(gw: Env, reader: EventReader, sdk_base: str) -> None:
    a, a_num = user(sdk_base)
    b, b_num = user(sdk_base)
    opened(gw, reader, a_num, b_num)
    with admin(sdk_base) as root:
        root.deposit(a_num, "100.00", "USD")
    hold = a.create_payment(a_num, b_num, "30.00", "USD", capture=False, hold_seconds=3600)
    assert (hold.status, hold.amount_authorized) == ("requires_capture", Decimal("30.00"))
    # the POST's answer is the ledger's outcome; when the hold lapses the read model says
    listed = a.list_holds(a_num)
    assert [h.id for h in listed] == [hold.id]
    assert listed[0].expires_at is not None and listed[0].expires_at > datetime.now(UTC) + timedelta(minutes=59)
    assert a.get_account(a_num).available == Decimal("70.00")
    captured = b.capture_payment(hold.id, Decimal("12.50"))
    assert (captured.status, captured.amount, captured.amount_authorized) == (
        "completed", Decimal("12.50"), Decimal("30.00"))  # fmt: skip
    other = a.create_payment(a_num, b_num, "5.00", "USD", capture=False)
    assert a.cancel_payment(other.id).status == "canceled"
    with pytest.raises(PaymentRefused) as err:
        b.capture_payment(other.id)
    assert err.value.code == "hold_voided"
    assert a.get_account(a_num).available == Decimal("87.50") and a.list_holds(a_num) == []


def test_errors_are_typed(gw: Env, reader: EventReader, sdk_base: str) -> None:
    a, a_num = user(sdk_base)
    b, b_num = user(sdk_base)
    opened(gw, reader, a_num, b_num)
    with pytest.raises(PaymentRefused) as refused:
        a.create_payment(a_num, b_num, "5.00", "USD")
    assert (refused.value.status, refused.value.code) == (402, "insufficient_funds")
    assert refused.value.payment is not None and refused.value.payment.amount == Decimal("5.00")
    assert refused.value.payment.status in ("failed", "rejected") and refused.value.payment.is_final

    with admin(sdk_base) as root:
        root.deposit(a_num, "10.00", "USD")
    a.create_payment(a_num, b_num, "1.00", "USD", idempotency_key="k-1")
    with pytest.raises(IdempotencyKeyReused) as reused:
        a.create_payment(a_num, b_num, "2.00", "USD", idempotency_key="k-1")
    assert (reused.value.status, reused.value.code) == (422, "idempotency_key_reused")
    with pytest.raises(InvalidRequest) as mismatch:
        a.create_payment(a_num, b_num, "1.00", "EUR")
    assert mismatch.value.code == "currency_mismatch"
    with pytest.raises(NotFound) as missing:
        a.get_payment(str(uuid.uuid4()))
    assert (missing.value.status, missing.value.code) == (404, "payment_not_found")
    with pytest.raises(NotFound):
        b.get_account(a_num)  # someone else's account is as unknown as a missing one
    with pytest.raises(Unauthorized) as wrong:
        Client(sdk_base, headers={"X-Forwarded-For": _ip()}).login(a.me().email, "not the password")
    assert wrong.value.code == "invalid_credentials"


class LoseFirstAnswer(httpx.HTTPTransport):
    """Delivers every request, but loses the first answer to a new payment on its way
    back (a read timeout), as a dropped connection does after the gateway answered."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[httpx.Request] = []
        self.statuses: list[int] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if request.url.path == "/v1/payments" and request.method == "POST":
            self.sent.append(request)
            self.statuses.append(response.status_code)
            if len(self.sent) == 1:
                response.read()
                response.close()
                raise httpx.ReadTimeout("the answer was lost", request=request)
        return response


def test_retries_keep_one_payment(gw: Env, reader: EventReader, sdk_base: str) -> None:
    lossy = LoseFirstAnswer()
    a, a_num = user(sdk_base, transport=lossy)
    _, b_num = user(sdk_base)
    opened(gw, reader, a_num, b_num)
    with admin(sdk_base) as root:
        root.deposit(a_num, "100.00", "USD")
    # the first answer is lost: the client sends again with the generated key and is
    # given the first answer
    p = a.create_payment(a_num, b_num, "10.00", "USD")
    assert p.status == "completed" and len(lossy.sent) == 2
    assert len({r.headers["Idempotency-Key"] for r in lossy.sent}) == 1
    # six threads send one payment with one key at once: the gateway runs one and
    # answers the others 409 request_in_progress, which they retry until its answer
    key = str(uuid.uuid4())
    with ThreadPoolExecutor(6) as pool:
        same = list(pool.map(lambda _: a.create_payment(a_num, b_num, "7.00", "USD", idempotency_key=key), range(6)))
    assert {x.id for x in same} == {same[0].id} and {x.status for x in same} == {"completed"}
    assert 409 in lossy.statuses[2:] and set(lossy.statuses) <= {200, 201, 409}
    assert debits(reader, p.id) == 1 and debits(reader, same[0].id) == 1
    assert a.get_account(a_num).posted == Decimal("83.00")


class AnswerFirstAtOnce(httpx.HTTPTransport):
    """Asks for the first payment's outcome with `Prefer: wait=0`, so that the gateway
    answers 202 Accepted before the ledger has."""

    def __init__(self) -> None:
        super().__init__()
        self.statuses: list[int] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/payments" and not self.statuses:
            request.headers["Prefer"] = "wait=0"
        response = super().handle_request(request)
        if request.url.path == "/v1/payments":
            self.statuses.append(response.status_code)
        return response


def test_an_accepted_payment_is_followed_to_its_outcome(gw: Env, reader: EventReader, sdk_base: str) -> None:
    at_once = AnswerFirstAtOnce()
    a, a_num = user(sdk_base, transport=at_once)
    _, b_num = user(sdk_base)
    opened(gw, reader, a_num, b_num)
    with admin(sdk_base) as root:
        root.deposit(a_num, "10.00", "USD")
    p = a.create_payment(a_num, b_num, "4.00", "USD")
    assert p.status == "completed" and at_once.statuses[0] == 202 and at_once.statuses[-1] == 201
    pending = a.create_payment(a_num, b_num, "1.00", "USD", idempotency_key="later", wait=0)
    assert pending.status == "pending"  # the caller's budget: no wait at all
    assert a.create_payment(a_num, b_num, "1.00", "USD", idempotency_key="later").id == pending.id
    assert debits(reader, p.id) == 1 and debits(reader, pending.id) == 1


def test_lists_are_walked_to_the_end_sync_and_async(gw: Env, reader: EventReader, sdk_base: str) -> None:
    a, a_num = user(sdk_base)
    b, b_num = user(sdk_base)
    opened(gw, reader, a_num, b_num)
    with admin(sdk_base) as root:
        root.deposit(a_num, "100.00", "USD")
    assert a.token is not None

    async def pay_and_list() -> tuple[list[str], list[str]]:
        async with AsyncClient(sdk_base, token=a.token, headers={"X-Forwarded-For": _ip()}) as aa:
            made = await asyncio.gather(*[aa.create_payment(a_num, b_num, f"{i}.00", "USD") for i in range(1, 8)])
            listed = [p.id async for p in aa.list_payments(page_size=3)]
        return [p.id for p in made], listed

    made, listed_async = asyncio.run(pay_and_list())
    listed = [p.id for p in a.list_payments(page_size=3)]  # 8 payments: 3 pages
    assert listed == listed_async and len(listed) == len(set(listed)) == 8
    assert set(made) < set(listed)
    assert [p.id for p in b.list_payments(page_size=2)] == [x for x in listed if x in made]
    postings = list(a.list_transactions(a_num, page_size=3))
    assert len(postings) == 8 and postings[0].balance_after == Decimal("72.00")
    statement = a.statement(a_num, page_size=3)
    assert [x.id for x in statement.lines] == [x.id for x in reversed(postings)]
    assert statement.opening_balance + sum(x.amount for x in statement.lines) == statement.closing_balance == 72


def test_a_real_deliverys_signature_verifies(gw: Env, sdk_base: str, hooks: Component, stack: Settings,
                                              codec: Codec) -> None:  # fmt: skip
    receiver = Receiver()
    a, _ = user(sdk_base)
    endpoint = a.create_webhook_endpoint(receiver.url)
    assert endpoint.secret is not None and endpoint.secret.startswith("whsec_")
    assert [(e.endpoint_id, e.secret) for e in a.list_webhook_endpoints()] == [(endpoint.endpoint_id, None)]
    note = notification(a.me().id)
    produce(stack, codec, [note])
    deadline = time.monotonic() + 90
    while note["notification_id"] not in receiver.delivered():
        assert time.monotonic() < deadline, f"not delivered:\n{hooks.tail()}"
        time.sleep(0.2)
    receiver.close()
    delivery = receiver.requests[0]
    body, header = delivery["body"], delivery["headers"][webhooks.HEADER]
    assert webhooks.verify(body, header, endpoint.secret)
    event = webhooks.construct_event(body.encode(), header, endpoint.secret)
    assert (event.id, event.type, event.amount) == (note["notification_id"], "PAYMENT_RECEIVED", Decimal("12.34"))
    assert not webhooks.verify(body.replace("1234", "9999"), header, endpoint.secret)
    assert not webhooks.verify(body, header, "whsec_not_the_secret")
    with pytest.raises(webhooks.SignatureVerificationError):
        webhooks.construct_event(body, header, endpoint.secret, now=time.time() + 3600)  # replayed an hour later
    a.delete_webhook_endpoint(endpoint.endpoint_id)
    assert [e.active for e in a.list_webhook_endpoints()] == [False]
    with pytest.raises(NotFound):
        a.delete_webhook_endpoint(str(uuid.uuid4()))


class Recorder(httpx.HTTPTransport):
    """Records the path and status of every request."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, int]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        self.seen.append((request.url.path, response.status_code))
        return response


def test_tokens_are_renewed_before_they_expire_and_after_a_401(short_tokens: str) -> None:
    seen = Recorder()
    a, _ = user(short_tokens, transport=seen)
    email = a.me().email
    time.sleep(3.0)  # past 90 % of the token's life: the client logs in again first
    assert a.me().email == email
    assert seen.seen[-2:] == [("/v1/auth/login", 200), ("/v1/me", 200)]
    assert ("/v1/me", 401) not in seen.seen

    # a client whose clock stands still sends the token past its expiry: the gateway
    # answers 401 token_expired, the client logs in again and repeats the call
    still = Recorder()
    frozen = Client(short_tokens, email=email, password=PASSWORD, transport=still, clock=lambda: 0.0,
                    headers={"X-Forwarded-For": _ip()})  # fmt: skip
    frozen.me()
    time.sleep(4.0)
    assert frozen.me().email == email
    assert still.seen == [("/v1/auth/login", 200), ("/v1/me", 200), ("/v1/me", 401), ("/v1/auth/login", 200),
                          ("/v1/me", 200)]  # fmt: skip
