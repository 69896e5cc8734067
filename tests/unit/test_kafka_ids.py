"""Kafka ids never start with "-": the storage tool would read `-t -abc...` as an option
(a chaos run's isolated stack failed to format this way, about one start in 64)."""

from __future__ import annotations

import base64

from ops.stack import kafka_uuid


def test_kafka_ids_are_16_bytes_and_never_look_like_an_option() -> None:
    ids = [kafka_uuid() for _ in range(5_000)]
    assert not any(i.startswith("-") for i in ids)
    assert len(set(ids)) == len(ids)
    assert all(len(base64.urlsafe_b64decode(i + "==")) == 16 for i in ids)
