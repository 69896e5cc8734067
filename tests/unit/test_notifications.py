"""Notification mapping, webhook signatures and the retry policy, without services."""

from __future__ import annotations

import random
import uuid

import pytest

from gateway.routes.webhooks import url_problem
from paystream import webhooks as signing
from paystream.settings import Settings
from pipelines.notifications.domain import (
    decision_notification,
    notification_for,
    notification_id,
)
from pipelines.notifications.webhooks import (
    WebhookPolicy,
    after_failure,
    backoff_delay,
    body_of,
)

OWNER = str(uuid.uuid4())


def event(etype: str, **kw) -> dict:
    ev = {"event_id": str(uuid.uuid4()), "payment_id": str(uuid.uuid4()),
          "account_id": str(uuid.uuid4()), "type": etype, "command_type": "TRANSFER",
          "replay": False, "amount": 500, "currency": "EUR", "reason": None, "note": None,
          "occurred_at": 1_700_000_000_000}
    ev.update(kw)
    return ev


def decision(**kw) -> dict:
    d = {"decision_id": str(uuid.uuid4()), "alert_id": str(uuid.uuid4()),
         "payment_id": str(uuid.uuid4()), "sender_id": str(uuid.uuid4()),
         "receiver_id": str(uuid.uuid4()), "decision": "REJECTED", "decided_by": "admin-1",
         "note": "mule account, see case 17", "decided_at": 1_700_000_000_000,
         "sender_owner_id": OWNER}
    d.update(kw)
    return d


def test_review_decided_goes_to_the_senders_owner_without_the_note():
    d = decision()
    n = decision_notification(d)
    assert n is not None
    assert (n["kind"], n["user_id"], n["account_id"], n["payment_id"], n["reason"]) == (
        "REVIEW_DECIDED", OWNER, d["sender_id"], d["payment_id"], "REJECTED")
    assert "mule" not in str(n)  # the admin's note is internal
    assert n["notification_id"] == notification_id(d["decision_id"], OWNER)
    assert decision_notification(d) == n  # a redelivered decision: same id, same record
    assert decision_notification(decision(decision="APPROVED"))["reason"] == "APPROVED"
    assert decision_notification(decision(sender_owner_id=None)) is None


NOTE = "card-testing ring, see AML case 4411 (reviewed by j.smith)"


@pytest.mark.parametrize(("etype", "command_type", "note", "reason"), [
    # a review rejected the payment: compensation reverses it with the admin's note
    ("REVERSAL_DEBITED", "REVERSE_TRANSFER", f"fraud review a1 rejected: {NOTE}", "REVERSED_AFTER_REVIEW"),
    ("TRANSFER_REVERSED", "REVERSE_TRANSFER", f"fraud review a1 rejected: {NOTE}", "REVERSED_AFTER_REVIEW"),
    ("ACCOUNT_FROZEN", "REVERSE_TRANSFER", f"reversal: fraud review a1 rejected: {NOTE}", "ACCOUNT_UNDER_REVIEW"),
    # an admin froze the account with a reason, or unfroze it after a review
    ("ACCOUNT_FROZEN", "FREEZE", NOTE, "ACCOUNT_UNDER_REVIEW"),
    ("ACCOUNT_UNFROZEN", "UNFREEZE", f"fraud review a1 approved: {NOTE}", None),
])  # fmt: skip
def test_staff_notes_never_reach_the_user(etype, command_type, note, reason):
    n = notification_for(OWNER, event(etype, command_type=command_type, note=note))
    assert n is not None
    assert n["reason"] == reason  # generic: the details stay in the review
    assert "AML" not in str(n) and "j.smith" not in str(n)
    assert "AML" not in body_of(n)  # the webhook body


def test_reason_codes_are_still_told():
    n = notification_for(OWNER, event("TRANSFER_FAILED", reason="RECEIVER_FROZEN", note="refund"))
    assert n is not None and n["reason"] == "RECEIVER_FROZEN"


def test_kinds():
    cases = {
        "TRANSFER_DEBITED": "PAYMENT_SENT", "TRANSFER_COMPLETED": "PAYMENT_RECEIVED",
        "TRANSFER_FAILED": "PAYMENT_FAILED", "TRANSFER_REVERSED": "PAYMENT_REVERSED",
        "REVERSAL_DEBITED": "PAYMENT_REVERSED", "ACCOUNT_FROZEN": "ACCOUNT_FROZEN",
        "ACCOUNT_UNFROZEN": "ACCOUNT_UNFROZEN", "COMMAND_REJECTED": "PAYMENT_FAILED",
        "HOLD_PLACED": "PAYMENT_AUTHORIZED", "HOLD_CAPTURED": "PAYMENT_CAPTURED",
        "HOLD_VOIDED": "PAYMENT_CANCELED", "HOLD_EXPIRED": "PAYMENT_EXPIRED",
    }
    for etype, kind in cases.items():
        n = notification_for(OWNER, event(etype))
        assert n is not None and n["kind"] == kind, etype
    for etype in ("DEPOSITED", "WITHDRAWN", "ACCOUNT_OPENED", "COMMAND_DUPLICATE"):
        assert notification_for(OWNER, event(etype)) is None
    assert notification_for(OWNER, event("TRANSFER_DEBITED", replay=True)) is None
    assert notification_for(OWNER, event("COMMAND_REJECTED", command_type="FREEZE")) is None
    assert notification_for(OWNER, event("COMMAND_REJECTED", command_type="AUTHORIZE"))["kind"] == "PAYMENT_FAILED"
    # a refused capture or cancel leaves the payment as it was: nothing to tell
    assert notification_for(OWNER, event("COMMAND_REJECTED", command_type="CAPTURE")) is None
    assert notification_for(None, event("TRANSFER_DEBITED")) is None


