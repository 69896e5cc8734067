"""Authorize now, capture later: a hold captured in part, another one canceled.

Same environment as quickstart.py.
"""

from __future__ import annotations

from decimal import Decimal

from quickstart import admin_client, new_user

from paystream.client import PaymentRefused


def main() -> None:
    with admin_client() as admin:
        shop, shop_account = new_user("Shop")
        guest, guest_account = new_user("Guest")
        admin.deposit(guest_account, Decimal("100.00"), "EUR")

    # the guest authorizes 80.00 for a stay: held on their account, not moved yet
    hold = guest.create_payment(guest_account, shop_account, Decimal("80.00"), "EUR", capture=False,
                                hold_seconds=3600, description="room 12")  # fmt: skip
    print(f"hold {hold.id}: {hold.status}, {hold.amount_authorized} EUR")
    account = guest.get_account(guest_account)
    print(f"guest: posted {account.posted}, available {account.available}")
    for h in guest.list_holds(guest_account):
        print(f"  open hold {h.id}: {h.amount_authorized} until {h.expires_at}")

    # the shop captures what the stay cost; the rest goes back to the guest
    captured = shop.capture_payment(hold.id, Decimal("62.40"))
    print(f"captured {captured.amount} of {captured.amount_authorized}: {captured.status}")

    # a second hold, canceled; capturing it afterwards is refused
    other = guest.create_payment(guest_account, shop_account, Decimal("10.00"), "EUR", capture=False)
    print("canceled:", guest.cancel_payment(other.id).status)
    try:
        shop.capture_payment(other.id)
    except PaymentRefused as refused:
        print("capture refused:", refused.code)  # hold_voided
    print(f"guest: {guest.get_account(guest_account).available}, shop: {shop.get_account(shop_account).available}")
    guest.close()
    shop.close()


if __name__ == "__main__":
    main()
