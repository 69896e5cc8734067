"""The Kafka-direct SDK against the real stack and a real ledger: `paystream.producer`
sends transfers and holds and waits for their outcomes, refuses before sending what
the ledger would not take, and a resend moves money once; `paystream.consumer` yields
typed events and resumes after its commits; the examples run; account numbers map to
ids through the API."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from confluent_kafka import KafkaError, KafkaException

from ops import kafka_auth
from paystream import commands as C
from paystream import kafka
from paystream.codec import Codec
from paystream.consumer import EventConsumer, end_positions
from paystream.errors import AccountNotFound, InvalidCommand, NotDelivered, OutcomesUnavailable, PrivilegedCommand
from paystream.partitioning import partition_for
from paystream.producer import AccountDirectory, Producer, authorize, capture, transfer, void
from paystream.settings import PROJECT_ROOT, Settings
from tests.conftest import Component
from tests.integration.test_gateway import Env, deposit, gw, reader, register, wait_opened

pytestmark = pytest.mark.integration
__all__ = ["gw", "reader"]  # fixtures, imported for this module's tests

WAIT = 90.0  # the first outcome waits for a fresh ledger to join its group


@pytest.fixture(scope="module")
def operator(stack: Settings, codec: Codec, ledger: Component) -> Iterator[Producer]:
    """A privileged producer (the stack's admin principal): opens and funds accounts."""
    with Producer(stack, codec=codec, privileged=True) as p:
        yield p


@pytest.fixture(scope="module")
def reader_principal(stack: Settings) -> Iterator[Settings]:
    """A journal reader, as `paystream consumers add` makes one."""
    name = f"sdk{uuid.uuid4().hex[:10]}"
    principal = kafka_auth.add_client(stack, "consumer", name)
    yield kafka_auth.as_principal(stack, principal)
    kafka_auth.remove_client(stack, "consumer", name)


@pytest.fixture(scope="module")
def direct(stack: Settings, codec: Codec, ledger: Component, reader_principal: Settings) -> Iterator[Producer]:
    """A direct producer as a team runs one: it sends on its own principal (`paystream
    producers add`: payments.commands only) and reads outcomes on a reader's."""
    name = f"sdk{uuid.uuid4().hex[:10]}"
    principal = kafka_auth.add_producer(stack, name)
    with Producer(kafka_auth.as_principal(stack, principal), codec=codec, outcomes=reader_principal) as p:
        yield p
    kafka_auth.remove_producer(stack, name)


def _funded(operator: Producer, amount: int, n: int = 2, currency: str = "USD") -> list[str]:
    """n fresh accounts, the first holding `amount`."""
    ids = [str(uuid.uuid4()) for _ in range(n)]
    opened = operator.send_many(
        [C.open_account(a, external_number=a[:12], owner_id="sdk", currency=currency) for a in ids], wait=WAIT
    )
    assert {e["type"] for e in opened.values()} == {"ACCOUNT_OPENED"}
    assert operator.send(C.deposit(ids[0], amount, currency), wait=WAIT)["type"] == "DEPOSITED"
    return ids


def test_a_direct_producer_sends_transfers_and_holds_and_gets_their_outcomes(operator: Producer,
                                                                              direct: Producer) -> None:
    a, b = _funded(operator, 10_000)
    paid = direct.send(transfer(a, b, 1_250, "USD"), wait=WAIT)
    assert (paid["type"], paid["account_id"], paid["balance_after"]) == ("TRANSFER_COMPLETED", b, 1_250)
    held = direct.send(authorize(a, b, 4_000, "USD", hold_timeout_ms=600_000), wait=WAIT)
    assert (held["type"], held["held_after"]) == ("HOLD_PLACED", 4_000)
    other = direct.send(authorize(a, b, 1_000, "USD"), wait=WAIT)
    captured = direct.send(capture(a, held["command_id"], amount=2_500), wait=WAIT)
    assert (captured["type"], captured["amount"], captured["balance_after"]) == ("TRANSFER_COMPLETED", 2_500, 3_750)
    assert direct.send(void(a, other["command_id"]), wait=WAIT)["type"] == "HOLD_VOIDED"
    refused = direct.send(transfer(a, b, 1_000_000, "USD"), wait=WAIT)
    assert (refused["type"], refused["reason"]) == ("COMMAND_REJECTED", "INSUFFICIENT_FUNDS")
    # Without `wait`: the broker's acknowledgement, on the account's murmur2 partition.
    delivery = direct.send(transfer(a, b, 1, "USD")).result(30)
    assert (delivery.topic, delivery.partition) == ("payments.commands", partition_for(a, 8))


def test_the_partition_is_the_ledgers_whatever_the_client_partitioner(stack: Settings, codec: Codec,
                                                                       operator: Producer) -> None:
    """librdkafka's default partitioner is not murmur2: the ledger would dead-letter
    such a producer's commands MISROUTED. The SDK computes the partition itself."""
    accounts = _funded(operator, 1_000, n=9)
    with Producer(stack, codec=codec, config={"partitioner": "consistent_random"}) as p:
        outs = p.send_many([transfer(accounts[0], to, 1, "USD") for to in accounts[1:]], wait=WAIT)
        assert {e["type"] for e in outs.values()} == {"TRANSFER_COMPLETED"}
        for to in accounts[1:]:
            assert p.send(C.transfer(to, accounts[0], 1, "USD")).result(30).partition == partition_for(to, 8)


def _ends(settings: Settings, topic: str) -> dict[int, int]:
    c = kafka.consumer(settings, f"sdk-ends-{uuid.uuid4()}")
    try:
        return {tp.partition: tp.offset for tp in end_positions(c, topic)}
    finally:
        c.close()


def test_an_invalid_or_privileged_command_is_refused_before_anything_is_sent(stack: Settings, operator: Producer,
                                                                             direct: Producer) -> None:
    a, b = _funded(operator, 100)
    before = {t: _ends(stack, t) for t in ("payments.commands", "payments.privileged")}
    bad = [
        {**transfer(a, b, 1, "USD"), "account_id": a.upper()},
        {**transfer(a, b, 1, "USD"), "movement": None},
        transfer(a, "PS0000000001", 1, "USD"),
        {**transfer(a, b, 1, "USD"), "type": "REFUND"},
    ]
    for cmd in bad:
        with pytest.raises(InvalidCommand):
            direct.send(cmd, wait=5)
    with pytest.raises(InvalidCommand):  # one bad command: none of the batch is sent
        direct.send_many([transfer(a, b, 1, "USD"), bad[0]])
    with pytest.raises(PrivilegedCommand):
        direct.send(C.deposit(a, 1_000, "USD"))
    assert direct.flush(10) == 0
    assert {t: _ends(stack, t) for t in before} == before


def test_a_resend_of_the_same_command_moves_money_once(operator: Producer, direct: Producer) -> None:
    a, b = _funded(operator, 5_000)
    cmd = transfer(a, b, 1_000, "USD")
    first = direct.send(cmd, wait=WAIT)
    again = direct.send(cmd, wait=WAIT)
    assert (first["type"], first["replay"]) == ("TRANSFER_COMPLETED", False)
    assert (again["type"], again["replay"], again["command_id"]) == ("COMMAND_DUPLICATE", True, cmd["command_id"])
    changed = {**cmd, "movement": {**cmd["movement"], "amount": 999}}  # the same id, other fields
    reused = direct.send(changed, wait=WAIT)
    assert (reused["type"], reused["reason"]) == ("COMMAND_REJECTED", "ID_REUSED_WITH_DIFFERENT_FIELDS")
    probe = direct.send(transfer(a, b, 1, "USD"), wait=WAIT)  # b's balance: moved once
    assert (probe["account_id"], probe["balance_after"]) == (b, 1_001)


def test_a_direct_principal_cannot_wait_without_a_reader(stack: Settings, codec: Codec, operator: Producer) -> None:
    a, b = _funded(operator, 100)
    name = f"sdk{uuid.uuid4().hex[:10]}"
    principal = kafka_auth.add_producer(stack, name)
    try:
        with Producer(kafka_auth.as_principal(stack, principal), codec=codec) as p:
            with pytest.raises(OutcomesUnavailable, match=r"ledger\.events"):
                p.send(transfer(a, b, 1, "USD"), wait=10)
            assert p.send(transfer(a, b, 1, "USD")).result(30).topic == "payments.commands"
    finally:
        kafka_auth.remove_producer(stack, name)


def _group_at_end(settings: Settings, group: str) -> None:
    """Commit `group`'s position at the journal's current end, so that it starts there."""
    c = kafka.consumer(settings, group)
    try:
        c.commit(offsets=end_positions(c), asynchronous=False)
    finally:
        c.close()


def _read(consumer: EventConsumer, transfers: list[str], commit_at: str) -> list[dict[str, Any]]:
    """Events until both of each transfer's (the debit, the completion: on two partitions,
    so in either order) have come; `commit()` right after the completion of `commit_at`."""
    seen: list[dict[str, Any]] = []
    left = dict.fromkeys(transfers, 2)
    for ev in consumer.events(idle_timeout=30):
        seen.append(dict(ev))
        if ev["command_id"] in left:
            left[ev["command_id"]] -= 1
            if ev["command_id"] == commit_at and ev["terminal"]:
                consumer.commit()
        if not any(left.values()):
            break
    assert not any(left.values()), f"events still missing: {left}"
    return seen


def test_the_consumer_yields_typed_events_and_resumes_after_its_commit(codec: Codec, operator: Producer,
                                                                      direct: Producer,
                                                                      reader_principal: Settings) -> None:
    stack = reader_principal  # a journal reader's principal, in a group of its own
    a, b = _funded(operator, 1_000)
    group = f"{stack.kafka_principal}.journal-{uuid.uuid4().hex[:8]}"
    _group_at_end(stack, group)
    cmds = [transfer(a, b, 10 * (i + 1), "USD") for i in range(3)]
    for cmd in cmds:  # one at a time: their outcomes come in this order
        assert direct.send(cmd, wait=WAIT)["type"] == "TRANSFER_COMPLETED"
    ids = [c["command_id"] for c in cmds]
    with EventConsumer(group, stack, codec=codec) as first:
        seen = _read(first, ids, commit_at=ids[0])
    mine = [e for e in seen if e["command_id"] in ids]
    assert sorted((e["type"], e["amount"]) for e in mine if e["command_id"] == ids[0]) == [
        ("TRANSFER_COMPLETED", 10), ("TRANSFER_DEBITED", 10)]
    assert all(isinstance(e["postings"], list) and isinstance(e["terminal"], bool) for e in mine)
    cut = next(i for i, e in enumerate(seen) if e["command_id"] == ids[0] and e["terminal"])
    committed = {e["event_id"] for e in seen[: cut + 1]}
    uncommitted = {e["event_id"] for e in seen[cut + 1:]}
    with EventConsumer(group, stack, codec=codec) as second:  # the first closed without a commit
        again = [dict(e) for e in second.events(idle_timeout=5)]
    assert not committed & {e["event_id"] for e in again}
    assert uncommitted <= {e["event_id"] for e in again}


def test_a_journal_reader_may_read_events_in_its_own_groups_only(stack: Settings, codec: Codec,
                                                                 reader_principal: Settings) -> None:
    own = EventConsumer(f"{reader_principal.kafka_principal}.x", reader_principal, codec=codec, config={"log_level": 0})
    with own:
        assert isinstance(list(own.events(idle_timeout=3)), list)  # joined, read (maybe nothing), no error
    others = EventConsumer("paystream-sink", reader_principal, codec=codec, config={"log_level": 0})
    with others, pytest.raises(KafkaException) as err:
        list(others.events(idle_timeout=10))
    assert err.value.args[0].code() == KafkaError.GROUP_AUTHORIZATION_FAILED
    cmd = transfer(str(uuid.uuid4()), str(uuid.uuid4()), 1, "USD")
    with (Producer(reader_principal, codec=codec, config={"log_level": 0, "message.timeout.ms": 10_000}) as p,
          pytest.raises(NotDelivered, match=r"(?i)authoriz")):
        p.send(cmd).result(30)


def _run(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    return subprocess.run([sys.executable, str(PROJECT_ROOT / "examples" / script), *args], cwd=PROJECT_ROOT,
                          env=env, capture_output=True, text=True, timeout=300)


def test_the_kafka_examples_run(stack: Settings, ledger: Component, operator: Producer) -> None:
    sent = _run("kafka_producer.py")
    assert sent.returncode == 0, sent.stdout + sent.stderr
    lines = sent.stdout.splitlines()
    assert [ln.split()[:2] for ln in lines] == [
        ["transfer", "TRANSFER_COMPLETED"], ["resend", "COMMAND_DUPLICATE"], ["authorize", "HOLD_PLACED"],
        ["capture", "TRANSFER_COMPLETED"]]
    group = f"example-{uuid.uuid4().hex[:8]}"
    first = _run("kafka_consumer.py", "--group", group, "--limit", "3", "--idle", "20")
    assert first.returncode == 0 and len(first.stdout.splitlines()) == 3, first.stdout + first.stderr
    second = _run("kafka_consumer.py", "--group", group, "--limit", "3", "--idle", "20")
    assert second.returncode == 0 and len(second.stdout.splitlines()) == 3, second.stdout + second.stderr
    assert not set(first.stdout.splitlines()) & set(second.stdout.splitlines())  # it went on after its commits


def test_account_numbers_map_to_ids_through_the_api(gw: Env, reader: Any, direct: Producer) -> None:
    """The owner (or an admin) reads an account's id from the API; a direct producer
    sends with it. Strangers get the 404 of an account that does not exist."""
    payer, payee, stranger = register(gw), register(gw), register(gw)
    wait_opened(gw, reader, payer, payee)
    assert deposit(gw, payer, "50.00").status_code == 201
    with httpx.Client(base_url=gw.base, headers=payer.headers) as http:
        mine = AccountDirectory(http).account_id(payer.number)
    with httpx.Client(base_url=gw.base, headers=gw.admin_headers) as http:
        theirs = AccountDirectory(http).account_id(payee.number)
    assert (mine, theirs) == (gw.account_id(payer.number), gw.account_id(payee.number))
    with httpx.Client(base_url=gw.base, headers=stranger.headers) as http, pytest.raises(AccountNotFound):
        AccountDirectory(http).account_id(payer.number)
    paid = direct.send(transfer(mine, theirs, 2_000, "USD"), wait=WAIT)
    assert (paid["type"], paid["account_id"], paid["balance_after"]) == ("TRANSFER_COMPLETED", theirs, 2_000)


def test_batched_commands_each_get_their_outcome(stack: Settings, codec: Codec, operator: Producer) -> None:
    accounts = _funded(operator, 10_000, n=6)
    with Producer(stack, codec=codec, batch=True, batch_linger_ms=20) as p:
        cmds = [transfer(accounts[0], to, 100, "USD") for to in accounts[1:] for _ in range(4)]
        outs = p.send_many(cmds, wait=WAIT)
    assert {e["type"] for e in outs.values()} == {"TRANSFER_COMPLETED"} and len(outs) == 20
    assert sorted(e["balance_after"] or 0 for e in outs.values() if e["account_id"] == accounts[1]) == [
        100, 200, 300, 400]
