"""The tamper-evident journal against the real ledger: its events form whole hash
chains on the topic and in the read model; an edited record in a copy of the
journal and an edited row of the read model are named by `paystream verify`; an
audit export checks, and a tampered one does not.

The topics and the database are shared with the other tests of a session, so each
test makes its own accounts and looks for its own links in verify's findings.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest

from ops.verify import end_offsets, journal_chains, read_topic, verify
from paystream import commands as C
from paystream import journal
from paystream.codec import Codec
from paystream.settings import Settings
from tests.conftest import caught_up
from tests.kafka_helpers import EventReader, send

pytestmark = pytest.mark.integration


def some_transfers(stack: Settings, codec: Codec) -> tuple[str, str, list[dict[str, Any]]]:
    """Two fresh accounts, a deposit, transfers both ways, a duplicate and a refusal:
    the events of both accounts, in sequence order."""
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    opens = [C.open_account(x, external_number=f"J{x[:18]}", owner_id="journal-test", currency="USD")
             for x in (a, b)]  # fmt: skip
    dep = C.deposit(a, 10_000, "USD", metadata={"description": "salary ✓"})
    moves = [C.transfer(a, b, 1_250, "USD"), C.transfer(b, a, 250, "USD"), C.transfer(a, b, 10**9, "USD")]
    reader = EventReader(stack, codec)
    try:
        send(stack, codec, opens)
        reader.terminals([o["command_id"] for o in opens])
        send(stack, codec, [dep])
        reader.terminals([dep["command_id"]])
        send(stack, codec, [moves[0]])
        reader.terminals([moves[0]["command_id"]])
        send(stack, codec, [*moves[1:], moves[0]])  # the last one a duplicate
        reader.terminals([m["command_id"] for m in moves])
        reader.poll_until(lambda evs: sum(e["replay"] for e in evs if e["account_id"] == a) >= 1)
        events = sorted((e for e in reader.events if e["account_id"] in (a, b)),
                        key=lambda e: (e["account_id"], e["sequence"]))  # fmt: skip
    finally:
        reader.close()
    return a, b, events


def test_the_ledger_writes_one_whole_chain_per_account(stack, codec, ledger):
    a, b, events = some_transfers(stack, codec)
    assert journal.check_chains(events) == []
    for acct in (a, b):
        mine = [e for e in events if e["account_id"] == acct]
        assert [e["sequence"] for e in mine] == list(range(1, len(mine) + 1))
        assert mine[0]["prev_hash"] == journal.GENESIS
        assert all(e["hash"] == journal.event_hash(e) for e in mine)


def copy_journal(stack: Settings, codec: Codec, path: Path) -> None:
    """A copy of the journal as a third party may keep one: every committed record of
    ledger.events as one JSON line (partition, offset, the event as decoded)."""
    with path.open("w") as f:
        read_topic(stack, codec, end_offsets(stack),
                   lambda p, o, ev: f.write(json.dumps({"partition": p, "offset": o, "event": ev}) + "\n"))  # fmt: skip


def records(path: Path) -> list[tuple[int, int, dict[str, Any]]]:
    return [(r["partition"], r["offset"], r["event"]) for r in map(json.loads, path.read_text().splitlines())]


def test_an_edited_record_in_a_copy_of_the_journal_is_named(stack, codec, ledger, tmp_path):
    a, _, events = some_transfers(stack, codec)
    path = tmp_path / "ledger.events.jsonl"
    copy_journal(stack, codec, path)
    assert journal_chains(records(path)).first_breaks() == []

    debit = next(e for e in events if e["account_id"] == a and e["type"] == "TRANSFER_DEBITED")
    lines = path.read_text().splitlines()
    (i,) = [n for n, line in enumerate(lines) if json.loads(line)["event"]["event_id"] == debit["event_id"]]
    record = json.loads(lines[i])
    record["event"]["amount"] = 12  # was 1250
    lines[i] = json.dumps(record)
    path.write_text("\n".join(lines) + "\n")

    (brk,) = journal_chains(records(path)).first_breaks()
    assert (brk.account_id, brk.sequence, brk.what) == (a, debit["sequence"], "hash")
    assert (brk.expected, brk.found) == (journal.event_hash(record["event"]), debit["hash"])
    assert brk.where == f"ledger.events[{record['partition']}]@{record['offset']}"
    assert f"account {a} sequence {debit['sequence']}" in str(brk)

    # The forger recomputes the edited record's hash: the next link names it.
    record["event"]["hash"] = journal.event_hash(record["event"])
    lines[i] = json.dumps(record)
    path.write_text("\n".join(lines) + "\n")
    (brk,) = journal_chains(records(path)).first_breaks()
    assert (brk.account_id, brk.sequence, brk.what) == (a, debit["sequence"] + 1, "prev_hash")


def test_verify_names_an_edited_row_of_the_read_model(stack, codec, ledger, sink):
    a, b, events = some_transfers(stack, codec)
    caught_up(stack)
    clean = verify(stack, codec=codec)
    for name in ("f. hash chains are whole (journal)", "f. hash chains are whole (read model)",
                 "f. chain heads in postgres equal the journal's"):  # fmt: skip
        assert clean.check(name).ok, clean.check(name).offenders[:5]

    debit = next(e for e in events if e["account_id"] == a and e["type"] == "TRANSFER_DEBITED")
    credit = next(e for e in events if e["account_id"] == b and e["type"] == "TRANSFER_COMPLETED")
    with psycopg.connect(stack.postgres_dsn, autocommit=True) as conn:
        # An event's amount, and a posting moved between two accounts so that every
        # sum still balances: only the chain can tell. Relative, so reverted exactly.
        conn.execute("UPDATE ledger_events SET amount = amount + 1 WHERE event_id = %s", (debit["event_id"],))
        conn.execute("UPDATE postings SET amount = amount + 100 * (1 - 2 * idx) WHERE event_id = %s",
                     (credit["event_id"],))  # fmt: skip
        try:
            report = verify(stack, codec=codec)
        finally:
            conn.execute("UPDATE ledger_events SET amount = amount - 1 WHERE event_id = %s", (debit["event_id"],))
            conn.execute("UPDATE postings SET amount = amount - 100 * (1 - 2 * idx) WHERE event_id = %s",
                         (credit["event_id"],))  # fmt: skip
    rows = report.check("f. hash chains are whole (read model)")
    assert not rows.ok
    named = {line.split(":")[0] for line in rows.offenders}
    assert f"account {a} sequence {debit['sequence']} (ledger_events row of event {debit['event_id']})" in named
    assert f"account {b} sequence {credit['sequence']} (ledger_events row of event {credit['event_id']})" in named
    assert report.check("f. hash chains are whole (journal)").ok
    assert report.check("a. zero sum per currency (postgres)").ok  # the edit kept every sum


def test_verify_names_a_read_model_chain_rewritten_to_its_head(stack, codec, ledger, sink):
    """A forger who recomputes the hash of the row they edit (here the account's last,
    so no later row links to it) keeps the read model's chain whole; its head then
    differs from the journal's, and verify names it."""
    a, _, events = some_transfers(stack, codec)
    caught_up(stack)
    head = [e for e in events if e["account_id"] == a][-1]
    forged = {**head, "note": "nothing to see"}
    forged["hash"] = journal.event_hash(forged)
    with psycopg.connect(stack.postgres_dsn, autocommit=True) as conn:
        conn.execute("UPDATE ledger_events SET note = %s, hash = %s WHERE event_id = %s",
                     (forged["note"], forged["hash"], head["event_id"]))  # fmt: skip
        try:
            report = verify(stack, codec=codec)
        finally:
            conn.execute("UPDATE ledger_events SET note = %s, hash = %s WHERE event_id = %s",
                         (head["note"], head["hash"], head["event_id"]))  # fmt: skip
    assert report.check("f. hash chains are whole (read model)").ok
    heads = report.check("f. chain heads in postgres equal the journal's")
    assert heads.offenders == [
        f"account {a} sequence {head['sequence']} (read model vs journal): chain head expected "
        f"sequence {head['sequence']} hash {head['hash']}, found sequence {head['sequence']} hash {forged['hash']}"
    ]


