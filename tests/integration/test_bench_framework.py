"""`paystream bench framework` measures what it says: each stage processes every
message of its scratch topic, is priced over its own window, and cleans up."""

from __future__ import annotations

import pytest
from confluent_kafka.admin import AdminClient

from ops.bench import framework
from paystream.settings import Settings

pytestmark = pytest.mark.integration


def test_ladder_stages_process_every_message_and_leave_no_topics(stack: Settings) -> None:
    results = framework.bench(stack, messages=2_000, stages=["eos-pass", "eos-avro", "eos-shape"])
    assert [r.stage for r in results] == ["eos-pass", "eos-avro", "eos-shape"]
    for r in results:
        # from the 10th percentile message to the last; eos-shape reads a leg per command
        assert r.messages == (3_600 if r.stage == "eos-shape" else 1_800)
        assert 0 < r.seconds < 60
        assert r.cpu_seconds > 0 and r.cpu_us > 1
        assert r.broker_cpu_seconds >= 0
    # decoding and encoding Avro costs more than passing bytes through
    assert results[1].cpu_us > results[0].cpu_us
    names = AdminClient({"bootstrap.servers": stack.bootstrap_servers}).list_topics(timeout=10).topics
    assert not [t for t in names if t.startswith("bench.framework.")]


def test_broker_clock_interpolates_between_samples() -> None:
    clock = object.__new__(framework._BrokerClock)
    clock.samples = [(10.0, 1.0), (11.0, 3.0), (12.0, 3.5)]
    assert clock.at(10.5) == pytest.approx(2.0)
    assert clock.at(11.0) == pytest.approx(3.0)
    assert clock.at(9.0) == pytest.approx(1.0)
    assert clock.at(13.0) == pytest.approx(3.5)
