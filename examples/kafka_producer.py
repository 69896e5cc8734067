"""A Kafka-direct producer: a transfer and a hold (authorize, then capture part of it),
each sent straight to `payments.commands`, waiting for the ledger's outcome.

    PAYSTREAM_SENDER_ID=<uuid> PAYSTREAM_RECEIVER_ID=<uuid> .venv/bin/python examples/kafka_producer.py

Kafka, the registry and the principal come from the PAYSTREAM_* environment, as for
every paystream process (docs/SDK.md). The two ids are account ids: the owner (or an
admin) reads them in `GET /v1/accounts/{number}`, or `AccountDirectory` looks them up.
Without them the script first opens two demo accounts and funds one, as an operator
would: that takes a privileged principal (the local stack's default, `admin`).
Waiting for outcomes reads `ledger.events`, which a `producer-NAME` principal may not
(docs/SECURITY.md): give such a producer `outcomes=` settings of a reader.
"""

from __future__ import annotations

import os
import sys
import uuid

from paystream import commands as C
from paystream.errors import OutcomeTimeout, PaystreamError
from paystream.money import Money, format_minor
from paystream.producer import Producer, authorize, capture, transfer
from paystream.records import LedgerEvent
from paystream.settings import get_settings

WAIT = 60.0  # seconds; a fresh ledger takes a few to join its group


def demo_accounts() -> tuple[str, str]:
    """Two USD accounts, the first with 100.00: privileged commands, the operator's part."""
    sender, receiver = str(uuid.uuid4()), str(uuid.uuid4())
    with Producer(privileged=True) as operator:
        opened = operator.send_many(
            [C.open_account(a, external_number=f"EX{a[:10]}", owner_id="example", currency="USD")
             for a in (sender, receiver)], wait=WAIT)
        funded = operator.send(C.deposit(sender, Money.parse("100.00", "USD").minor, "USD"), wait=WAIT)
    assert all(e["type"] == "ACCOUNT_OPENED" for e in opened.values()) and funded["type"] == "DEPOSITED"
    return sender, receiver


def show(label: str, event: LedgerEvent) -> None:
    minor, currency = event["amount"], event["currency"]
    amount = format_minor(minor, currency) if minor is not None and currency else "-"
    print(f"{label:<10} {event['type']:<20} {event['status']:<9} {amount:>8} {event['currency'] or ''} "
          f"reason={event['reason']}")


def main() -> int:
    try:
        return run()
    except OutcomeTimeout as exc:
        print(f"{exc.detail}\nIs the ledger running (`.venv/bin/paystream up`)?", file=sys.stderr)
    except PaystreamError as exc:  # refused before sending, or Kafka did not take it
        print(f"{exc.code}: {exc.detail}", file=sys.stderr)
    return 1


def run() -> int:
    settings = get_settings()
    sender = os.environ.get("PAYSTREAM_SENDER_ID")
    receiver = os.environ.get("PAYSTREAM_RECEIVER_ID")
    if not (sender and receiver):
        sender, receiver = demo_accounts()
    with Producer(settings) as producer:
        pay = transfer(sender, receiver, Money.parse("12.50", "USD").minor, "USD")
        paid = producer.send(pay, wait=WAIT)
        show("transfer", paid)
        # The same command again (same command id): the ledger answers it, money moves once.
        show("resend", producer.send(pay, wait=WAIT))
        hold = authorize(sender, receiver, Money.parse("30.00", "USD").minor, "USD", hold_timeout_ms=600_000)
        held = producer.send(hold, wait=WAIT)
        show("authorize", held)
        # Capture 20.00 of the 30.00 held: the hold's payment id is the AUTHORIZE's command id.
        captured = producer.send(capture(sender, hold["command_id"], amount=Money.parse("20.00", "USD").minor),
                                 wait=WAIT)
        show("capture", captured)
    ok = (paid["type"], held["type"], captured["type"]) == ("TRANSFER_COMPLETED", "HOLD_PLACED", "TRANSFER_COMPLETED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
