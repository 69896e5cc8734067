"""Gateway pieces that need no stack: tokens, addresses, numbers, validation,
outcome mapping and the Avro peek the result listener relies on."""

from __future__ import annotations

import base64
import io
import json
import struct
import time
import uuid
from typing import Any

import fastavro
import jwt
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from gateway.idempotency import fingerprint
from gateway.models import PaymentIn, RegisterIn
from gateway.problems import Problem
from gateway.security import (
    client_ip,
    new_account_number,
    parse_networks,
    password_problem,
    rate_subject,
    valid_account_number,
    verify_token,
)
from gateway.service import outcome_from_event
from paystream.codec import SCHEMA_DIR
from paystream.consumer import peek_command_id

KEY = "k" * 48
ISS = "paystream"


def _claims(**over: Any) -> dict[str, Any]:
    now = int(time.time())
    c = {
        "sub": str(uuid.uuid4()),
        "role": "user",
        "iss": ISS,
        "iat": now,
        "exp": now + 60,
        "jti": str(uuid.uuid4()),
    }
    c.update(over)
    return c


def _code(token: str) -> str:
    with pytest.raises(Problem) as exc:
        verify_token(KEY, ISS, token)
    assert exc.value.status == 401
    return exc.value.code


def test_token_accepts_only_hs256_with_our_key() -> None:
    good = _claims()
    p = verify_token(KEY, ISS, jwt.encode(good, KEY, algorithm="HS256"))
    assert (p.user_id, p.role) == (good["sub"], "user")
    assert _code(jwt.encode(good, "other" * 10, algorithm="HS256")) == "invalid_token"
    now = int(time.time())
    assert _code(jwt.encode(_claims(iat=now - 100, exp=now - 10), KEY, algorithm="HS256")) == "token_expired"
    assert _code(jwt.encode(_claims(role="root"), KEY, algorithm="HS256")) == "invalid_token"
    assert _code(jwt.encode(_claims(iss="evil"), KEY, algorithm="HS256")) == "invalid_token"
    assert _code(jwt.encode(_claims(sub="not-a-uuid"), KEY, algorithm="HS256")) == "invalid_token"
    missing = _claims()
    del missing["jti"]
    assert _code(jwt.encode(missing, KEY, algorithm="HS256")) == "invalid_token"
    enc = lambda d: base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()  # noqa: E731
    assert _code(f"{enc({'alg': 'none', 'typ': 'JWT'})}.{enc(good)}.") == "invalid_token"
    assert _code(jwt.encode(good, KEY, algorithm="HS512")) == "invalid_token"


def test_client_ip_believes_only_trusted_proxies() -> None:
    trusted = parse_networks("127.0.0.1/32, 10.0.0.0/8")
    assert client_ip("192.0.2.7", "203.0.113.9", trusted) == "192.0.2.7"
    assert client_ip("127.0.0.1", "203.0.113.9", trusted) == "203.0.113.9"
    assert client_ip("127.0.0.1", "198.51.100.1, 203.0.113.9, 10.1.2.3", trusted) == "203.0.113.9"
    assert client_ip("127.0.0.1", None, trusted) == "127.0.0.1"
    assert client_ip("127.0.0.1", "garbage", trusted) == "127.0.0.1"
    assert client_ip("127.0.0.1", "203.0.113.9", ()) == "127.0.0.1"


def test_rate_subject_buckets_ipv6_by_64() -> None:
    assert rate_subject("198.51.100.7") == "198.51.100.7"
    assert rate_subject("2001:db8:1:2::1") == rate_subject("2001:db8:1:2:ffff:ffff:ffff:ffff") == "2001:db8:1:2::/64"
    assert rate_subject("2001:db8:1:3::1") != rate_subject("2001:db8:1:2::1")
    assert rate_subject("::ffff:198.51.100.7") == "198.51.100.7"
    assert rate_subject("unknown") == "unknown"


@given(st.integers(min_value=0, max_value=200))
def test_account_numbers_carry_a_check_digit(_: int) -> None:
    n = new_account_number()
    assert valid_account_number(n) and len(n) == 12 and n.startswith("PS")
    for i in range(2, 12):  # any single-digit typo is caught
        for d in "0123456789":
            if d != n[i]:
                assert not valid_account_number(n[:i] + d + n[i + 1 :])


def test_password_policy() -> None:
    assert password_problem("short1A") is not None
    assert password_problem("a" * 12) is not None
    assert password_problem("123456789012") is not None
    assert password_problem("abcdefghijk1") is None
    assert password_problem("x" * 300) is not None


def _payment(**over: Any) -> dict[str, Any]:
    a, b = new_account_number(), new_account_number()
    while b == a:
        b = new_account_number()
    return {"from_account": a, "to_account": b, "amount": "10.50", "currency": "USD", **over}


@pytest.mark.parametrize(("over", "code"), [
    ({"amount": 10.5}, "amount_not_a_string"),
    ({"amount": "10.505"}, "too_many_decimals"),
    ({"amount": "0"}, "non_positive_amount"),
    ({"amount": "-1"}, "non_positive_amount"),
    ({"amount": "1e2"}, "invalid_amount"),
    ({"amount": " 10.00"}, "invalid_amount"),
    ({"amount": "10.00\n"}, "invalid_amount"),
    ({"amount": "\t10.00"}, "invalid_amount"),
    ({"amount": "10000000000000000"}, "amount_too_large"),
    ({"currency": "ZZZ"}, "unknown_currency"),
    ({"to_account": "PS0000000001"}, "invalid_account_number"),
])  # fmt: skip
def test_payment_validation_codes(over: dict[str, Any], code: str) -> None:
    with pytest.raises(ValidationError) as exc:
        PaymentIn.model_validate(_payment(**over))
    assert exc.value.errors()[0]["type"] == code


