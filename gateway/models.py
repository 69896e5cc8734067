"""Request and response bodies. Requests are strict: unknown fields are refused and
money is a decimal string checked against its currency, so a client bug shows up
as a 422 naming the field instead of a payment for the wrong amount."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator
from pydantic_core import PydanticCustomError

from gateway.security import normalise_email, password_problem, valid_account_number, valid_email
from paystream.errors import MoneyError, UnknownCurrencyError
from paystream.money import MAX_AMOUNT_MINOR, Money, is_currency

AMOUNT_SCHEMA: dict[str, Any] = {
    "type": "string", "pattern": r"^(0|[1-9][0-9]{0,17})(\.[0-9]{1,3})?$", "examples": ["100.50"],
    "description": "decimal string in the currency's units; never a JSON number",
}  # fmt: skip
NUMBER_SCHEMA: dict[str, Any] = {
    "type": "string",
    "pattern": r"^PS[0-9]{10}$",
    "examples": ["PS1234567897"],
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_max_length=1024)


def examples(*items: dict[str, Any], **config: Any) -> ConfigDict:
    """A model's examples, as OpenAPI shows them (every route has a request and a
    response example: tests/unit/test_openapi_examples.py)."""
    return ConfigDict(json_schema_extra={"examples": list(items)}, **config)  # type: ignore[typeddict-item]


# The accounts and payment the examples speak of.
EX_A, EX_B = "PS0780311395", "PS4455430399"
EX_PAYMENT = "4f0414ad-dfd8-59e7-bc1a-0c86c69a3738"
EX_TIME = "2026-12-03T10:11:21.000Z"
EX_ACCOUNT = {"account_number": EX_A, "currency": "EUR", "status": "active", "balance": "87.50",
              "posted": "87.50", "available": "57.50", "created_at": "2026-12-01T09:00:00.000Z"}
EX_PAYMENT_OUT = {
    "id": EX_PAYMENT, "object": "payment", "kind": "transfer", "status": "completed", "from_account": EX_A,
    "to_account": EX_B, "amount": "12.50", "currency": "EUR", "description": "rent", "reason": None,
    "created_at": EX_TIME,
}
EX_HOLD_OUT = {**EX_PAYMENT_OUT, "status": "requires_capture", "amount": "30.00", "amount_authorized": "30.00",
               "expires_at": "2026-12-10T10:11:21.000Z"}
EX_TRANSACTION = {"id": "9b2f5f0e-3c1a-5d7e-8f2a-1b2c3d4e5f60", "type": "transfer_debited", "payment_id": EX_PAYMENT,
                  "amount": "-12.50", "currency": "EUR", "balance_after": "87.50", "counterparty": EX_B,
                  "occurred_at": EX_TIME}


def _currency(v: Any) -> str:
    if not isinstance(v, str) or not is_currency(v):
        raise PydanticCustomError("unknown_currency", "currency must be a supported ISO 4217 code")
    return v


def _account_number(v: Any) -> str:
    if not isinstance(v, str) or not valid_account_number(v):
        raise PydanticCustomError(
            "invalid_account_number", "not a valid account number (PS + 10 digits with check digit)"
        )
    return v


class MoneyIn(_Strict):
    amount: str = Field(json_schema_extra=AMOUNT_SCHEMA)
    currency: str = Field(json_schema_extra={"pattern": "^[A-Z]{3}$", "examples": ["USD"]})
    description: str | None = Field(default=None, max_length=140)
    _minor: int = PrivateAttr(default=0)

    @field_validator("amount", mode="before")
    @classmethod
    def _amount_is_text(cls, v: Any) -> Any:
        if not isinstance(v, str):
            raise PydanticCustomError(
                "amount_not_a_string",
                'amount must be a decimal string such as "100.50", not a number',
            )
        return v

    @field_validator("currency", mode="before")
    @classmethod
    def _currency_known(cls, v: Any) -> str:
        return _currency(v)

    @model_validator(mode="after")
    def _parse_money(self) -> MoneyIn:
        try:
            money = Money.parse(self.amount, self.currency)
        except UnknownCurrencyError as exc:
            raise PydanticCustomError("unknown_currency", exc.detail) from None
        except MoneyError as exc:
            raise PydanticCustomError(exc.code, exc.detail) from None
        if money.minor <= 0:
            raise PydanticCustomError("non_positive_amount", "amount must be greater than zero")
        if money.minor > MAX_AMOUNT_MINOR:
            raise PydanticCustomError("amount_too_large", "amount exceeds the largest allowed movement")
        self._minor = money.minor
        return self

    @property
    def minor(self) -> int:
        return self._minor


class PaymentIn(MoneyIn):
    model_config = examples(
        {"from_account": EX_A, "to_account": EX_B, "amount": "12.50", "currency": "EUR", "description": "rent"},
        {"from_account": EX_A, "to_account": EX_B, "amount": "30.00", "currency": "EUR", "capture": False,
         "hold_seconds": 86400},
    )  # fmt: skip

    from_account: str = Field(json_schema_extra=NUMBER_SCHEMA)
    to_account: str = Field(json_schema_extra=NUMBER_SCHEMA)
    capture: bool = Field(
        default=True,
        description="false: only authorize (a hold on from_account); the payment answers requires_capture "
        "and moves money once captured (POST /v1/payments/{id}/capture), or never if canceled or expired",
    )
    hold_seconds: int | None = Field(
        default=None, gt=0,
        description="with capture=false: how long the hold lasts (the ledger's default when omitted; "
        "above its maximum the payment is rejected invalid_expiry)",
    )  # fmt: skip

    @model_validator(mode="after")
    def _hold_needs_authorize(self) -> PaymentIn:
        if self.hold_seconds is not None and self.capture:
            raise PydanticCustomError("validation_error", "hold_seconds applies only with capture=false")
        return self

    @field_validator("from_account", "to_account", mode="before")
    @classmethod
    def _numbers(cls, v: Any) -> str:
        return _account_number(v)

    @model_validator(mode="after")
    def _distinct(self) -> PaymentIn:
        if self.from_account == self.to_account:
            raise PydanticCustomError("same_account", "from_account and to_account must differ")
        return self


class MovementIn(MoneyIn):
    model_config = examples({"amount": "100.00", "currency": "EUR", "description": "top-up"})


class CaptureIn(_Strict):
    """The amount to capture, at most the authorized amount; all of it when omitted."""

    model_config = examples({"amount": "12.50"}, {})

    amount: str | None = Field(default=None, json_schema_extra=AMOUNT_SCHEMA)

    @field_validator("amount", mode="before")
    @classmethod
    def _amount_is_text(cls, v: Any) -> Any:
        if v is not None and not isinstance(v, str):
            raise PydanticCustomError(
                "amount_not_a_string", 'amount must be a decimal string such as "100.50", not a number'
            )
        return v


class AccountIn(_Strict):
    model_config = examples({"currency": "USD"})
    currency: str = Field(json_schema_extra={"pattern": "^[A-Z]{3}$", "examples": ["EUR"]})

    @field_validator("currency", mode="before")
    @classmethod
    def _currency_known(cls, v: Any) -> str:
        return _currency(v)


class StatusChangeIn(_Strict):
    model_config = examples({"reason": "chargeback under review"})
    reason: str = Field(default="", max_length=200)


class RegisterIn(_Strict):
    model_config = examples({"email": "ada@example.com", "password": "Correct horse 42", "name": "Ada",
                             "currency": "EUR"})
    email: str = Field(max_length=254, json_schema_extra={"examples": ["ada@example.com"]})
    password: str = Field(max_length=256)
    name: str = Field(min_length=1, max_length=100)
    currency: str = Field(json_schema_extra={"pattern": "^[A-Z]{3}$", "examples": ["EUR"]})

    @field_validator("currency", mode="before")
    @classmethod
    def _currency_known(cls, v: Any) -> str:
        return _currency(v)

    @field_validator("email", mode="after")
    @classmethod
    def _email(cls, v: str) -> str:
        v = normalise_email(v)
        if not valid_email(v):
            raise PydanticCustomError("invalid_email", "not a valid email address")
        return v

    @field_validator("password", mode="after")
    @classmethod
    def _password(cls, v: str) -> str:
        problem = password_problem(v)
        if problem:
            raise PydanticCustomError("weak_password", problem)
        return v

    @field_validator("name", mode="after")
    @classmethod
    def _name(cls, v: str) -> str:
        v = v.strip()
        if not v:
            raise PydanticCustomError("validation_error", "name must not be blank")
        return v


class LoginIn(_Strict):
    model_config = examples({"email": "ada@example.com", "password": "Correct horse 42"})
    email: str = Field(max_length=254)
    password: str = Field(max_length=256)


# ------------------------------------------------------------------ responses (docs)


class AccountOut(BaseModel):
    model_config = examples(EX_ACCOUNT)
    account_number: str
    currency: str
    status: Literal["opening", "active", "frozen", "closed"]
    balance: str = Field(description="the posted balance (kept for clients written before holds)")
    posted: str = Field(description="the sum of the account's postings: money that has moved")
    available: str = Field(description="posted minus what holds reserve: what a payment may spend now")
    created_at: str | None = None


class LedgerIdOut(BaseModel):
    model_config = examples({"object": "ledger_id", "account_number": EX_A,
                             "account_id": "0c6f3f2e-5a1b-4c7d-9e8f-1a2b3c4d5e6f"})
    object: Literal["ledger_id"]
    account_number: str
    account_id: str = Field(description="the ledger's id of the account (a UUID): what Kafka-direct producers put "
                            "in commands and find in ledger.events (docs/SDK.md)")


class UserOut(BaseModel):
    model_config = examples({"id": "8d8a7703-dafe-4d84-bf32-09288bb3d09c", "email": "ada@example.com",
                             "name": "Ada", "role": "user", "created_at": "2026-12-01T09:00:00.000Z"})
    id: str
    email: str
    name: str
    role: str
    created_at: str


class RegisterOut(BaseModel):
    model_config = examples({
        "user": {"id": "8d8a7703-dafe-4d84-bf32-09288bb3d09c", "email": "ada@example.com", "name": "Ada",
                 "role": "user", "created_at": "2026-12-01T09:00:00.000Z"},
        "account": {**EX_ACCOUNT, "status": "opening", "balance": "0.00", "posted": "0.00", "available": "0.00"},
    })  # fmt: skip
    user: UserOut
    account: AccountOut


class TokenOut(BaseModel):
    model_config = examples({"access_token": "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9…", "token_type": "Bearer",
                             "expires_in": 3600})
    access_token: str
    token_type: Literal["Bearer"]
    expires_in: int


class PaymentOut(BaseModel):
    model_config = examples(EX_PAYMENT_OUT, EX_HOLD_OUT)
    id: str
    object: Literal["payment"]
    kind: Literal["transfer", "deposit", "withdrawal"]
    status: Literal[
        "requires_capture", "pending", "completed", "failed", "rejected", "reversed", "canceled", "expired"
    ]
    from_account: str | None
    to_account: str | None
    amount: str = Field(description="what moved or moves; for an uncaptured hold, what it holds")
    currency: str
    description: str | None
    reason: str | None
    created_at: str
    amount_authorized: str | None = Field(default=None, description="a hold's authorized amount")
    expires_at: str | None = Field(default=None, description="when an uncaptured hold lapses")


class TransactionOut(BaseModel):
    model_config = examples(EX_TRANSACTION)
    id: str
    type: str
    payment_id: str
    amount: str
    currency: str
    balance_after: str
    counterparty: str | None
    occurred_at: str


class BalanceOut(BaseModel):
    model_config = examples({"object": "balance", "account_number": EX_A, "currency": "EUR",
                             "at": "2026-12-01T00:00:00.000Z", "balance": "100.00"})
    object: Literal["balance"]
    account_number: str
    currency: str
    at: str
    balance: str


class StatementLineOut(TransactionOut):
    description: str | None


class Page(BaseModel):
    object: Literal["list"]
    has_more: bool


class AccountList(Page):
    model_config = examples({"object": "list", "has_more": False, "data": [EX_ACCOUNT]})
    data: list[AccountOut]


class PaymentList(Page):
    model_config = examples({"object": "list", "has_more": True, "data": [EX_PAYMENT_OUT, EX_HOLD_OUT]})
    data: list[PaymentOut]


class TransactionList(Page):
    model_config = examples({"object": "list", "has_more": False, "data": [EX_TRANSACTION]})
    data: list[TransactionOut]


class StatementOut(Page):
    model_config = examples({
        "object": "list", "has_more": False, "account_number": EX_A, "currency": "EUR",
        "from": "2026-12-01T00:00:00.000Z", "to": "2026-12-04T00:00:00.000Z", "opening_balance": "100.00",
        "closing_balance": "87.50", "data": [{**EX_TRANSACTION, "description": "rent"}],
    })  # fmt: skip
    account_number: str
    currency: str
    start: str = Field(alias="from")
    to: str
    opening_balance: str
    closing_balance: str
    data: list[StatementLineOut]


# ------------------------------------------------------------------ the fraud review queue (admin)

EX_REVIEW = {
    "id": "1331832a-7ead-5421-8a79-2d7e4e89d5b7", "object": "review", "payment_id": EX_PAYMENT,
    "from_account": EX_A, "to_account": EX_B, "amount": "12000.00", "currency": "EUR", "score": 130,
    "risk": "HIGH",
    "reasons": [{"rule": "HIGH_VALUE", "score": 80, "detail": "12000.00 EUR >= threshold 10000.00 EUR"}],
    "detected_at": EX_TIME, "status": "rejected", "decision_id": "2b3c4d5e-6f70-4812-9a3b-4c5d6e7f8091",
    "decided_by": "8d8a7703-dafe-4d84-bf32-09288bb3d09c", "decided_by_email": "admin@example.com",
    "decided_at": EX_TIME, "note": "mule account: refund the sender",
}  # fmt: skip


class DecisionIn(BaseModel):
    model_config = examples({"note": "mule account: refund the sender"}, {}, extra="forbid")
    note: str | None = Field(default=None, max_length=2000, pattern=r"^[^\x00]*$")


class RuleHitOut(BaseModel):
    rule: str
    score: int
    detail: str


class ReviewOut(BaseModel):
    """A fraud alert waiting for (or given) an admin's decision. Its id is the alert's."""

    model_config = examples(EX_REVIEW, {**EX_REVIEW, "status": "open", "decision_id": None, "decided_by": None,
                                        "decided_by_email": None, "decided_at": None, "note": None})
    id: str
    object: Literal["review"]
    payment_id: str
    from_account: str | None = Field(description="the sender's account number (frozen when risk is HIGH); null "
                                     "for an account opened on Kafka directly, which has none")
    to_account: str | None = Field(description="the receiver's account number, as from_account")
    amount: str
    currency: str
    score: int
    risk: Literal["MEDIUM", "HIGH"]
    reasons: list[RuleHitOut]
    detected_at: str
    status: Literal["open", "approved", "rejected"]
    decision_id: str | None
    decided_by: str | None = Field(description="the user id of the admin who decided")
    decided_by_email: str | None
    decided_at: str | None
    note: str | None


class ReviewList(Page):
    model_config = examples({"object": "list", "has_more": True, "data": [EX_REVIEW]})
    data: list[ReviewOut]


class StatusOut(BaseModel):
    model_config = examples({"account_number": EX_A, "status": "frozen"})
    account_number: str
    status: str
