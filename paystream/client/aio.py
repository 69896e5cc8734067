"""`AsyncClient`: the paystream HTTP API for asyncio, on httpx."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from types import TracebackType
from typing import Any, Concatenate, ParamSpec, TypeVar

import httpx

from paystream.client import calls
from paystream.client.base import BaseClient, as_method, default_headers
from paystream.client.calls import Call, Gathered, Listing, Page
from paystream.client.retry import Again, RetryPolicy, judge, judge_error

P = ParamSpec("P")
T = TypeVar("T")
R = TypeVar("R")


def _send(op: Callable[P, Call[T]]) -> Callable[Concatenate[AsyncClient, P], Coroutine[Any, Any, T]]:
    async def method(self: AsyncClient, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return await self.send(op(*args, **kwargs))

    as_method(op, method, "AsyncClient")
    return method


def _walk(op: Callable[P, Listing[T]]) -> Callable[Concatenate[AsyncClient, P], AsyncIterator[T]]:
    async def method(self: AsyncClient, /, *args: P.args, **kwargs: P.kwargs) -> AsyncIterator[T]:
        listing = op(*args, **kwargs)
        call: Call[Page[T]] | None = listing.first()
        while call is not None:
            page = await self.send(call)
            for item in page.items:
                yield item
            call = listing.next(page)

    as_method(op, method, "AsyncClient")
    return method


def _gather(op: Callable[P, Gathered[T, R]]) -> Callable[Concatenate[AsyncClient, P], Coroutine[Any, Any, R]]:
    async def method(self: AsyncClient, /, *args: P.args, **kwargs: P.kwargs) -> R:
        gathered = op(*args, **kwargs)
        pages: list[Page[T]] = []
        call: Call[Page[T]] | None = gathered.listing.first()
        while call is not None:
            pages.append(await self.send(call))
            call = gathered.listing.next(pages[-1])
        return gathered.combine(pages)

    as_method(op, method, "AsyncClient")
    return method


class AsyncClient(BaseClient):
    """The paystream API over HTTP, for asyncio: `Client`'s arguments and methods,
    awaited (``await client.create_payment(...)``), lists as async iterators
    (``async for p in client.list_payments()``), `sleep` a coroutine function, and
    ``async with`` / `aclose()`. One client may be shared by the tasks of one loop.
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
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] | None = None,
        jitter: Callable[[], float] | None = None,
    ) -> None:
        super().__init__(email=email, password=password, token=token, timeout=timeout, retry=retry or RetryPolicy(),
                         clock=clock, jitter=jitter)  # fmt: skip
        self._http = httpx.AsyncClient(base_url=base_url, headers=default_headers(headers), transport=transport)
        self._sleep = sleep
        self._login_lock = asyncio.Lock()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def send(self, call: Call[T]) -> T:
        """Send one call, retrying it as its `RetryPolicy` allows; its result, or its
        typed error."""
        attempts = self._attempts(call)
        while True:
            token = await self._token() if call.auth else None
            request = self._http.build_request(**self._request_args(call, attempts, token))
            try:
                response = await self._http.send(request)
            except httpx.TransportError as exc:
                again = judge_error(call, attempts, exc, now=self._clock(), jitter=self._jitter())
            else:
                result = judge(call, attempts, response, now=self._clock(), jitter=self._jitter(),
                               can_login=self.session.can_login)  # fmt: skip
                if not isinstance(result, Again):
                    return result
                again = result
            if again.relogin:
                async with self._login_lock:
                    self._relogin(token)
            if again.delay > 0:
                await self._sleep(again.delay)

    async def _token(self) -> str | None:
        """The token to send, logging in first when there is none or it is about to expire."""
        async with self._login_lock:
            session = self.session
            if not session.fresh(self._clock()) and session.email is not None and session.password is not None:
                session.update(await self.send(calls.login(session.email, session.password)), self._clock())
            return session.token

    async def login(self, email: str, password: str) -> None:
        """Log in (401 `invalid_credentials` raises `Unauthorized`) and keep the
        credentials, to log in again before the token expires."""
        token = await self.send(calls.login(email, password))
        async with self._login_lock:
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
