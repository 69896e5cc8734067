"""`paystream bench failover`'s arithmetic, on made-up timelines (no Kafka), and the
ledger's group membership settings it is used to choose."""

from __future__ import annotations

import json
from pathlib import Path

from ops.lab.bench.failover import FailoverRun, analyse, log_events, recoveries
from paystream.settings import Settings
from pipelines.ledger.app import membership, transactions


def _run() -> FailoverRun:
    return FailoverRun(1_000, "lost", 100.0, {}, 0.0, None, 0.0, 0.0, 0.0, None, None, None)


def _timeline(stall_from: float, stall_to: float) -> tuple[dict[str, float], dict[str, tuple[float, str]]]:
    """100 transfers/s from t=0 to t=60, each answered 50 ms after it was sent,
    except those sent in [stall_from, stall_to): answered at stall_to."""
    sent, seen = {}, {}
    for k in range(6_000):
        t = k / 100
        sent[f"c{k}"] = t
        seen[f"c{k}"] = (stall_to if stall_from <= t < stall_to else t + 0.05, "COMPLETED")
    return sent, seen


def test_full_throughput_is_when_the_rate_is_back_and_stays() -> None:
    run = _run()
    sent, seen = _timeline(30.0, 38.0)  # killed at 30, nothing answered for 8 s
    analyse(run, sent, seen, kill_at=30.0, end=60.0)
    assert run.pre_rate == 100.0
    assert run.dip_rate == 0.0
    # the backlog lands at 38 in one go, then the live rate is back from 38 on
    assert 7.5 <= run.full_throughput_s <= 8.0
    # sent at 37 or later: answered within 1 s of being sent
    assert run.caught_up_s is not None and 6.5 <= run.caught_up_s <= 7.0
    assert run.unanswered == 0


def test_no_dip_is_zero_and_a_stall_to_the_end_is_never_caught_up() -> None:
    run = _run()
    sent, seen = _timeline(0.0, 0.0)
    analyse(run, sent, seen, kill_at=30.0, end=60.0)
    assert run.full_throughput_s == 0.0 and run.caught_up_s == 0.0
    run = _run()
    sent, seen = _timeline(30.0, 61.0)
    analyse(run, sent, seen, kill_at=30.0, end=60.0)
    assert run.full_throughput_s is None and run.caught_up_s is None


def test_recoveries_come_from_quix_log_lines(tmp_path: Path) -> None:
    log = tmp_path / "ledger.log"
    lines = [
        {"event": "Beginning recovery check...", "ts": "2026-12-03T10:00:00.000000Z"},
        {"event": "Recovery process complete! Resuming normal processing...", "ts": "2026-12-03T10:00:01.000000Z"},
        {"event": "Rebalancing: assigning partitions", "ts": "2026-12-03T10:00:12.000000Z"},
        {"event": "Beginning recovery check...", "ts": "2026-12-03T10:00:12.500000Z"},
        {"event": "Recovery process complete! Resuming normal processing...", "ts": "2026-12-03T10:00:20.000000Z"},
    ]
    log.write_text("librdkafka noise\n" + "\n".join(json.dumps(x) for x in lines) + "\n")
    kill = log_events(log, 0.0)[2][0] - 2.0  # killed 2 s before the rebalance
    evs = log_events(log, kill)
    assert evs[0][1].startswith("Rebalancing")
    [r] = recoveries("bench-0", evs, kill)
    assert (r.started_s, r.seconds) == (2.5, 7.5)


def test_static_membership_names_the_instance() -> None:
    assert membership(Settings(ledger_instance="a")) == {
        "group.instance.id": "paystream-ledger-a", "session.timeout.ms": 6_000, "heartbeat.interval.ms": 1_000}
    off = membership(Settings(ledger_instance="a", ledger_static_membership=False))
    assert "group.instance.id" not in off


def test_the_message_timeout_never_exceeds_the_transaction_timeout() -> None:
    # librdkafka refuses a producer whose message timeout is longer than its transaction's
    assert transactions(Settings()) == {"transaction.timeout.ms": 10_000, "message.timeout.ms": 10_000}
    assert transactions(Settings(ledger_transaction_timeout_ms=60_000))["message.timeout.ms"] == 20_000
