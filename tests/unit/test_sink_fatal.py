"""A consumer error that librdkafka reports as _FATAL (e.g. a static member fenced
after its session timed out during a broker restart, seen under `paystream chaos`)
makes the intake (the sink's, the reviews', the webhooks') replace its consumer
instead of idling forever with nothing assigned."""

from __future__ import annotations

from confluent_kafka import KafkaError

from paystream.stream.pg_intake import is_fatal


def test_fatal_event_code_counts_as_fatal() -> None:
    assert is_fatal(KafkaError(KafkaError._FATAL))
    assert is_fatal(KafkaError(KafkaError._TRANSPORT, fatal=True))
    assert not is_fatal(KafkaError(KafkaError._TRANSPORT))
    assert not is_fatal(KafkaError(KafkaError._ALL_BROKERS_DOWN))