def test_an_audit_export_checks_and_a_tampered_one_does_not(stack, codec, ledger, sink, tmp_path):
    from typer.testing import CliRunner

    from ops import cli as cli_mod
    from sinks.read_model import ts

    cli_mod._register()
    run = CliRunner().invoke
    a, _, events = some_transfers(stack, codec)
    caught_up(stack)
    mine = [e for e in events if e["account_id"] == a]
    start = ts(mine[2]["occurred_at"]).isoformat()  # a window from the third event on
    path = tmp_path / "export.json"
    done = run(cli_mod.app, ["audit", "export", "--account", a, "--from", start, "-o", str(path)])
    assert done.exit_code == 0, done.output
    doc = json.loads(path.read_text())
    first = next(e for e in mine if e["occurred_at"] >= mine[2]["occurred_at"])
    assert doc["link"] == {"sequence": first["sequence"] - 1, "hash": first["prev_hash"]}
    assert [e["hash"] for e in doc["events"]] == [e["hash"] for e in mine if e["sequence"] >= first["sequence"]]
    assert doc["events"] == [e for e in mine if e["sequence"] >= first["sequence"]]  # as on the topic

    done = run(cli_mod.app, ["audit", "check", str(path)])
    assert done.exit_code == 0 and "ok:" in done.output, done.output

    doc["events"][0]["amount"] = (doc["events"][0]["amount"] or 0) + 1
    path.write_text(json.dumps(doc))
    done = run(cli_mod.app, ["audit", "check", str(path)])
    assert done.exit_code == 1 and "signature does not match" in done.output, done.output
