"""`paystream partitions grow`, 8 -> 16 partitions, under load (docs/PARTITIONS.md).

A real ledger runs on the first generation while Kafka-direct producers (batched, as
paystream's client library sends) and the gateway's command sender send transfers
continuously. The procedure runs
step by step, the test playing the operator (restart producers, stop the old ledger,
start the new one), with stragglers written to the old generation after its ledger
stopped. Across the switch the checker requires: every command exactly one terminal
outcome, no event twice, every event balanced and every balance equal to its journal
(`ops.verify.Replay`), every account's hash chain whole (`ops.verify.journal_chains`),
nothing dead-lettered (no item reached a partition that does not own its account),
retries of commands applied before the switch deduped by the new ledger, holds moved
(one captured after the switch, one expiring after it), and the old ledger refused
once its generation was grown past."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import TopicPartition

from gateway.ledger_io import CommandSender
from ops import groups as G
from ops import partitions as P
from ops.verify import Replay, journal_chains
from paystream import commands as C
from paystream import kafka
from paystream.codec import Codec
from paystream.deadletter import DLQ_TOPIC
from paystream.producer import Producer
from paystream.settings import Settings
from pipelines.ledger import app as ledger_app
from tests.conftest import Component
from tests.kafka_helpers import send

pytestmark = pytest.mark.integration
GROWN = 16
ACCOUNTS = 24
RATE = 60  # transfers/s offered Kafka-direct, and GATEWAY_RATE more through the gateway's sender
GATEWAY_RATE = 20


class Journal(threading.Thread):
    """ledger.events from now on, with the time each event was read: what any
    downstream consumer sees, and the checker's input."""

    def __init__(self, settings: Settings, codec: Codec, topic: str = "ledger.events") -> None:
        super().__init__(daemon=True)
        self.codec, self.topic = codec, topic
        self.consumer = kafka.consumer(settings, f"test-{uuid.uuid4()}")
        parts = self.consumer.list_topics(topic, timeout=10).topics[topic].partitions
        self.consumer.assign([TopicPartition(topic, p, self.consumer.get_watermark_offsets(
            TopicPartition(topic, p), timeout=10)[1]) for p in parts])
        self.records: list[tuple[int, int, dict[str, Any], float]] = []
        self.stop = threading.Event()
        self.lock = threading.Lock()

    def run(self) -> None:
        while not self.stop.is_set():
            for m in self.consumer.consume(500, 0.1):
                if m.error() is None:
                    ev = self.codec.decode(self.topic, m.value())
                    with self.lock:
                        self.records.append((m.partition(), m.offset(), ev, time.monotonic()))
        self.consumer.close()

    def events(self) -> list[dict[str, Any]]:
        with self.lock:
            return [r[2] for r in self.records]

    def wait(self, done: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not done(self.events()):
            assert time.monotonic() < deadline, f"{what}: not within {timeout}s"
            time.sleep(0.2)


class Load(threading.Thread):
    """Transfers at `rate` through whichever producer it holds: swapping `producer` is a
    producer's restart with the new generation's settings. A producer is the SDK's
    `Producer` (Kafka-direct) or the gateway's `CommandSender` (its Kafka path: batching,
    the topic of its settings' generation; awaited as a request handler awaits it)."""

    def __init__(self, producer: Producer | CommandSender, accounts: list[str], rate: float, seed: int) -> None:
        super().__init__(daemon=True)
        self.producer = producer
        self.accounts = accounts
        self.rate = rate
        self.sent: list[tuple[dict[str, Any], float, str]] = []  # command, time sent, topic
        self.stop = threading.Event()
        self.rng = random.Random(seed)

    def run(self) -> None:
        loop = asyncio.new_event_loop()
        try:
            while not self.stop.is_set():
                src, dst = self.rng.sample(self.accounts, 2)
                cmd = C.transfer(src, dst, self.rng.randint(1, 50), "USD")
                producer = self.producer
                if isinstance(producer, CommandSender):
                    loop.run_until_complete(producer.send(cmd))
                else:
                    producer.send(cmd)
                self.sent.append((cmd, time.monotonic(), producer.ledger.commands))
                time.sleep(1 / self.rate)
        finally:
            loop.close()


def _terminal(events: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for e in events:
        if e["terminal"] and not e["replay"]:
            out.setdefault(e["command_id"], []).append(e)
    return out


def _delete_generation(settings: Settings, plan: P.Plan) -> None:
    """Leave the shared stack as the other tests expect it: the first generation only."""
    admin = kafka.admin(settings)
    names = [*plan.new.inputs, plan.new_changelog]
    existing = admin.list_topics(timeout=10).topics
    doomed = [n for n in names if n in existing]
    if doomed:
        for fut in admin.delete_topics(doomed, operation_timeout=30).values():
            fut.result()
    for fut in admin.delete_consumer_groups([P.FORWARD_GROUP], request_timeout=10).values():
        with contextlib.suppress(Exception):  # never created when the test failed early
            fut.result()
    deadline = time.monotonic() + 60
    while any(n in admin.list_topics(timeout=10).topics for n in names) and time.monotonic() < deadline:
        time.sleep(0.5)
    # the seal, as if this generation had never been: the old ledger's offsets stay
    # Offsets are altered only with no member; a static member stopped a moment ago
    # stays until its session times out (it sends no LeaveGroup), so wait it out: a
    # seal left behind makes the next test's cutover find the procedure "done already".
    deadline = time.monotonic() + 30
    while G.describe(settings, ledger_app.GROUP).members and time.monotonic() < deadline:
        time.sleep(0.5)
    old = {tp: o for tp, o in G.committed(settings, ledger_app.GROUP).items() if tp[0] in plan.old.inputs}
    if old:
        P._commit(settings, ledger_app.GROUP, old)


# The procedure changes what the broker holds for every ledger (a newer generation, the
# seal on the old offsets), and putting it back after the test leaves the first
# generation's state behind the moved accounts' (a hold it still has open expires there
# again, a second event in a hash chain the new ledger continued). So the test has a
# stack of its own instead of the shared one: these fixtures replace the session's.
@pytest.fixture(scope="module")
def stack() -> Iterator[Settings]:
    from ops.lab.isolated import isolated_stack

    with isolated_stack("paystream-grow-") as iso:
        yield iso


@pytest.fixture(scope="module")
def codec(stack: Settings) -> Codec:
    return Codec(stack.registry_url)


@pytest.fixture(scope="module")
def ledger(stack: Settings, log_dir: Path) -> Iterator[Component]:
    from ops.lab.isolated import settings_env

    comp = Component("ledger", log_dir, env={**settings_env(stack), "PAYSTREAM_LEDGER_INSTANCE": "grow-old"}).start()
    yield comp
    comp.stop()


@pytest.fixture
def grown(stack: Settings, ledger: Component, log_dir: Path) -> Iterator[dict[str, Any]]:
    """The new ledger's process and settings; afterwards the first generation is all
    there is again and the module's ledger runs on it, as before."""
    from ops.lab.isolated import settings_env

    new_settings = stack.model_copy(update={"ledger_partitions": GROWN})
    instance = f"grow-{os.getpid()}"
    holder: dict[str, Any] = {"settings": new_settings, "component": None,
                              "env": {**settings_env(stack), "PAYSTREAM_LEDGER_PARTITIONS": str(GROWN),
                                      "PAYSTREAM_LEDGER_INSTANCE": instance}}
    yield holder
    if holder["component"] is not None:
        holder["component"].stop()
    _delete_generation(stack, P.plan(stack, GROWN))
    shutil.rmtree(stack.home / "state" / f"ledger-{instance}", ignore_errors=True)
    if ledger.proc is None or ledger.proc.poll() is not None:
        ledger.start()


@pytest.mark.parametrize("drain", [True, False], ids=["drained", "old-ledger-stopped-mid-load"])
def test_grow_from_8_to_16_partitions_under_load_loses_and_duplicates_nothing(
        stack: Settings, codec: Codec, ledger: Component, grown: dict[str, Any], log_dir: Path, drain: bool) -> None:
    """`drain`: the procedure as written. Without: the old ledger stops while producers
    still write to it (a crash, or everything restarted with the new setting at once),
    so cutover forwards commands and legs in flight, and the new ledger's refusal to
    start before the seal is what keeps the accounts single-writer."""
    journal = Journal(stack, codec)
    dead = Journal(stack, codec, DLQ_TOPIC)
    journal.start()
    dead.start()
    plan = P.plan(stack, GROWN)
    assert (plan.old_partitions, plan.new.commands) == (8, "payments.commands.p16")

    # accounts, funded, and two holds that must survive the move
    accounts = [str(uuid.uuid4()) for _ in range(ACCOUNTS)]
    send(stack, codec, [C.open_account(a, external_number=a[:12], owner_id="t", currency="USD") for a in accounts])
    deposits = [C.deposit(a, 1_000_000, "USD") for a in accounts]
    send(stack, codec, deposits)
    journal.wait(lambda evs: {c["command_id"] for c in deposits} <= set(_terminal(evs)), 60, "the deposits")
    # holds go to payments.commands, opens and deposits to payments.privileged: only
    # their outcomes order them
    captured = C.authorize(accounts[0], accounts[1], 700, "USD")
    expiring = C.authorize(accounts[2], accounts[3], 900, "USD", hold_timeout_ms=25_000)
    send(stack, codec, [captured, expiring])
    holds = {captured["command_id"], expiring["command_id"]}
    journal.wait(lambda evs: holds <= {e["payment_id"] for e in evs if e["type"] == "HOLD_PLACED"}, 60, "the holds")

    old_producer = Producer(stack, codec=codec, batch=True, batch_linger_ms=2)
    old_gateway = CommandSender(stack, codec)
    old_gateway.start()
    load = Load(old_producer, accounts, RATE, 7)
    via_gateway = Load(old_gateway, accounts, GATEWAY_RATE, 8)
    load.start()
    via_gateway.start()
    time.sleep(3)

    # 1. prepare: the new generation's topics, changelog and schemas
    made = P.prepare(stack, plan)
    assert set(made) >= {*plan.new.inputs, plan.new_changelog}

    stragglers = [C.transfer(accounts[4], accounts[5], 3, "USD") for _ in range(5)]
    old_producer.send_many(stragglers[:2])  # before the old ledger stops: it applies them
    old_producer.flush(30)
    if not drain:
        ledger.stop()  # mid-load: its last checkpoint's legs are left for cutover to forward

    # 2. producers restart with PAYSTREAM_LEDGER_PARTITIONS=16
    new_producer = Producer(grown["settings"], codec=codec, batch=True, batch_linger_ms=2)
    new_gateway = CommandSender(grown["settings"], codec)
    new_gateway.start()
    switched = time.monotonic()
    load.producer, via_gateway.producer = new_producer, new_gateway
    old_producer.flush(30)

    # 3. drain, legs in flight included; 4. the old ledger stops
    drained = P.drain(stack, plan, codec, timeout=60) if drain else 0.0
    ledger.stop()
    assert ledger.proc is not None and ledger.proc.poll() is not None

    # stragglers after the stop: a batch and singles, which cutover forwards
    old_producer.send_many(stragglers[2:])
    old_producer.flush(30)
    with pytest.raises(RuntimeError, match="grown past"):
        ledger_app._partition_count(stack)  # an old ledger started now would refuse
    with pytest.raises(RuntimeError, match="has not moved"):
        ledger_app._partition_count(grown["settings"])  # and so would the new one, before the cutover

    # 5. cutover: forward, seal, move the state
    cut = P.cutover(stack, plan, codec)
    # the 3 stragglers (and any transfer the load thread had in hand when it switched);
    # undrained, what the old ledger left too
    assert cut.forwarded.commands >= 3 and cut.forwarded.undecodable == 0
    assert cut.forwarded.legs == 0 if drain else True
    assert cut.copied.open_holds >= 1  # `captured`; `expiring` too unless it expired before the cutover
    assert ledger_app._partition_count(grown["settings"]) == GROWN
    with pytest.raises(RuntimeError, match="done already"):
        P.cutover(stack, plan, codec)  # the state moves once: never again over what the new ledger writes

    # 6. the new ledger: no process reads the old generation any more
    assert P.old_readers(stack, plan) == []
    started = time.monotonic()
    grown["component"] = Component("ledger", log_dir, env=grown["env"]).start()
    first_new = next(c["command_id"] for c, _, topic in load.sent if topic == plan.new.commands)
    journal.wait(lambda evs: first_new in _terminal(evs), 60, "the new ledger's first outcome")
    resumed = time.monotonic()

    # after the switch: retries of commands applied before it, and the held money moves
    before = [c for load_ in (load, via_gateway) for c, _, topic in load_.sent[:20] if topic == plan.old.commands]
    retries = new_producer.send_many(before)
    capture = C.capture(accounts[0], captured["command_id"])
    new_producer.send(capture)
    new_producer.flush(30)
    time.sleep(3)
    load.stop.set()
    via_gateway.stop.set()
    load.join()
    via_gateway.join()
    new_producer.flush(30)
    old_gateway.close()
    new_gateway.close()
    assert all(r.result(10) for r in retries)
    assert {t for _, _, t in via_gateway.sent} == {plan.old.commands, plan.new.commands}

    sent = load.sent + via_gateway.sent
    every = [c for c, _, _ in sent] + stragglers + [capture]
    ids = {c["command_id"] for c in every}
    journal.wait(lambda evs: ids <= set(_terminal(evs)), 90, "every command's outcome")
    journal.wait(lambda evs: any(e["payment_id"] == expiring["command_id"] and e["type"] == "HOLD_EXPIRED"
                                 for e in evs), 60, "the hold's expiry")
    journal.wait(lambda evs: len({e["command_id"] for e in evs if e["replay"]} & {c["command_id"] for c in before})
                 == len(before), 30, "the retries' answers")
    time.sleep(1)
    journal.stop.set()
    dead.stop.set()
    journal.join()
    dead.join()

    events = journal.events()
    mine = set(accounts)
    ours = [e for e in events if e["account_id"] in mine]
    terminal = _terminal(ours)
    twice = {cid: len(evs) for cid, evs in terminal.items() if len(evs) > 1}
    assert not twice, f"commands with more than one terminal outcome: {twice}"
    assert ids <= set(terminal), f"no outcome for {len(ids - set(terminal))} commands"
    statuses = {e["type"] for cid in ids for e in terminal[cid]}
    assert "TRANSFER_COMPLETED" in statuses

    # retries of pre-switch ids: answered from the moved memos, never applied again
    replayed = {e["command_id"] for e in ours if e["replay"]}
    assert {c["command_id"] for c in before} <= replayed
    # the holds: captured once after the switch, the other expired once
    hold_ends = [e["type"] for e in ours if e["payment_id"] in (captured["command_id"], expiring["command_id"])
                 and e["type"] in ("HOLD_CAPTURED", "HOLD_EXPIRED", "HOLD_VOIDED") and not e["replay"]]
    assert sorted(hold_ends) == ["HOLD_CAPTURED", "HOLD_EXPIRED"]

    # the checker of `paystream verify`, over these accounts' journal across the switch
    replay = Replay(invariants=True)
    for e in ours:
        replay.feed(e, checked=False)
    assert not replay.duplicates and not replay.twice and not replay.unbalanced
    assert not replay.balance_after_wrong, replay.balance_after_wrong
    assert not replay.held_after_wrong, replay.held_after_wrong
    assert not replay.negative
    assert sum(replay.balance[a] for a in accounts) == 1_000_000 * ACCOUNTS  # transfers conserve, none in transit
    chains = journal_chains((p, o, ev) for p, o, ev, _ in journal.records if ev["account_id"] in mine)
    assert not chains.breaks, chains.breaks
    assert not dead.events(), f"dead letters: {[d.get('reason') for d in dead.events()][:5]}"

    # what the switch cost: intake was never refused; outcomes paused
    outcome_at = {e[2]["command_id"]: e[3] for e in journal.records if e[2]["terminal"] and not e[2]["replay"]}
    waits = sorted(outcome_at[c["command_id"]] - t for c, t, _ in sent)
    print(f"\ngrow 8->16 under {RATE}+{GATEWAY_RATE}/s: drain {drained:.1f}s, cutover {cut.seconds:.1f}s "
          f"({cut.copied.moved} state records; forwarded {cut.forwarded.commands} commands, {cut.forwarded.legs} "
          f"legs), producers switched -> new ledger's first outcome "
          f"{resumed - switched:.1f}s (its start {resumed - started:.1f}s); outcome wait p50 "
          f"{waits[len(waits) // 2]:.2f}s max {waits[-1]:.1f}s over {len(waits)} transfers")