def test_payment_parses_exact_minor_units() -> None:
    assert PaymentIn.model_validate(_payment(amount="10.5")).minor == 1050
    assert PaymentIn.model_validate(_payment(amount="7", currency="JPY")).minor == 7
    assert PaymentIn.model_validate(_payment(amount="1.234", currency="KWD")).minor == 1234
    assert fingerprint({"a": 1, "b": 2}) == fingerprint({"b": 2, "a": 1})


def test_register_normalises_email() -> None:
    r = RegisterIn.model_validate(
        {
            "email": "  Ada@Example.COM ",
            "password": "abcdefghijk1",
            "name": " Ada ",
            "currency": "EUR",
        }
    )
    assert (r.email, r.name) == ("ada@example.com", "Ada")


def test_outcomes_from_events() -> None:
    ev = {"type": "TRANSFER_COMPLETED", "status": "COMPLETED", "replay": False, "reason": None}
    assert outcome_from_event(ev).status == "completed"  # type: ignore[union-attr]
    rej = {
        "type": "COMMAND_REJECTED",
        "status": "REJECTED",
        "replay": False,
        "reason": "INSUFFICIENT_FUNDS",
    }
    assert outcome_from_event(rej) == outcome_from_event({**rej, "replay": True})
    pending_dup = {"type": "COMMAND_DUPLICATE", "status": "PENDING", "replay": True, "reason": None}
    assert outcome_from_event(pending_dup) is None
    reused = {
        "type": "COMMAND_REJECTED",
        "status": "REJECTED",
        "replay": True,
        "reason": "ID_REUSED_WITH_DIFFERENT_FIELDS",
    }
    assert outcome_from_event(reused).id_reused  # type: ignore[union-attr]


def test_peek_command_id_matches_avro_layout() -> None:
    schema = fastavro.parse_schema(json.loads((SCHEMA_DIR / "ledger_event.avsc").read_text()))
    cid = str(uuid.uuid4())
    event = {
        "event_id": str(uuid.uuid4()), "command_id": cid, "payment_id": cid,
        "account_id": str(uuid.uuid4()), "sequence": 1, "type": "DEPOSITED",
        "command_type": "DEPOSIT", "status": "COMPLETED", "terminal": True, "replay": False,
        "reason": None, "counterparty_id": None, "amount": 1, "currency": "USD",
        "balance_after": 1, "postings": [], "account": None, "requested_by": "t", "note": None,
        "metadata": {}, "occurred_at": 0,
    }  # fmt: skip
    buf = io.BytesIO()
    buf.write(struct.pack(">bI", 0, 42))
    fastavro.schemaless_writer(buf, schema, event)
    assert peek_command_id(buf.getvalue()) == cid
    assert peek_command_id(b"\x00\x00\x00\x00\x01short") is None


def test_a_reversal_in_the_read_model_wins_over_the_cached_completion(monkeypatch: pytest.MonkeyPatch) -> None:
    """GET /v1/payments/{id} answered `completed` for a week after a reversal: the
    record cached when the POST answered was read, and the read model only while
    that record was pending."""
    import asyncio

    from gateway import store
    from gateway.routes import payments
    from gateway.security import Principal

    pid = str(uuid.uuid4())
    cached = {"id": pid, "object": "payment", "status": "completed", "reason": None, "owners": ["u1"],
              "reason_code": None, "amount": "10.00", "currency": "USD"}

    class FakeGateway:
        pool = None

        async def cached_payment(self, payment_id: str) -> dict[str, Any]:
            return dict(cached)

    async def row(pool: Any, payment_id: str) -> dict[str, Any]:
        return {"payment_id": payment_id, "status": "REVERSED", "reason": None}

    monkeypatch.setattr(store, "payment_row", row)
    view = asyncio.run(payments._payment_view(FakeGateway(), Principal("u1", "user"), pid))  # type: ignore[arg-type]
    assert view is not None and view["status"] == "reversed"
    assert "owners" not in view
    # someone else's payment stays hidden, whatever the read model says
    assert asyncio.run(payments._payment_view(FakeGateway(), Principal("u2", "user"), pid)) is None  # type: ignore[arg-type]


def test_a_read_model_row_describes_only_its_own_movement() -> None:
    from gateway.service import describes
    from paystream import commands as C

    src, dst = str(uuid.uuid4()), str(uuid.uuid4())
    cmd = C.transfer(src, dst, 3000, "USD", command_id=str(uuid.uuid4()), metadata={"description": "rent"})
    row = {"kind": "TRANSFER", "from_account": uuid.UUID(src), "to_account": uuid.UUID(dst),
           "amount": 3000, "currency": "USD", "description": "rent"}
    assert describes(row, cmd)
    assert not describes({**row, "amount": 3100}, cmd)
    assert not describes({**row, "to_account": uuid.uuid4()}, cmd)
    assert not describes({**row, "description": "groceries"}, cmd)
    # columns the read model has not filled (yet) say nothing: a rejected payment's
    # row has no description, a completed one gets it with the sender's debit
    assert describes({**row, "description": None, "from_account": None}, cmd)
    plain = C.transfer(src, dst, 3000, "USD", command_id=str(uuid.uuid4()))
    assert not describes(row, plain)  # the row has a description the request does not
    assert not describes({**row, "kind": "DEPOSIT"}, cmd)
    dep = C.deposit(dst, 3000, "USD", command_id=str(uuid.uuid4()))
    assert describes({**row, "kind": "DEPOSIT", "from_account": None, "description": None}, dep)
