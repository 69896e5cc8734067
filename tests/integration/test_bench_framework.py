"""`paystream bench framework` measures what it says: each stage processes every
message of its scratch topic and commits every output, is priced over its own
window, and leaves nothing behind on the broker."""

from __future__ import annotations

import pytest

from ops.lab.bench import framework
from paystream import kafka
from paystream.settings import Settings

pytestmark = pytest.mark.integration


def _bench_topics(stack: Settings) -> set[str]:
    names = kafka.admin(stack).list_topics(timeout=10).topics
    return {t for t in names if t.startswith(("bench.framework.", "changelog__bench-framework-"))}


def test_ladder_stages_process_every_message_and_leave_no_topics(stack: Settings) -> None:
    before = _bench_topics(stack)
    results = framework.bench(stack, messages=2_000, stages=["eos-pass", "eos-avro", "eos-shape"])
    assert [r.stage for r in results] == ["eos-pass", "eos-avro", "eos-shape"]
    # Read back from the sink topics (read_committed): one output per message for the
    # pass-through stages; for eos-shape an event per command and per leg plus a leg
    # per command.
    assert [r.outputs for r in results] == [2_000, 2_000, 6_000]
    for r in results:
        # the priced window runs from the 10th percentile message to the last
        assert r.messages == (3_600 if r.stage == "eos-shape" else 1_800)
        assert 0 < r.seconds < 60
        assert r.cpu_seconds > 0
    # its scratch topics and the changelogs Quix made for the stateful stages are gone
    assert _bench_topics(stack) <= before


def test_broker_clock_interpolates_between_samples() -> None:
    clock = object.__new__(framework._BrokerClock)
    clock.samples = [(10.0, 1.0), (11.0, 3.0), (12.0, 3.5)]
    assert clock.at(10.5) == pytest.approx(2.0)
    assert clock.at(11.0) == pytest.approx(3.0)
    assert clock.at(9.0) == pytest.approx(1.0)
    assert clock.at(13.0) == pytest.approx(3.5)


def test_too_few_messages_is_refused(stack: Settings) -> None:
    with pytest.raises(ValueError, match="at least 100"):
        framework.bench(stack, messages=10, stages=["eos-pass"])
