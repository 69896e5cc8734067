"""`paystream.webhooks`: what a receiver runs on a delivery (the worker signs with the
same module)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from paystream import webhooks
from paystream.errors import PaystreamError

SECRET = "whsec_test"
T = 1_700_000_000
BODY = json.dumps({"id": "n1", "type": "PAYMENT_RECEIVED", "created_at": T * 1000,
                   "data": {"user_id": "u", "amount": 1234, "currency": "EUR"}})  # fmt: skip


def test_construct_event_verifies_and_parses() -> None:
    header = webhooks.sign(SECRET, BODY, t=T)
    for payload in (BODY, BODY.encode()):  # the raw body, as text or bytes
        event = webhooks.construct_event(payload, header, SECRET, now=T + 10)
        assert (event.id, event.type, event.amount) == ("n1", "PAYMENT_RECEIVED", Decimal("12.34"))
        assert event.created_at == datetime.fromtimestamp(T, UTC)


@pytest.mark.parametrize(
    ("payload", "header", "secret", "now", "why"),
    [
        (BODY.replace("1234", "9999"), None, SECRET, T, "no signature matches"),
        (BODY, None, "whsec_other", T, "no signature matches"),
        (BODY, None, SECRET, T + 301, "tolerance"),
        (BODY, f"t={T}", SECRET, T, "no v1"),
        (BODY, "v1=abc", SECRET, T, "no timestamp"),
        (BODY, "t=soon,v1=abc", SECRET, T, "not an integer"),
        (BODY, "", SECRET, T, "no Paystream-Signature"),
    ],
)
def test_a_tampered_forged_or_old_delivery_is_refused_saying_why(payload, header, secret, now, why) -> None:
    header = webhooks.sign(SECRET, BODY, t=T) if header is None else header
    assert not webhooks.verify(payload, header, secret, now=now)
    with pytest.raises(webhooks.SignatureVerificationError, match=why) as err:
        webhooks.construct_event(payload, header, secret, now=now)
    assert isinstance(err.value, PaystreamError) and err.value.code == "invalid_signature"


def test_any_of_several_signatures_may_match() -> None:
    """While a secret is rotated a header may carry a v1 per secret."""
    good = webhooks.sign(SECRET, BODY, t=T).split(",")[1]
    assert webhooks.verify(BODY, f"t={T},v1={'0' * 64},{good}", SECRET, now=T)


def test_a_signed_body_that_is_not_an_event_is_its_own_error() -> None:
    header = webhooks.sign(SECRET, "[1, 2]", t=T)
    with pytest.raises(webhooks.InvalidPayload):
        webhooks.construct_event("[1, 2]", header, SECRET, now=T)


@given(st.text(), st.integers(0, 2**40))
def test_sign_then_verify(body: str, t: int) -> None:
    assert webhooks.verify(body, webhooks.sign(SECRET, body, t=t), SECRET, now=t)
    assert webhooks.verify(body.encode(), webhooks.sign(SECRET, body, t=t), SECRET, now=t)
