"""Webhook signatures: `Paystream-Signature: t=<unix seconds>,v1=<hex>`.

v1 is the hex HMAC-SHA256, keyed with the endpoint's secret, of ``f"{t}.{body}"``.
Signing the timestamp with the body lets a receiver refuse replays of an old
delivery (check that ``t`` is recent) as well as forgeries. The webhooks worker
signs with `sign` (pipelines/notifications/webhooks.py); a receiver checks with
`verify`, or with `construct_event`, which also parses the body:

    from paystream import webhooks

    def handle(request):  # your web framework's request
        try:
            event = webhooks.construct_event(request.body, request.headers[webhooks.HEADER], SECRET)
        except webhooks.WebhookError:
            return 400
        if seen(event.id):  # a delivery may come twice: de-duplicate on the id
            return 200
        ...

Verify the raw body exactly as it arrived: re-serialising parsed JSON changes the
bytes and no signature matches them.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from paystream.errors import PaystreamError
from paystream.money import Money

HEADER = "Paystream-Signature"
EVENT_ID_HEADER = "Paystream-Event-Id"
DEFAULT_TOLERANCE_SECONDS = 300


class WebhookError(PaystreamError):
    """A delivery a receiver must refuse (answer it 400)."""

    status = 400


class SignatureVerificationError(WebhookError):
    """A delivery whose signature does not hold: forged, altered, signed with another
    secret, or older than the tolerance (a replay). `detail` says which."""

    code = "invalid_signature"


class InvalidPayload(WebhookError):
    """A correctly signed body that is not a paystream event."""

    code = "invalid_payload"


def new_secret() -> str:
    """A fresh endpoint secret (256 random bits)."""
    return "whsec_" + secrets.token_urlsafe(32)


def _mac(secret: str, t: int, payload: str | bytes) -> str:
    body = payload.encode() if isinstance(payload, str) else payload
    return hmac.new(secret.encode(), str(t).encode() + b"." + body, hashlib.sha256).hexdigest()


def sign(secret: str, payload: str | bytes, t: int | None = None) -> str:
    """The `Paystream-Signature` header value for `payload`, signed at `t` (now)."""
    t = int(time.time()) if t is None else t
    return f"t={t},v1={_mac(secret, t, payload)}"


def _problem(payload: str | bytes, header: str, secret: str, tolerance_seconds: float, now: float | None) -> str | None:
    """Why the signature does not hold, or None when it does."""
    t: int | None = None
    signatures = []
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        if name == "t":
            try:
                t = int(value)
            except ValueError:
                return "the timestamp is not an integer"
        elif name == "v1":
            signatures.append(value)
    if t is None:
        return "no timestamp in the signature header"
    if not signatures:
        return "no v1 signature in the signature header"
    now = time.time() if now is None else now
    if abs(now - t) > tolerance_seconds:
        return f"the signature's timestamp is {abs(now - t):.0f} s away from now (tolerance {tolerance_seconds} s)"
    expected = _mac(secret, t, payload)
    # every v1 is compared (several may be sent while a secret is rotated), in constant time
    if not any(hmac.compare_digest(expected, s) for s in signatures):
        return "no signature matches the payload"
    return None


def verify(
    payload: str | bytes,
    header: str,
    secret: str,
    *,
    tolerance_seconds: float = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
) -> bool:
    """Whether `header` is a valid signature of `payload` (the raw body) with
    `secret`, made within `tolerance_seconds` of `now` (default: the time now)."""
    return _problem(payload, header, secret, tolerance_seconds, now) is None


@dataclass(frozen=True, slots=True)
class WebhookEvent:
    """A delivery's body: `id` (the same on every retry of it: de-duplicate on it),
    `type` (`PAYMENT_RECEIVED`, `PAYMENT_SENT`, ...; docs/NOTIFICATIONS.md) and the
    notification in `data` (amounts there are minor units; see `amount`)."""

    id: str
    type: str
    created_at: datetime
    data: Mapping[str, Any]

    @property
    def amount(self) -> Decimal | None:
        """`data`'s amount in the currency's units, when the event moves money."""
        minor, currency = self.data.get("amount"), self.data.get("currency")
        if minor is None or currency is None:
            return None
        return Money(int(minor), str(currency)).to_decimal()


def construct_event(
    payload: str | bytes,
    header: str | None,
    secret: str,
    *,
    tolerance_seconds: float = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
) -> WebhookEvent:
    """The delivered event, after checking its signature as `verify` does; raises
    `SignatureVerificationError` (saying why) when it does not hold, `InvalidPayload`
    when the signed body is not an event (both are `WebhookError`s)."""
    problem = (
        "no Paystream-Signature header"
        if not header
        else _problem(payload, header, secret, tolerance_seconds, now)
    )
    if problem is not None:
        raise SignatureVerificationError(problem)
    try:
        body = json.loads(payload)
        return WebhookEvent(str(body["id"]), str(body["type"]),
                            datetime.fromtimestamp(int(body["created_at"]) / 1000, UTC), body["data"])  # fmt: skip
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidPayload(f"the payload is not a paystream event: {exc!r}") from None
