"""Dead-letter records: what every component emits instead of crashing on bad input."""

from __future__ import annotations

import time
import uuid
from typing import Any

from paystream import ids, topics

DLQ_TOPIC = topics.DLQ
_NS = uuid.UUID("5d1d0c52-7f3e-4b59-8e0b-3f2f3c1b9a10")


def dead_letter(
    *,
    component: str,
    reason_code: str,
    reason: str,
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    timestamp_ms: int | None = None,
    headers: list[tuple[str, bytes | None]] | None = None,
    item: int | None = None,
) -> dict[str, Any]:
    """The id is derived from the source position (and the item's index in a batch),
    so a re-run that dead-letters the same message again produces the same id and
    readers can de-duplicate."""
    position = f"{topic}:{partition}:{offset}" if item is None else f"{topic}:{partition}:{offset}:{item}"
    return {
        "dead_letter_id": ids.uuid5(_NS, position),
        "component": component,
        "reason_code": reason_code,
        "reason": reason[:2000],
        "source_topic": topic,
        "source_partition": partition,
        "source_offset": offset,
        "source_timestamp": timestamp_ms,
        "key": key,
        "value": value,
        "headers": {k: (v or b"") for k, v in (headers or [])},
        "failed_at": int(time.time() * 1000),
    }
