"""Webhook signatures: `Paystream-Signature: t=<unix>,v1=<hex>`.

v1 is the hex HMAC-SHA256, keyed with the endpoint's secret, of ``f"{t}.{body}"``.
Signing the timestamp with the body lets a receiver refuse replays of an old
delivery (check that ``t`` is recent) as well as forgeries.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

HEADER = "Paystream-Signature"
EVENT_ID_HEADER = "Paystream-Event-Id"


def new_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


def sign(secret: str, body: str, t: int | None = None) -> str:
    t = int(time.time()) if t is None else t
    mac = hmac.new(secret.encode(), f"{t}.{body}".encode(), hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def verify(secret: str, header: str, body: str, *, tolerance_seconds: int = 300,
           now: float | None = None) -> bool:
    """What a receiver runs: a valid v1 for this body, signed recently."""
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        t = int(parts["t"])
    except (KeyError, ValueError):
        return False
    now = time.time() if now is None else now
    if abs(now - t) > tolerance_seconds:
        return False
    expected = hmac.new(secret.encode(), f"{t}.{body}".encode(), hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, parts.get("v1", ""))
