"""Deterministic ids: RFC 4122 version-5 UUIDs as canonical strings.

Every id paystream derives (event, leg, alert, decision, notification, delivery,
dead letter) is `uuid5(namespace, name)`, and the ledger derives three per transfer.
`uuid.uuid5` builds a UUID object (an int conversion and validation) only for us to
turn it straight back into a string; this does the same SHA-1 and bit setting on
bytes and formats once: about 3x faster, and property-tested to return exactly
`str(uuid.uuid5(namespace, name))` for every name.
"""

from __future__ import annotations

import hashlib
import uuid


def uuid5(namespace: uuid.UUID, name: str) -> str:
    h = bytearray(hashlib.sha1(namespace.bytes + name.encode("utf-8"), usedforsecurity=False).digest()[:16])
    h[6] = (h[6] & 0x0F) | 0x50  # version 5
    h[8] = (h[8] & 0x3F) | 0x80  # RFC 4122 variant
    x = h.hex()
    return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"


# The ledger's namespace: event, leg and reversal ids. Never change it: every id the
# ledger ever derived (and every dedupe memo keyed by one) depends on it.
LEDGER_NAMESPACE = uuid.UUID("7b3c3a4e-9f0e-4d83-9a43-0c7f5c1d2b6e")
