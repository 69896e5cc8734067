"""Every API operation, once, as data: which request to send, whether it may be sent
again, how to read its answer.

`Client` and `AsyncClient` are built from these builders (`Client.create_payment`
is `calls.create_payment` sent by the sync engine), so the two clients cannot
drift apart and each operation is tested without a network. The routes they call
are in gateway/routes/ and gateway/README.md.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx

from paystream.client.models import (
    Account,
    AccountStatus,
    Balance,
    Json,
    Payment,
    Registration,
    Review,
    Statement,
    StatementLine,
    Token,
    Transaction,
    User,
    WebhookEndpoint,
)
from paystream.errors import MoneyError
from paystream.money import Money

T = TypeVar("T")
R = TypeVar("R")

Amount = Decimal | str
"""An amount in the currency's units: a `Decimal` or a decimal string (``"12.50"``),
never a float. Checked here exactly as the gateway checks it (`paystream.money`)."""

PAGE_SIZE = 100  # the API's largest page: fewer round trips when walking a list
DEFAULT_WAIT = 30.0  # seconds a payment call waits for the ledger's outcome by default


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """One request and how to read its answer.

    `key` is the Idempotency-Key, fixed when the call is built so that every retry
    sends the same one. `safe` says the request may be sent again after a failure
    that may have reached the server (reads, login, keyed writes); other calls are
    retried only when they surely did not (connection refused, 429). `wait` is the
    caller's budget for the ledger's outcome (`Prefer: wait`); with `follow`, a 202 is
    sent again with the same key until an outcome or the end of the budget."""

    method: str
    path: str
    read: Callable[[httpx.Response], T]
    params: Mapping[str, str | int] | None = None
    json: Any = None
    key: str | None = None
    safe: bool = True
    wait: float | None = None
    follow: bool = False
    auth: bool = True
    accept: str = "application/json"


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: tuple[T, ...]
    has_more: bool
    body: Json


@dataclass(frozen=True, slots=True)
class Listing(Generic[T]):
    """A cursor-paginated list: pages of `limit` items, the next one `starting_after`
    the last item of the previous one, until `has_more` is false. `pin` names members
    of the first page sent back as parameters on every later page (a statement's
    window, so that "now" does not move between pages)."""

    path: str
    item: Callable[[Json], T]
    cursor: Callable[[T], str]
    params: Mapping[str, str | int]
    pin: tuple[str, ...] = ()

    def first(self) -> Call[Page[T]]:
        return self._call(self.params)

    def next(self, page: Page[T]) -> Call[Page[T]] | None:
        """The call for the page after `page`, or None when it was the last."""
        if not page.has_more or not page.items:
            return None
        pinned = {name: page.body[name] for name in self.pin}
        return self._call({**self.params, **pinned, "starting_after": self.cursor(page.items[-1])})

    def _call(self, params: Mapping[str, str | int]) -> Call[Page[T]]:
        def read(response: httpx.Response) -> Page[T]:
            body = response.json()
            return Page(tuple(self.item(x) for x in body["data"]), bool(body["has_more"]), body)

        return Call("GET", self.path, read, params=params)


@dataclass(frozen=True, slots=True)
class Gathered(Generic[T, R]):
    """A listing read whole and made into one value (a statement from its pages)."""

    listing: Listing[T]
    combine: Callable[[Sequence[Page[T]]], R]


# ------------------------------------------------------------------ helpers


def _path(template: str, *parts: str) -> str:
    """A path with its parameters percent-encoded (an account number is one segment)."""
    return template.format(*(quote(p, safe="") for p in parts))


def _key(given: str | None) -> str:
    return given if given is not None else str(uuid.uuid4())


def _amount(value: Amount, currency: str) -> str:
    """The API's decimal string, refused here for what the gateway would refuse."""
    money = Money.from_decimal(value, currency) if isinstance(value, Decimal) else Money.parse(value, currency)
    return money.format()


