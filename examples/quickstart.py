"""Two users, money in, a payment, a refusal and the history: the SDK's first minutes.

Needs a running stack (`make up`) and an admin, created once with
`.venv/bin/paystream admin create-user --email admin@example.com --role admin`:

    PAYSTREAM_API_URL=http://127.0.0.1:8080 PAYSTREAM_ADMIN_EMAIL=admin@example.com \\
    PAYSTREAM_ADMIN_PASSWORD='...' .venv/bin/python examples/quickstart.py
"""

from __future__ import annotations

import os
import time
import uuid
from decimal import Decimal

from paystream.client import Client, PaymentRefused

URL = os.environ.get("PAYSTREAM_API_URL", "http://127.0.0.1:8080")
PASSWORD = "Correct horse 42"


def admin_client() -> Client:
    """The admin, logged in (and logged in again before its token expires)."""
    return Client(URL, email=os.environ["PAYSTREAM_ADMIN_EMAIL"], password=os.environ["PAYSTREAM_ADMIN_PASSWORD"])


def new_user(name: str, currency: str = "EUR") -> tuple[Client, str]:
    """Register a user, log in as them, wait until the ledger has opened their first
    account; the user's client and the account's number."""
    email = f"{name.lower()}-{uuid.uuid4().hex[:8]}@example.com"
    client = Client(URL)
    number = client.register(email, PASSWORD, name, currency).account.account_number
    client.login(email, PASSWORD)
    while client.get_account(number).status == "opening":
        time.sleep(0.2)
    return client, number


def main() -> None:
    admin = admin_client()
    ada, ada_account = new_user("Ada")
    bob, bob_account = new_user("Bob")

    admin.deposit(ada_account, Decimal("100.00"), "EUR", description="top-up")
    payment = ada.create_payment(ada_account, bob_account, Decimal("30.00"), "EUR", description="dinner")
    print(f"payment {payment.id}: {payment.status}, {payment.amount} {payment.currency}")

    try:
        ada.create_payment(ada_account, bob_account, Decimal("500.00"), "EUR")
    except PaymentRefused as refused:
        print(f"refused: {refused.code}")  # insufficient_funds

    for t in ada.list_transactions(ada_account):  # every page, newest first
        print(f"  {t.occurred_at:%H:%M:%S} {t.type:<18} {t.amount:>8} -> {t.balance_after}")
    statement = ada.statement(ada_account)
    assert statement.opening_balance + sum(line.amount for line in statement.lines) == statement.closing_balance
    print(f"Ada: {ada.get_account(ada_account).available} EUR, Bob: {bob.get_account(bob_account).available} EUR")
    for c in (admin, ada, bob):
        c.close()


if __name__ == "__main__":
    main()
