"""The Kafka Streams peer of `paystream bench compare` is a correct ledger of the bench's
shape: built from Maven Central, it completes every transfer exactly once (a resent
batch moves no money twice), conserves money, and `bench compare --design kstreams`
reports it in its JSON. A peer that dropped, repeated or mis-posted transfers would
make the comparison meaningless, so each of those fails here."""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
from rich.console import Console

from ops.lab.bench import compare as CMP
from ops.lab.bench import kstreams as K
from ops.lab.bench.ledger import encode_all
from paystream import kafka
from paystream.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


@pytest.fixture(scope="module")
def built(stack: Settings) -> Path:
    out = K.build(stack)
    assert (out / "paystream-kstreams.jar").exists()
    assert any((out / "lib").glob("kafka-streams-4*.jar"))
    return out


def _leftovers(stack: Settings, runner: CMP.KStreamsRunner) -> list[str]:
    names = kafka.admin(stack).list_topics(timeout=10).topics
    return [t for t in names if t.startswith((runner.peer.prefix, runner.peer.app_id))]


def test_every_transfer_completes_exactly_once_and_money_is_conserved(stack: Settings, built: Path) -> None:
    console = Console(quiet=True)
    accounts = [str(uuid.uuid4()) for _ in range(40)]
    runner = CMP.KStreamsRunner(stack, console, built, commit_interval=0.1)
    try:
        runner.setup(accounts)
        cmds = CMP.transfers(accounts, 300, "hot", "kstreams-test")
        paced = CMP.transfers(accounts, 60, "fanin", "kstreams-test/paced")
        m = runner.measure("hot", cmds, paced, rate=100.0)
        assert (m.completed, m.paced_completed) == (300, 60)
        assert m.statuses == {"COMPLETED": 300}
        assert m.cpu_seconds["kstreams"] > 0 and m.peak_mib["kstreams"] > 0

        # the same commands again: the dedupe markers must answer, nothing may move
        ids = [c["command_id"] for c in cmds]
        before = len(runner.events)
        runner._send(encode_all(runner.codec, cmds[:100]))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if sum(e["type"] == "COMMAND_DUPLICATE" for e in runner.events[before:]) >= 100:
                break
            time.sleep(0.1)
        time.sleep(1.0)  # a wrongly repeated credit would follow its debit within a commit or two
        inv = runner.invariants()

        completed = Counter(e["payment_id"] for e in runner.events if e["type"] == "TRANSFER_COMPLETED")
        debited = Counter(e["payment_id"] for e in runner.events if e["type"] == "TRANSFER_DEBITED")
        every = ids + [c["command_id"] for c in paced]
        assert all(completed[i] == 1 for i in every), "a transfer completed zero or several times"
        assert all(debited[i] == 1 for i in every), "a transfer was debited zero or several times"
        assert sum(completed.values()) == len(every)
        dups = [e for e in runner.events[before:] if e["type"] == "COMMAND_DUPLICATE"]
        assert len(dups) == 100 and all(e["replay"] and e["status"] == "PENDING" for e in dups)

        # money: every balance is the opening deposit plus what it received minus what it sent
        expected = dict.fromkeys(accounts, CMP.BALANCE)
        for c in cmds + paced:
            expected[c["account_id"]] -= c["movement"]["amount"]
            expected[c["movement"]["counterparty_id"]] += c["movement"]["amount"]
        last: dict[str, tuple[int, int]] = {}
        for e in runner.events:
            if e["balance_after"] is not None and e["sequence"] > last.get(e["account_id"], (0, 0))[0]:
                last[e["account_id"]] = (e["sequence"], e["balance_after"])
        assert {a: b for a, (_, b) in last.items()} == expected
        assert inv["sum_per_currency_zero"] and inv["transit_left"] == 0
        assert inv["one_terminal_outcome_each"] and inv["missing_outcomes"] == 0
        assert inv["duplicate_events"] == 0 and inv["repeated_outcomes_or_legs"] == []
        assert inv["negative_user_balances"] == 0 and inv["balance_after_wrong"] == 0
        assert runner.peer.alive()
    finally:
        runner.close()
    assert _leftovers(stack, runner) == []


def test_compare_reports_the_peer_in_json(stack: Settings, built: Path, tmp_path: Path) -> None:
    out = tmp_path / "compare.json"
    report = CMP.compare(stack, accounts=30, transfers_n=200, paced_rate=50.0, paced_seconds=2.0,
                         sweep_n=100, workloads=["fanin"], designs=["kstreams"], json_path=out,
                         console=Console(quiet=True))
    data = json.loads(out.read_text())
    row = data["designs"]["kstreams"]["fanin"]
    assert row["completed"] == 200 and row["paced_completed"] == 100
    assert row["transfers_per_s"] > 0 and 0 < row["p50_ms"] <= row["p99_ms"]
    assert row["cpu_us_per_transfer"] > 0 and row["peak_rss_mib"] > 0
    assert set(row["cpu_us_per_transfer_by_process"]) == {"kstreams", "broker"}
    assert data["ratios"] == {}  # paystream was not run, so there is nothing to divide
    assert report.kstreams_invariants["one_terminal_outcome_each"]
    assert report.kstreams_invariants["sum_per_currency_zero"]


def test_unknown_design_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown design"):
        CMP.parse_designs("paystream,flink")
    assert CMP.parse_designs("baseline,kstreams,paystream") == ["paystream", "kstreams", "baseline"]