def _capture_amount(value: Amount) -> str:
    """A capture's amount as a decimal string. Its currency is the hold's, which only
    the gateway knows, so the decimals are checked there; a float is refused here."""
    if isinstance(value, Decimal) and value.is_finite():
        return format(value.normalize(), "f")
    if isinstance(value, str):
        return value
    raise MoneyError(f"amount must be a Decimal or a decimal string, not {value!r}", code="invalid_amount")


def _time(value: datetime) -> str:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("times need their offset: the API never guesses a zone (use datetime.now(UTC))")
    return value.isoformat()


def _json(parse: Callable[[Json], T]) -> Callable[[httpx.Response], T]:
    return lambda response: parse(response.json())


def _nothing(response: httpx.Response) -> None:
    return None


def _text(response: httpx.Response) -> str:
    return response.text


def _list(parse: Callable[[Json], T]) -> Callable[[httpx.Response], list[T]]:
    def read(response: httpx.Response) -> list[T]:
        body = response.json()
        return [parse(x) for x in (body["data"] if isinstance(body, dict) else body)]

    return read


def _movement(path: str, amount: Amount, currency: str, description: str | None, key: str | None,
              wait: float, extra: Mapping[str, Any] | None = None) -> Call[Payment]:  # fmt: skip
    body: dict[str, Any] = {"amount": _amount(amount, currency), "currency": currency, **(extra or {})}
    if description is not None:
        body["description"] = description
    return Call("POST", path, _json(Payment.from_api), json=body, key=_key(key), wait=wait, follow=True)


# ------------------------------------------------------------------ auth and users


def register(email: str, password: str, name: str, currency: str) -> Call[Registration]:
    """Create a user and their first account (status `opening` until the ledger
    opened it). Does not log in: call `login` next. 409 `email_taken`."""
    body = {"email": email, "password": password, "name": name, "currency": currency}
    return Call("POST", "/v1/auth/register", _json(Registration.from_api), json=body, safe=False, auth=False)


def login(email: str, password: str) -> Call[Token]:
    return Call("POST", "/v1/auth/login", _json(Token.from_api), json={"email": email, "password": password},
                auth=False)  # fmt: skip


def me() -> Call[User]:
    """The logged-in user."""
    return Call("GET", "/v1/me", _json(User.from_api))


# ------------------------------------------------------------------ accounts


def list_accounts() -> Call[list[Account]]:
    """The caller's accounts (at most `gateway_max_accounts_per_user`, one page)."""
    return Call("GET", "/v1/accounts", _list(Account.from_api))


def get_account(account_number: str) -> Call[Account]:
    return Call("GET", _path("/v1/accounts/{}", account_number), _json(Account.from_api))


def open_account(currency: str, *, idempotency_key: str | None = None) -> Call[Account]:
    """Open another account for the caller in `currency`. A retry with the same key
    finds the account the first call opened. 409 `too_many_accounts`."""
    return Call("POST", "/v1/accounts", _json(Account.from_api), json={"currency": currency},
                key=_key(idempotency_key))  # fmt: skip


def balance(account_number: str, *, at: datetime | None = None) -> Call[Balance]:
    """The posted balance as of `at` (default now), from the journal."""
    params = {"at": _time(at)} if at is not None else None
    return Call("GET", _path("/v1/accounts/{}/balance", account_number), _json(Balance.from_api), params=params)


def _window(start: datetime | None, end: datetime | None) -> dict[str, str | int]:
    params: dict[str, str | int] = {}
    if start is not None:
        params["from"] = _time(start)
    if end is not None:
        params["to"] = _time(end)
    return params


def statement(
    account_number: str, *, start: datetime | None = None, end: datetime | None = None, page_size: int = PAGE_SIZE
) -> Gathered[StatementLine, Statement]:
    """The statement of the window [start, end) (defaults: the beginning, now), every
    page of it: opening balance, each posting with its running balance, closing
    balance. The window of the first page is kept for the others."""
    params = {**_window(start, end), "limit": page_size}
    listing = Listing(_path("/v1/accounts/{}/statement", account_number), StatementLine.from_api,
                      lambda line: line.id, params, pin=("from", "to"))  # fmt: skip
    return Gathered(listing, lambda pages: Statement.of(pages[0].body, [x for p in pages for x in p.items]))


