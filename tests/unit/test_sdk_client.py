"""The HTTP client's policy with a fake gateway (httpx.MockTransport), a fake clock and
a fake sleep: which failures are retried, with which key, after how long, for how
long; 202s followed; tokens renewed; errors typed; lists walked to the end. The real
gateway is tests/integration/test_sdk_http.py."""

from __future__ import annotations

import asyncio
import inspect
import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx
import pytest

from paystream.client import (
    NO_RETRIES,
    ApiConnectionError,
    AsyncClient,
    Client,
    Conflict,
    IdempotencyKeyReused,
    NotFound,
    PaymentRefused,
    RateLimited,
    RequestInProgress,
    RetryPolicy,
    ServerError,
    ServiceUnavailable,
    Unauthorized,
)
from paystream.client.errors import retry_after_seconds
from paystream.errors import MoneyError, PaystreamError

BASE = "http://gateway.test"
A, B = "PS0780311395", "PS4455430399"


def payment(pid: str = "p1", status: str = "completed", amount: str = "12.50", **extra: Any) -> dict[str, Any]:
    return {"id": pid, "object": "payment", "kind": "transfer", "status": status, "from_account": A,
            "to_account": B, "amount": amount, "currency": "EUR", "description": None, "reason": None,
            "created_at": "2026-12-01T10:00:00.123Z", **extra}  # fmt: skip


def problem(status: int, code: str, headers: dict[str, str] | None = None, **extra: Any) -> httpx.Response:
    body = {"type": f"urn:paystream:problem:{code}", "title": "t", "status": status, "detail": code, "code": code,
            **extra}  # fmt: skip
    return httpx.Response(status, json=body, headers={"Content-Type": "application/problem+json", **(headers or {})})


