"""The operator toolkit (issue 6) against the real stack: reprocess rebuilds a read
model identically and idempotently, dead letters are listed and replayed after a
fix, offsets resets refuse live groups, lag sees the ledger.

The topics are shared with other sessions, so each test works on its own
accounts, its own offset ranges, its own scratch database and its own groups.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from confluent_kafka import TopicPartition
from typer.testing import CliRunner

from ops import groups as G
from ops import reprocess as R
from ops.verify import read_topic
from paystream import commands as C
from paystream import kafka
from paystream.codec import Codec
from paystream.deadletter import DLQ_TOPIC
from paystream.settings import Settings
from sinks.postgres_sink import PgWriter
from tests.conftest import scratch_database
from tests.kafka_helpers import EventReader, send

pytestmark = pytest.mark.integration

TEST_DB = f"ops_test_{os.getpid()}"
runner = CliRunner()


@pytest.fixture(scope="module")
def cli() -> Any:
    from ops import cli as cli_mod

    cli_mod._register()
    return cli_mod.app


@pytest.fixture(scope="module")
def scratch_dsn(stack: Settings) -> Iterator[str]:
    with scratch_database(stack, TEST_DB) as dsn:
        yield dsn


def _ends(settings: Settings, topic: str = "ledger.events") -> dict[int, int]:
    parts = G.partitions(settings, topic)
    return {p: hi for (_, p), (_, hi) in G.watermarks(settings, [(topic, p) for p in parts]).items()}


def dump(dsn: str) -> dict[str, list[str]]:
    """Every row of the read-model tables as text, sorted: equal dumps, equal models."""
    with psycopg.connect(dsn) as conn:
        return {
            t: [r[0] for r in conn.execute(f"SELECT x::text FROM {t} x ORDER BY 1").fetchall()]
            for t in R.READ_MODEL_TABLES
        }


def test_reprocess_rebuilds_identically_and_idempotently(stack, codec, ledger, scratch_dsn, cli):
    (a, b, c) = [str(uuid.uuid4()) for _ in range(3)]
    opens = [C.open_account(x, external_number=f"O{x[:18]}", owner_id="ops-test", currency="USD")
             for x in (a, b, c)]  # fmt: skip
    before = _ends(stack)
    reader = EventReader(stack, codec)
    try:
        send(stack, codec, opens)
        reader.terminals([o["command_id"] for o in opens], timeout=90)
        dep = C.deposit(a, 50_000, "USD")
        send(stack, codec, [dep])
        reader.terminals([dep["command_id"]])
        moves = [C.transfer(a, b, 12_345, "USD"), C.transfer(a, c, 1_000, "USD"),
                 C.transfer(a, b, 10**9, "USD")]  # fmt: skip
        send(stack, codec, moves)
        out = reader.terminals([m["command_id"] for m in moves])
        assert out[moves[2]["command_id"]]["type"] == "COMMAND_REJECTED"
    finally:
        reader.close()
    after = _ends(stack)
    ranges = {p: (before[p], after[p]) for p in after if after[p] > before[p]}

    # The original: the sink's writer over the range, read by verify's independent reader.
    events: list[tuple[int, int, dict[str, Any]]] = []
    read_topic(stack, codec, {p: e for p, (_, e) in ranges.items()},
               lambda p, o, ev: events.append((p, o, ev)), start={p: s for p, (s, _) in ranges.items()})  # fmt: skip
    writer = PgWriter(scratch_dsn, "ops-test-original")
    writer.connect()
    try:
        writer.write(events, {})
    finally:
        writer.close()
    original = dump(scratch_dsn)
    mine = [r for r in original["accounts"] if any(x in r for x in (a, b, c))]
    assert len(mine) == 3 and any(",36655," in r for r in mine)  # a: 50000 - 12345 - 1000

    with psycopg.connect(scratch_dsn) as conn:
        conn.execute(f"TRUNCATE {', '.join(R.READ_MODEL_TABLES)}")
    assert all(not rows for rows in dump(scratch_dsn).values())

    t0 = time.monotonic()
    first = R.into_sink(stack, ranges, dsn=scratch_dsn)
    assert dump(scratch_dsn) == original
    assert first.inserted == len({ev["event_id"] for _, _, ev in events}) > 0
    second = R.into_sink(stack, ranges, dsn=scratch_dsn)
    assert second.inserted == 0 and second.skipped == first.inserted
    assert dump(scratch_dsn) == original
    print(f"reprocess of {first.read} messages x2 in {time.monotonic() - t0:.1f}s")

    # The CLI over one partition: nothing new, nothing duplicated, no offsets stored.
    p, (s, e) = next(iter(sorted(ranges.items())))
    res = runner.invoke(cli, ["reprocess", "--topic", "ledger.events", "--partition", str(p),
                              "--from-offset", str(s), "--to-offset", str(e), "--into", "sink",
                              "--dsn", scratch_dsn])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "inserted 0" in res.output
    assert dump(scratch_dsn) == original
    with psycopg.connect(scratch_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM sink_offsets").fetchone() == (0,)

    # --rebuild --dry-run only reports (a real rebuild replays the whole shared journal).
    res = runner.invoke(cli, ["reprocess", "--rebuild", "--dry-run", "--dsn", scratch_dsn])
    assert res.exit_code == 0 and "dry run: nothing changed" in res.output, res.output
    assert dump(scratch_dsn) == original


def _produce_at(settings: Settings, codec: Codec, cmd: dict[str, Any], key: bytes) -> tuple[int, int]:
    """Produce one command with a chosen key; return its (partition, offset)."""
    where: list[tuple[int, int]] = []
    p = kafka.producer(settings)
    p.produce(C.topic_for(cmd), key=key, value=codec.encode(C.topic_for(cmd), cmd),
              on_delivery=lambda err, m: where.append((m.partition(), m.offset())))  # fmt: skip
    assert p.flush(30) == 0 and where
    return where[0]


def test_dead_letter_listed_and_replayed_after_fix(stack, codec, ledger, cli):
    from paystream.deadletter import _NS

    a = str(uuid.uuid4())
    opened = C.open_account(a, external_number=f"D{a[:18]}", owner_id="ops-test", currency="USD")
    events = EventReader(stack, codec)
    letters = EventReader(stack, codec, topic=DLQ_TOPIC)
    try:
        send(stack, codec, [opened])
        events.terminals([opened["command_id"]], timeout=90)
        dep = C.deposit(a, 7_000, "USD")
        part, off = _produce_at(stack, codec, dep, key=str(uuid.uuid4()).encode())  # wrong key
        dl_id = str(uuid.uuid5(_NS, f"{C.topic_for(dep)}:{part}:{off}"))
        letters.poll_until(lambda rs: any(r["dead_letter_id"] == dl_id for r in rs), timeout=60)

        res = runner.invoke(cli, ["dlq", "list", "--component", "ledger", "--limit", "0", "--json"])
        assert res.exit_code == 0, res.output
        line = next(x for x in res.output.splitlines() if dl_id in x)
        assert "differs from account_id" in line and '"INVALID"' in line

        res = runner.invoke(cli, ["dlq", "show", dl_id])
        assert res.exit_code == 0 and a in res.output and "DEPOSIT" in res.output, res.output

        res = runner.invoke(cli, ["dlq", "replay", dl_id, "--rekey", "--dry-run"])
        assert res.exit_code == 0 and "would replay" in res.output, res.output
        res = runner.invoke(cli, ["dlq", "replay", dl_id, "--rekey"])
        assert res.exit_code == 0 and "replayed 1 of 1" in res.output, res.output
        done = events.terminals([dep["command_id"]], timeout=60)[dep["command_id"]]
        assert done["type"] == "DEPOSITED" and done["balance_after"] == 7_000

        res = runner.invoke(cli, ["dlq", "replay", dl_id, "--rekey"])
        assert res.exit_code == 0 and "already replayed" in res.output and "replayed 0 of 1" in res.output
    finally:
        events.close()
        letters.close()


def test_offsets_reset_refuses_active_group_and_plans_for_idle(stack, cli):
    group = f"ops-test-{uuid.uuid4().hex[:8]}"
    topic = "ledger.events"
    ends = _ends(stack, topic)
    c = kafka.consumer(stack, group, **{"session.timeout.ms": 6000})
    try:
        c.subscribe([topic])
        deadline = time.monotonic() + 30
        while not c.assignment() and time.monotonic() < deadline:
            c.poll(0.2)
        assert c.assignment(), "never joined the group"
        c.commit(offsets=[TopicPartition(topic, p, o) for p, o in ends.items()], asynchronous=False)

        res = runner.invoke(cli, ["offsets", "reset", "--group", group, "--to-offset", "0", "--dry-run"])
        assert res.exit_code == 1 and "active" in res.output, res.output
        res = runner.invoke(cli, ["offsets", "show", "--group", group])
        assert res.exit_code == 0 and "1 member" in res.output, res.output
    finally:
        c.close()
    deadline = time.monotonic() + 20
    while G.describe(stack, group).members and time.monotonic() < deadline:
        time.sleep(0.2)
    try:
        res = runner.invoke(cli, ["offsets", "reset", "--group", group, "--to-offset", "0", "--dry-run"])
        assert res.exit_code == 0 and "dry run" in res.output, res.output
        assert G.committed(stack, group) == {(topic, p): o for p, o in ends.items()}  # unchanged
        res = runner.invoke(cli, ["offsets", "reset", "--group", group, "--to-time", "1970-01-01T00:00:00"])
        assert res.exit_code == 0, res.output
        lows = G.watermarks(stack, [(topic, p) for p in ends])
        assert G.committed(stack, group) == {(topic, p): lows[(topic, p)][0] for p in ends}
    finally:
        admin = G.admin(stack)
        admin.delete_consumer_groups([group], request_timeout=10)[group].result(timeout=15)


def test_lag_lists_ledger_and_state_rebuild_refuses_running_ledger(stack, ledger, cli):
    res = runner.invoke(cli, ["lag"])
    assert res.exit_code == 0 and "paystream-ledger" in res.output, res.output
    res = runner.invoke(cli, ["offsets", "show"])  # no --group: every paystream group
    assert res.exit_code == 0 and "paystream-ledger (" in res.output, res.output
    deadline = time.monotonic() + 60
    while not G.describe(stack, "paystream-ledger").members and time.monotonic() < deadline:
        time.sleep(0.5)
    res = runner.invoke(cli, ["state", "rebuild", "--app", "ledger", "--dry-run"])
    assert res.exit_code == 1 and "active" in res.output, res.output


def test_lag_counts_records_not_transaction_markers(stack, cli):
    """Under exactly-once every transaction ends with a marker no consumer receives or
    commits past: a group that consumed everything is one offset short of the end and
    must still show lag 0, and a group behind shows the records it has left."""
    from confluent_kafka.admin import NewTopic

    from ops.offsets import group_lag

    topic = f"ops-test-txn-{uuid.uuid4().hex[:8]}"
    admin = G.admin(stack)
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(timeout=30)
    groups = [f"paystream-lagtest-{uuid.uuid4().hex[:8]}" for _ in range(3)]
    try:
        p = kafka.producer(stack, **{"transactional.id": f"lagtest-{uuid.uuid4().hex[:8]}"})
        p.init_transactions(30)
        for t in range(3):  # records at 0,1 | 3,4 | 6,7; markers at 2, 5, 8; end 9
            p.begin_transaction()
            for i in range(2):
                p.produce(topic, key=b"k", value=f"{t}.{i}".encode(), partition=0)
            p.commit_transaction(30)
        for group, at in zip(groups, (8, 6, 3), strict=True):  # past the last record; 2 left; 4 left
            c = kafka.consumer(stack, group)
            c.commit(offsets=[TopicPartition(topic, 0, at)], asynchronous=False)
            c.close()
        got = [group_lag(stack, g, topic)[0] for g in groups]
        assert [(r.end, r.lag) for r in got] == [(9, 0), (9, 2), (9, 4)]
        res = runner.invoke(cli, ["lag", "--prefix", groups[0]])
        assert res.exit_code == 0 and topic[:12] in res.output, res.output
    finally:
        admin.delete_topics([topic])[topic].result(timeout=30)
        for g in groups:
            admin.delete_consumer_groups([g], request_timeout=10)[g].result(timeout=15)


def test_reprocess_into_topic_keeps_key_value_headers_and_partition(stack, cli):
    from confluent_kafka.admin import NewTopic

    src, dst = f"ops-test-src-{uuid.uuid4().hex[:8]}", f"ops-test-dst-{uuid.uuid4().hex[:8]}"
    admin = G.admin(stack)
    for f in admin.create_topics([NewTopic(t, 8, 1) for t in (src, dst)]).values():
        f.result(timeout=30)
    try:
        p = kafka.producer(stack)
        sent = [(str(uuid.uuid4()).encode(), f"v{i}".encode(), [("h", f"{i}".encode())]) for i in range(20)]
        for k, v, h in sent:
            p.produce(src, key=k, value=v, headers=h)
        assert p.flush(30) == 0
        res = runner.invoke(cli, ["reprocess", "--topic", src, "--from-offset", "0", "--into", f"topic:{dst}"])
        assert res.exit_code == 0 and "produced 20" in res.output, res.output

        def read(topic: str) -> set[tuple[Any, ...]]:
            c = kafka.consumer(stack, f"ops-test-{uuid.uuid4()}")
            try:
                c.assign([TopicPartition(topic, q, 0) for q in range(8)])
                got: set[tuple[Any, ...]] = set()
                deadline = time.monotonic() + 30
                while len(got) < len(sent) and time.monotonic() < deadline:
                    for m in c.consume(100, 0.5):
                        if m.error() is None:
                            got.add((m.partition(), m.key(), m.value(), tuple(m.headers() or [])))
                return got
            finally:
                c.close()

        assert read(dst) == read(src) and len(read(dst)) == 20
    finally:
        for f in admin.delete_topics([src, dst]).values():
            f.result(timeout=30)


def test_demo_moves_money(stack, ledger, cli):
    res = runner.invoke(cli, ["demo", "--users", "3", "--payments", "12", "--rate", "40", "--seed", "1"])
    assert res.exit_code == 0, res.output
    assert "TRANSFER_COMPLETED" in res.output and "without an outcome" not in res.output


def test_state_rebuild_removes_only_the_named_instance(stack, cli):
    if G.describe(stack, "paystream-reviews").members:
        pytest.skip("paystream-reviews is running in this stack")
    mine = stack.home / "state" / f"reviews-ops-test-{os.getpid()}"
    (mine / "store").mkdir(parents=True, exist_ok=True)
    (mine / "store" / "data").write_bytes(b"x" * 100)
    args = ["state", "rebuild", "--app", "reviews", "--instance", f"ops-test-{os.getpid()}"]
    res = runner.invoke(cli, [*args, "--dry-run"])
    assert res.exit_code == 0 and "would remove" in res.output and mine.exists(), res.output
    res = runner.invoke(cli, args)
    assert res.exit_code == 0 and not mine.exists(), res.output