def statement_csv(account_number: str, *, start: datetime | None = None, end: datetime | None = None) -> Call[str]:
    """The same window as CSV text (the whole window, with opening and closing rows)."""
    return Call("GET", _path("/v1/accounts/{}/statement", account_number), _text, params=_window(start, end),
                accept="text/csv")  # fmt: skip


def list_transactions(account_number: str, *, page_size: int = PAGE_SIZE) -> Listing[Transaction]:
    """Every posting of the account, newest first, fetched a page at a time."""
    return Listing(_path("/v1/accounts/{}/transactions", account_number), Transaction.from_api,
                   lambda t: t.id, {"limit": page_size})  # fmt: skip


def list_holds(account_number: str, *, limit: int = PAGE_SIZE) -> Call[list[Payment]]:
    """The account's open holds (payments `requires_capture`), soonest to lapse first."""
    return Call("GET", _path("/v1/accounts/{}/holds", account_number), _list(Payment.from_api),
                params={"limit": limit})  # fmt: skip


# ------------------------------------------------------------------ payments


def create_payment(
    from_account: str,
    to_account: str,
    amount: Amount,
    currency: str,
    *,
    description: str | None = None,
    capture: bool = True,
    hold_seconds: int | None = None,
    idempotency_key: str | None = None,
    wait: float = DEFAULT_WAIT,
) -> Call[Payment]:
    """Move `amount` from one of the caller's accounts to any account.

    Returns the payment once the ledger answered (`completed`, or `requires_capture`
    with ``capture=False``: only a hold on `from_account`, for `hold_seconds` or the
    ledger's default), raises `PaymentRefused` when it refused (`code` is the reason).
    If no outcome came within `wait` seconds the payment is returned `pending`: ask
    again with `get_payment`, or call again with the same `idempotency_key`.
    A key is generated when none is given and sent unchanged on every retry, so a
    retried call never pays twice."""
    extra: dict[str, Any] = {"from_account": from_account, "to_account": to_account}
    if not capture:
        extra["capture"] = False
    if hold_seconds is not None:
        extra["hold_seconds"] = hold_seconds
    return _movement("/v1/payments", amount, currency, description, idempotency_key, wait, extra)


def get_payment(payment_id: str) -> Call[Payment]:
    return Call("GET", _path("/v1/payments/{}", payment_id), _json(Payment.from_api))


def list_payments(*, page_size: int = PAGE_SIZE) -> Listing[Payment]:
    """Payments from or to the caller's accounts, newest first, a page at a time."""
    return Listing("/v1/payments", Payment.from_api, lambda p: p.id, {"limit": page_size})


def capture_payment(
    payment_id: str, amount: Amount | None = None, *, idempotency_key: str | None = None, wait: float = DEFAULT_WAIT
) -> Call[Payment]:
    """Capture an authorized payment: all of it, or `amount` (the rest is released).
    Either party may. `PaymentRefused` with `hold_expired`, `hold_voided`,
    `hold_captured` or `capture_exceeds_hold`."""
    body = None if amount is None else {"amount": _capture_amount(amount)}
    return Call("POST", _path("/v1/payments/{}/capture", payment_id), _json(Payment.from_api), json=body,
                key=_key(idempotency_key), wait=wait, follow=True)  # fmt: skip


def cancel_payment(payment_id: str, *, idempotency_key: str | None = None, wait: float = DEFAULT_WAIT) -> Call[Payment]:
    """Release an authorized payment's hold (status `canceled`). Either party may."""
    return Call("POST", _path("/v1/payments/{}/cancel", payment_id), _json(Payment.from_api),
                key=_key(idempotency_key), wait=wait, follow=True)  # fmt: skip


# ------------------------------------------------------------------ webhooks


def create_webhook_endpoint(url: str) -> Call[WebhookEndpoint]:
    """Register an endpoint for the caller's notifications. The answer carries the
    signing `secret`, shown this once (verify deliveries with `paystream.webhooks`)."""
    return Call("POST", "/v1/webhooks", _json(WebhookEndpoint.from_api), json={"url": url}, safe=False)