def test_ids_are_stable_per_event_and_recipient():
    ev = event("TRANSFER_COMPLETED")
    a, b = notification_for(OWNER, ev), notification_for(OWNER, dict(ev))
    assert a == b and a is not None
    assert a["notification_id"] == notification_id(ev["event_id"], OWNER)
    assert notification_id(ev["event_id"], "someone else") != a["notification_id"]
    assert body_of(a) == body_of(dict(a))


def test_signature_round_trip_and_tampering():
    secret = signing.new_secret()
    body = '{"id":"x"}'
    header = signing.sign(secret, body, t=1_700_000_000)
    assert signing.verify(body, header, secret, now=1_700_000_010)
    assert not signing.verify(body + " ", header, secret, now=1_700_000_010)
    assert not signing.verify(body, header, "whsec_other", now=1_700_000_010)
    assert not signing.verify(body, header, secret, now=1_700_000_000 + 3600)  # replayed later
    assert not signing.verify(body, "v1=abc", secret)


def test_backoff_grows_with_jitter_and_gives_up_after_the_period():
    ws = WebhookPolicy.of(
        Settings(webhook_backoff_base_seconds=1, webhook_backoff_cap_seconds=60, webhook_max_age_seconds=300)
    )
    rnd = random.Random(1)
    for attempt in range(1, 12):
        step = min(60, 2 ** (attempt - 1))
        delays = [backoff_delay(attempt, ws, rnd) for _ in range(50)]
        assert all(step / 2 <= d <= step for d in delays)
        assert len(set(delays)) > 1  # jittered
    assert after_failure(1, 0, ws, rnd) is not None
    assert after_failure(20, 299, ws, rnd) is None
    assert WebhookPolicy.of(Settings()).max_age_seconds == 3 * 86400


def test_webhook_urls():
    assert url_problem("https://hooks.example.com/x", False) is None
    assert url_problem("http://hooks.example.com/x", False)
    assert url_problem("https://127.0.0.1:8080/x", False)
    assert url_problem("https://10.1.2.3/x", False)
    assert url_problem("https://localhost/x", False)
    assert url_problem("https://user:pw@hooks.example.com/x", False)
    assert url_problem("ftp://hooks.example.com/x", True)
    assert url_problem("http://127.0.0.1:8080/x", True) is None
    assert url_problem("https://hooks.example.com/\x00", True)
    assert url_problem("https://hooks.example.com/ä", True)


@pytest.mark.parametrize("url", [
    "https://2130706433/",                 # 127.0.0.1 as one decimal number
    "https://0x7f000001/",                 # ... as hex
    "https://017700000001/",               # ... as octal
    "https://127.1/",                      # ... with parts left out
    "https://0x7f.0.0.1/",
    "https://0/",                          # 0.0.0.0
    "https://0177.0.0.1/",
    "https://127.0.0.1./",
    "https://localhost./x",
    "https://LOCALHOST/x",
    "https://169.254.169.254/latest/meta-data",
    "https://100.64.0.1/",                 # carrier-grade NAT
    "https://[::1]/",
    "https://[::]/",
    "https://[::ffff:127.0.0.1]/",         # IPv4-mapped IPv6
    "https://[::ffff:a9fe:a9fe]/",
    "https://[64:ff9b::a9fe:a9fe]/",       # NAT64 of 169.254.169.254
    "https://[64:ff9b::7f00:1]/",
    "https://[64:ff9b:1::a9fe:a9fe]/",
    "https://[2002:7f00:1::]/",            # 6to4 of 127.0.0.1
    "https://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/",  # Teredo
    "https://[fe80::1]/",
    "https://[fc00::1]/",
    "https://[fec0::1]/",
    "https://[ff02::1]/",
    "https://[::127.0.0.1]/",
    "https://%31%32%37.0.0.1/",           # percent-encoded host
])  # fmt: skip
def test_webhook_urls_refuse_non_public_hosts_in_every_notation(url):
    assert url_problem(url, False), url


@pytest.mark.parametrize("url", [
    "https://hooks.example.com/x", "https://8.8.8.8/x", "https://[2606:4700:4700::1111]/x",
    "https://hooks.example.com./x", "https://0x.example.com/x", "https://127.0.0.1.example.com/x",
    "https://xn--bcher-kva.example/x",
])
def test_webhook_urls_accept_public_hosts(url):
    assert url_problem(url, False) is None, url
