"""`Client`: the paystream HTTP API, synchronously, on httpx."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping
from types import TracebackType
from typing import Concatenate, ParamSpec, TypeVar

import httpx

from paystream.client import calls
from paystream.client.base import BaseClient, as_method, default_headers
from paystream.client.calls import Call, Gathered, Listing, Page
from paystream.client.retry import Again, RetryPolicy, judge, judge_error

P = ParamSpec("P")
T = TypeVar("T")
R = TypeVar("R")


def _send(op: Callable[P, Call[T]]) -> Callable[Concatenate[Client, P], T]:
    def method(self: Client, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return self.send(op(*args, **kwargs))

    as_method(op, method, "Client")
    return method


def _walk(op: Callable[P, Listing[T]]) -> Callable[Concatenate[Client, P], Iterator[T]]:
    def method(self: Client, /, *args: P.args, **kwargs: P.kwargs) -> Iterator[T]:
        listing = op(*args, **kwargs)
        call: Call[Page[T]] | None = listing.first()
        while call is not None:
            page = self.send(call)
            yield from page.items
            call = listing.next(page)

    as_method(op, method, "Client")
    return method


def _gather(op: Callable[P, Gathered[T, R]]) -> Callable[Concatenate[Client, P], R]:
    def method(self: Client, /, *args: P.args, **kwargs: P.kwargs) -> R:
        gathered = op(*args, **kwargs)
        pages: list[Page[T]] = []
        call: Call[Page[T]] | None = gathered.listing.first()
        while call is not None:
            pages.append(self.send(call))
            call = gathered.listing.next(pages[-1])
        return gathered.combine(pages)

    as_method(op, method, "Client")
    return method


class Client(BaseClient):
    """The paystream API over HTTP.

    ``Client(base_url, email=..., password=...)`` logs in on first use and again
    shortly before the token expires (or after a 401 `token_expired`);
    ``Client(base_url, token=...)`` sends a token you already have. Writes carry an
    Idempotency-Key (yours, or a generated uuid4) that every retry repeats; failures
    worth retrying are retried under `retry` (`RetryPolicy`; `NO_RETRIES` turns it
    off). Errors are `paystream.client.ApiError` subclasses; amounts are `Decimal`.

    `transport` (e.g. ``httpx.MockTransport``), `sleep`, `clock` and `jitter` are
    seams for tests; `headers` are sent with every request. Use it as a context
    manager, or call `close()`; one client may be shared by threads.
    """

    def __init__(
        self,
        base_url: str,
        *,
        email: str | None = None,
        password: str | None = None,
        token: str | None = None,
        timeout: float = 10.0,
        retry: RetryPolicy | None = None,
        headers: Mapping[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] | None = None,
        jitter: Callable[[], float] | None = None,
    ) -> None:
        super().__init__(email=email, password=password, token=token, timeout=timeout, retry=retry or RetryPolicy(),
                         clock=clock, jitter=jitter)  # fmt: skip
        self._http = httpx.Client(base_url=base_url, headers=default_headers(headers), transport=transport)
        self._sleep = sleep
        self._login_lock = threading.Lock()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def send(self, call: Call[T]) -> T:
        """Send one call, retrying it as its `RetryPolicy` allows; its result, or its
        typed error."""
        attempts = self._attempts(call)
        while True:
            token = self._token() if call.auth else None
            request = self._http.build_request(**self._request_args(call, attempts, token))
            try:
                response = self._http.send(request)
            except httpx.TransportError as exc:
                again = judge_error(call, attempts, exc, now=self._clock(), jitter=self._jitter())
            else:
                result = judge(call, attempts, response, now=self._clock(), jitter=self._jitter(),
                               can_login=self.session.can_login)  # fmt: skip
                if not isinstance(result, Again):
                    return result
                again = result
            if again.relogin:
                with self._login_lock:
                    self._relogin(token)
            if again.delay > 0:
                self._sleep(again.delay)

    def _token(self) -> str | None:
        """The token to send, logging in first when there is none or it is about to expire."""
        with self._login_lock:
            session = self.session
            if not session.fresh(self._clock()) and session.email is not None and session.password is not None:
                session.update(self.send(calls.login(session.email, session.password)), self._clock())
            return session.token

    def login(self, email: str, password: str) -> None:
        """Log in (401 `invalid_credentials` raises `Unauthorized`) and keep the
        credentials, to log in again before the token expires."""
        token = self.send(calls.login(email, password))
        with self._login_lock:
            self.session.email, self.session.password = email, password
            self.session.update(token, self._clock())

    register = _send(calls.register)
    me = _send(calls.me)
    list_accounts = _send(calls.list_accounts)
    get_account = _send(calls.get_account)
    open_account = _send(calls.open_account)
    balance = _send(calls.balance)
    statement = _gather(calls.statement)
    statement_csv = _send(calls.statement_csv)
    list_transactions = _walk(calls.list_transactions)
    list_holds = _send(calls.list_holds)
    create_payment = _send(calls.create_payment)
    get_payment = _send(calls.get_payment)
    list_payments = _walk(calls.list_payments)
    capture_payment = _send(calls.capture_payment)
    cancel_payment = _send(calls.cancel_payment)
    create_webhook_endpoint = _send(calls.create_webhook_endpoint)
    list_webhook_endpoints = _send(calls.list_webhook_endpoints)
    delete_webhook_endpoint = _send(calls.delete_webhook_endpoint)
    deposit = _send(calls.deposit)
    withdraw = _send(calls.withdraw)
    freeze = _send(calls.freeze)
    unfreeze = _send(calls.unfreeze)
    list_reviews = _walk(calls.list_reviews)
    get_review = _send(calls.get_review)
    approve_review = _send(calls.approve_review)
    reject_review = _send(calls.reject_review)