def list_webhook_endpoints() -> Call[list[WebhookEndpoint]]:
    return Call("GET", "/v1/webhooks", _list(WebhookEndpoint.from_api))


def delete_webhook_endpoint(endpoint_id: str) -> Call[None]:
    """Deactivate an endpoint; its pending deliveries stop."""
    return Call("DELETE", _path("/v1/webhooks/{}", endpoint_id), _nothing)


# ------------------------------------------------------------------ admin


def deposit(
    account_number: str, amount: Amount, currency: str, *, description: str | None = None,
    idempotency_key: str | None = None, wait: float = DEFAULT_WAIT,
) -> Call[Payment]:  # fmt: skip
    """Money entering an account from outside (admin only); idempotent like payments."""
    return _movement(_path("/v1/accounts/{}/deposits", account_number), amount, currency, description,
                     idempotency_key, wait)  # fmt: skip


def withdraw(
    account_number: str, amount: Amount, currency: str, *, description: str | None = None,
    idempotency_key: str | None = None, wait: float = DEFAULT_WAIT,
) -> Call[Payment]:  # fmt: skip
    """Money leaving an account to the outside (admin only); idempotent like payments."""
    return _movement(_path("/v1/accounts/{}/withdrawals", account_number), amount, currency, description,
                     idempotency_key, wait)  # fmt: skip


def _status_change(action: str, account_number: str, reason: str, wait: float) -> Call[AccountStatus]:
    return Call("POST", _path("/v1/admin/accounts/{}/" + action, account_number), _json(AccountStatus.from_api),
                json={"reason": reason} if reason else None, safe=False, wait=wait)  # fmt: skip


def freeze(account_number: str, *, reason: str = "", wait: float = DEFAULT_WAIT) -> Call[AccountStatus]:
    """Freeze an account (admin only): it can neither send nor receive. 409
    `already_frozen`; status `pending` when the ledger did not answer within `wait`."""
    return _status_change("freeze", account_number, reason, wait)


def unfreeze(account_number: str, *, reason: str = "", wait: float = DEFAULT_WAIT) -> Call[AccountStatus]:
    """Unfreeze an account (admin only). 409 `not_frozen`."""
    return _status_change("unfreeze", account_number, reason, wait)


# ------------------------------------------------------------------ the fraud review queue (admin)


def list_reviews(
    *, status: str | None = None, risk: str | None = None, account: str | None = None, page_size: int = PAGE_SIZE
) -> Listing[Review]:
    """The review queue, newest first, a page at a time: `status` `open`, `approved`
    or `rejected`; `risk` `MEDIUM` or `HIGH`; `account` the sending account's number."""
    params: dict[str, str | int] = {"limit": page_size}
    for name, value in (("status", status), ("risk", risk), ("account", account)):
        if value is not None:
            params[name] = value
    return Listing("/v1/admin/reviews", Review.from_api, lambda r: r.id, params)


def get_review(review_id: str) -> Call[Review]:
    return Call("GET", _path("/v1/admin/reviews/{}", review_id), _json(Review.from_api))


def _decide(verdict: str, review_id: str, note: str | None) -> Call[Review]:
    # Not sent again after a failure that may have reached the gateway: a decision is
    # final, so the repeat would be 409 `review_already_decided` instead of the answer.
    return Call("POST", _path("/v1/admin/reviews/{}/" + verdict, review_id), _json(Review.from_api),
                json={"note": note} if note is not None else None, safe=False)  # fmt: skip


def approve_review(review_id: str, *, note: str | None = None) -> Call[Review]:
    """Approve an open review: the sender is released (a HIGH alert froze it).
    409 `review_already_decided` (`Conflict`) when it was decided already."""
    return _decide("approve", review_id, note)


def reject_review(review_id: str, *, note: str | None = None) -> Call[Review]:
    """Reject an open review: the transfer is reversed and the receiver frozen. The
    note stays with the review (the parties are told generic reasons)."""
    return _decide("reject", review_id, note)
