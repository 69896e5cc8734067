"""The Postgres sink against the real stack: the read model equals the events,
survives kill -9 and lost connections, and `paystream verify` notices tampering.

The topics and the database are shared with other test sessions, so every test
uses fresh accounts and checks its own rows exactly; `verify` then checks
everything globally.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections import Counter
from typing import Any

import psycopg
import pytest

from ops.verify import verify
from paystream import commands as C
from paystream.codec import Codec
from paystream.settings import PROJECT_ROOT, Settings
from tests.conftest import Component, caught_up
from tests.kafka_helpers import EventReader, send

pytestmark = pytest.mark.integration

CATCH_UP = 420.0  # the first run against a database replays the whole shared topic


def new_accounts(n: int, currency: str = "USD") -> tuple[list[str], list[dict[str, Any]]]:
    ids = [str(uuid.uuid4()) for _ in range(n)]
    opens = [
        C.open_account(a, external_number=f"T{a[:18]}", owner_id="sink-test", currency=currency)
        for a in ids
    ]
    return ids, opens


def expected_from_events(events: list[dict[str, Any]], accounts: set[str]) -> dict[str, Any]:
    """What the read model must hold for `accounts`, computed from their events."""
    balance: Counter[str] = Counter()
    postings: Counter[str] = Counter()
    event_ids = {e["event_id"] for e in events if e["account_id"] in accounts}
    for e in {e["event_id"]: e for e in events}.values():
        for p in e["postings"]:
            if p["account_id"] in accounts:
                balance[p["account_id"]] += p["amount"]
                postings[p["account_id"]] += 1
    return {"balance": balance, "postings": postings, "events": len(event_ids)}


def read_model_of(settings: Settings, accounts: list[str]) -> dict[str, Any]:
    with psycopg.connect(settings.postgres_dsn) as conn:
        bal = dict(
            conn.execute(
                "SELECT account_id::text, balance FROM accounts WHERE account_id = ANY(%s::uuid[])",
                (accounts,),
            ).fetchall()
        )
        post = dict(
            conn.execute(
                "SELECT account_id::text, count(*) FROM postings"
                " WHERE account_id = ANY(%s::uuid[]) GROUP BY 1",
                (accounts,),
            ).fetchall()
        )
        (events,) = conn.execute(
            "SELECT count(*) FROM ledger_events WHERE account_id = ANY(%s::uuid[])", (accounts,)
        ).fetchone() or (0,)
    return {"balance": bal, "postings": post, "events": events}


def assert_matches(settings: Settings, events: list[dict[str, Any]], accounts: list[str]) -> None:
    want = expected_from_events(events, set(accounts))
    got = read_model_of(settings, accounts)
    assert got["events"] == want["events"]
    assert {a: got["balance"].get(a, 0) for a in accounts} == {
        a: want["balance"][a] for a in accounts
    }
    assert {a: got["postings"].get(a, 0) for a in accounts} == {
        a: want["postings"][a] for a in accounts
    }


def test_read_model_matches_events_and_verify_passes(stack, codec, ledger, sink):
    (a, b, c), opens = new_accounts(3)
    reader = EventReader(stack, codec)
    try:
        send(stack, codec, opens)
        reader.terminals([o["command_id"] for o in opens], timeout=90)
        dep = C.deposit(a, 100_000, "USD", metadata={"description": "payday"})
        send(stack, codec, [dep])
        reader.terminals([dep["command_id"]])
        t1 = C.transfer(a, b, 30_000, "USD")
        t2 = C.transfer(a, c, 10_000, "USD")
        too_big = C.transfer(a, b, 10**9, "USD")
        send(stack, codec, [t1, t2, too_big])
        reader.terminals([t1["command_id"], t2["command_id"], too_big["command_id"]])
        wd = C.withdraw(c, 4_000, "USD")
        freeze = C.status_change("FREEZE", b, reason="kyc check", actor="admin:alice")
        send(stack, codec, [wd, freeze])
        reader.terminals([wd["command_id"], freeze["command_id"]])
        refused = C.transfer(a, b, 1_000, "USD")  # receiver frozen: debited, then refunded
        rev = C.reverse_transfer(c, t2["command_id"], reason="fraud", actor="admin:bob")
        send(stack, codec, [refused, rev])
        reader.terminals([refused["command_id"], rev["command_id"]])
        unfreeze = C.status_change("UNFREEZE", b, reason="cleared", actor="admin:alice")
        send(stack, codec, [unfreeze])
        reader.terminals([unfreeze["command_id"]])
        caught_up(stack, CATCH_UP)
        assert_matches(stack, reader.events, [a, b, c])

        with psycopg.connect(stack.postgres_dsn) as conn:
            rows = conn.execute(
                "SELECT payment_id::text, kind, status, reason, from_account::text,"
                " to_account::text, amount, description FROM payments"
                " WHERE payment_id = ANY(%s::uuid[])",
                ([dep["command_id"], t1["command_id"], t2["command_id"], too_big["command_id"],
                  wd["command_id"], refused["command_id"]],),
            ).fetchall()  # fmt: skip
            pays = {r[0]: r[1:] for r in rows}
            accts = dict(
                conn.execute(
                    "SELECT account_id::text, status FROM accounts"
                    " WHERE account_id = ANY(%s::uuid[])",
                    ([a, b, c],),
                ).fetchall()
            )
            audit = conn.execute(
                "SELECT action, actor, reason FROM audit_log WHERE account_id = ANY(%s::uuid[])"
                " ORDER BY occurred_at, action",
                ([a, b, c],),
            ).fetchall()
        assert pays[dep["command_id"]][:2] == ("DEPOSIT", "COMPLETED")
        assert pays[dep["command_id"]][6] == "payday"
        assert pays[t1["command_id"]] == ("TRANSFER", "COMPLETED", None, a, b, 30_000, None)
        assert pays[t2["command_id"]][1:3] == ("REVERSED", "fraud")
        assert pays[too_big["command_id"]][1:3] == ("REJECTED", "INSUFFICIENT_FUNDS")
        assert pays[wd["command_id"]][:2] == ("WITHDRAW", "COMPLETED")
        assert pays[refused["command_id"]][1:3] == ("FAILED", "RECEIVER_FROZEN")
        assert accts == {a: "ACTIVE", b: "ACTIVE", c: "ACTIVE"}
        assert ("ACCOUNT_FROZEN", "admin:alice", "kyc check") in audit
        assert ("ACCOUNT_UNFROZEN", "admin:alice", "cleared") in audit
        assert ("REVERSAL_DEBITED", "admin:bob", "fraud") in audit
        assert ("TRANSFER_REVERSED", "admin:bob", "fraud") in audit

        metrics = urllib.request.urlopen(
            f"http://127.0.0.1:{sink.metrics_port}/metrics", timeout=5
        ).read().decode()  # fmt: skip
        assert 'paystream_sink_lag{partition="' in metrics
        assert "paystream_sink_postings_total" in metrics
    finally:
        reader.close()

    report = verify(stack, wait=60, codec=codec)
    failed = [(c.name, c.offenders[:5]) for c in report.checks if not c.ok]
    assert report.ok, failed


def _chaos(sink: Component, settings: Settings, stop: threading.Event, log: list[str]) -> None:
    """Two dropped Postgres connections, then five kill -9s of the sink."""
    rnd = random.Random(11)
    for _ in range(2):
        time.sleep(rnd.uniform(1.0, 2.0))
        with psycopg.connect(settings.postgres_dsn, autocommit=True) as conn:
            n = conn.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE application_name = %s",
                (f"paystream-sink-test-{os.getpid()}",),
            ).fetchone()
        log.append(f"terminated {n[0] if n else 0} connection(s)")
    for i in range(5):
        _wait_assigned(sink, i + 1)  # kill a sink that is writing, not one starting up
        time.sleep(rnd.uniform(0.3, 1.5))
        sink.kill9()
        log.append(f"kill -9 #{i + 1}")
        sink.start()
    _wait_assigned(sink, 6)
    stop.set()


def _wait_assigned(sink: Component, times: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while sink.log_path.read_text(errors="replace").count("assigned [") < times:
        assert time.monotonic() < deadline, sink.tail()
        time.sleep(0.1)


def test_kill_minus_nine_during_transfers(stack, codec, ledger, sink):
    rnd = random.Random(5)
    accounts, opens = new_accounts(100, currency="EUR")
    reader = EventReader(stack, codec)
    try:
        deposits = [C.deposit(a, 1_000_000, "EUR") for a in accounts]
        send(stack, codec, opens)
        send(stack, codec, deposits)
        reader.terminals([d["command_id"] for d in deposits], timeout=120)
        transfers = []
        for _ in range(20_000):
            src, dst = rnd.sample(accounts, 2)
            transfers.append(C.transfer(src, dst, rnd.randint(1, 5_000), "EUR"))

        stop, chaos_log = threading.Event(), []
        chaos = threading.Thread(target=_chaos, args=(sink, stack, stop, chaos_log))
        chaos.start()
        t0 = time.monotonic()
        for i in range(0, len(transfers), 800):  # paced, so events flow during the chaos
            send(stack, codec, transfers[i : i + 800])
            time.sleep(0.6)
        chaos.join()
        out = reader.terminals([t["command_id"] for t in transfers], timeout=300)
        flow_s = time.monotonic() - t0
        assert len(out) == len(transfers)
        assert sink.proc is not None and sink.proc.poll() is None, sink.tail()
        caught_up(stack, 180)
        assert_matches(stack, reader.events, accounts)

        with psycopg.connect(stack.postgres_dsn) as conn:
            dupes = conn.execute(
                "SELECT count(*) - count(DISTINCT (event_id, idx)) FROM postings"
                " WHERE account_id = ANY(%s::uuid[])",
                (accounts,),
            ).fetchone()
            statuses = Counter(
                s
                for (s,) in conn.execute(
                    "SELECT status FROM payments WHERE payment_id = ANY(%s::uuid[])",
                    ([t["command_id"] for t in transfers],),
                ).fetchall()
            )
        assert dupes == (0,)
        want = Counter(e["status"] for e in out.values())
        assert statuses == want
        log_text = sink.log_path.read_text(errors="replace")
        assert log_text.count("assigned [") >= 6, chaos_log
        if any(line.startswith("terminated 1") for line in chaos_log):
            assert "recovering" in log_text or "reconnecting" in log_text, chaos_log
        print(f"chaos: {chaos_log}; {len(transfers)} transfers flowed in {flow_s:.1f}s")
    finally:
        reader.close()

    cli = subprocess.run(
        [sys.executable, "-m", "ops.cli", "verify", "--wait", "120"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    assert cli.returncode == 0, cli.stdout[-4000:] + cli.stderr[-2000:]
    assert "all checks passed" in cli.stdout


def test_verify_names_a_corrupted_balance(stack, codec: Codec, ledger, sink):
    (a,), opens = new_accounts(1)
    dep = C.deposit(a, 5_000, "USD")
    reader = EventReader(stack, codec)
    try:
        send(stack, codec, [*opens, dep])
        reader.terminals([dep["command_id"]])
    finally:
        reader.close()
    caught_up(stack)
    with psycopg.connect(stack.postgres_dsn, autocommit=True) as conn:
        # Relative updates, so a concurrent sink write to the row cannot be lost.
        conn.execute("UPDATE accounts SET balance = balance + 777 WHERE account_id = %s", (a,))
        try:
            report = verify(stack, codec=codec)
        finally:
            conn.execute("UPDATE accounts SET balance = balance - 777 WHERE account_id = %s", (a,))
        (balance,) = conn.execute(
            "SELECT balance FROM accounts WHERE account_id = %s", (a,)
        ).fetchone() or (None,)
    assert not report.ok
    bad = report.check("d. balances equal the replay")
    assert not bad.ok and any(a in line and "5777" in line for line in bad.offenders)
    assert not report.check("a. zero sum per currency (postgres)").ok
    assert balance == 5_000