class Clock:
    """Time that passes only when the client sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds

    async def asleep(self, seconds: float) -> None:
        self.sleep(seconds)


class Gateway:
    """Answers requests from a script of responses (or callables), recording them."""

    def __init__(self, *answers: httpx.Response | Exception | Callable[[httpx.Request], httpx.Response]) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer(request) if callable(answer) else answer

    def keys(self) -> list[str | None]:
        return [r.headers.get("Idempotency-Key") for r in self.requests]


def client(gw: Gateway, clock: Clock, **kwargs: Any) -> Client:
    kwargs.setdefault("token", "t0")
    return Client(BASE, transport=httpx.MockTransport(gw), sleep=clock.sleep, clock=lambda: clock.now,
                  jitter=lambda: 1.0, **kwargs)  # fmt: skip


def pay(c: Client, **kwargs: Any) -> Any:
    return c.create_payment(A, B, Decimal("12.50"), "EUR", **kwargs)


# ----------------------------------------------------------------- retries keep the key


def test_a_payment_retried_through_every_transient_failure_keeps_its_generated_key() -> None:
    clock = Clock()
    gw = Gateway(
        httpx.ConnectError("refused"),
        problem(503, "ledger_unavailable", {"Retry-After": "2"}),
        problem(409, "request_in_progress", {"Retry-After": "1"}),
        httpx.ReadTimeout("slow"),
        httpx.Response(201, json=payment()),
    )
    p = pay(client(gw, clock))
    keys = gw.keys()
    assert len(set(keys)) == 1 and keys[0] is not None
    assert uuid.UUID(keys[0]).version == 4
    # Retry-After is honoured as given; without one, exponential backoff (jitter 1.0: the full step)
    assert clock.slept == [0.5, 2.0, 1.0, 4.0]  # the 4th failure: 0.5 * 2**3
    assert (p.id, p.status, p.amount, p.currency) == ("p1", "completed", Decimal("12.50"), "EUR")
    assert p.created_at == datetime(2026, 12, 1, 10, 0, 0, 123000, tzinfo=UTC)
    sent = json.loads(gw.requests[0].content)
    assert sent == {"from_account": A, "to_account": B, "amount": "12.50", "currency": "EUR"}
    assert gw.requests[0].headers["Authorization"] == "Bearer t0"


def test_the_callers_key_is_sent_and_each_call_without_one_gets_its_own() -> None:
    clock = Clock()
    gw = Gateway(*[httpx.Response(201, json=payment()) for _ in range(3)])
    c = client(gw, clock)
    pay(c, idempotency_key="order-17")
    pay(c)
    pay(c)
    keys = gw.keys()
    assert keys[0] == "order-17" and keys[1] != keys[2]


def test_request_in_progress_is_asked_again_on_the_backoff_not_at_the_lock_deadline() -> None:
    """A 409's Retry-After is the lock deadline of the request holding the key (30 s
    for a holder that died); a live one answers in a few hundred ms."""
    clock = Clock()
    busy = problem(409, "request_in_progress", {"Retry-After": "30"})
    gw = Gateway(busy, busy, problem(409, "request_in_progress", {"Retry-After": "1"}),
                 httpx.Response(201, json=payment()))  # fmt: skip
    assert pay(client(gw, clock)).status == "completed"
    assert clock.slept == [0.5, 1.0, 1.0] and len(set(gw.keys())) == 1


def test_retries_stop_after_max_attempts_with_the_typed_error() -> None:
    clock = Clock()
    gw = Gateway(*[problem(503, "service_unavailable", {"Retry-After": "1"}) for _ in range(3)])
    with pytest.raises(ServiceUnavailable) as err:
        pay(client(gw, clock, retry=RetryPolicy(max_attempts=3)))
    assert len(gw.requests) == 3 and clock.slept == [1.0, 1.0]
    assert err.value.code == "service_unavailable" and err.value.retry_after == 1.0


def test_retries_stop_when_the_time_budget_would_be_passed() -> None:
    clock = Clock()
    gw = Gateway(*[problem(429, "rate_limited", {"Retry-After": "4"}) for _ in range(10)])
    policy = RetryPolicy(max_attempts=10, max_elapsed_seconds=10, retry_after_max_seconds=5)
    with pytest.raises(RateLimited):
        client(gw, clock, retry=policy).me()
    assert clock.slept == [4.0, 4.0] and len(gw.requests) == 3  # a third wait would end at 12 s


def test_a_retry_after_longer_than_the_cap_is_left_to_the_caller() -> None:
    clock = Clock()
    gw = Gateway(problem(429, "rate_limited", {"Retry-After": "900"}))
    with pytest.raises(RateLimited) as err:
        client(gw, clock, retry=RetryPolicy(retry_after_max_seconds=20)).login("a@example.com", "pw")
    assert clock.slept == [] and err.value.retry_after == 900


def test_backoff_grows_and_is_capped() -> None:
    policy = RetryPolicy(backoff_base_seconds=0.5, backoff_max_seconds=3)
    assert [policy.backoff(n, 1.0) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert policy.backoff(2, 0.0) == 0.5  # jitter takes off at most half


def test_retry_after_as_an_http_date() -> None:
    now = datetime(2026, 12, 1, 10, 0, 0, tzinfo=UTC)
    assert retry_after_seconds("Tue, 01 Dec 2026 10:00:07 GMT", now) == 7.0
    assert retry_after_seconds("soon", now) is None and retry_after_seconds(None) is None


def test_what_may_have_reached_the_server_is_not_sent_again_without_a_key() -> None:
    """A registration is not idempotent: after a timeout or a 503 it is not resent
    (it may have been made), after a refused connection or a 429 it is."""
    clock = Clock()
    answer = {"user": {"id": "u", "email": "a@example.com", "name": "A", "role": "user",
                       "created_at": "2026-12-01T10:00:00Z"},
              "account": {"account_number": A, "currency": "EUR", "status": "opening", "balance": "0.00",
                          "posted": "0.00", "available": "0.00", "created_at": "2026-12-01T10:00:00Z"}}  # fmt: skip
    gw = Gateway(httpx.ConnectError("refused"), problem(429, "rate_limited", {"Retry-After": "1"}),
                 httpx.Response(201, json=answer))  # fmt: skip
    reg = client(gw, clock).register("a@example.com", "Correct horse 42", "A", "EUR")
    assert len(gw.requests) == 3 and reg.account.posted == Decimal("0.00")
    assert "Authorization" not in gw.requests[0].headers and "Idempotency-Key" not in gw.requests[0].headers
    for failure in (httpx.ReadTimeout("slow"), problem(503, "service_unavailable")):
        gw = Gateway(failure)
        with pytest.raises((ApiConnectionError, ServiceUnavailable)):
            client(gw, clock).register("a@example.com", "Correct horse 42", "A", "EUR")
        assert len(gw.requests) == 1


def test_a_conflict_other_than_in_progress_is_not_retried() -> None:
    gw = Gateway(problem(409, "too_many_accounts"))
    with pytest.raises(PaystreamError) as err:
        client(gw, Clock()).open_account("USD")
    assert err.value.code == "too_many_accounts" and err.value.status == 409 and len(gw.requests) == 1


def test_no_retries() -> None:
    gw = Gateway(httpx.ConnectError("refused"))
    with pytest.raises(ApiConnectionError) as err:
        client(gw, Clock(), retry=NO_RETRIES).me()
    assert err.value.code == "connection_error" and isinstance(err.value, PaystreamError)


# ----------------------------------------------------------------- 202: followed with the same key


def test_an_accepted_payment_is_followed_until_its_outcome_with_the_same_key() -> None:
    clock = Clock()
    accepted = httpx.Response(202, json=payment(status="pending"), headers={"Retry-After": "1",
                                                                              "Location": "/v1/payments/p1"})
    gw = Gateway(accepted, accepted, httpx.Response(201, json=payment()))
    p = pay(client(gw, clock), wait=10)
    assert p.status == "completed" and clock.slept == [1.0, 1.0]
    assert len(set(gw.keys())) == 1 and [r.url.path for r in gw.requests] == ["/v1/payments"] * 3
    # each send asks the gateway to wait for what is left of the budget
    assert [r.headers["Prefer"] for r in gw.requests] == ["wait=10.000", "wait=9.000", "wait=8.000"]


def test_an_outcome_refused_after_a_202_raises_like_a_direct_one() -> None:
    clock = Clock()
    gw = Gateway(httpx.Response(202, json=payment(status="pending")),
                 problem(402, "insufficient_funds", payment=payment(status="failed", reason="insufficient_funds")))
    with pytest.raises(PaymentRefused) as err:
        pay(client(gw, clock), wait=5)
    assert err.value.code == "insufficient_funds" and err.value.payment is not None
    assert err.value.payment.status == "failed"


def test_when_the_wait_budget_is_spent_the_pending_payment_is_returned() -> None:
    clock = Clock()
    gw = Gateway(httpx.Response(202, json=payment(status="pending")))
    p = pay(client(gw, clock), wait=0)
    assert p.status == "pending" and not p.is_final and clock.slept == []
    assert gw.requests[0].headers["Prefer"] == "wait=0.000"


def test_a_freeze_answered_202_is_pending_not_resent() -> None:
    gw = Gateway(httpx.Response(202, json={"account_number": A, "status": "pending"}))
    assert client(gw, Clock()).freeze(A, reason="x").status == "pending"
    assert len(gw.requests) == 1 and json.loads(gw.requests[0].content) == {"reason": "x"}


# ----------------------------------------------------------------- tokens


def token_answer(token: str, expires_in: int = 900) -> httpx.Response:
    return httpx.Response(200, json={"access_token": token, "token_type": "Bearer", "expires_in": expires_in})


def me_answer(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json={"id": "u", "email": "a@example.com", "name": "A", "role": "user",
                                     "created_at": "2026-12-01T10:00:00Z", "seen": request.headers["Authorization"]})


def test_logs_in_on_first_use_and_again_before_the_token_expires() -> None:
    clock = Clock()
    gw = Gateway(token_answer("t1"), me_answer, me_answer, token_answer("t2"), me_answer)
    c = client(gw, clock, token=None, email="a@example.com", password="pw")
    c.me()
    clock.now += 800  # 100 s left of 900: still beyond the margin (60 s)
    c.me()
    clock.now += 50  # 50 s left: log in again first
    c.me()
    paths = [(r.url.path, r.headers.get("Authorization")) for r in gw.requests]
    assert paths == [("/v1/auth/login", None), ("/v1/me", "Bearer t1"), ("/v1/me", "Bearer t1"),
                     ("/v1/auth/login", None), ("/v1/me", "Bearer t2")]  # fmt: skip
    assert json.loads(gw.requests[0].content) == {"email": "a@example.com", "password": "pw"}


def test_an_expired_token_is_renewed_once_and_the_call_repeated_with_its_key() -> None:
    clock = Clock()
    gw = Gateway(token_answer("t1"), problem(401, "token_expired"), token_answer("t2"),
                 httpx.Response(201, json=payment()))  # fmt: skip
    c = client(gw, clock, token=None, email="a@example.com", password="pw")
    assert pay(c).status == "completed"
    sent = [r for r in gw.requests if r.url.path == "/v1/payments"]
    assert [r.headers["Authorization"] for r in sent] == ["Bearer t1", "Bearer t2"]
    assert sent[0].headers["Idempotency-Key"] == sent[1].headers["Idempotency-Key"]
    # a second 401 in the same call is the answer
    gw.answers = [problem(401, "token_expired"), token_answer("t3"), problem(401, "token_expired")]
    with pytest.raises(Unauthorized) as err:
        pay(c)
    assert err.value.code == "token_expired"


def test_a_ready_token_without_credentials_is_not_renewed() -> None:
    gw = Gateway(problem(401, "token_expired"))
    with pytest.raises(Unauthorized):
        client(gw, Clock(), token="old").me()
    assert len(gw.requests) == 1


def test_wrong_credentials_are_not_kept() -> None:
    gw = Gateway(problem(401, "invalid_credentials"), me_answer)
    c = client(gw, Clock(), token="ready")
    with pytest.raises(Unauthorized) as err:
        c.login("a@example.com", "wrong")
    assert err.value.code == "invalid_credentials" and not c.session.can_login
    c.me()
    assert gw.requests[-1].headers["Authorization"] == "Bearer ready"


# ----------------------------------------------------------------- typed errors


def test_errors_are_typed_from_problem_documents() -> None:
    refused = problem(402, "insufficient_funds", payment=payment(status="failed", reason="insufficient_funds"))
    cases: list[tuple[httpx.Response, type[Exception], str]] = [
        (refused, PaymentRefused, "insufficient_funds"),
        (problem(422, "idempotency_key_reused"), IdempotencyKeyReused, "idempotency_key_reused"),
        (problem(404, "payment_not_found"), NotFound, "payment_not_found"),
        (httpx.Response(500, text="<html>oops</html>"), ServerError, "http_500"),
    ]
    for answer, kind, code in cases:
        with pytest.raises(kind) as err:
            client(Gateway(answer), Clock(), retry=NO_RETRIES).get_payment("p1")
        assert isinstance(err.value, PaystreamError)
        assert (err.value.code, err.value.status) == (code, answer.status_code)
    with pytest.raises(RequestInProgress):
        client(Gateway(problem(409, "request_in_progress")), Clock(), retry=NO_RETRIES).get_payment("p1")


def test_amounts_are_checked_before_anything_is_sent() -> None:
    gw = Gateway()
    c = client(gw, Clock())
    for bad, code in [(12.5, "amount_not_a_string"), (Decimal("1.001"), "too_many_decimals"),
                      ("1e3", "invalid_amount")]:  # fmt: skip
        with pytest.raises(MoneyError) as err:
            c.create_payment(A, B, bad, "EUR")  # type: ignore[arg-type]
        assert err.value.code == code
    with pytest.raises(MoneyError):
        c.capture_payment("p1", 12.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="offset"):
        c.balance(A, at=datetime(2026, 1, 1))
    assert gw.requests == []


def test_a_path_parameter_stays_one_segment() -> None:
    gw = Gateway(problem(404, "account_not_found"))
    with pytest.raises(NotFound):
        client(gw, Clock()).get_account("../payments")
    assert gw.requests[0].url.raw_path == b"/v1/accounts/..%2Fpayments"


# ----------------------------------------------------------------- pagination


def pages_of(items: list[dict[str, Any]], **header: Any) -> Callable[[httpx.Request], httpx.Response]:
    def answer(request: httpx.Request) -> httpx.Response:
        limit = int(request.url.params["limit"])
        after = request.url.params.get("starting_after")
        start = next(i + 1 for i, x in enumerate(items) if x["id"] == after) if after else 0
        chunk = items[start:start + limit]
        return httpx.Response(200, json={"object": "list", "data": chunk, "has_more": start + limit < len(items),
                                         **header})  # fmt: skip

    return answer


def test_list_payments_walks_every_page() -> None:
    items = [payment(f"p{i:03d}") for i in range(25)]
    gw = Gateway(*[pages_of(items)] * 3)
    got = list(client(gw, Clock()).list_payments(page_size=10))
    assert [p.id for p in got] == [x["id"] for x in items]
    assert [r.url.params.get("starting_after") for r in gw.requests] == [None, "p009", "p019"]


def test_a_statement_keeps_the_first_pages_window() -> None:
    lines = [{"id": f"e{i}", "type": "deposited", "payment_id": f"p{i}", "amount": "1.00", "currency": "EUR",
              "balance_after": f"{i + 1}.00", "counterparty": None, "description": None,
              "occurred_at": "2026-12-01T10:00:00Z"} for i in range(5)]  # fmt: skip
    header = {"account_number": A, "currency": "EUR", "from": "1970-01-01T00:00:00Z",
              "to": "2026-12-02T00:00:00.5Z", "opening_balance": "0.00", "closing_balance": "5.00"}  # fmt: skip
    gw = Gateway(*[pages_of(lines, **header)] * 3)
    st = client(gw, Clock()).statement(A, page_size=2)
    assert [x.id for x in st.lines] == ["e0", "e1", "e2", "e3", "e4"]
    assert st.opening_balance + sum(x.amount for x in st.lines) == st.closing_balance == Decimal("5.00")
    assert "to" not in gw.requests[0].url.params
    assert {r.url.params.get("to") for r in gw.requests[1:]} == {"2026-12-02T00:00:00.5Z"}


# ----------------------------------------------------------------- async


def test_the_async_client_retries_follows_and_walks_the_same_way() -> None:
    clock = Clock()
    items = [payment(f"p{i}") for i in range(5)]
    gw = Gateway(problem(503, "ledger_unavailable", {"Retry-After": "1"}),
                 httpx.Response(202, json=payment(status="pending")), httpx.Response(201, json=payment()),
                 *[pages_of(items)] * 3)  # fmt: skip

    async def run() -> tuple[Any, list[Any]]:
        async with AsyncClient(BASE, token="t0", transport=httpx.MockTransport(gw), sleep=clock.asleep,
                               clock=lambda: clock.now, jitter=lambda: 1.0) as c:  # fmt: skip
            p = await c.create_payment(A, B, "12.50", "EUR")
            listed = [x async for x in c.list_payments(page_size=2)]
        return p, listed

    p, listed = asyncio.run(run())
    assert p.status == "completed" and len(set(gw.keys()[:3])) == 1 and clock.slept == [1.0, 1.0]
    assert [x.id for x in listed] == [x["id"] for x in items]


def test_both_clients_offer_the_same_operations_with_the_same_parameters() -> None:
    def operations(cls: type) -> dict[str, list[str]]:
        return {name: list(inspect.signature(f).parameters) for name, f in vars(cls).items()
                if callable(f) and not name.startswith("_") and name not in ("send", "close", "aclose")}  # fmt: skip

    sync_ops, async_ops = operations(Client), operations(AsyncClient)
    assert sync_ops == async_ops and {"create_payment", "list_payments", "statement", "login"} <= set(sync_ops)
    for name in sync_ops:
        assert inspect.iscoroutinefunction(getattr(AsyncClient, name)) or inspect.isasyncgenfunction(
            getattr(AsyncClient, name)
        ), name


def test_the_package_says_it_is_typed() -> None:
    """PEP 561: without py.typed in the installed package, mypy and pyright ignore the
    SDK's annotations in users' code."""
    import tomllib

    from paystream.settings import PROJECT_ROOT

    package_data = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "py.typed" in package_data["paystream"]
    assert (PROJECT_ROOT / "paystream" / "py.typed").is_file()


def test_any_route_can_be_sent_with_the_clients_login_retries_and_errors() -> None:
    from paystream.client import Call

    clock = Clock()
    gw = Gateway(problem(503, "service_unavailable", {"Retry-After": "1"}),
                 httpx.Response(200, json={"object": "list", "data": [{"id": "a1"}], "has_more": False}))  # fmt: skip
    items = client(gw, clock).send(Call("GET", "/v1/admin/reviews", lambda r: r.json()["data"],
                                        params={"status": "open"}))  # fmt: skip
    assert items == [{"id": "a1"}] and clock.slept == [1.0]
    assert gw.requests[-1].url.params["status"] == "open" and gw.requests[-1].headers["Authorization"] == "Bearer t0"


def review(rid: str = "r1", status: str = "open", **extra: Any) -> dict[str, Any]:
    return {"id": rid, "object": "review", "payment_id": "p1", "from_account": A, "to_account": B,
            "amount": "12000.00", "currency": "USD", "score": 130, "risk": "HIGH",
            "reasons": [{"rule": "HIGH_VALUE", "score": 80, "detail": "12000.00 USD >= threshold 10000.00 USD"}],
            "detected_at": "2026-12-03T10:11:21.000Z", "status": status, "decision_id": None, "decided_by": None,
            "decided_by_email": None, "decided_at": None, "note": None, **extra}  # fmt: skip


def test_the_review_queue_is_walked_and_decided_like_the_rest() -> None:
    items = [review(f"r{i:03d}") for i in range(25)]
    gw = Gateway(*[pages_of(items)] * 3)
    got = list(client(gw, Clock()).list_reviews(status="open", account=A, page_size=10))
    assert [r.id for r in got] == [x["id"] for x in items]
    assert got[0].amount == Decimal("12000.00") and got[0].from_account == A and got[0].reasons[0].rule == "HIGH_VALUE"
    assert [r.url.params.get("starting_after") for r in gw.requests] == [None, "r009", "r019"]
    assert {(r.url.params["status"], r.url.params["account"]) for r in gw.requests} == {("open", A)}
    decided = review(status="rejected", decided_by="u1", decided_at="2026-12-03T10:12:00Z", note="mule")
    gw = Gateway(httpx.Response(200, json=decided), problem(409, "review_already_decided"))
    c = client(gw, Clock())
    assert c.reject_review("r1", note="mule").status == "rejected"
    assert json.loads(gw.requests[0].content) == {"note": "mule"} and gw.requests[0].url.path.endswith("/r1/reject")
    with pytest.raises(Conflict):
        c.approve_review("r1")
    assert len(gw.requests) == 2  # a final decision is not sent again
